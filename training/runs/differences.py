"""What a single run changes from its baseline (the run it resumed from, else its preset, else the engine's
defaults), each guided parameter with its guidance and what the change is expected to do, read through the derived
values (effective batch, LoRA scale) where a field feeds one."""
from __future__ import annotations

from typing import Any

from guidance import comparison, content
from guidance.links import guidance_url
from training.engine.config import ConfigError, parse_config
from training.models import Run
from training.run_config import value_text


def baseline(run: Run) -> tuple[str, dict[str, Any]]:
    """(what the run is compared with, that config). A preset is read as it is now: it may have a newer version."""
    config = run.config or {}
    if run.resumed_from_id and run.resumed_from is not None:
        return f"run #{run.resumed_from_id}, which it resumes", run.resumed_from.config or {}
    required = {"model": config.get("model"), "train_file": config.get("train_file")}
    if run.preset is not None:
        try:
            return (f"preset {run.preset.name}",
                    parse_config({**run.preset.config, **required}).model_dump(mode="json"))
        except ConfigError:
            pass  # a preset edited into something the engine refuses: fall back to the defaults
    return "the engine's defaults", parse_config(required).model_dump(mode="json")


def run_differences(run: Run) -> dict[str, Any]:
    """{"against": label, "items": [{param, title, one_line, url, from, to, prediction}]} in the seed's order."""
    against, base = baseline(run)
    config = run.config or {}
    items = []
    for param, guidance in content.load_all().items():
        if param not in config:
            continue
        old, new = base.get(param), config[param]
        try:
            prediction = comparison.prediction_for_change(param, base, config, total_steps=run.total_steps)
        except (TypeError, ValueError):
            prediction = f"{param} changed"  # a value an older engine stored in another form
        if not prediction:
            continue
        items.append({"param": param, "title": guidance.title, "one_line": guidance.one_line,
                      "url": guidance_url(param), "from": value_text(old), "to": value_text(new),
                      "prediction": prediction})
    return {"against": against, "items": items}
