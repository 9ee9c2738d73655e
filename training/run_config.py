"""The rules of a run config that the models, forms, compare and services share: the fields Tuneboard sets itself,
a preset's validation, where a model may come from, and how a value is written on the pages."""
from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from training.engine.config import ConfigError, parse_config
from training.model_source import ModelPolicy, model_source_error

# Fields Tuneboard sets on every run itself; a preset or override may not set them.
RESERVED_FIELDS = {
    "train_file": "set from the chosen dataset; pick another dataset instead",
    "eval_file": "not settable here; use eval_split to hold out part of the dataset",
    "output_dir": "set by Tuneboard to the run's own directory",
    "init_adapter": "set when a run builds on an earlier run's adapter; choose that run under 'Start from'",
}
# A run's own LoRA shape: a run that starts from another's adapter must keep it (the weights must fit).
ADAPTER_SHAPE_FIELDS = ("r", "target_modules", "bias")
# Stand-ins for what a preset does not know, so its fields can be validated alone.
PRESET_PLACEHOLDERS = {"model": "placeholder-model", "train_file": "placeholder-dataset.jsonl"}


def model_policy() -> ModelPolicy:
    """This deployment's rule for where a model may come from (settings read now: tests change them)."""
    forbidden = {settings.RUNS_DIR: "the runs' folders", settings.DATASETS_DIR: "the datasets' folders",
                 **{root: "the registered dataset roots" for root in settings.TUNEBOARD_DATASET_ROOTS}}
    return ModelPolicy.of(roots=settings.TUNEBOARD_MODEL_ROOTS, forbidden=forbidden,
                          hub=not settings.TUNEBOARD_HUB_OFFLINE)


def model_errors(model: Any) -> dict[str, str]:
    """{"model": why} when `model` may not be trained here (see training.model_source); empty otherwise."""
    if not isinstance(model, str):
        return {}  # the engine names the type
    error = model_source_error(model, model_policy())
    return {"model": error} if error else {}


def preset_config_errors(config: dict) -> dict[str, str]:
    """The engine's verdict on a preset's fields, and the model rule on its model; {field: message}, empty when
    the preset is valid."""
    errors = {field: RESERVED_FIELDS[field] for field in config if field in RESERVED_FIELDS}
    fields = {k: v for k, v in config.items() if k not in RESERVED_FIELDS}
    try:
        parse_config({**PRESET_PLACEHOLDERS, **fields})
    except ConfigError as exc:
        errors.update(exc.errors)
    if "model" in fields:
        errors.update(model_errors(fields["model"]))
    return errors


def value_text(value: Any) -> str:
    """A config value as the form shows it (JSON for lists and objects, "none" for null)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
