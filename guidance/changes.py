"""The one concrete change a finding names: its first-ranked knob moved the way its advice says, as config values.

No Django here. A finding (guidance/detectors.py) ranks the knobs that would explain its symptom and words the advice
("raise the learning rate"); the run page's Apply needs a value. This module turns the advice into one, by the same
ranges the detectors rank against (guidance.preflight), so an Apply never moves a knob out of the seed's range:
toward the seed's recommended value when the knob sits past it, else one notch (a doubling, or the range's edge).
"""
from __future__ import annotations

from typing import Any, Mapping

from guidance import preflight
from training.engine import derived

UP, DOWN = "up", "down"
# Per finding code, the way its advice moves each knob it can name (the opposite of the detectors' Cause.direction).
# flat_loss and plateau_above_peers raise the learning rate, unless it is far too high (the detectors' overshoot).
ADVICE: dict[str, dict[str, str]] = {
    "loss_not_finite": {"learning_rate": DOWN, "warmup_steps": UP, "lora_alpha": DOWN},
    "early_instability": {"warmup_steps": UP, "learning_rate": DOWN},
    "loss_spike": {"learning_rate": DOWN, "gradient_accumulation_steps": UP, "lora_alpha": DOWN},
    "grad_norm_spike": {"learning_rate": DOWN, "gradient_accumulation_steps": UP, "warmup_steps": UP},
    "flat_loss": {"learning_rate": UP, "lora_alpha": UP, "weight_decay": DOWN, "lora_dropout": DOWN},
    "plateau_above_peers": {"learning_rate": UP, "r": UP, "lora_alpha": UP, "weight_decay": DOWN,
                            "lora_dropout": DOWN},
    "overfitting": {"lora_dropout": UP, "weight_decay": UP, "r": DOWN, "lora_alpha": DOWN},
    "lr_decayed_early": {"warmup_steps": DOWN},
    "throughput_below_packed": {"packing": UP},
    "packing_no_gain": {},
    "out_of_memory": {"gradient_accumulation_steps": UP},
}
UNDERFIT = frozenset({"flat_loss", "plateau_above_peers"})


def _sig(value: float) -> float:
    return float(f"{value:.2g}")


def _toward(value: float, way: str, low: float, high: float, recommended: float, notch: float) -> float | None:
    """One move of `value` the `way` given: to the recommended value when that lies that way, else `notch` times
    (or divided), kept inside [low, high]; None when no move that way stays in range."""
    if way == UP:
        target = recommended if recommended > value else min(value * notch, high)
        return target if target > value else None
    target = recommended if recommended < value else max(value / notch, low)
    return target if target < value else None


def change_for(parameter: str, way: str, config: Mapping[str, Any], *, rows: int | None = None,
               total: int | None = None) -> dict[str, Any] | None:
    """The config values that move `parameter` one step `way` ("up" or "down") within the seed's range; None when the
    config does not say enough, or the knob has no concrete move (a schedule's type)."""
    m = preflight.measure(config, parameter, rows=rows, total=total)
    if parameter == "packing":
        return {"packing": True} if way == UP and not config.get("packing") else None
    if m is None:
        return None
    if parameter == "learning_rate":
        lr = _toward(m.value, way, m.low, m.high, preflight.LORA_LEARNING_RATE, 2.0)
        return None if lr is None else {"learning_rate": _sig(lr)}
    if parameter == "lora_alpha":
        g = _toward(m.value, way, m.low, m.high, preflight.DEFAULT_GAIN, 2.0)
        if g is None:
            return None
        r = int(config["r"])
        alpha = g * (r ** 0.5 if config.get("use_rslora") else r)
        return {"lora_alpha": max(1, round(alpha))} if round(alpha) != config["lora_alpha"] else None
    if parameter == "r":
        r = _toward(m.value, way, m.low, m.high, m.high if way == UP else m.low, 2.0)
        return None if r is None or int(r) == int(m.value) else {"r": int(r)}
    if parameter in ("lora_dropout", "weight_decay"):
        default = preflight.DROPOUT_DEFAULT if parameter == "lora_dropout" else preflight.WEIGHT_DECAY_DEFAULT
        if way == UP:
            value = default if m.value < default else (m.high if m.value < m.high else None)
        else:
            value = default if m.value > m.high else (m.low if m.value > m.low else None)
        return None if value is None else {parameter: value}
    if parameter == "gradient_accumulation_steps":
        micro, accum = int(config["per_device_train_batch_size"]), int(config["gradient_accumulation_steps"])
        devices = preflight.devices_of(config)
        if way == UP:
            new = (derived.grad_accum_for_target(preflight.EFFECTIVE_BATCH_DEFAULT, micro, devices)
                   if m.value < preflight.EFFECTIVE_BATCH_DEFAULT else accum * 2)
        else:
            new = max(1, accum // 2)
        return None if new == accum else {"gradient_accumulation_steps": new}
    if parameter == "warmup_steps":
        steps = m.used["total_steps"]
        recommended = min(derived.warmup_steps_recommended(steps), int(preflight.warmup_allowed(steps)))
        now = m.used["warmup_optimizer_steps"]
        if (way == UP and recommended > now) or (way == DOWN and recommended < now):
            return {"warmup_steps": recommended}
        return None
    return None


def finding_change(code: str, parameters: list[str] | tuple[str, ...], config: Mapping[str, Any], *,
                   rows: int | None = None, total: int | None = None) -> tuple[str, dict[str, Any]] | None:
    """(the knob, its new values) for the first knob the finding names that has a concrete move; None if none has.
    An out-of-memory finding halves the micro-batch and doubles the accumulation (the same effective batch)."""
    if code == "out_of_memory":
        micro, accum = config.get("per_device_train_batch_size"), config.get("gradient_accumulation_steps")
        if isinstance(micro, int) and isinstance(accum, int) and micro > 1:
            smaller = micro // 2 if micro % 2 == 0 else 1
            return "per_device_train_batch_size", {"per_device_train_batch_size": smaller,
                                                   "gradient_accumulation_steps": micro * accum // smaller}
        return None
    advice = dict(ADVICE.get(code, {}))
    if code in UNDERFIT and preflight.far_outside(config, "learning_rate", UP, rows=rows, total=total):
        advice["learning_rate"] = DOWN
    for parameter in parameters:
        way = advice.get(parameter)
        if way is None:
            continue
        values = change_for(parameter, way, config, rows=rows, total=total)
        if values:
            return parameter, values
    return None
