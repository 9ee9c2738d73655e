"""The open search (Sweep.SEARCH): for when no procedure of the seed fits, a space the user chooses over several config
fields, searched with Optuna's TPE sampler through its ask-and-tell interface, the study in the project's PostgreSQL
(studies.py), members pruned at their eval steps by successive halving (pruning.py; a search always prunes).

The search is one phase (key "search", axis "trial", rule "lowest_eval"). Its members are added as the study asks
for them: `parallel` at the start, then, at each member's end (the sweep's advance), its trial is told and the next
ones asked, until `trials` were asked; once all ended, the verdict names the best trial with its params and how many
were pruned, failed or diverged. Every member trains at the base's seed and step budget (max_steps), names itself
"trial 3: learning_rate=2.1e-4, r=16" (its fields by name), and changes from the base only the fields of the space.

Params, as the sweep form sends them (`params` of sweep_preview / sweep_create with template "search"):

    {"space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": true},  # a number field: low < high, optional
               "r": {"choices": [8, 16, 32]},                               #   "log" (low > 0) or "step"; any field:
               "lora_dropout": {"low": 0.0, "high": 0.1}},                  #   "choices", numbers/strings/true/false
     "trials": 8,             # members in all, 1-100
     "parallel": 2,           # members training at once, 1-16
     "seed": 0,               # the sampler's seed (the members' own training seed is the base's)
     "reduction_factor": 3}   # optional, 2-6: at each rung successive halving keeps the best 1/reduction_factor

Errors name the field: {"space.learning_rate": "low must be below high"}, {"space.model": "..."}, {"trials": ...}.
sweep_preview returns the phase with no members yet (the study picks them as it goes); its params hold the space,
its budget the steps each member trains.
"""
from __future__ import annotations

import math
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from django.core.exceptions import ValidationError
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from training.engine.config import SEED_MAX, ConfigError, TrainConfig, parse_config
from training.models import Run, Sweep, SweepMember, SweepPhase
from training.run_config import RESERVED_FIELDS
from training.runs import services as runs
from training.sweeps import plan, pruning, rules

KEY, AXIS, RULE = "search", "trial", "lowest_eval"
TRIALS, PARALLEL, REDUCTION = (1, 100), (1, 16), (2, 6)
DEFAULTS = {"trials": 8, "parallel": 2, "seed": 0, "reduction_factor": pruning.REDUCTION_FACTOR}
RANGE_KEYS, CHOICE_KEYS = frozenset({"low", "high", "log", "step"}), frozenset({"choices"})
MAX_REFUSED = 10  # asks in a row whose config the engine refuses before the search stops asking (ours)
# What a search cannot set: what the members must share to be compared, and what Tuneboard sets itself.
FIXED = {
    **RESERVED_FIELDS,
    "model": "every member trains the base's model; start a search per model",
    "max_steps": "every member trains the base's step budget; set it on the base",
    "num_train_epochs": "every member trains the base's step budget; set max_steps on the base",
    "eval_split": "every member is judged on the same held-out rows",
    "eval_steps": "the eval steps are the pruning rungs, the same for every member; set it on the base",
    "seed": "every member trains at the base's seed, so only the searched fields differ",
    "random_state": "every member starts from the same adapter init (the base's random_state)",
    "max_length": "every member sees the same sequences; set it on the base",
    "data_format": "every member reads the data the same way; set it on the base",
    "save_steps": "not a training choice; set it on the base",
    "logging_steps": "not a training choice; set it on the base",
    "backend": "not a training choice; set it on the base",
    "devices": "how many GPUs each member takes, not a training choice; set it on the base",
    "version": "not a training choice",
    "sample_prompts": "not a training choice; set it on the base",
    "sample_max_new_tokens": "not a training choice; set it on the base",
    "loftq_config": "an object, which a search cannot sample; use the loftq_config procedure",
    "lr_scheduler_kwargs": "an object, which a search cannot sample; use the lr_scheduler_type procedure",
}
SEARCHABLE = tuple(sorted(f for f in TrainConfig.model_fields if f not in FIXED))  # what the sweep form may offer


@dataclass(frozen=True)
class Search:
    space: dict[str, BaseDistribution]
    trials: int
    parallel: int
    seed: int
    reduction_factor: int
    params: dict[str, Any]  # as stored: the space as given, with every default filled in


