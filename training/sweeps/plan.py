"""Sweep planning: the seed's tuning procedures as templates, expanded into the runs of one phase. Pure: no Django.

A template is data: its phases, each naming the field it sweeps, the values (the seed's, or the user's), what a
member changes for a value, the rule that judges the phase (training/sweeps/rules.py) and which phase follows the
winner. `expand` turns a template phase and a base config into a `Phase`: members that differ from the base only in
the swept values (and, where the procedure says so, the step count that keeps the token budget equal), all at one
seed, data order and budget, each checked by the engine's own `parse_config`. `advance` expands the next phase with
the winner as its base. The Django side stores and queues what these return (STYLE.md, "Planning is a pure
function").

Every number below is the seed's (../shared/seed/lora-sft-guidance.md, the parameter's "Tuning Process" unless the
comment names another section) unless its comment says "ours".
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from guidance import preflight
from training.engine import derived
from training.engine.config import ConfigError, TrainConfig, parse_config

# ---- the seed's numbers -----------------------------------------------------------------------------------------

TOLERANCE = 0.01  # ours, as the issue sets it: "within a tolerance (default 1%) of the best"
RANKS = (8, 16, 32)  # r: "sweep 3 ranks ... low / mid / high (e.g., 8, 16, 32)"
GAIN_STEPS = (0.5, 0.75, 1.0, 1.5, 2.0)  # use_rslora Step 3: "g in {0.5, 0.75, 1.0, 1.5, 2.0} x g_target"
RSLORA_RANKS = (8, 16, 32, 64)  # use_rslora Step 2: "r in {8, 16, 32, 64}"
DROPOUT_DURING_RANKS = preflight.DROPOUT_DEFAULT  # lora_dropout: "Fix: dropout = 0.05"
DROPOUT_OVERFIT = 0.1  # lora_dropout: "If the winner overfits: rerun winner rank with dropout = 0.1"
DROPOUT_UNDERFIT = (0.0, 0.03)  # lora_dropout: "If all underfit: rerun best rank with dropout = 0.0-0.03"
BIASES = ("none", "lora_only", "all")  # bias: "Run the 3-point sweep"
LOFTQ_BASELINES = (None, (4, 1), (4, 4))  # loftq_config Step 1: standard init, (bits=4, iter=1), (bits=4, iter=4)
LOFTQ_ITERS = (1, 2, 4, 5, 8)  # loftq_config Step 2: "loftq_iter in {1, 2, 4, 5, 8}"
LOFTQ_LAMBDA = 1e-4  # ours: loftq_config Step 4's λ, eval loss per second of init (100 s of init weighs 0.01)
PACKING = (False, True)  # packing: "Baseline A/B"
GRAD_ACCUM = (1, 2, 4, 8, 16, 32)  # gradient_accumulation_steps Phase 1: "{1, 2, 4, 8, 16, 32}"
WARMUP_RATIOS = (0.0, 0.01, 0.03, 0.06, 0.10)  # warmup_steps Step 1: "Ratios: {0.00, 0.01, 0.03, 0.06, 0.10}"
WARMUP_STEPS = (0, 10, 25, 50, 100)  # warmup_steps Step 1: "Or steps (short runs): {0, 10, 25, 50, 100}"
SHORT_RUN = preflight.SHORT_WARMUP_RUN  # warmup_steps, Simple default: "very short runs (< ~500 optimizer steps)"
WARMUP_RATIO_REFINE = 0.01  # warmup_steps Step 2: "if 0.03 wins, test {0.02, 0.03, 0.04}"
WARMUP_STEPS_REFINE = 10  # warmup_steps Step 2: "(or ±10-20 steps)"
LR_COARSE = (5e-5, 1e-4, 2e-4, 4e-4, 8e-4)  # learning_rate 2: "Example (LoRA): {5e-5, 1e-4, 2e-4, 4e-4, 8e-4}"
LR_REFINE = (0.5, 0.75, 1.0, 1.25, 1.5)  # learning_rate 4: "If best was 2e-4 -> try {1e-4, 1.5e-4, ..., 3e-4}"
LR_BOUND_FRACTION = (0.1, 0.3)  # learning_rate 1: "take ~10-30% of that as an upper bound"
# Ours: the range test ramps to 1e-2 over 100 steps. A blow-up above 8e-3 would put even 10% of it above the top of
# the coarse grid (8e-4), so a ramp that ends at 1e-2 without a blow-up leaves the grid unclipped, as it should.
LR_RANGE_END, LR_RANGE_STEPS = 1e-2, 100
LR_RANGE_START = 1e-7  # ours: five decades below the coarse grid's smallest rate
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch")  # optim Phase 1: the speed baseline and the stability fallback
OPTIMIZER_MEMORY_BOUND = "paged_adamw_8bit"  # optim Phase 1: "If memory-limited: paged_adamw_8bit"
OPTIM_LR_FACTORS = (0.5, 1.0, 2.0)  # optim Phase 3: "a small LR sweep (e.g., x0.5, x1, x2)"
WEIGHT_DECAYS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # weight_decay Phase 1
# weight_decay Phase 2: "0.005, 0.01, 0.02" around 0.01 and "0.02, 0.03, 0.05" around 0.03 are the neighbours in
# the 1-2-3-5 series; an optimum at 0 refines towards the smallest coarse step (ours).
DECAY_SERIES = (1, 2, 3, 5)
SCHEDULES = ("linear", "cosine", "cosine_with_min_lr", "warmup_stable_decay")  # lr_scheduler_type 3
MIN_LR_RATE_COARSE = 0.05  # lr_scheduler_type 3: "cosine_with_min_lr (e.g., min_lr_rate=0.05)"
WSD_DECAY_COARSE = 0.4  # lr_scheduler_type 3: "decay 30-50% of run" (its middle)
WSD_MIN_LR_COARSE = 0.05  # lr_scheduler_type 3: "min_lr_ratio=0.05"
COSINE_CYCLES = (0.5, 1.0)  # lr_scheduler_type 4: "num_cycles in {0.5, 1.0}"
MIN_LR_RATES = (0.02, 0.05, 0.1, 0.2)  # lr_scheduler_type 4: "min_lr_rate in {0.02, 0.05, 0.1, 0.2}"
WSD_DECAY_FRACTIONS = (0.2, 0.4, 0.6)  # lr_scheduler_type 4: "num_decay_steps / total_steps in {0.2, 0.4, 0.6}"
WSD_MIN_LR_RATIOS = (0.0, 0.02, 0.05, 0.1)  # lr_scheduler_type 4: "min_lr_ratio in {0.0, 0.02, 0.05, 0.1}"

# What every member shares with the base, whatever the template: "same split, same seed, same steps" (r).
COMMON_HELD = ("model", "train_file", "eval_file", "eval_split", "seed", "random_state", "max_length")
# Step-counted fields, rescaled with the step budget where a procedure keeps tokens equal (gradient_accumulation_
# steps, Detailed Configuration 4: "divide these step-based intervals by K").
STEP_FIELDS = ("warmup_steps", "eval_steps", "save_steps", "logging_steps")


# ---- what a plan is -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One run of a phase: its full config and the values it sets, which are all it changes from the base (besides
    `budget_changes`, the step counts that keep the phase's token budget equal)."""

    name: str
    value: Any  # the swept value, as the rule orders members by it
    values: dict[str, Any]  # the fields it sets for that value
    config: dict[str, Any]
    steps: int
    tokens: int | None = None  # tokens it trains on, where the phase's budget is in tokens
    budget_changes: dict[str, Any] = field(default_factory=dict)
    reuse: bool = False  # its config is the base's own: the base run's result can stand in for it


