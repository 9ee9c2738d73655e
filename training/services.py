"""Every write Tuneboard makes: datasets, presets, runs and their lifecycle. Views, tasks and the worker call these."""
from __future__ import annotations

from django.core.exceptions import ValidationError

from training.engine.config import ConfigError, parse_config

# Fields Tuneboard sets on every run itself; a preset or override may not set them.
RESERVED_FIELDS = {
    "train_file": "set from the chosen dataset; pick another dataset instead",
    "eval_file": "not settable here; use eval_split to hold out part of the dataset",
    "output_dir": "set by Tuneboard to the run's own directory",
}
# Stand-ins for what a preset does not know, so its fields can be validated alone.
PRESET_PLACEHOLDERS = {"model": "placeholder-model", "train_file": "placeholder-dataset.jsonl"}


def preset_config_errors(config: dict) -> dict[str, str]:
    """The engine's verdict on a preset's fields, {field: message}; empty when the preset is valid."""
    errors = {field: RESERVED_FIELDS[field] for field in config if field in RESERVED_FIELDS}
    fields = {k: v for k, v in config.items() if k not in RESERVED_FIELDS}
    try:
        parse_config({**PRESET_PLACEHOLDERS, **fields})
    except ConfigError as exc:
        errors.update(exc.errors)
    return errors


def _raise_field_errors(errors: dict[str, str]) -> None:
    if errors:
        raise ValidationError({field: [message] for field, message in errors.items()})