# ---- the params ---------------------------------------------------------------------------------------------------

def parse(params: Any, base: Mapping[str, Any]) -> Search:
    """The search's params checked against the engine: every bound and choice must make a config parse_config
    accepts with the base's other fields. ConfigError naming each bad field ("space.<field>", "trials", ...)."""
    if not isinstance(params, Mapping):
        raise ConfigError({"params": 'must be an object: {"space": {...}, "trials": 8, "parallel": 2, "seed": 0}'})
    errors = {k: f"not a parameter of a search; allowed: space, {', '.join(DEFAULTS)}"
              for k in params if k not in ("space", *DEFAULTS)}
    space: dict[str, BaseDistribution] = {}
    given = params.get("space")
    if not isinstance(given, Mapping) or not given:
        errors["space"] = ('choose at least one field to search, e.g. {"learning_rate": {"low": 1e-5, "high": 1e-3, '
                           '"log": true}}')
    else:
        for field, spec in sorted(given.items()):  # by name: PostgreSQL's jsonb keeps no order
            try:
                space[field] = _distribution(str(field), spec, base)
            except ConfigError as exc:
                errors.update(exc.errors)
    values = {k: params.get(k, default) for k, default in DEFAULTS.items()}
    for key, (low, high) in (("trials", TRIALS), ("parallel", PARALLEL), ("reduction_factor", REDUCTION)):
        if not _whole(values[key]) or not low <= values[key] <= high:
            errors[key] = f"a whole number from {low} to {high}"
    if not _whole(values["seed"]) or not 0 <= values["seed"] <= SEED_MAX:
        errors["seed"] = f"the sampler's seed: a whole number from 0 to {SEED_MAX}"
    if errors:
        raise ConfigError(errors)
    stored = {"space": {f: dict(given[f]) for f in space}, **values}
    return Search(space, values["trials"], values["parallel"], values["seed"], values["reduction_factor"], stored)


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _types(annotation: Any) -> set[type]:
    """The plain types a field's annotation allows (Optional, Union and Annotated unwrapped)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _types(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_types(a) for a in typing.get_args(annotation)))
    return {annotation if isinstance(annotation, type) else object}


def _distribution(field: str, spec: Any, base: Mapping[str, Any]) -> BaseDistribution:
    key = f"space.{field}"
    if field in FIXED:
        raise ConfigError({key: f"a search cannot set {field}: {FIXED[field]}"})
    if field not in TrainConfig.model_fields:
        raise ConfigError({key: f"not a config field; allowed: {', '.join(SEARCHABLE)}"})
    if not isinstance(spec, Mapping) or not (set(spec) <= RANGE_KEYS or set(spec) <= CHOICE_KEYS) or not spec:
        raise ConfigError({key: 'give a range {"low": ..., "high": ...} (with "log": true or a "step" if wanted) '
                                'or {"choices": [...]}'})
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError({key: "choices: give at least one value, as a list"})
        if any(c is not None and not isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError({key: "choices: numbers, strings, true/false or null only"})
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError({key: "choices: each value once"})
        _check(key, field, base, [("choice", c) for c in choices])
        return CategoricalDistribution(choices)
    kinds = _types(TrainConfig.model_fields[field].annotation) - {type(None)}
    if not kinds <= {int, float}:
        raise ConfigError({key: f"{field} is not a number: give its values as choices"})
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    if not _number(low) or not _number(high):
        raise ConfigError({key: "low and high must both be numbers"})
    if low >= high:
        raise ConfigError({key: "low must be below high"})
    if not isinstance(log, bool):
        raise ConfigError({key: "log: true or false"})
    if log and low <= 0:
        raise ConfigError({key: "a log range needs low above 0"})
    if step is not None and (not _number(step) or step <= 0 or log):
        raise ConfigError({key: "step: a number above 0, and not with a log range"})
    integer = kinds == {int} or (kinds == {int, float} and _whole(low) and _whole(high) and (step is None or
                                                                                           _whole(step)))
    if integer and not (_whole(low) and _whole(high) and (step is None or _whole(step))):
        raise ConfigError({key: f"{field} is a whole number: give whole-number low, high and step"})
    _check(key, field, base, [("low", low), ("high", high)])
    if integer:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(float(low), float(high), log=log, step=step)


def _check(key: str, field: str, base: Mapping[str, Any], values: Sequence[tuple[str, Any]]) -> None:
    for label, value in values:
        try:
            parse_config({**base, field: value})
        except ConfigError as exc:
            msg = exc.errors.get(field) or "; ".join(f"{f}: {m}" for f, m in exc.errors.items())
            raise ConfigError({key: f"{label} {value!r}: {msg}"}) from None


# ---- the phase, its members and its verdict (pure) ----------------------------------------------------------------

def phase(base_config: Mapping[str, Any], params: Any) -> plan.Phase:
    """The search phase over `base_config`, with no members yet; ConfigError naming the field otherwise."""
    base = parse_config(dict(base_config))
    errors = {}
    if base.max_steps is None:
        errors["max_steps"] = "a search gives every member the same step budget: set max_steps on the base"
    if not base.has_eval:
        errors["eval_steps"] = ("a search judges and prunes members on eval loss: give eval_split (or eval_file) "
                                "and eval_steps")
    if errors:
        raise ConfigError(errors)
    base_dict = base.model_dump(mode="json")
    search = parse(params, base_dict)
    held = {k: base_dict[k] for k in (*plan.COMMON_HELD, "max_steps", "eval_steps") if base_dict.get(k) is not None}
    return plan.Phase(
        template=Sweep.SEARCH, key=KEY, axis=AXIS, members=(), held=held, budget={"max_steps": base.max_steps},
        title=f"Search over {', '.join(search.space)}: {search.trials} trials, {search.parallel} at a time",
        rule=RULE, rule_params={}, params=search.params, base=base_dict)


def shown(v: Any) -> str:
    """A value as a member's name shows it: 2.1e-4, 0.042, 16."""
    if isinstance(v, float) and not isinstance(v, bool):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
            mantissa, exponent = f"{v:.1e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{v:.2g}"
    return str(v)


