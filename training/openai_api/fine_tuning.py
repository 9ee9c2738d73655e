"""OpenAI's fine-tuning job in Tuneboard's terms, pure (no Django): a create request's hyperparameters as the engine's
config fields, the engine's field errors named as the request names them, a run's status as a job's.

- hyperparameters (or method.supervised.hyperparameters): n_epochs → num_train_epochs, batch_size →
  per_device_train_batch_size, learning_rate_multiplier → learning_rate = multiplier × RECOMMENDED_LR; "auto" (or
  absent) leaves the engine's default.
- seed → seed; suffix → the run's name.
- `tuneboard` (the extension; OpenAI's clients send it with extra_body={"tuneboard": {...}}): any other engine config
  field by its name (max_steps, r, lora_alpha, max_length, ...), and `queue`, the worker queue to train on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import OpenAIError, bad, from_field_errors

# The seed's simple default for LoRA/QLoRA SFT with AdamW (/work/shared/seed/lora-sft-guidance.md, "Simple Default"):
# learning_rate_multiplier 1 is this rate.
RECOMMENDED_LR = 2e-4
HYPERPARAMETERS = {"n_epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
                   "learning_rate_multiplier": "learning_rate"}
KNOWN = {"model", "training_file", "hyperparameters", "method", "seed", "suffix", "validation_file", "metadata",
         "integrations", "tuneboard"}
# Engine fields the job's own parameters set: the extension may not set them a second way.
OWNED = {"model", "train_file", "eval_file", "output_dir", "seed", *HYPERPARAMETERS.values()}
MAX_SUFFIX = 64  # OpenAI's own limit
STATUS = {"queued": "queued", "starting": "running", "running": "running", "stopping": "running",
          "succeeded": "succeeded", "failed": "failed", "lost": "failed", "stopped": "cancelled"}


@dataclass(frozen=True)
class JobRequest:
    model: str
    training_file: str
    validation_file: str | None
    suffix: str
    overrides: dict[str, Any] = field(default_factory=dict)  # the engine's config fields, the model included
    queue: str | None = None


def _hyperparameters(body: dict) -> tuple[dict[str, Any], str]:
    """The hyperparameters and the request's name for them (top level, or the supervised method's)."""
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            raise bad("method.type", "only supervised fine-tuning is served here")
        if "hyperparameters" in body:
            raise bad("hyperparameters", "give the hyperparameters once: at the top or in method.supervised")
        supervised = method.get("supervised") or {}
        return (supervised.get("hyperparameters") or {} if isinstance(supervised, dict) else None,
                "method.supervised.hyperparameters")
    return body.get("hyperparameters") or {}, "hyperparameters"


def _number(value: Any, name: str, *, integer: bool) -> float | int:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and value > 0
    if not ok:
        raise bad(name, f"\"auto\" or {'a whole number' if integer else 'a number'} above 0, not {value!r}")
    return value


def parse_job(body: Any) -> JobRequest:
    """POST /v1/fine_tuning/jobs' body, checked as far as it can be without the database; OpenAIError names the
    parameter. The engine's own checks of the fields (run_create) come after, named by `param_of`."""
    if not isinstance(body, dict):
        raise bad(None, "the body must be a JSON object")
    for name in sorted(set(body) - KNOWN):
        raise bad(name, f"not a parameter of a fine-tuning job here; allowed: {', '.join(sorted(KNOWN))}")
    for name in ("model", "training_file"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise bad(name, "required: " + ("a model folder inside the model roots, or a hub id" if name == "model"
                                            else "a file's id from POST /v1/files (file-<id>)"))
    if body.get("integrations"):
        raise bad("integrations", "not served here: Tuneboard's run page follows the job (and its own trackers, "
                                  "set in the tuneboard extension's trackers)")
    hyper, where = _hyperparameters(body)
    if not isinstance(hyper, dict):
        raise bad(where, "an object {n_epochs, batch_size, learning_rate_multiplier}")
    overrides: dict[str, Any] = {"model": body["model"]}
    for name in sorted(set(hyper) - set(HYPERPARAMETERS)):
        raise bad(f"{where}.{name}", "not a hyperparameter here; allowed: n_epochs, batch_size, "
                                     "learning_rate_multiplier (other engine fields: the tuneboard extension)")
    for name, engine in HYPERPARAMETERS.items():
        value = hyper.get(name, "auto")
        if value == "auto" or value is None:
            continue
        number = _number(value, f"{where}.{name}", integer=name != "learning_rate_multiplier")
        overrides[engine] = number * RECOMMENDED_LR if name == "learning_rate_multiplier" else number
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 31:
            raise bad("seed", f"a whole number from 0 to {2 ** 31 - 1}, not {seed!r}")
        overrides["seed"] = seed
    suffix = body.get("suffix") or ""
    if not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX:
        raise bad("suffix", f"a string of at most {MAX_SUFFIX} characters")
    validation = body.get("validation_file")
    if validation is not None and not isinstance(validation, str):
        raise bad("validation_file", "a file's id from POST /v1/files (file-<id>), or null")
    extension = body.get("tuneboard") or {}
    if not isinstance(extension, dict):
        raise bad("tuneboard", "an object of engine config fields (and queue)")
    queue = extension.get("queue")
    if queue is not None and not isinstance(queue, str):
        raise bad("tuneboard.queue", "a worker queue's name")
    for name, value in extension.items():
        if name == "queue":
            continue
        if name in OWNED:
            raise bad(f"tuneboard.{name}", f"set by the job itself ({_owner(name)}); leave it out of the extension")
        overrides[name] = value
    return JobRequest(model=body["model"], training_file=body["training_file"], validation_file=validation,
                      suffix=suffix.strip(), overrides=overrides, queue=queue)


def _owner(engine_field: str) -> str:
    names = {engine: f"hyperparameters.{name}" for name, engine in HYPERPARAMETERS.items()}
    names.update({"model": "model", "train_file": "training_file", "eval_file": "validation_file", "seed": "seed",
                  "output_dir": "the run's folder"})
    return names[engine_field]


def param_of(engine_field: str) -> str:
    """The request's name for an engine config field a service refused."""
    if engine_field in ("model", "seed"):
        return engine_field
    hyper = {engine: name for name, engine in HYPERPARAMETERS.items()}
    if engine_field in hyper:
        return f"hyperparameters.{hyper[engine_field]}"
    if engine_field in ("train_file", "dataset"):
        return "training_file"
    if engine_field == "eval_file":
        return "validation_file"
    if engine_field in ("__all__", "fit"):
        return engine_field
    return f"tuneboard.{engine_field}"


def job_status(run_status: str) -> str:
    return STATUS.get(run_status, "running")


def hyperparameters_of(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as a job's hyperparameters."""
    return {"n_epochs": config.get("num_train_epochs"), "batch_size": config.get("per_device_train_batch_size"),
            "learning_rate_multiplier": (round(config["learning_rate"] / RECOMMENDED_LR, 10)
                                         if config.get("learning_rate") else None)}


def refused(errors: dict[str, list[str] | str]) -> OpenAIError:
    """run_create's field errors as one 400 naming the first as the request names it."""
    return from_field_errors(errors, {name: param_of(name) for name in errors})