@dataclass(frozen=True)
class Phase:
    template: str
    key: str
    title: str
    axis: str  # the field the rule orders members by
    members: tuple[Member, ...]
    held: dict[str, Any]  # what every member keeps from the base, by field (and the procedure's own holds)
    budget: dict[str, Any]  # {"max_steps": n} or {"tokens": n}: equal for every member
    rule: str  # a rule of training/sweeps/rules.py
    rule_params: dict[str, Any]
    params: dict[str, Any]  # what it was expanded with, carried to the next phase
    base: dict[str, Any] = field(default_factory=dict)  # the base config, with the phase's step budget

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no member {name!r} in phase {self.key}")


class Decided(Protocol):  # what `advance` needs of a rules.Verdict
    winner: str | None
    details: Mapping[str, Any]


@dataclass(frozen=True)
class PhaseSpec:
    key: str
    title: str
    axis: str
    values: Callable[[TrainConfig, dict], Sequence[Any]]  # the seed's values for this base (params["values"] wins)
    member: Callable[[TrainConfig, Any, dict], dict[str, Any]]  # a value -> the fields the member sets
    rule: str
    rule_params: Callable[[TrainConfig, dict], dict] = lambda base, p: {}
    holds: Callable[[TrainConfig, dict], dict] = lambda base, p: {}
    needs_eval: bool = True
    name: Callable[[Any], str] | None = None
    # The winner's member and the verdict's details -> (next phase key, params it adds), or None: the chain ends.
    then: Callable[[Member, Mapping, dict], tuple[str, dict] | None] = lambda winner, details, p: None
    # Budget per member: (base, changes, params, base steps) -> (steps, tokens, step-field changes).
    budget: Callable[..., tuple[int, int | None, dict]] | None = None
    # Params the phase settles from its base and carries down the chain (e.g. the gain held across phases).
    resolve: Callable[[TrainConfig, dict], dict] = lambda base, p: {}
    # False where the winner is a probe, not a config to build on (the range test): the next phase starts from this
    # phase's base.
    winner_is_base: bool = True


@dataclass(frozen=True)
class Template:
    parameter: str
    title: str
    phases: tuple[PhaseSpec, ...]

    def phase(self, key: str | None) -> PhaseSpec:
        if key is None:
            return self.phases[0]
        for spec in self.phases:
            if spec.key == key:
                return spec
        raise ConfigError({"phase": f"{self.parameter} has no phase {key!r}; allowed: "
                                    f"{', '.join(s.key for s in self.phases)}"})


# ---- expansion ----------------------------------------------------------------------------------------------------

