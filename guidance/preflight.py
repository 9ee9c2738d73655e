"""Pre-flight review: a config held against the seed's guidance before it spends GPU time; notes, never refusals.

No Django here, and nothing slow: the run form calls `review` as the user types. The seed's ranges live in one
place (`RANGES` and the constants beside them); `distance` measures how far a config sits outside them, and the
symptom detectors (guidance/detectors.py) use it to rank the causes they name, so a finding and a note never
disagree about what "out of range" means.

Every number below is the seed's (../shared/seed/lora-sft-guidance.md) unless its comment says "ours": where the
seed says "far" or "short" without a number, we chose one and say why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping

from training.engine import derived

# ---- the seed's numbers -----------------------------------------------------------------------------------------

LORA_LEARNING_RATE = 2e-4  # learning_rate, Simple default: "2e-4" for LoRA/QLoRA with AdamW
# "An order of magnitude or more off" the LoRA default: 2e-5 is also the seed's own full fine-tuning start ("about
# 10x smaller"), a value the seed names, so the band includes its edges.
LEARNING_RATE_BAND = (2e-5, 2e-3)
ALPHA_RATIO = (1.0, 2.0)  # lora_alpha, Simple default: "r or 2r" (k = 1 or 2); the gain alpha/r under standard scaling
DEFAULT_GAIN = 2.0  # lora_alpha "Start with 2r"; use_rslora "start with g_target ~ 2"
# Ours: "far" from the 1-2 ratio is beyond a factor 2 either side, i.e. a gain under 0.5 or over 4; the top, 4, is
# also the top of the seed's "stable effective gain g (often around 1-4)" (use_rslora, Simple default).
GAIN_FAR = 2.0
DROPOUT_RANGE = (0.0, 0.1)  # lora_dropout: "often 0.0-0.1"; notches 0.0, 0.03, 0.05, 0.1
DROPOUT_DEFAULT = 0.05  # lora_dropout, Simple default
WEIGHT_DECAY_RANGE = (0.0, 0.1)  # weight_decay: "0.0-0.001" for large data up to "0.03-0.1" for very limited data
WEIGHT_DECAY_DEFAULT = 0.01  # weight_decay, Simple default
# weight_decay: "the effective decay pressure scales with lr x weight_decay": the strongest the seed endorses is its
# highest decay (0.1) at its LoRA learning rate.
DECAY_PRESSURE_MAX = WEIGHT_DECAY_RANGE[1] * LORA_LEARNING_RATE
WARMUP_RATIO_DEFAULT = 0.03  # warmup_steps, Simple default: 3%
WARMUP_RATIO_MAX = 0.10  # warmup_steps: "0.05-0.10" for large batches / high LR / long runs; the sweep ends at 0.10
WARMUP_FLOOR = (10, 25)  # warmup_steps: "for very short runs (< ~500 optimizer steps) ... an integer floor like 10-25"
SHORT_WARMUP_RUN = 500  # ...the "< ~500 optimizer steps" of that floor
MOST_OF_RUN = 0.5  # ours: "most of the run" (the seed's "you spend most of the run ramping up") is more than half
EFFECTIVE_BATCH_TARGET = (16, 64)  # gradient_accumulation_steps: "a common target is 16-64 sequences per update"
EFFECTIVE_BATCH_DEFAULT = 16  # gradient_accumulation_steps, Simple default: "target an effective batch of ~16"
# Ours: "far" from 16-64 is beyond a factor 4 either side (under 4 or over 256); the bottom, 4, is the seed's own
# start of accumulation 1 with a per-device batch of 4-8.
EFFECTIVE_BATCH_FAR = 4.0
# Ours: lr_scheduler_type calls runs of "<= ~1-2k steps" short; we take the low end, so a run inside the seed's
# fuzzy 1-2k band is not warned.
SHORT_RUN_STEPS = 1000
MIN_LR_RATE_MIN = 0.02  # lr_scheduler_type: the lowest floor the seed sweeps for cosine_with_min_lr (0.02-0.2)
DECAY_TO_ZERO = frozenset({"cosine", "cosine_with_restarts", "polynomial"})  # schedules that end at (near) 0
PACKING_SHORT, PACKING_LONG = 0.25, 0.5  # packing: "mostly short examples (e.g. many < 25-50% of max_length)"
HIGH_RANK = 64  # use_rslora: standard scaling "and try high rank (e.g., 64-256)" learns very slowly
RANK_SPAN = (4, 128)  # r: the seed's ranks across all dataset sizes, "r = 4-8" (< 500 rows) to "64-128" (200k+)
LOFTQ_BITS = 4  # loftq_config, Simple default: loftq_bits 4 ("most people will stay at 4")
ALL_LINEAR = frozenset(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))

_EPS = 1e-9  # relative: 2e-3 x 0.01 is 2.0000000000000002e-05 in floats, and an edge must not warn


def _above(value: float, limit: float) -> bool:
    return value > limit * (1 + _EPS)


def _below(value: float, limit: float) -> bool:
    return value < limit * (1 - _EPS)


def _num(config: Mapping[str, Any], key: str) -> float | None:
    value = config.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _sig(value: float, digits: int = 2) -> float:
    return float(f"{value:.{digits}g}")


# ---- what a parameter's value is, against which range --------------------------------------------------------

@dataclass(frozen=True)
class Measure:
    """One parameter's value as the seed judges it, the seed's range for it, and how far outside a note needs."""

    value: float
    low: float
    high: float
    far: float = 1.0  # a note fires below low / far or above high x far
    used: dict[str, Any] = field(default_factory=dict)  # the config values (and facts) it was computed from


def gain(config: Mapping[str, Any]) -> float | None:
    """The adapter's effective scale: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    alpha, r = _num(config, "lora_alpha"), _num(config, "r")
    if alpha is None or not r or r < 1:
        return None
    return derived.lora_scale(alpha, int(r), bool(config.get("use_rslora")))


