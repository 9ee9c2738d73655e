"""The names the OpenAI-compatible endpoints give a run's models: `run-<id>` is the run's final adapter on its base
model, `run-<id>:base` the same base model with the adapter off, `run-<id>:ckpt-<step>` the adapter it saved at that
step. A fine-tuning job's `fine_tuned_model` is the first, its checkpoints' `fine_tuned_model_checkpoint` the last.
Jobs are `ftjob-<run id>`, files `file-<dataset id>`."""
from __future__ import annotations

import re

NAME = re.compile(r"^run-(?P<id>[1-9][0-9]{0,17})(?:(?P<base>:base)|:ckpt-(?P<step>[0-9]{1,9}))?$")
JOB = re.compile(r"^ftjob-(?P<id>[1-9][0-9]{0,17})$")
FILE = re.compile(r"^file-(?P<id>[1-9][0-9]{0,17})$")


def model_name(run_id: int, *, base: bool = False, checkpoint: int | None = None) -> str:
    return f"run-{run_id}" + (":base" if base else f":ckpt-{checkpoint}" if checkpoint is not None else "")


def parse_model(name: object) -> tuple[int, bool, int | None] | None:
    """(run id, base model alone, checkpoint step or None) for a name model_name gives, else None."""
    match = NAME.match(name) if isinstance(name, str) else None
    if not match:
        return None
    return int(match["id"]), bool(match["base"]), int(match["step"]) if match["step"] else None


def job_id(run_id: int) -> str:
    return f"ftjob-{run_id}"


def parse_job(text: str) -> int | None:
    match = JOB.match(text)
    return int(match["id"]) if match else None


def file_id(dataset_id: int) -> str:
    return f"file-{dataset_id}"


def parse_file(text: object) -> int | None:
    match = FILE.match(text) if isinstance(text, str) else None
    return int(match["id"]) if match else None