def expand(template: Template, base_config: Mapping[str, Any], *, params: Mapping[str, Any] | None = None,
           phase: str | None = None) -> Phase:
    """The members of one phase of `template` over `base_config`; ConfigError naming the field when the base, a
    value or a member config is one the engine refuses, or the value list is empty. Nothing is created here."""
    p = dict(params or {})
    spec = template.phase(phase)
    base = parse_config(dict(base_config))
    p = {**spec.resolve(base, p), **p}
    steps = _base_steps(base, p)
    if spec.needs_eval and not base.has_eval:
        raise ConfigError({"eval_steps": f"the {template.parameter} sweep judges members on eval loss; give "
                                         "eval_file or eval_split, and eval_steps"})
    values = _values(spec, base, p)
    base_dict = {**base.model_dump(), "max_steps": steps}
    members, seen = [], set()
    for value in values:
        changes = spec.member(base, value, p)
        name = spec.name(value) if spec.name else f"{spec.axis}={_fmt(value)}"
        if name in seen:
            continue
        seen.add(name)
        m_steps, tokens, budget_changes = (spec.budget or _same_steps)(base, changes, p, steps)
        config = {**base_dict, **changes, **budget_changes, "max_steps": m_steps}
        try:
            parse_config(config)
        except ConfigError as exc:
            raise ConfigError({f: f"{name}: {msg}" for f, msg in exc.errors.items()}) from None
        budget_changes = {k: v for k, v in {**budget_changes, "max_steps": m_steps}.items() if base_dict.get(k) != v}
        members.append(Member(name=name, value=value, values=changes, config=config, steps=m_steps, tokens=tokens,
                              budget_changes=budget_changes, reuse=config == base_dict))
    held = {k: base_dict[k] for k in COMMON_HELD if base_dict.get(k) is not None}
    if all(m.tokens is not None for m in members):  # a token budget: the base's own where it is a member
        budget = {"tokens": next((m.tokens for m in members if m.reuse), max(m.tokens for m in members))}
    else:
        budget = {"max_steps": members[0].steps}  # every member has the same steps here
        held["max_steps"] = members[0].steps
    held.update(spec.holds(base, p))
    return Phase(template=template.parameter, key=spec.key, title=spec.title, axis=spec.axis, members=tuple(members),
                 held=held, budget=budget, rule=spec.rule, rule_params=spec.rule_params(base, p), params=p,
                 base=base_dict)


def advance(template: Template, phase: Phase, verdict: Decided, *,
            params: Mapping[str, Any] | None = None) -> Phase | None:
    """The next phase of the chain with the winner's config as its base, or None where the procedure ends there."""
    if verdict.winner is None:
        raise ValueError(f"phase {phase.key} is undecided; the chain waits for its verdict")
    winner = phase.member(verdict.winner)
    carried = {k: v for k, v in phase.params.items() if k != "values"}
    step = template.phase(phase.key).then(winner, verdict.details, carried)
    if step is None:
        return None
    key, added = step
    next_base = winner.config if template.phase(phase.key).winner_is_base else phase.base
    return expand(template, next_base, params={**carried, **added, **(params or {})}, phase=key)


def confirmation(phase: Phase, verdict: Decided, results: Mapping[str, Mapping[str, Any]], *, top: int,
                 seed_offset: int = 1, metric: str = "final_eval_loss") -> Phase | None:
    """The confirmation phase (ours): the winner of `phase` and the next best by eval loss, `top` in all, rerun at a
    second seed (`seed` and `random_state` + seed_offset: data order and adapter init both change). None where the
    phase has no candidate besides a probe, or top < 1."""
    if verdict.winner is None:
        raise ValueError(f"phase {phase.key} is undecided; nothing to confirm yet")
    if top < 1 or phase.rule in ("lr_range", "confirm"):
        return None
    excluded = set(getattr(verdict, "invalid", ())) | set(getattr(verdict, "diverged", ()))
    scored = [m for m in phase.members if m.name != verdict.winner and m.name not in excluded
              and (results.get(m.name) or {}).get("status") == "succeeded"
              and (results.get(m.name) or {}).get(metric) is not None]
    scored.sort(key=lambda m: results[m.name][metric])
    picked = [phase.member(verdict.winner), *scored][:top]
    first = {m.name: (results.get(m.name) or {}).get(metric) for m in picked}
    if any(v is None for v in first.values()):
        return None
    members, origin = [], {}
    for m in picked:
        seed = int(m.config.get("seed", 0)) + seed_offset
        changes = {"seed": seed, "random_state": int(m.config.get("random_state", m.config.get("seed", 0))) + seed_offset}
        config = {**m.config, **changes}
        parse_config(config)
        name = f"{m.name} (seed {seed})"
        origin[name] = m.name
        members.append(replace(m, name=name, values={**m.values, **changes}, config=config, reuse=False))
    held = {k: v for k, v in phase.held.items() if k not in ("seed", "random_state")}
    return Phase(template=phase.template, key="confirm", title="Confirmation at a second seed", axis=phase.axis,
                 members=tuple(members), held=held, budget=phase.budget, rule="confirm",
                 rule_params={"first": first, "origin": origin,
                              **({"metric": metric} if metric != "final_eval_loss" else {})},
                 params=dict(phase.params), base=phase.base)


# ---- a winner at the edge of its range ------------------------------------------------------------------------------

# Ours: where a winner at the edge of the values swept is worth saying so. smallest_within_tolerance (and dropout_fit,
# its rank sweep) aims at the smallest value, so only its top edge says anything: the largest value was still clearly
# the best. The range test, the confirmation and the A/B rules have no range to speak of.
EDGE_SIDES = {"lowest_eval": ("bottom", "top"), "loftq_score": ("bottom", "top"),
              "smallest_within_tolerance": ("top",), "dropout_fit": ("top",)}
# Axes swept on a log scale: the next values go on by the outermost ratio; the others by the outermost step.
GEOMETRIC = frozenset({"r", "gain", "learning_rate", "weight_decay", "gradient_accumulation_steps", "loftq_iter"})
RANK_DIMINISHING = 64  # r: "Beyond 64, returns diminish fast"; "r = 64-128 only if you have evidence"
RANK_CEILING = 128
BEYOND_COUNT = 2  # ours: two more values past the edge, the edge itself rerun beside them as the reference