def devices_of(config: Mapping[str, Any]) -> int:
    """The run's data-parallel ranks (TrainConfig.devices), 1 when the config does not say."""
    devices = _num(config, "devices")
    return int(devices) if devices and devices >= 1 else 1


def effective_batch(config: Mapping[str, Any], devices: int | None = None) -> int | None:
    devices = devices or devices_of(config)
    micro, accum = _num(config, "per_device_train_batch_size"), _num(config, "gradient_accumulation_steps")
    if not micro or not accum:
        return None
    return derived.effective_batch(int(micro), int(accum), devices)


def total_steps(config: Mapping[str, Any], rows: int | None = None, devices: int | None = None) -> int | None:
    """Optimizer steps of the run: max_steps, else from the dataset's rows (derive); None when neither is known."""
    devices = devices or devices_of(config)
    if not config.get("max_steps") and rows is None:
        return None
    try:
        plan = derived.derive(SimpleNamespace(**{**_DERIVE_DEFAULTS, **config}), rows, devices)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return plan.total_steps or None


# derive() reads these; a partial config (a test's, a form half typed) gets the engine's defaults for them.
_DERIVE_DEFAULTS = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "num_train_epochs": 1.0,
                    "max_steps": None, "warmup_steps": 0.03, "lora_alpha": 32, "r": 16, "use_rslora": False,
                    "max_length": 2048, "packing": False}


def warmup_allowed(total: int) -> float:
    """The most warmup steps the seed's guidance accepts for a run of `total` steps: 10% of it, or the 25-step floor
    on a run under 500 steps, but never most of the run."""
    allowed = WARMUP_RATIO_MAX * total
    if total < SHORT_WARMUP_RUN:
        allowed = max(allowed, WARMUP_FLOOR[1])
    return min(allowed, MOST_OF_RUN * total)


def warmup_resolved(config: Mapping[str, Any], total: int) -> int | None:
    warmup = config.get("warmup_steps")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)):
        return None
    return derived.warmup_steps_resolved(warmup, total)


def rank_range(rows: int | None) -> tuple[int, int]:
    """The seed's ranks for a dataset of `rows` examples; its whole span when the size is unknown."""
    return derived.rank_range_for_dataset(rows) if rows is not None else RANK_SPAN


def measure(config: Mapping[str, Any], parameter: str, *, rows: int | None = None,
            total: int | None = None, devices: int | None = None) -> Measure | None:
    """`parameter`'s value against the seed's range, or None when the config does not say enough (or the seed
    gives that parameter no range). lora_alpha is judged as the gain it gives with r (and use_rslora);
    gradient_accumulation_steps as the effective batch; warmup_steps as its share of the run. `devices`: the
    config's own unless given."""
    devices = devices or devices_of(config)
    if parameter == "learning_rate":
        lr = _num(config, "learning_rate")
        return None if lr is None else Measure(lr, *LEARNING_RATE_BAND, used={"learning_rate": lr})
    if parameter == "lora_alpha":
        g = gain(config)
        if g is None:
            return None
        return Measure(g, *ALPHA_RATIO, far=GAIN_FAR, used={
            "lora_alpha": config["lora_alpha"], "r": config["r"], "use_rslora": bool(config.get("use_rslora")),
            "gain": g})
    if parameter == "r":
        r = _num(config, "r")
        if r is None:
            return None
        return Measure(r, *rank_range(rows), used={"r": r, **({"rows": rows} if rows is not None else {})})
    if parameter == "lora_dropout":
        d = _num(config, "lora_dropout")
        return None if d is None else Measure(d, *DROPOUT_RANGE, used={"lora_dropout": d})
    if parameter == "weight_decay":
        wd = _num(config, "weight_decay")
        return None if wd is None else Measure(wd, *WEIGHT_DECAY_RANGE, used={"weight_decay": wd})
    if parameter == "gradient_accumulation_steps":
        eb = effective_batch(config, devices)
        if eb is None:
            return None
        return Measure(eb, *EFFECTIVE_BATCH_TARGET, far=EFFECTIVE_BATCH_FAR, used={
            "per_device_train_batch_size": config["per_device_train_batch_size"],
            "gradient_accumulation_steps": config["gradient_accumulation_steps"], "devices": devices,
            "effective_batch": eb})
    if parameter == "warmup_steps":
        total = total or total_steps(config, rows, devices)
        warm = warmup_resolved(config, total) if total else None
        if warm is None:
            return None
        return Measure(warm / total, 0.0, warmup_allowed(total) / total, used={
            "warmup_steps": config["warmup_steps"], "warmup_optimizer_steps": warm, "total_steps": total})
    return None


