"""The seed's formulas as calculators for the run form and guidance pages, plus the seed's prediction for a change."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from guidance import content
from training.engine import derived

# The seed's floor for warmup on short runs is "10–25 steps"; a run "under ~500 steps" is short.
WARMUP_FLOOR_RANGE = (10, 25)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number above 0, got {value!r}")
    return value


@dataclass(frozen=True)
class StepPlan:
    effective_batch: int
    steps_per_epoch: int
    total_steps: int

    def as_dict(self) -> dict:
        return asdict(self)


def step_plan(*, num_examples: int, micro_batch: int, grad_accum: int, epochs: float = 1.0,
              max_steps: int | None = None, devices: int = 1) -> StepPlan:
    """Effective batch (micro × accumulation × devices), optimizer steps per epoch, and total optimizer steps."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples must be a whole number of at least 0, got {num_examples!r}")
    _positive_int("micro_batch", micro_batch)
    _positive_int("grad_accum", grad_accum)
    _positive_int("devices", devices)
    _positive("epochs", epochs)
    if max_steps is not None:
        _positive_int("max_steps", max_steps)
    return StepPlan(
        effective_batch=derived.effective_batch(micro_batch, grad_accum, devices),
        steps_per_epoch=derived.steps_per_epoch(num_examples, micro_batch, grad_accum, devices),
        total_steps=derived.total_steps(num_examples, micro_batch, grad_accum, epochs, max_steps, devices),
    )


def recommended_warmup_steps(total_steps: int, *, ratio: float = 0.03, floor: int = WARMUP_FLOOR_RANGE[0]) -> int:
    """The seed's warmup: `ratio` (3%) of the optimizer steps, but at least `floor` (10–25) steps under ~500 steps."""
    _positive_int("total_steps", total_steps)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    low, high = WARMUP_FLOOR_RANGE
    if isinstance(floor, bool) or not isinstance(floor, int) or not low <= floor <= high:
        raise ValueError(f"floor must be a whole number of steps from {low} to {high}, got {floor!r}")
    return derived.warmup_steps_recommended(total_steps, ratio, floor)


def resolved_warmup_steps(warmup: int | float, total_steps: int) -> int:
    """What a warmup_steps value means for a run: an int is steps; a float in [0, 1) is ceil(ratio × total)."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or warmup < 0 or (
            isinstance(warmup, float) and warmup >= 1):
        raise ValueError(f"warmup must be a whole number of steps or a ratio in [0, 1), got {warmup!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0:
        raise ValueError(f"total_steps must be a whole number of at least 0, got {total_steps!r}")
    return derived.warmup_steps_resolved(warmup, total_steps)


def lora_gain(lora_alpha: float, r: int, *, use_rslora: bool) -> float:
    """The adapter's effective gain g: alpha/r, or alpha/√r with rsLoRA."""
    _positive("lora_alpha", lora_alpha)
    _positive_int("r", r)
    return derived.lora_scale(lora_alpha, r, use_rslora)


def alpha_for_gain(gain: float, r: int, *, use_rslora: bool) -> int:
    """The gain-matched alpha: round(g·√r) with rsLoRA, round(g·r) without."""
    _positive("gain", gain)
    _positive_int("r", r)
    return derived.gain_matched_alpha(gain, r, use_rslora)


def alpha_after_rslora_switch(lora_alpha: float, r: int, *, to_rslora: bool) -> int:
    """The alpha that keeps today's gain when rsLoRA is turned on (to_rslora=True) or off."""
    _positive("lora_alpha", lora_alpha)
    _positive_int("r", r)
    return derived.alpha_when_switching_rslora(lora_alpha, r, to_rslora=to_rslora)


def grad_accum_for_target(micro_batch: int, *, target_effective_batch: int = 16, devices: int = 1) -> int:
    """ceil(target / (micro-batch × devices)); the seed's target is an effective batch of ~16 sequences."""
    _positive_int("micro_batch", micro_batch)
    _positive_int("target_effective_batch", target_effective_batch)
    _positive_int("devices", devices)
    return derived.grad_accum_for_target(target_effective_batch, micro_batch, devices)


def rank_range(num_examples: int) -> tuple[int, int]:
    """The seed's ranks to consider for a dataset of this many examples, as (low, high)."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples must be a whole number of at least 0, got {num_examples!r}")
    return derived.rank_range_for_dataset(num_examples)


def _plain(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


def change_direction(param: str, old: Any, new: Any, *, total_steps: int | None = None) -> str | None:
    """up/down for numbers, on/off for switches and optional settings, else changed (or the new choice's own key).

    None when nothing changed. Warmup given once as steps and once as a ratio is compared in resolved steps when
    total_steps is known, else it is just "changed".
    """
    old, new = _plain(old), _plain(new)
    kind = content.value_kind(param)
    if kind == "number" and param == "warmup_steps" and isinstance(old, float) != isinstance(new, float):
        if total_steps is None:
            return "changed"
        old, new = resolved_warmup_steps(old, total_steps), resolved_warmup_steps(new, total_steps)
    if old == new:
        return None
    if kind == "number":
        return "up" if new > old else "down"
    if kind == "switch":
        return "on" if new else "off"
    if kind == "optional":
        if old is None or new is None:
            return "on" if new is not None else "off"
        return "changed"
    return str(new)


def prediction_for_change(param: str, old: Any, new: Any, *, total_steps: int | None = None) -> str:
    """The seed's prediction for moving `param` from `old` to `new`, from its guidance; "" when nothing changed."""
    direction = change_direction(param, old, new, total_steps=total_steps)
    if direction is None:
        return ""
    predictions = content.get(param).predictions
    if direction in predictions:
        return predictions[direction]
    return predictions.get("changed", f"{param} changed from {old!r} to {new!r}")