@dataclass(frozen=True)
class Beyond:
    """The winner sits at an edge of the values its phase swept: the best may lie past it. `values` is what a
    follow-up sweep of the same phase should try, the edge first (rerun at the same budget, as the reference);
    empty where nothing valid lies past the edge (then `text` says why)."""

    side: str  # "top" or "bottom"
    edge: Any
    values: tuple[Any, ...]
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"side": self.side, "edge": self.edge, "values": list(self.values), "text": self.text}


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _past(axis: str, swept: Sequence[float], side: str) -> list[float]:
    """BEYOND_COUNT values past `side` of `swept` (sorted), spaced as the sweep's outermost pair."""
    edge, inner = (swept[-1], swept[-2]) if side == "top" else (swept[0], swept[1])
    whole = all(isinstance(v, int) for v in swept)  # ranks, step counts: whole numbers go on as whole numbers
    out = []
    for i in range(1, BEYOND_COUNT + 1):
        if axis in GEOMETRIC:
            if edge <= 0 or inner <= 0:
                break
            v = edge * (edge / inner) ** i
        else:
            v = edge + i * (edge - inner)
        v = round(v) if whole else _sig(v)
        if v < 0 or v in out or v == edge:
            break
        out.append(v)
    return out


def beyond(template: Template, phase_key: str, *, rule: str, axis: str, swept: Sequence[Any], winner_value: Any,
           winner_config: Mapping[str, Any], params: Mapping[str, Any]) -> Beyond | None:
    """Whether the winner of a decided phase sits at an edge of the values it swept, and the values past that edge
    that the engine takes, each checked by expanding the same phase over the winner's config (the seed's "16 -> 32
    -> 64": r, "then 64 if clearly underfitting"). None where the winner is inside its range, or the phase has no
    numeric range."""
    if rule not in EDGE_SIDES or not _numeric(winner_value) or not all(_numeric(v) for v in swept):
        return None
    values = sorted(set(swept))
    if len(values) < 2:
        return None
    side = "top" if winner_value == values[-1] else "bottom" if winner_value == values[0] else None
    if side not in EDGE_SIDES[rule]:
        return None
    label = f"{axis} = {_fmt(winner_value)}"
    where = "largest" if side == "top" else "smallest"
    text = (f"{label} won as the {where} value swept ({', '.join(_fmt(v) for v in values)}): the best may lie "
            f"{'above' if side == 'top' else 'below'} it")
    candidates = _past(axis, values, side)
    if not candidates:
        return None  # a floor, not an edge: nothing lies below a weight decay, dropout or warmup of 0
    stop = ""
    if axis == "r":
        if any(v > RANK_DIMINISHING for v in candidates):
            text += (f"; past r = {RANK_DIMINISHING} returns diminish fast: widening target_modules to attention "
                     "and MLP often helps more than a higher rank")
        if any(v > RANK_CEILING for v in candidates):
            candidates = [v for v in candidates if v <= RANK_CEILING]
            stop = f"r = {RANK_CEILING} is as high as the guidance goes without evidence"
    bound = params.get("upper_bound")
    if axis == "learning_rate" and bound is not None and any(v > bound for v in candidates):
        candidates = [v for v in candidates if v <= bound]
        stop = f"the range test's upper bound, {_fmt(bound)}, stops it there"
    carried = {k: v for k, v in params.items() if k != "values"}
    allowed = []
    for v in candidates:
        try:
            expand(template, winner_config, params={**carried, "values": [v]}, phase=phase_key)
        except ConfigError:
            break  # past a value the engine refuses, the next one is further out still
        allowed.append(v)
    if not allowed:
        return Beyond(side, winner_value, (), f"{text}; nothing past it to try: "
                                              f"{stop or 'the engine takes no value past it'}.")
    shown = ", ".join(_fmt(v) for v in allowed)
    beside = "it" if len(allowed) == 1 else "them"
    return Beyond(side, winner_value, (winner_value, *allowed),
                  f"{text}. Next: {shown}, with {label} rerun beside {beside} at the same budget.")


def _values(spec: PhaseSpec, base: TrainConfig, p: dict) -> list[Any]:
    values = list(p["values"]) if p.get("values") is not None else list(spec.values(base, p))
    if not values:
        raise ConfigError({spec.axis: "give at least one value to sweep"})
    return values


def _base_steps(base: TrainConfig, p: dict) -> int:
    if base.max_steps:
        return base.max_steps
    if p.get("rows"):
        return derived.total_steps(int(p["rows"]), base.per_device_train_batch_size,
                                   base.gradient_accumulation_steps, base.num_train_epochs)
    raise ConfigError({"max_steps": "a sweep compares members at one step budget: set max_steps, or give the "
                                    "dataset's row count"})


def _same_steps(base: TrainConfig, changes: dict, p: dict, steps: int) -> tuple[int, None, dict]:
    return steps, None, {}


def _rescaled(base: TrainConfig, factor: float) -> dict[str, Any]:
    """Step-counted intervals at the same share of the tokens when the step count changes by `factor`."""
    out = {}
    for f in STEP_FIELDS:
        v = getattr(base, f)
        if isinstance(v, int) and not isinstance(v, bool) and v:
            out[f] = max(1, round(v * factor))
    return out


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sig(value: float) -> float:
    return float(f"{value:.3g}")


def _gain(base: TrainConfig, p: dict) -> float:
    """k = alpha/r (standard) or g = alpha/sqrt(r) (rsLoRA): the user's, else the base's own (lora_alpha: "Lock
    alpha to rank for the sweep"; use_rslora: "reuse its gain")."""
    if p.get("gain") is not None:
        return float(p["gain"])
    return derived.lora_scale(base.lora_alpha, base.r, base.use_rslora)


def _resolve_gain(base: TrainConfig, p: dict) -> dict:
    return {"gain": _gain(base, p)}