def distance(config: Mapping[str, Any], parameter: str, direction: str, *, rows: int | None = None,
             total: int | None = None, devices: int | None = None) -> float:
    """How far `parameter` sits outside the seed's range on one side, in doublings (log2 of the factor past the
    edge): direction "up" measures above the range's top, "down" below its bottom. 0.0 inside the range (its edges
    included) and when the config does not say enough to tell."""
    m = measure(config, parameter, rows=rows, total=total, devices=devices)
    if m is None:
        return 0.0
    if direction == "up":
        return math.log2(m.value / m.high) if m.high > 0 and _above(m.value, m.high) else 0.0
    if direction == "down":
        if not _below(m.value, m.low):
            return 0.0
        return math.log2(m.low / m.value) if m.value > 0 else math.inf
    raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")


def at_edge_or_past(config: Mapping[str, Any], parameter: str, direction: str, *, rows: int | None = None,
                    total: int | None = None, devices: int | None = None) -> bool:
    """Whether `parameter` already sits at the seed's range's edge on that side (or past it): moving it further that
    way would leave the range (or go further out). False when the config does not say enough to tell."""
    m = measure(config, parameter, rows=rows, total=total, devices=devices)
    if m is None:
        return False
    if direction == "up":
        return not _below(m.value, m.high)
    if direction == "down":
        return not _above(m.value, m.low)
    raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")


def far_outside(config: Mapping[str, Any], parameter: str, direction: str, **facts: Any) -> bool:
    """Whether `parameter` is outside the seed's range on that side by more than its note's tolerance."""
    m = measure(config, parameter, **facts)
    return m is not None and distance(config, parameter, direction, **facts) > math.log2(m.far) + _EPS


# ---- notes --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Note:
    """One thing the seed's guidance would question in a config: a warning (or an info), never a refusal."""

    code: str
    parameters: tuple[str, ...]
    severity: str  # "warning" or "info"
    title: str
    message: str
    combines_with: tuple[str, ...]  # the other parameters, when the note is about a combination
    section: tuple[str, str]  # (parameter slug, anchor id) of the guidance to read: /guidance/<slug>/#<anchor>
    fix: dict[str, Any] | None  # config field -> the seed's value, for a one-click fix
    evidence: dict[str, Any]  # the values the rule used

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "parameters": list(self.parameters), "severity": self.severity,
                "title": self.title, "message": self.message, "combines_with": list(self.combines_with),
                "section": {"param": self.section[0], "anchor": self.section[1]}, "fix": self.fix,
                "evidence": self.evidence}


def _note(code: str, parameters: tuple[str, ...], severity: str, title: str, message: str, section: tuple[str, str],
          fix: dict[str, Any] | None, evidence: dict[str, Any], combines_with: tuple[str, ...] = ()) -> Note:
    return Note(code=code, parameters=parameters, severity=severity, title=title, message=message,
                combines_with=tuple(p for p in dict.fromkeys(combines_with) if p not in parameters), section=section,
                fix=fix, evidence=evidence)


@dataclass(frozen=True)
class _Facts:
    rows: int | None
    p50: float | None
    p95: float | None
    has_bias_params: bool | None
    devices: int
    total: int | None
    linear_layers: frozenset[str] = frozenset()  # the model's linear layers but its output embedding, by name
    unknown_targets: tuple[str, ...] = ()  # names in target_modules that are no linear layer of the model


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# ---- rules: each takes (config, facts) and returns its notes --------------------------------------------------------

