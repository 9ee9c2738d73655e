"""What the trackers write, as plain data: a run's points, findings and end, the names each tracker gives a series,
and a config value written as text. Pure: the worker's mirror and the export of a finished run both build these."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from training.engine.events import parse_float

TENSORBOARD = "tensorboard"
MLFLOW = "mlflow"
TRACKERS = {TENSORBOARD: "TensorBoard", MLFLOW: "MLflow"}

# A point's series: (its field, TensorBoard's tag, MLflow's key). The tags follow transformers' TensorBoard callback
# (train/loss, eval/loss, ...) and the keys its MLflow callback (loss, eval_loss, ...), so a team's dashboards read
# a Tuneboard run like any other. Peak VRAM is in MiB for TensorBoard: its scalars are float32, exact to 2**24 only.
SERIES = (
    ("loss", "train/loss", "loss"),
    ("eval_loss", "eval/loss", "eval_loss"),
    ("grad_norm", "train/grad_norm", "grad_norm"),
    ("learning_rate", "train/learning_rate", "learning_rate"),
    ("tokens_per_s", "perf/tokens_per_s", "tokens_per_s"),
    ("peak_vram_bytes", "perf/peak_vram_mib", "peak_vram_bytes"),
)
VALUE_FIELDS = tuple(name for name, _, _ in SERIES)
MIB = 2**20


@dataclass(frozen=True)
class Point:
    """One step's values (a metrics or an eval event: only its own fields are set) and when it was measured."""

    step: int
    time: float
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FindingNote:
    step: int
    code: str
    title: str
    message: str
    parameters: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        about = f" Look at: {', '.join(self.parameters)}." if self.parameters else ""
        return f"**{self.title}** ({self.code} at step {self.step}): {self.message}{about}"


@dataclass(frozen=True)
class RunEnd:
    status: str  # Tuneboard's: succeeded, failed, stopped, lost
    step: int
    error: str = ""


def point_from_event(event: dict[str, Any]) -> Point | None:
    """A metrics or eval event's point, its values parsed as the recorder stores them (None: not a point)."""
    if event.get("type") not in ("metrics", "eval"):
        return None
    try:
        step = int(event["step"])
    except (KeyError, TypeError, ValueError):
        return None
    values = {}
    for name in VALUE_FIELDS:
        try:
            value = parse_float(event.get(name))
            if value is not None and name == "peak_vram_bytes":
                value = float(int(value))  # stored as a whole number of bytes
        except (TypeError, ValueError, OverflowError):
            continue  # not a number the recorder could store either
        if value is not None:
            values[name] = value
    return Point(step=step, time=_seconds(event.get("time")), values=values)


def _seconds(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return time.time()


def value_text(value: Any) -> str:
    """A config value as a tracker's parameter: strings as they are, everything else as JSON (null, true, [..])."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def finite_or_text(value: float) -> float | str:
    """A float for JSON: the proto3 JSON words for NaN and the infinities (a diverged run's loss is one)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value