def _rank_member(base: TrainConfig, r: Any, p: dict) -> dict[str, Any]:
    rank = int(r) if isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 1 else r
    if not isinstance(rank, int):
        return {"r": rank}  # parse_config names it
    return {"r": rank, "lora_alpha": derived.gain_matched_alpha(_gain(base, p), rank, base.use_rslora)}


def _ranks(base: TrainConfig, p: dict) -> list[int]:
    """The seed's 8/16/32, or low/mid/high from the dataset-size bucket (r, Detailed Configuration): the powers of
    two in the bucket, padded with one below it and then one above it to three (ours)."""
    if not p.get("rows"):
        return list(RANKS)
    lo, hi = derived.rank_range_for_dataset(int(p["rows"]))
    ranks = [2 ** i for i in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]
    if len(ranks) < 3:
        ranks.insert(0, max(1, lo // 2))
    if len(ranks) < 3:
        ranks.append(hi * 2)
    return ranks


def _rank_holds(base: TrainConfig, p: dict) -> dict[str, Any]:
    scale = "lora_alpha/sqrt(r)" if base.use_rslora else "lora_alpha/r"
    return {scale: _gain(base, p), "lora_dropout": base.lora_dropout, "use_rslora": base.use_rslora}


def _next(key: str, **added: Any) -> Callable[[Member, Mapping, dict], tuple[str, dict]]:
    return lambda winner, details, p: (key, dict(added))


# ---- r, lora_alpha, lora_dropout --------------------------------------------------------------------------------

RANK_PHASE = PhaseSpec(
    "ranks", "Ranks at a constant alpha/r", "r", _ranks, _rank_member, "smallest_within_tolerance",
    rule_params=lambda base, p: {"tolerance": p.get("tolerance", TOLERANCE)}, holds=_rank_holds,
    resolve=_resolve_gain)


def _gain_member(base: TrainConfig, g: Any, p: dict) -> dict[str, Any]:
    return {"lora_alpha": derived.gain_matched_alpha(float(g), base.r, base.use_rslora)}


def _gains(base: TrainConfig, p: dict) -> list[float]:
    return [_sig(m * _gain(base, p)) for m in GAIN_STEPS]


GAIN_PHASE = PhaseSpec(
    "gains", "Gain micro-sweep at the chosen rank", "gain", _gains, _gain_member, "lowest_eval",
    holds=lambda base, p: {"r": base.r, "use_rslora": base.use_rslora, "lora_dropout": base.lora_dropout},
    name=lambda g: f"gain={_fmt(g)}", resolve=_resolve_gain)


def _dropout_then(winner: Member, details: Mapping, p: dict) -> tuple[str, dict] | None:
    fit = details.get("fit")
    return {"overfit": ("overfit", {}), "underfit": ("underfit", {})}.get(fit)


def _dropout_member(base: TrainConfig, d: Any, p: dict) -> dict[str, Any]:
    return {"lora_dropout": d}


def _dropout_holds(base: TrainConfig, p: dict) -> dict[str, Any]:
    return {"r": base.r, "lora_alpha": base.lora_alpha, "use_rslora": base.use_rslora}


TEMPLATES: dict[str, Template] = {}


def _template(parameter: str, title: str, *phases: PhaseSpec) -> None:
    TEMPLATES[parameter] = Template(parameter, title, phases)


_template("r", "Three ranks at a constant alpha/r; the smallest within tolerance of the best", RANK_PHASE)
_template("lora_alpha", "Ranks at a fixed ratio k, then a gain micro-sweep at the chosen rank",
          replace(RANK_PHASE, then=_next("gains")), GAIN_PHASE)
_template(
    "lora_dropout", "Ranks at dropout 0.05; the winner rerun at 0.1 if it overfits, at 0.0-0.03 if all underfit",
    replace(RANK_PHASE, member=lambda base, r, p: {**_rank_member(base, r, p), "lora_dropout": DROPOUT_DURING_RANKS},
            holds=lambda base, p: {**_rank_holds(base, p), "lora_dropout": DROPOUT_DURING_RANKS},
            rule="dropout_fit", then=_dropout_then),
    PhaseSpec("overfit", "The winner rerun at a higher dropout", "lora_dropout",
              lambda base, p: (base.lora_dropout, DROPOUT_OVERFIT), _dropout_member, "lowest_eval",
              holds=_dropout_holds),
    PhaseSpec("underfit", "The winner rerun at a lower dropout", "lora_dropout",
              lambda base, p: (base.lora_dropout, *DROPOUT_UNDERFIT), _dropout_member, "lowest_eval",
              holds=_dropout_holds),
)

# ---- bias, use_rslora, loftq_config -----------------------------------------------------------------------------

_template("bias", "none / lora_only / all; prefer none unless another is clearly better", PhaseSpec(
    "biases", "Bias training", "bias", lambda base, p: BIASES, lambda base, b, p: {"bias": b}, "preferred_unless_better",
    rule_params=lambda base, p: {"order": list(BIASES), "margin": p.get("margin", TOLERANCE),
                                 "check_trainable": True},
    holds=lambda base, p: {"r": base.r, "lora_alpha": base.lora_alpha, "learning_rate": base.learning_rate,
                           "target_modules": base.target_modules}))


def _rslora_member(base: TrainConfig, on: Any, p: dict) -> dict[str, Any]:
    on = bool(on)
    return {"use_rslora": on, "lora_alpha": derived.gain_matched_alpha(_gain(base, p), base.r, on)}


def _rslora_then(winner: Member, details: Mapping, p: dict) -> tuple[str, dict] | None:
    return ("ranks", {}) if winner.values["use_rslora"] else None  # Step 2: "If rsLoRA wins or ties, lock it on"


_template(
    "use_rslora", "Gain-matched A/B, then ranks at a constant gain with rsLoRA on, then gains at the best rank",
    PhaseSpec("ab", "Standard vs rsLoRA at a matched gain", "use_rslora", lambda base, p: (False, True),
              _rslora_member, "preferred_unless_better",
              rule_params=lambda base, p: {"order": [True, False], "margin": p.get("margin", TOLERANCE)},
              holds=lambda base, p: {"r": base.r, "gain": _gain(base, p)}, resolve=_resolve_gain,
              name=lambda on: "rslora" if on else "standard", then=_rslora_then),
    replace(RANK_PHASE, title="Ranks at a constant gain with rsLoRA on", values=lambda base, p: RSLORA_RANKS,
            member=lambda base, r, p: {**_rank_member(base.model_copy(update={"use_rslora": True}), r, p),
                                       "use_rslora": True}, then=_next("gains")),
    GAIN_PHASE,
)


def _loftq_member(base: TrainConfig, v: Any, p: dict) -> dict[str, Any]:
    if v is None:
        return {"loftq_config": None}
    if isinstance(v, (int, float)) and not isinstance(v, bool):  # an iteration count at the base's bits
        bits = base.loftq_config.loftq_bits if base.loftq_config else preflight.LOFTQ_BITS
        return {"loftq_config": {"loftq_bits": bits, "loftq_iter": v}}
    bits, iters = v
    return {"loftq_config": {"loftq_bits": bits, "loftq_iter": iters}}


def _loftq_name(v: Any) -> str:
    if v is None:
        return "standard"
    return f"loftq_iter={v}" if isinstance(v, (int, float)) else f"loftq({v[0]},{v[1]})"


_LOFTQ_RULE = {"rule": "loftq_score", "name": _loftq_name,
               "rule_params": lambda base, p: {"lam": p.get("lam", LOFTQ_LAMBDA)},
               "holds": lambda base, p: {"r": base.r, "lora_alpha": base.lora_alpha,
                                         "target_modules": base.target_modules, "load_in_4bit": base.load_in_4bit}}
_template(
    "loftq_config", "Standard init vs LoftQ (4, 1) and (4, 4), then iterations; by eval minus λ x init time",
    PhaseSpec("init", "Standard vs LoftQ initialisation", "loftq_config", lambda base, p: LOFTQ_BASELINES,
              _loftq_member, then=lambda w, d, p: ("iters", {}) if w.values["loftq_config"] else None,
              **_LOFTQ_RULE),
    PhaseSpec("iters", "LoftQ iterations", "loftq_iter", lambda base, p: LOFTQ_ITERS, _loftq_member, **_LOFTQ_RULE),
)

# ---- packing, gradient_accumulation_steps -------------------------------------------------------------------------


def _packing_budget(base: TrainConfig, changes: dict, p: dict, steps: int) -> tuple[int, int, dict]:
    """Equal total tokens (packing 1: "adjust max_steps if needed"): a packed sequence is a full max_length block,
    an unpacked one the dataset's mean example (capped at max_length)."""
    if not p.get("mean_tokens"):
        raise ConfigError({"mean_tokens": "packing on vs off at equal tokens needs the dataset's mean tokens per "
                                          "example (compute the dataset's statistics)"})
    mean = float(p["mean_tokens"])

    def per_step(packing: bool) -> int:
        return derived.tokens_per_step(base.per_device_train_batch_size, base.gradient_accumulation_steps,
                                       base.max_length, packing=packing, mean_tokens=mean)

    budget = steps * per_step(base.packing)
    m_steps = max(1, round(budget / per_step(changes["packing"])))
    return m_steps, m_steps * per_step(changes["packing"]), _rescaled(base, m_steps / steps)


_template("packing", "Off vs on at equal total tokens; by tokens/s, peak VRAM and eval loss", PhaseSpec(
    "ab", "Packing off vs on", "packing", lambda base, p: PACKING, lambda base, v, p: {"packing": v}, "packing",
    rule_params=lambda base, p: {"tolerance": p.get("tolerance", TOLERANCE)},
    holds=lambda base, p: {"max_length": base.max_length, "per_device_train_batch_size":
                           base.per_device_train_batch_size, "eval_packing": base.eval_packing},
    budget=_packing_budget))


def _accum_budget(base: TrainConfig, changes: dict, p: dict, steps: int) -> tuple[int, int, dict]:
    """A fixed token budget (Phase 1): the base's sequences, rounded up to a whole number of the largest effective
    batch swept, so every member sees exactly the same sequences."""
    micro = base.per_device_train_batch_size
    swept = _values(TEMPLATES["gradient_accumulation_steps"].phases[0], base, p)
    largest = micro * max([v for v in swept if isinstance(v, int) and v >= 1] or [1])
    sequences = math.ceil(steps * micro * base.gradient_accumulation_steps / largest) * largest
    accum = changes["gradient_accumulation_steps"]
    m_steps = max(1, sequences // (micro * accum)) if isinstance(accum, int) and accum >= 1 else steps
    return m_steps, sequences * base.max_length, _rescaled(base, m_steps / steps)


_template("gradient_accumulation_steps", "Powers of two at a fixed token budget; the smallest that is stable",
          PhaseSpec("coarse", "Accumulation at a fixed token budget", "gradient_accumulation_steps",
                    lambda base, p: GRAD_ACCUM, lambda base, v, p: {"gradient_accumulation_steps": v},
                    "smallest_within_tolerance",
                    rule_params=lambda base, p: {"tolerance": p.get("tolerance", TOLERANCE), "stable_only": True},
                    holds=lambda base, p: {"learning_rate": base.learning_rate,
                                           "per_device_train_batch_size": base.per_device_train_batch_size},
                    budget=_accum_budget))

# ---- warmup_steps, learning_rate, optim, weight_decay, lr_scheduler_type ----------------------------------------


def _short(base: TrainConfig, p: dict) -> bool:
    return _base_steps(base, p) < SHORT_RUN


def _warmups(base: TrainConfig, p: dict) -> list[Any]:
    if _short(base, p):
        return [s for s in WARMUP_STEPS if s < _base_steps(base, p)]
    return list(WARMUP_RATIOS)


def _warmup_refined(base: TrainConfig, p: dict) -> list[Any]:
    w = base.warmup_steps
    if isinstance(w, float):
        return sorted({round(x, 4) for x in (w - WARMUP_RATIO_REFINE, w, w + WARMUP_RATIO_REFINE) if 0 <= x < 1})
    return sorted({x for x in (w - WARMUP_STEPS_REFINE, w, w + WARMUP_STEPS_REFINE) if x >= 0})


_WARMUP_RULE = {"rule": "smallest_within_tolerance",
                "rule_params": lambda base, p: {"tolerance": p.get("tolerance", TOLERANCE), "stable_only": True,
                                                "above_unstable": True},
                "holds": lambda base, p: {"learning_rate": base.learning_rate,
                                          "lr_scheduler_type": base.lr_scheduler_type}}
_template(
    "warmup_steps", "Ratios (or steps for runs under 500 steps); the smallest stable one reaching the best eval",
    PhaseSpec("coarse", "Warmup, coarse", "warmup_steps", _warmups, lambda base, v, p: {"warmup_steps": v},
              then=_next("refine"), **_WARMUP_RULE),
    PhaseSpec("refine", "Warmup, around the winner", "warmup_steps", _warmup_refined,
              lambda base, v, p: {"warmup_steps": v}, **_WARMUP_RULE),
)


def _range_member(base: TrainConfig, end: Any, p: dict) -> dict[str, Any]:
    """learning_rate 1: "a short run where LR increases smoothly from very small to large": the engine's
    exponential_range schedule, from LR_RANGE_START up to `end` at the last step (the rule reads each step's rate
    from the curve, so it finds the blow-up whatever the ramp)."""
    return {"learning_rate": end, "lr_scheduler_type": "exponential_range",
            "lr_scheduler_kwargs": {"start_lr": float(p.get("range_start", LR_RANGE_START))}, "warmup_steps": 0}


def _range_budget(base: TrainConfig, changes: dict, p: dict, steps: int) -> tuple[int, None, dict]:
    return int(p.get("range_steps", LR_RANGE_STEPS)), None, {}


def _bound_fraction(p: dict) -> float:
    fraction = p.get("bound_fraction", LR_BOUND_FRACTION[1])
    low, high = LR_BOUND_FRACTION
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not low <= fraction <= high:
        raise ConfigError({"bound_fraction": f"the upper bound is {low:.0%}-{high:.0%} of the blow-up rate; "
                                             f"allowed: {low} to {high}"})
    return float(fraction)


def _coarse_rates(base: TrainConfig, p: dict) -> list[float]:
    """The coarse grid clipped to the range test's bound; if the bound is below all of it, the bound and two
    halvings (the grid's own 2x spacing)."""
    bound = p.get("upper_bound")
    if bound is None:
        return list(LR_COARSE)
    kept = [lr for lr in LR_COARSE if lr <= bound]
    return kept or [_sig(bound / 4), _sig(bound / 2), _sig(bound)]


def _refined_rates(base: TrainConfig, p: dict) -> list[float]:
    bound = p.get("upper_bound")
    return [lr for lr in (_sig(f * base.learning_rate) for f in LR_REFINE) if bound is None or lr <= bound]


def _lr_member(base: TrainConfig, lr: Any, p: dict) -> dict[str, Any]:
    return {"learning_rate": lr}


_LR_HOLDS = lambda base, p: {"lr_scheduler_type": base.lr_scheduler_type, "warmup_steps": base.warmup_steps,
                             "optim": base.optim, "gradient_accumulation_steps": base.gradient_accumulation_steps}
_template(
    "learning_rate", "Range test, then a coarse log sweep clipped to its bound, then ±50% around the winner",
    PhaseSpec("range_test", "Learning-rate range test", "learning_rate",
              lambda base, p: (p.get("range_end", LR_RANGE_END),), _range_member, "lr_range", needs_eval=False,
              rule_params=lambda base, p: {"bound_fraction": _bound_fraction(p)},
              holds=lambda base, p: {"optim": base.optim}, name=lambda v: "range_test", budget=_range_budget,
              winner_is_base=False,
              then=lambda w, d, p: ("coarse", {"upper_bound": d.get("upper_bound")})),
    PhaseSpec("coarse", "Coarse log sweep", "learning_rate", _coarse_rates, _lr_member, "lowest_eval",
              holds=_LR_HOLDS, then=_next("refine")),
    PhaseSpec("refine", "±50% around the winner", "learning_rate", _refined_rates, _lr_member, "lowest_eval",
              holds=_LR_HOLDS),
)


def _optimizers(base: TrainConfig, p: dict) -> list[str]:
    return [*OPTIMIZERS, OPTIMIZER_MEMORY_BOUND] if p.get("memory_bound") else list(OPTIMIZERS)


_template(
    "optim", "Screen adamw_torch_fused, adamw_torch (and paged_adamw_8bit when memory-bound), then LR x0.5/x1/x2",
    PhaseSpec("screen", "Optimizer screen", "optim", _optimizers, lambda base, v, p: {"optim": v}, "lowest_eval",
              holds=lambda base, p: {"learning_rate": base.learning_rate, "lr_scheduler_type": base.lr_scheduler_type},
              then=_next("learning_rate")),
    PhaseSpec("learning_rate", "The winner's learning rate", "learning_rate",
              lambda base, p: [_sig(f * base.learning_rate) for f in OPTIM_LR_FACTORS], _lr_member, "lowest_eval",
              holds=lambda base, p: {"optim": base.optim}),
)


def _decay_neighbours(base: TrainConfig, p: dict) -> list[float]:
    """2-4 points around the best: its neighbours in the 1-2-3-5 series (Phase 2's own examples)."""
    w = base.weight_decay
    if w == 0:
        smallest = min(x for x in WEIGHT_DECAYS if x > 0)
        return [0.0, _sig(smallest / 2), smallest]
    decade = 10 ** math.floor(math.log10(w) + 1e-9)
    series = sorted({_sig(s * decade * 10 ** k) for k in (-1, 0, 1) for s in DECAY_SERIES})
    i = min(range(len(series)), key=lambda j: abs(series[j] - w))
    return sorted({series[i - 1], w, series[i + 1]} - {x for x in series if x > 1})


_DECAY_HOLDS = lambda base, p: {"learning_rate": base.learning_rate, "r": base.r}
_template(
    "weight_decay", "A log grid from 0 to 0.1, then 2-4 points around the best",
    PhaseSpec("coarse", "Weight decay, coarse", "weight_decay", lambda base, p: WEIGHT_DECAYS,
              lambda base, v, p: {"weight_decay": v}, "lowest_eval", holds=_DECAY_HOLDS, then=_next("refine")),
    PhaseSpec("refine", "Weight decay, around the best", "weight_decay", _decay_neighbours,
              lambda base, v, p: {"weight_decay": v}, "lowest_eval", holds=_DECAY_HOLDS),
)


def _wsd_kwargs(base: TrainConfig, p: dict, fraction: float, min_lr_ratio: float) -> dict[str, Any]:
    total = _base_steps(base, p)
    decay = max(1, round(fraction * total))
    warmup = derived.warmup_steps_resolved(base.warmup_steps, total)
    return {"num_decay_steps": decay, "num_stable_steps": max(0, total - warmup - decay),
            "min_lr_ratio": min_lr_ratio}


def _schedule_member(base: TrainConfig, kind: Any, p: dict) -> dict[str, Any]:
    kwargs = {"cosine_with_min_lr": {"min_lr_rate": MIN_LR_RATE_COARSE}}.get(kind, {})
    if kind == "warmup_stable_decay":
        kwargs = _wsd_kwargs(base, p, WSD_DECAY_COARSE, WSD_MIN_LR_COARSE)
    return {"lr_scheduler_type": kind, "lr_scheduler_kwargs": kwargs}


def _schedule_then(winner: Member, details: Mapping, p: dict) -> tuple[str, dict] | None:
    kind = winner.values["lr_scheduler_type"]
    return {"cosine": ("cosine_cycles", {}), "cosine_with_min_lr": ("min_lr_rate", {}),
            "warmup_stable_decay": ("wsd_decay", {})}.get(kind)


def _kwarg_phase(key: str, title: str, axis: str, values: Sequence[Any],
                 member: Callable[[TrainConfig, Any, dict], dict], then: Callable | None = None) -> PhaseSpec:
    return PhaseSpec(key, title, axis, lambda base, p: values, member, "lowest_eval", name=lambda v: f"{axis}={_fmt(v)}",
                     holds=lambda base, p: {"lr_scheduler_type": base.lr_scheduler_type,
                                            "learning_rate": base.learning_rate, "warmup_steps": base.warmup_steps},
                     **({"then": then} if then else {}))


def _kwargs_with(base: TrainConfig, **changed: Any) -> dict[str, Any]:
    return {"lr_scheduler_kwargs": {**base.lr_scheduler_kwargs, **changed}}


def _wsd_fraction(base: TrainConfig, f: Any, p: dict) -> dict[str, Any]:
    ratio = base.lr_scheduler_kwargs.get("min_lr_ratio", WSD_MIN_LR_COARSE)
    return {"lr_scheduler_kwargs": {**base.lr_scheduler_kwargs, **_wsd_kwargs(base, p, f, ratio)}}


_template(
    "lr_scheduler_type", "linear, cosine, cosine_with_min_lr, warmup_stable_decay at a fixed peak and warmup; then "
    "the winner's knobs",
    PhaseSpec("coarse", "Schedule families", "lr_scheduler_type", lambda base, p: SCHEDULES, _schedule_member,
              "lowest_eval", holds=lambda base, p: {"learning_rate": base.learning_rate,
                                                    "warmup_steps": base.warmup_steps}, then=_schedule_then),
    _kwarg_phase("cosine_cycles", "Cosine cycles", "num_cycles", COSINE_CYCLES,
                 lambda base, v, p: _kwargs_with(base, num_cycles=v)),
    _kwarg_phase("min_lr_rate", "Cosine floor", "min_lr_rate", MIN_LR_RATES,
                 lambda base, v, p: _kwargs_with(base, min_lr_rate=v)),
    _kwarg_phase("wsd_decay", "Decay fraction", "decay_fraction", WSD_DECAY_FRACTIONS, _wsd_fraction,
                 then=_next("wsd_min_lr")),
    _kwarg_phase("wsd_min_lr", "Decay floor", "min_lr_ratio", WSD_MIN_LR_RATIOS,
                 lambda base, v, p: _kwargs_with(base, min_lr_ratio=v)),
)