def member_name(index: int, values: Mapping[str, Any]) -> str:
    return f"trial {index + 1}: " + ", ".join(f"{k}={shown(v)}" for k, v in sorted(values.items()))


def member(base: Mapping[str, Any], index: int, values: Mapping[str, Any]) -> plan.Member:
    """Member `index` (0-based; its trial number in names is index + 1): the base with the sampled values, at the
    base's seed and steps. ConfigError if the engine refuses the combination."""
    config = {**base, **values}
    parse_config(config)
    return plan.Member(name=member_name(index, values), value=index + 1, values=dict(values), config=config,
                       steps=int(base["max_steps"]))


def to_ask(search: Search, statuses: Sequence[str]) -> int:
    """How many members to ask for now: keep `parallel` going (a member waiting to resume counts as going) until
    `trials` were asked."""
    going = sum(1 for s in statuses if s not in rules.TERMINAL)
    return max(0, min(search.trials - len(statuses), search.parallel - going))


def sampler(search: Search, index: int, attempt: int = 0) -> optuna.samplers.TPESampler:
    """TPE for member `index`. Each ask is made by a fresh process (the advance), so the seed is the search's seed
    and the member's index: the same search asks the same values, and no two asks replay one random stream. The
    constant liar counts the running members, as Optuna advises for trials evaluated in parallel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=(search.seed * 1_000_003 + index * 101 + attempt) % 2**32, constant_liar=True,
            n_startup_trials=max(search.parallel, min(10, search.trials // 2)))


def decide(phase_: plan.Phase, results: Mapping[str, Mapping[str, Any]]) -> rules.Verdict:
    """rules.lowest_eval over every member once all ended, told as a search: the best trial, its params, and how
    many of the trials were pruned, failed or diverged."""
    v = rules.decide(phase_, results)
    if not v.decided:
        return v
    win = phase_.member(v.winner)
    excluded = {*v.invalid, *v.diverged, *v.pruned, *v.failed}
    scored = sorted((m for m in phase_.members if m.name not in excluded
                     and (results.get(m.name) or {}).get("final_eval_loss") is not None),
                    key=lambda m: results[m.name]["final_eval_loss"])
    params_text = ", ".join(f"{k}={shown(val)}" for k, val in sorted(win.values.items()))
    nxt = (f" (next: trial {scored[1].value} at {results[scored[1].name]['final_eval_loss']:.3f})"
           if len(scored) > 1 else "")
    ties = f"; tied with {', '.join(v.ties)}, broken by the order asked" if v.ties else ""
    text = (f"trial {win.value} ({params_text}): the lowest eval loss of the {len(scored)} trials compared, "
            f"{results[win.name]['final_eval_loss']:.3f}{nxt}{ties}; of {len(phase_.members)} trials, "
            f"{len(v.pruned)} pruned early by successive halving, {len(v.failed)} failed, {len(v.diverged)} diverged"
            + (f", {len(v.invalid)} unstable" if v.invalid else "") + ".")
    details = {"params": dict(win.values), "trials": len(phase_.members), "compared": len(scored),
               "pruned": len(v.pruned), "failed": len(v.failed), "diverged": len(v.diverged),
               "unstable": len(v.invalid)}
    return rules.Verdict(RULE, v.winner, text, ties=v.ties, invalid=v.invalid, diverged=v.diverged, failed=v.failed,
                         pruned=v.pruned, details=details)


# ---- the Django side: preview, start, and the advance's asks ------------------------------------------------------

def preview(base_config: Mapping[str, Any], params: Any) -> plan.Phase:
    try:
        return phase(base_config, params)
    except ConfigError as exc:
        raise ValidationError(exc.errors) from None


def start(*, sweep: Sweep, row: SweepPhase, user) -> int:
    """At the sweep's creation (its transaction): ask the first `parallel` members and queue their runs."""
    search = parse(row.params, row.base)
    return _ask(sweep, row, search, start=0, count=min(search.parallel, search.trials), user=user)