def _learning_rate(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    m = measure(c, "learning_rate")
    if m is None:
        return []
    lr, g = m.value, gain(c)
    if _above(lr, m.high):
        side, factor, verb = "up", lr / LORA_LEARNING_RATE, "above"
        why = ("Steps this large overshoot: the loss spikes or diverges (NaN/Inf), or jumps into a flat region and "
               "stops moving while the gradient norm collapses.")
        compounding = g is not None and _above(g, ALPHA_RATIO[1])
    elif _below(lr, m.low):
        side, factor, verb = "down", LORA_LEARNING_RATE / lr, "below"
        why = "Steps this small barely move the adapter: the loss falls very slowly or plateaus near the base model."
        compounding = g is not None and _below(g, ALPHA_RATIO[0])
    else:
        return []
    combo = ""
    if compounding:
        combo = (f" The adapter's gain ({_fmt(g)}, from lora_alpha and r) is {'above' if side == 'up' else 'below'} "
                 "the recommended 1-2 as well, and the two multiply: the update that reaches the weights is "
                 f"{'larger' if side == 'up' else 'smaller'} still.")
    return [_note(
        "learning_rate_off", ("learning_rate",), "warning",
        f"Learning rate {_fmt(lr)} is {factor:,.0f}x {verb} the LoRA default",
        f"The guidance starts LoRA/QLoRA with AdamW at {LORA_LEARNING_RATE:g}; {_fmt(lr)} is {factor:,.0f} times "
        f"{'that' if side == 'up' else 'smaller'}, an order of magnitude or more off. {why}{combo}",
        ("learning_rate", "too_high" if side == "up" else "too_low"), {"learning_rate": LORA_LEARNING_RATE},
        {**m.used, "seed_default": LORA_LEARNING_RATE, "band": list(LEARNING_RATE_BAND),
         **({"gain": g} if compounding else {})},
        combines_with=("lora_alpha", "r") if compounding else ())]


def _lora_scale(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    m = measure(c, "lora_alpha")
    if m is None:
        return []
    alpha, r, rs, g = c["lora_alpha"], int(c["r"]), bool(c.get("use_rslora")), m.value
    ratio = alpha / r
    if rs and r > 1 and not _below(ratio, ALPHA_RATIO[0]) and not _above(ratio, ALPHA_RATIO[1]) and far_outside(
            c, "lora_alpha", "up"):
        matched = derived.gain_matched_alpha(ratio, r, True)
        return [_note(
            "rslora_alpha_not_matched", ("use_rslora", "lora_alpha"), "warning",
            f"rsLoRA on with an alpha set for standard scaling: gain {_fmt(g)}, not {_fmt(ratio)}",
            f"lora_alpha {alpha:g} is {ratio:g}x r, the recommended ratio for standard LoRA, where the gain is "
            "alpha/r = "
            f"{_fmt(ratio)}. With use_rslora the gain is alpha/sqrt(r) = {alpha:g}/{math.sqrt(r):.3g} = {_fmt(g)}: "
            f"sqrt(r) = {math.sqrt(r):.3g} times louder, which the guidance links to early loss spikes, NaNs and sharp "
            f"overfitting. For the same gain {_fmt(ratio)} under rsLoRA, set lora_alpha to round({_fmt(ratio)} x "
            f"sqrt({r})) = {matched}.",
            ("use_rslora", "alpha_not_matched"), {"lora_alpha": matched},
            {**m.used, "gain_standard": ratio, "gain_rslora": g, "matched_alpha": matched},
            combines_with=("r",))]
    if far_outside(c, "lora_alpha", "up"):
        side = "up"
    elif far_outside(c, "lora_alpha", "down"):
        side = "down"
    else:
        return []
    target = derived.gain_matched_alpha(DEFAULT_GAIN, r, rs)
    rule = "alpha/sqrt(r)" if rs else "alpha/r"
    effect = ("so the adapter overrides the base model: fast early drops, then noisy or spiking loss and overfitting"
              if side == "up" else
              "so the adapter is barely heard: the loss falls slowly or plateaus and the model stays close to base")
    return [_note(
        "lora_scale_off", ("lora_alpha",), "warning",
        f"Adapter gain {_fmt(g)} is far {'above' if side == 'up' else 'below'} the recommended 1-2",
        f"The adapter's output is scaled by {rule} = {alpha:g}/{r if not rs else f'{math.sqrt(r):.3g}'} = "
        f"{_fmt(g)}. The guidance keeps alpha at r or 2r (a gain of 1-2; around 2 under rsLoRA with alpha = 2 x "
        f"sqrt(r)), {effect}. lora_alpha {target} gives the recommended gain of 2 at r {r}.",
        ("lora_alpha", "too_high" if side == "up" else "too_low"), {"lora_alpha": target},
        {**m.used, "seed_gain": list(ALPHA_RATIO), "far_factor": GAIN_FAR},
        combines_with=("r", "use_rslora") if rs else ("r",))]


def _update_size(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    """Learning rate and gain each within bounds, but together far off: the update is their product."""
    lr, g = _num(c, "learning_rate"), gain(c)
    if lr is None or g is None or far_outside(c, "learning_rate", "up") or far_outside(c, "learning_rate", "down") \
            or far_outside(c, "lora_alpha", "up") or far_outside(c, "lora_alpha", "down"):
        return []
    low, high = LEARNING_RATE_BAND[0] * ALPHA_RATIO[0], LEARNING_RATE_BAND[1] * ALPHA_RATIO[1]
    product = lr * g
    if not (_above(product, high) or _below(product, low)):
        return []
    up = _above(product, high)
    return [_note(
        "learning_rate_and_gain", ("learning_rate", "lora_alpha"), "warning",
        f"Learning rate and adapter gain together are {'too large' if up else 'too small'}",
        f"What reaches the weights is the learning rate times the adapter's gain: {_fmt(lr)} x {_fmt(g)} = "
        f"{_fmt(product)}, beyond what an order of magnitude off the recommended {LORA_LEARNING_RATE:g} at its gain of "
        f"1-2 allows ({_fmt(low)}-{_fmt(high)}). The guidance's quick check reads the two together: a run that "
        f"{'destabilises at once has alpha or the learning rate too high' if up else 'does not move has alpha or the learning rate too low'}"
        ". Bring the learning rate back to the recommended default first.",
        ("lora_alpha", "too_high" if up else "too_low"), {"learning_rate": LORA_LEARNING_RATE},
        {"learning_rate": lr, "gain": g, "lora_alpha": c["lora_alpha"], "r": c["r"],
         "use_rslora": bool(c.get("use_rslora")), "update_scale": product, "band": [low, high]},
        combines_with=("r",))]


def _dropout(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    m = measure(c, "lora_dropout")
    if m is None or not far_outside(c, "lora_dropout", "up"):
        return []
    return [_note(
        "lora_dropout_high", ("lora_dropout",), "warning", f"lora_dropout {m.value:g} is above the recommended 0-0.1",
        f"The guidance moves dropout in notches of 0.0, 0.03, 0.05 and 0.1, and goes to 0.1 only when a run overfits. "
        f"At {m.value:g} the adapter is bypassed so often it cannot settle on what to learn: training loss falls "
        f"slowly or plateaus and outputs stay base-like. The guidance starts at {DROPOUT_DEFAULT:g}.",
        ("lora_dropout", "too_high"), {"lora_dropout": DROPOUT_DEFAULT},
        {**m.used, "seed_range": list(DROPOUT_RANGE)})]


def _weight_decay(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    m = measure(c, "weight_decay")
    if m is None:
        return []
    wd, lr = m.value, _num(c, "learning_rate")
    if far_outside(c, "weight_decay", "up"):
        hot = lr is not None and _above(lr, LORA_LEARNING_RATE)
        combo = (f" At a learning rate of {_fmt(lr)}, above the recommended {LORA_LEARNING_RATE:g}, the pull is "
                 "stronger still: AdamW's decay per step scales with learning rate x weight_decay." if hot else "")
        return [_note(
            "weight_decay_high", ("weight_decay",), "warning",
            f"weight_decay {wd:g} is above the recommended 0-0.1",
            "Decay pulls the adapter's weights back towards zero on every step. The guidance uses 0.03-0.1 only for "
            "very "
            f"little data; at {wd:g} the adapter stays tiny: both train and eval loss stay poor and outputs look like "
            f"the base model. The guidance starts at {WEIGHT_DECAY_DEFAULT:g}.{combo}",
            ("weight_decay", "too_high"), {"weight_decay": WEIGHT_DECAY_DEFAULT},
            {**m.used, **({"learning_rate": lr} if hot else {}), "seed_range": list(WEIGHT_DECAY_RANGE)},
            combines_with=("learning_rate",) if hot else ())]
    if lr is None or not _above(lr * wd, DECAY_PRESSURE_MAX):
        return []
    matched = _sig(WEIGHT_DECAY_DEFAULT * LORA_LEARNING_RATE / lr)
    return [_note(
        "weight_decay_heavy_for_learning_rate", ("weight_decay",), "warning",
        f"weight_decay {wd:g} is heavy at learning rate {_fmt(lr)}",
        f"AdamW's decay per step is roughly learning rate x weight_decay: {_fmt(lr)} x {wd:g} = {_fmt(lr * wd)}, more "
        f"than the heaviest recommended decay (0.1) gives at its {LORA_LEARNING_RATE:g} "
        f"({_fmt(DECAY_PRESSURE_MAX)}). The "
        f"guidance says to revisit weight_decay whenever the learning rate changes by a large factor; weight_decay "
        f"{matched:g} keeps the pull of its default ({WEIGHT_DECAY_DEFAULT:g} at {LORA_LEARNING_RATE:g}); so does "
        f"bringing the learning rate back to {LORA_LEARNING_RATE:g}.",
        ("weight_decay", "too_high"), {"weight_decay": matched},
        {"weight_decay": wd, "learning_rate": lr, "decay_per_step": lr * wd, "seed_max": DECAY_PRESSURE_MAX},
        combines_with=("learning_rate",))]


def _warmup(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    total = f.total
    m = measure(c, "warmup_steps", total=total) if total else None
    if m is None:
        return []
    warm, warmup = m.used["warmup_optimizer_steps"], c["warmup_steps"]
    short = total < SHORT_WARMUP_RUN
    # The seed's warmup for this length: 3% as a ratio, or its integer floor on a short run (never more than the
    # run allows, so the fix never raises the note it fixes).
    seed_fix = (min(derived.warmup_steps_recommended(total), int(warmup_allowed(total))) if short
                else WARMUP_RATIO_DEFAULT)
    if far_outside(c, "warmup_steps", "up", total=total):
        accum = int(_num(c, "gradient_accumulation_steps") or 1)
        in_steps = isinstance(warmup, int) and accum > 1
        combo = ""
        if in_steps:
            micro = int(_num(c, "per_device_train_batch_size") or 1)
            combo = (f" Warmup counts optimizer steps, not micro-batches: with gradient_accumulation_steps {accum}, "
                     f"{warm} warmup steps are {warm * accum:,} micro-batches ({warm * accum * micro * f.devices:,} "
                     "examples); a ratio (warmup_steps < 1) keeps the same share when accumulation changes.")
        most = warm > MOST_OF_RUN * total
        return [_note(
            "warmup_too_long", ("warmup_steps",), "warning",
            "Warmup is most of the run" if most else f"Warmup is {warm / total:.0%} of the run",
            f"{warm} of the run's {total} optimizer steps ramp the learning rate up. The guidance warms up for 3% "
            "(up to "
            f"10% with large batches or high learning rates; a floor of 10-25 steps on runs under 500): a longer "
            f"warmup spends the run in first gear, and a short run underfits.{combo}",
            ("warmup_steps", "too_high"), {"warmup_steps": seed_fix},
            {**m.used, "allowed_steps": warmup_allowed(total)},
            combines_with=("gradient_accumulation_steps",) if in_steps else ())]
    if short and warm < WARMUP_FLOOR[0] <= MOST_OF_RUN * total:
        return [_note(
            "warmup_below_short_run_floor", ("warmup_steps",), "info",
            f"Warmup of {warm} step{'s' if warm != 1 else ''} on a {total}-step run",
            f"On runs under {SHORT_WARMUP_RUN} optimizer steps the guidance uses a floor of {WARMUP_FLOOR[0]}-"
            f"{WARMUP_FLOOR[1]} warmup steps, because 3% is only a step or two: the first updates then hit at full "
            "learning rate, and loss or gradient-norm spikes follow.",
            ("warmup_steps", "too_low"), {"warmup_steps": seed_fix}, {**m.used, "seed_floor": list(WARMUP_FLOOR)})]
    return []


def _scheduler(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    kind, total, lr = c.get("lr_scheduler_type"), f.total, _num(c, "learning_rate")
    if not total or total >= SHORT_RUN_STEPS or lr is None:
        return []
    kwargs = c.get("lr_scheduler_kwargs") or {}
    if kind == "cosine_with_min_lr":
        floor = kwargs.get("min_lr_rate", (kwargs.get("min_lr") or 0) / lr)
        if not _below(floor, MIN_LR_RATE_MIN):
            return []
        fix = {"lr_scheduler_kwargs": {**{k: v for k, v in kwargs.items() if k != "min_lr"}, "min_lr_rate": 0.1}}
        what = f"cosine_with_min_lr with a floor of {floor:.2g} of the peak"
    elif kind in DECAY_TO_ZERO:
        floor = (kwargs.get("lr_end", 1e-7) / lr) if kind == "polynomial" else 0.0
        if kind == "polynomial" and not _below(floor, MIN_LR_RATE_MIN):
            return []
        fix = {"lr_scheduler_type": "linear", "lr_scheduler_kwargs": {}}
        what = f"{kind} (it ends at {'lr_end' if kind == 'polynomial' else '0'})"
    else:
        return []
    return [_note(
        "scheduler_decays_to_zero_short_run", ("lr_scheduler_type",), "warning",
        f"{kind} decays to near zero in a {total}-step run",
        f"This run has {total} optimizer steps, short by the guidance's measure (up to ~1-2k). For short runs the "
        "guidance "
        f"prefers linear or constant_with_warmup and says to avoid schedules that decay to near zero, like {what}: "
        "they run out of learning rate and the loss flattens with steps still to go. If you keep a cosine, give it "
        "a floor (cosine_with_min_lr, min_lr_rate 0.05-0.1).",
        ("lr_scheduler_type", "decays_too_fast"), fix,
        {"lr_scheduler_type": kind, "lr_scheduler_kwargs": dict(kwargs), "total_steps": total,
         "floor_share": floor, "short_run_steps": SHORT_RUN_STEPS})]


def _loftq(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    loftq = c.get("loftq_config")
    if not loftq:
        return []
    bits, iters = loftq.get("loftq_bits", LOFTQ_BITS), loftq.get("loftq_iter", 4)
    notes = [_note(
        "loftq_in_full_precision", ("loftq_config",), "info", "LoftQ loads the model in full precision",
        f"LoftQ is about quantisation error: it quantises the base weights to {bits} bits itself and starts the "
        "adapter so that quantised weights plus adapter match the originals. Tuneboard runs it on a full-precision "
        "load (PEFT's LoftQ at adapter creation; the engine refuses it with load_in_4bit), so the run needs the "
        "memory of a 16-bit LoRA, not a QLoRA's. The guidance uses LoftQ for quantised fine-tuning and skips it for a "
        "plain full-precision one; if memory is what you are after, load_in_4bit without LoftQ is the QLoRA "
        "baseline.",
        ("loftq_config", "detailed_configuration"), {"loftq_config": None},
        {"loftq_config": dict(loftq), "load_in_4bit": bool(c.get("load_in_4bit"))},
        combines_with=("load_in_4bit",))]
    if bits != LOFTQ_BITS:
        notes.append(_note(
            "loftq_bits_unusual", ("loftq_config",), "info", f"LoftQ calibrates at {bits} bits",
            ("Calibrating at 8 bits leaves little quantisation error for LoftQ to cancel: you pay its start-up time "
             "for little gain over a normal start." if bits > LOFTQ_BITS else
             "Calibrating at 2 bits crushes the weights harder than the adapter can repair: the loss starts higher and "
             "the model is brittler.") + f" The guidance stays at {LOFTQ_BITS} bits.",
            ("loftq_config", "bits_too_high" if bits > LOFTQ_BITS else "bits_too_low"),
            {"loftq_config": {"loftq_bits": LOFTQ_BITS, "loftq_iter": iters}}, {"loftq_bits": bits}))
    targets = c.get("target_modules")
    every = f.linear_layers or ALL_LINEAR  # the model's own layers where known (Phi-3's fused ones), else Llama's
    names = set(targets) if isinstance(targets, list) else (every if targets == "all-linear" else set())
    if targets is not None and not every <= names:
        notes.append(_note(
            "loftq_few_targets", ("loftq_config",), "info", "LoftQ corrects only the layers with an adapter",
            f"target_modules is {targets!r}: LoftQ can repair the quantisation error of adapted layers only, so the "
            "guidance puts LoRA on as many linear layers as it can (all-linear) when using LoftQ.",
            ("loftq_config", "detailed_configuration"), {"target_modules": "all-linear"},
            {"target_modules": targets}))
    return notes


def _packing(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    max_length = _num(c, "max_length")
    if not max_length or "packing" not in c:
        return []
    if c["packing"]:
        typical, which = (f.p50, "median") if f.p50 is not None else (f.p95, "95th percentile")
        if typical is None or not _above(typical, PACKING_LONG * max_length):
            return []
        return [_note(
            "packing_long_examples", ("packing",), "info", "Packing gains little with examples this long",
            f"The examples' {which} is {typical:,.0f} tokens, over half of max_length ({max_length:,.0f}). Packing pays "
            "when examples are mostly short (under 25-50% of max_length); near max_length there is little padding to "
            "save, every row now fills max_length (more memory), and examples bleed into one another. The "
            "guidance turns packing off here.",
            ("packing", "should_be_off"), {"packing": False},
            {"packing": True, "max_length": max_length, f"{'p50' if which == 'median' else 'p95'}_tokens": typical,
             "share_of_max_length": typical / max_length})]
    if f.p95 is None or not _below(f.p95, PACKING_SHORT * max_length):
        return []
    return [_note(
        "packing_short_examples", ("packing",), "info", "Short examples: packing would cut the padding",
        f"95% of the examples are under {f.p95:,.0f} tokens, less than a quarter of max_length ({max_length:,.0f}): "
        "each batch pads to its longest example, so most token slots are padding. The guidance turns packing on for "
        "mostly short examples.",
        ("packing", "should_be_on"), {"packing": True},
        {"packing": False, "max_length": max_length, "p95_tokens": f.p95, "share_of_max_length": f.p95 / max_length})]


def _effective_batch(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    m = measure(c, "gradient_accumulation_steps", devices=f.devices)
    if m is None:
        return []
    small = far_outside(c, "gradient_accumulation_steps", "down", devices=f.devices)
    if not small and not far_outside(c, "gradient_accumulation_steps", "up", devices=f.devices):
        return []
    micro, eb = int(c["per_device_train_batch_size"]), int(m.value)
    per_step = micro * f.devices
    fix: dict[str, Any] = {"gradient_accumulation_steps": derived.grad_accum_for_target(EFFECTIVE_BATCH_DEFAULT, micro,
                                                                                        f.devices)}
    if per_step > EFFECTIVE_BATCH_TARGET[1] * EFFECTIVE_BATCH_FAR:
        fix["per_device_train_batch_size"] = max(1, EFFECTIVE_BATCH_DEFAULT // f.devices)
    effect = ("few sequences per update make noisy gradients: a spiky loss, a wandering grad norm, divergence at "
              "higher learning rates" if small else
              "updates this rare make a run sluggish and, with max_steps fixed, under-trained")
    return [_note(
        "effective_batch_off", ("gradient_accumulation_steps",), "warning",
        f"Effective batch {eb} is far {'below' if small else 'above'} the recommended 16-64",
        f"per_device_train_batch_size {micro} x gradient_accumulation_steps {c['gradient_accumulation_steps']}"
        f"{f' x {f.devices} devices' if f.devices > 1 else ''} = {eb} sequence{'s' if eb != 1 else ''} per optimizer "
        f"update. The guidance aims for 16-64 per update (about 16 to start: accumulation = ceil(16 / (micro-batch x devices))); {effect}.",
        ("gradient_accumulation_steps", "too_low" if small else "too_high"), fix,
        {**m.used, "seed_target": list(EFFECTIVE_BATCH_TARGET), "far_factor": EFFECTIVE_BATCH_FAR})]


def _bias(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    bias = c.get("bias")
    if bias in (None, "none"):
        return []
    if f.has_bias_params is False:
        return [_note(
            "bias_without_bias_params", ("bias",), "warning", f"bias {bias!r} on a model without bias parameters",
            f"This model's layers have no bias vectors, so bias={bias!r} trains nothing more than 'none': a run that "
            "varies it compares identical runs. The guidance keeps bias 'none'.",
            ("bias", "no_effect"), {"bias": "none"}, {"bias": bias, "has_bias_params": False})]
    if bias == "all":
        return [_note(
            "bias_all", ("bias",), "info", "bias 'all' trains every bias in the model",
            "The guidance keeps bias 'none' (faster, less memory, rarely better) and, when a run underfits after r, "
            "alpha "
            "and the learning rate are sane, tries 'lora_only' before 'all'. With 'all' even turning the adapter off "
            "no longer gives the base model back, and the extra knobs overfit small datasets quickly.",
            ("bias", "too_permissive"), {"bias": "lora_only"},
            {"bias": bias, **({"has_bias_params": True} if f.has_bias_params else {})})]
    return []


def _rank(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    m = measure(c, "r", rows=f.rows)
    if m is None:
        return []
    r = int(m.value)
    notes = []
    high = far_outside(c, "r", "up", rows=f.rows)
    if high or far_outside(c, "r", "down", rows=f.rows):
        edge = int(m.high if high else m.low)
        alpha = _num(c, "lora_alpha")
        fix: dict[str, Any] = {"r": edge}
        if alpha is not None:  # the guidance keeps alpha/r constant when it changes the rank
            fix["lora_alpha"] = max(1, round(alpha / r * edge))
        size = (f"for {f.rows:,} examples the guidance gives r {int(m.low)}-{int(m.high)}" if f.rows is not None else
                f"the recommended ranks run from {int(m.low)} (a few hundred examples) to {int(m.high)} (200k+, with "
                "evidence)")
        effect = ("a rank this high for the data memorises phrasing and overfits" if high else
                  "a rank this low can run out of capacity: the loss plateaus early")
        notes.append(_note(
            "rank_for_dataset", ("r",), "info", f"r {r} is {'above' if high else 'below'} the recommended range",
            f"r is {r}; {size}: {effect}. Widening target_modules often beats a higher rank.",
            ("r", "too_high" if high else "too_low"), fix, {**m.used, "seed_range": [int(m.low), int(m.high)]},
            combines_with=("lora_alpha",) if alpha is not None else ()))
    if not c.get("use_rslora") and r >= HIGH_RANK and _num(c, "lora_alpha") is not None:
        alpha = derived.alpha_when_switching_rslora(c["lora_alpha"], r, to_rslora=True)
        notes.append(_note(
            "high_rank_without_rslora", ("use_rslora",), "info", f"r {r} with standard scaling",
            f"Standard LoRA scales the adapter by alpha/r, which at high ranks (64-256 in the guidance) makes each "
            "direction so quiet that the loss falls very slowly and the high rank looks no better than 8-16. The "
            "recommended default is rsLoRA (alpha/sqrt(r)); to keep today's gain, switch it on with lora_alpha "
            f"{alpha}.",
            ("use_rslora", "should_be_on"), {"use_rslora": True, "lora_alpha": alpha},
            {"r": r, "lora_alpha": c["lora_alpha"], "use_rslora": False, "matched_alpha": alpha},
            combines_with=("r", "lora_alpha")))
    return notes


def _targets(c: Mapping[str, Any], f: _Facts) -> list[Note]:
    if not f.unknown_targets:
        return []
    return [_note(
        "target_modules_unknown", ("target_modules",), "warning", "target_modules names layers this model lacks",
        f"{', '.join(f.unknown_targets)}: no linear layer of this model has that name, and the run would fail at "
        f"start. Its linear layers: {', '.join(sorted(f.linear_layers))}. 'all-linear' adapts every one of them, "
        "fused ones included.",
        ("r", "two_things_that_matter_more_than_the_row_count"), {"target_modules": "all-linear"},
        {"target_modules": c.get("target_modules"), "unknown": list(f.unknown_targets)})]


RULES = (_learning_rate, _lora_scale, _update_size, _dropout, _weight_decay, _warmup, _scheduler, _effective_batch,
         _rank, _bias, _loftq, _packing, _targets)
SEVERITY_ORDER = {"warning": 0, "info": 1}


def review(config: Mapping[str, Any], *, model_facts: Mapping[str, Any] | None = None,
           dataset_facts: Mapping[str, Any] | None = None, devices: int | None = None) -> list[Note]:
    """The notes for a config (as `parse_config(...).model_dump(mode="json")` gives it), warnings first.

    model_facts: {"has_bias_params": bool, "num_params": int, "linear_layers": [names], "unknown_targets":
    [names]}; dataset_facts: {"rows": int, "p50_tokens",
    "p95_tokens", "max_tokens": int}; both optional, and a rule that needs a fact it lacks says nothing."""
    model_facts, dataset_facts = model_facts or {}, dataset_facts or {}
    devices = devices or devices_of(config)
    rows = dataset_facts.get("rows")
    rows = int(rows) if isinstance(rows, (int, float)) and not isinstance(rows, bool) and rows >= 0 else None
    has_bias = model_facts.get("has_bias_params")
    facts = _Facts(rows=rows, p50=_num(dataset_facts, "p50_tokens"), p95=_num(dataset_facts, "p95_tokens"),
                   has_bias_params=has_bias if isinstance(has_bias, bool) else None, devices=max(1, int(devices)),
                   total=total_steps(config, rows, max(1, int(devices))),
                   linear_layers=frozenset(model_facts.get("linear_layers") or ()),
                   unknown_targets=tuple(model_facts.get("unknown_targets") or ()))
    notes = [note for rule in RULES for note in rule(config, facts)]
    return sorted(notes, key=lambda n: SEVERITY_ORDER[n.severity])