def ask_next(*, sweep: Sweep, row: SweepPhase, members: Sequence[SweepMember],
             results: Mapping[str, Mapping[str, Any]], user) -> int:
    """In the sweep's advance (the sweep row locked, ended trials told): ask the next members, if any are due."""
    search = parse(row.params, row.base)
    count = to_ask(search, [results[m.name]["status"] for m in members])
    return _ask(sweep, row, search, start=len(members), count=count, user=user) if count else 0


def _ask(sweep: Sweep, row: SweepPhase, search: Search, *, start: int, count: int, user) -> int:
    study = pruning.phase_study(sweep_id=sweep.id, phase_index=row.index, first_eval_step=row.base.get("eval_steps"),
                                reduction_factor=search.reduction_factor)
    made = 0
    for index in range(start, start + count):
        asked = _ask_one(study, search, row.base, index)
        if asked is None:
            break
        _member_create(sweep, row, index, asked, user=user)
        made += 1
    return made


def _ask_one(study: optuna.Study, search: Search, base: Mapping[str, Any], index: int) -> plan.Member | None:
    """Member `index` from the study: a trial already asked for it and still running (an advance that asked, then
    rolled back before its member was saved) is taken again; else a new one. A combination the engine refuses is
    told failed and asked again."""
    for attempt in range(MAX_REFUSED):
        found = pruning.trial_of(study.get_trials(deepcopy=False), index)
        if found is not None and found.state == TrialState.RUNNING:
            trial = optuna.Trial(study, found._trial_id)
        else:
            study.sampler = sampler(search, index, attempt)
            trial = pruning.new_trial(study, index=index, name="", fixed=search.space)
        values = {f: trial.params[f] for f in search.space}
        try:
            asked = member(base, index, values)
        except ConfigError as exc:
            trial.set_user_attr("refused", str(exc))
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr("member", asked.name)
        return asked
    return None


def _member_create(sweep: Sweep, row: SweepPhase, index: int, m: plan.Member, *, user) -> SweepMember:
    builds_on = sweep.base_run
    run = runs.run_create(
        team=sweep.team, user=user, dataset=sweep.dataset, name=f"{sweep.name} · {row.key} · {m.name}",
        overrides={k: v for k, v in m.config.items() if k not in RESERVED_FIELDS}, queue=sweep.queue, sweep=sweep,
        base_run=builds_on.base_run if builds_on else None,
        base_kind=builds_on.base_kind if builds_on and builds_on.base_run_id else Run.BaseKind.ADAPTER)
    return SweepMember.objects.create(phase=row, sweep=sweep, index=index, name=m.name, value=m.value,
                                      values=m.values, config=m.config, steps=m.steps, run=run)
