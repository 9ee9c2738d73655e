"""Every write to a sweep: created with its first phase's runs, advanced when a member ends (idempotent: a phase is
expanded once, a verdict written once), stopped, resumed, confirmed, and its winner applied. The planning and the
judging are plan.py's and rules.py's; this stores and queues what they return."""
from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from dashboard.models import Membership, Team
from training.access import require_role
from training.engine.config import STEPS_MAX, ConfigError, text_problem
from training.evaluation import metrics
from training.live import send as live
from training.models import Dataset, EvalSuite, Preset, Run, Sweep, SweepMember, SweepPhase
from training.planner import services as planner
from training.run_config import RESERVED_FIELDS
from training.runs import services as runs
from training.sweeps import plan, pruning, rules, search
from training.sweeps.selectors import member_results, sweep_state

Role = Membership.Role

# What the sweep form may set of a template's params (plan.py reads these); anything else is refused by name.
PARAMS = {
    "values": "the values to sweep, as a list",
    "tolerance": "the tolerance of 'within x of the best', e.g. 0.01",
    "gain": "the alpha/r (or alpha/sqrt(r) with rsLoRA) held while ranks vary",
    "lam": "LoftQ's weight of init seconds against eval loss",
    "margin": "how much lower a non-preferred value's eval loss must be to win, e.g. 0.01",
    "range_steps": "the range test's steps",
    "range_end": "the range test's final learning rate",
    "range_start": "the range test's first learning rate",
    "bound_fraction": "the share of the blow-up rate taken as the upper bound (0.1-0.3)",
    "memory_bound": "true to screen paged_adamw_8bit as well",
    "phase": "the phase to start at (e.g. learning_rate's 'coarse', to skip the range test)",
}
# The numeric params' kind and the range that means something: a bad one is refused here by name, before plan.py's
# arithmetic or a member's config sees it.
NUMBER_PARAMS: dict[str, tuple[type, float, float]] = {
    "tolerance": (float, 0, 1), "margin": (float, 0, 1), "bound_fraction": (float, 0.001, 1),
    "gain": (float, 1e-6, 65536), "lam": (float, 0, 1e6), "range_start": (float, 1e-12, 1),
    "range_end": (float, 1e-12, 1), "range_steps": (int, 3, STEPS_MAX),
}
# At most this many values in one phase: each is a run.
MAX_VALUES = 64
# Fields a member never passes as an override: the services set them (the dataset, the run's folder, the adapter
# of the run it builds on).
NOT_OVERRIDES = frozenset(RESERVED_FIELDS)


def _errors(exc: ConfigError | ValidationError) -> dict[str, Any]:
    return exc.errors if isinstance(exc, ConfigError) else exc.message_dict


def _template(name: str) -> plan.Template:
    template = plan.TEMPLATES.get(name)
    if template is None:
        raise ValidationError({"template": f"no procedure for {name!r}; allowed: {', '.join(sorted(plan.TEMPLATES))}"})
    return template


def _params(template: plan.Template, dataset: Dataset, params: dict[str, Any] | None) -> dict[str, Any]:
    if params is not None and not isinstance(params, dict):
        raise ValidationError({"params": "must be an object, e.g. {\"values\": [8, 16, 32]}"})
    params = dict(params or {})
    unknown = [k for k in params if k not in PARAMS]
    if unknown:
        raise ValidationError({k: f"not a parameter of a sweep; allowed: {', '.join(PARAMS)}" for k in unknown})
    if "values" in params and (not isinstance(params["values"], list) or not params["values"]):
        raise ValidationError({"values": "give at least one value to sweep, as a list"})
    errors = _param_errors(params)
    if errors:
        raise ValidationError(errors)
    facts: dict[str, Any] = {"rows": dataset.rows}
    mean = ((dataset.stats or {}).get("tokens") or {}).get("mean")
    if mean:
        facts["mean_tokens"] = mean
    return {**facts, **params}


def _param_errors(params: dict[str, Any]) -> dict[str, str]:
    """{param: what is allowed} for each param of the wrong type or out of its range."""
    errors = {}
    for name, (kind, low, high) in NUMBER_PARAMS.items():
        value = params.get(name)
        if value is None:
            continue
        ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not low <= value <= high:
            what = "a whole number" if kind is int else "a number"
            errors[name] = f"{what} from {low:g} to {high:g}"
    values = params.get("values") or ()
    if len(values) > MAX_VALUES:
        errors["values"] = f"at most {MAX_VALUES} values: each is a run"
    elif not all(_plain_value(v) or isinstance(v, list) and all(_plain_value(x) for x in v) for v in values):
        errors["values"] = (f"each value a number of magnitude at most {STEPS_MAX}, a word, true, false or null (or a "
                            "list of those, as LoftQ's [bits, iterations])")
    if "memory_bound" in params and not isinstance(params["memory_bound"], bool):
        errors["memory_bound"] = "true or false"
    phase = params.get("phase")
    if phase is not None and (not isinstance(phase, str) or len(phase) > 60 or text_problem(phase)):
        errors["phase"] = "the name of one of the procedure's phases, e.g. 'coarse'"
    return errors


def _plain_value(value: Any) -> bool:
    """A value plan.py may compute with (a rank's alpha, a step count) and a config may hold."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value) and abs(value) <= STEPS_MAX
    return isinstance(value, str) and len(value) <= 200 and not text_problem(value)


def sweep_base_config(*, dataset: Dataset, base_run: Run | None, preset: Preset | None,
                      overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The config the first phase varies: the base run's (on this dataset) or the preset's, with the overrides."""
    overrides = dict(overrides or {})
    if base_run is not None:
        kept = {k: v for k, v in base_run.config.items() if k not in NOT_OVERRIDES}
        return runs.run_config_build(train_file=dataset.path, preset=None, overrides={**kept, **overrides},
                                     base_run=base_run.base_run, base_kind=base_run.base_kind)
    return runs.run_config_build(train_file=dataset.path, preset=preset, overrides=overrides)


def sweep_preview(*, team: Team, template: str, dataset: Dataset, base_run: Run | None = None,
                  preset: Preset | None = None, overrides: dict[str, Any] | None = None,
                  params: dict[str, Any] | None = None) -> plan.Phase:
    """The first phase the sweep would create, checked as run_create checks a run; ValidationError naming the field
    otherwise. Creates nothing: the form shows it before launch."""
    _check_team(team, dataset=dataset, base_run=base_run, preset=preset)
    if template == Sweep.SEARCH:
        return search.preview(sweep_base_config(dataset=dataset, base_run=base_run, preset=preset,
                                                overrides=overrides), params)
    spec = _template(template)
    p = _params(spec, dataset, params)
    base = sweep_base_config(dataset=dataset, base_run=base_run, preset=preset, overrides=overrides)
    start = p.pop("phase", None)
    try:
        phase = plan.expand(spec, base, params=p, phase=start)
    except ConfigError as exc:
        raise ValidationError(_errors(exc)) from None
    for member in phase.members:
        _member_config(member, dataset=dataset, builds_on=base_run)
    return phase


def sweep_fit(*, team: Team, phase: plan.Phase, dataset: Dataset, base_run: Run | None = None,
              queue: str | None = None) -> dict[str, Any]:
    """The fit planner's plan of the phase's member with the largest predicted peak (a search's base: its members
    come later): {"member": its name, "config": its config, "plan": plan_config's dict}; ValidationError({"fit":
    ...}) naming the first member that fits no live GPU worker of the queue, as run_create would refuse its run."""
    queue = queue or settings.TUNEBOARD_DEFAULT_QUEUE
    members = [(m.name, _member_config(m, dataset=dataset, builds_on=base_run)) for m in phase.members]
    largest: dict[str, Any] | None = None
    for name, config in members or [("the base", phase.base)]:
        found = runs.run_plan(team=team, config=config, dataset=dataset, queue=queue)
        refusal = planner.plan_refusal(found)
        if refusal:
            raise ValidationError({"fit": f"member {name}: {refusal}"})
        peak = found.get("peak_bytes", -1.0)
        if largest is None or peak > largest["plan"].get("peak_bytes", -1.0):
            largest = {"member": name, "config": config, "plan": found}
    return largest


def _check_team(team: Team, *, dataset: Dataset, base_run: Run | None, preset: Preset | None) -> None:
    if dataset.team_id != team.id:
        raise ValidationError({"dataset": "no such dataset in this team"})
    if base_run is not None and base_run.team_id != team.id:
        raise ValidationError({"base_run": "no such run in this team"})
    if base_run is not None and base_run.status != Run.Status.SUCCEEDED:
        raise ValidationError({"base_run": f"run #{base_run.id} is {base_run.get_status_display().lower()}; a sweep "
                                           "starts from a succeeded run"})
    if base_run is not None and preset is not None:
        raise ValidationError({"preset": "a sweep from a run starts from that run's config; leave the preset blank"})
    if preset is not None and preset.team_id not in (None, team.id):
        raise ValidationError({"preset": "no such preset in this team"})


def _member_config(member: plan.Member, *, dataset: Dataset, builds_on: Run | None) -> dict[str, Any]:
    """The member's config as run_create will build it (model rule, reserved fields, the run it builds on)."""
    try:
        return runs.run_config_build(train_file=dataset.path, preset=None, overrides=_overrides(member.config),
                                     base_run=builds_on.base_run if builds_on else None,
                                     base_kind=builds_on.base_kind if builds_on else "")
    except ValidationError as exc:
        raise ValidationError({f: [f"{member.name}: {m}" for m in msgs] for f, msgs in exc.message_dict.items()}
                              ) from None


def _overrides(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_OVERRIDES}


def sweep_create(*, team: Team, user, template: str, dataset: Dataset, base_run: Run | None = None,
                 preset: Preset | None = None, overrides: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, name: str = "", queue: str | None = None,
                 auto_advance: bool = True, early_stop: bool = True, prune: bool = False,
                 confirm_top: int = 0, eval_suite: EvalSuite | None = None, eval_figure: str = "") -> Sweep:
    """Validate the sweep and its first phase, then save both and queue the phase's runs on commit. Nothing is saved
    on an error. With `eval_suite`, every member is evaluated on it at its end and the rules judge `eval_figure`
    (metrics.FIGURES; the suite metric's first by default) instead of eval loss."""
    require_role(user=user, team=team, role=Role.MEMBER, action="Starting a sweep")
    if eval_suite is not None and template == Sweep.SEARCH:
        raise ValidationError({"eval_suite": "the open search's study minimises eval loss; judge a procedure on a "
                                             "suite instead, or leave the suite empty"})
    eval_figure = _check_suite(team, eval_suite, eval_figure)
    queue = queue or settings.TUNEBOARD_DEFAULT_QUEUE
    if not runs.QUEUE_NAME.match(queue):
        raise ValidationError({"queue": "letters, digits and _ . @ - only, at most 100"})
    if isinstance(confirm_top, bool) or not isinstance(confirm_top, int) or not 0 <= confirm_top <= 5:
        raise ValidationError({"confirm_top": "how many top candidates to rerun at a second seed: 0 (none) to 5"})
    if problem := text_problem(name or ""):
        raise ValidationError({"name": problem})
    phase = sweep_preview(team=team, template=template, dataset=dataset, base_run=base_run, preset=preset,
                          overrides=overrides, params=params)
    sweep_fit(team=team, phase=phase, dataset=dataset, base_run=base_run, queue=queue)
    name = (name or "").strip()[:200] or f"{template} sweep on {dataset.name}"
    with transaction.atomic():
        sweep = Sweep.objects.create(
            team=team, name=name, template=template, dataset=dataset, preset=preset, base_run=base_run,
            base_config=phase.base, params=phase.params, queue=queue, auto_advance=auto_advance,
            early_stop=early_stop, prune=prune or template == Sweep.SEARCH, confirm_top=confirm_top, created_by=user,
            eval_suite=eval_suite, eval_figure=eval_figure)
        row = _phase_create(sweep, phase, index=0, user=user)
        if template == Sweep.SEARCH:  # its members come from the study: the first `parallel` now
            search.start(sweep=sweep, row=row, user=user)
    transaction.on_commit(lambda: _send_state(sweep.id))
    return sweep


def _check_suite(team: Team, suite: EvalSuite | None, figure: str) -> str:
    if suite is None:
        if figure:
            raise ValidationError({"eval_figure": "a figure is read from an eval suite; choose the suite too"})
        return ""
    if suite.team_id != team.id:
        raise ValidationError({"eval_suite": "no such eval suite in this team"})
    allowed = metrics.FIGURES[suite.metric]
    if suite.metric == metrics.HARNESS:
        return figure or allowed[0]  # the task's own metric names: known once it ran
    if figure and figure not in allowed:
        raise ValidationError({"eval_figure": f"{suite.name} ({suite.metric}) has no figure {figure!r}; allowed: "
                                              f"{', '.join(allowed)}"})
    return figure or allowed[0]


def _phase_create(sweep: Sweep, phase: plan.Phase, *, index: int, user) -> SweepPhase:
    """Save the phase and its members; a member whose config an earlier member already trained (the winner carried
    into the next phase) reuses that run; every other member gets a run, queued on commit."""
    row = SweepPhase.objects.create(
        sweep=sweep, index=index, key=phase.key, title=phase.title, axis=phase.axis, rule=phase.rule,
        rule_params=phase.rule_params, params=phase.params, held=phase.held, budget=phase.budget, base=phase.base)
    trained = _trained_configs(sweep)
    builds_on = sweep.base_run
    for i, member in enumerate(phase.members):
        run = trained.get(_key(member.config))
        if run is None:
            run = member_run_create(sweep, user=user, name=f"{sweep.name} · {phase.key} · {member.name}",
                                    config=member.config)
        SweepMember.objects.create(phase=row, sweep=sweep, index=i, name=member.name, value=member.value,
                                   values=member.values, config=member.config, steps=member.steps,
                                   tokens=member.tokens, run=run)
    return row


def member_run_create(sweep: Sweep, *, user, name: str, config: dict[str, Any], member: bool = True) -> Run:
    """A run of `config` on the sweep's dataset and queue, building on what the sweep's base run builds on, and, with
    an eval suite, evaluated on it at its end; a member of the sweep unless `member` is False (the applied winner)."""
    builds_on = sweep.base_run
    try:
        return runs.run_create(
            team=sweep.team, user=user, dataset=sweep.dataset, overrides=_overrides(config), name=name,
            queue=sweep.queue, sweep=sweep if member else None, base_run=builds_on.base_run if builds_on else None,
            base_kind=builds_on.base_kind if builds_on and builds_on.base_run_id else Run.BaseKind.ADAPTER,
            eval_suites=[sweep.eval_suite] if sweep.eval_suite_id else ())
    except ValidationError as exc:  # the fit planner's refusal names the run: which member fits no GPU
        if "fit" not in exc.message_dict:
            raise
        raise ValidationError({"fit": [f"{name}: {m}" for m in exc.message_dict["fit"]]}) from None


def judged_by(sweep: Sweep, rule: str) -> dict[str, Any]:
    """The rule's overrides when the sweep is judged on a suite's figure: the rules minimise, so they read the
    error 1 - figure (selectors.member_results), named as such in the verdict. The range test reads its curve."""
    if not sweep.eval_suite_id or rule == "lr_range":
        return {}
    return {"metric": "suite_error", "label": f"error (1 - {sweep.eval_figure} on {sweep.eval_suite.name})"}


def _key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in ("output_dir",)}, sort_keys=True, default=str)


def _trained_configs(sweep: Sweep) -> dict[str, Run]:
    """Configs a member of this sweep trained to success, by config: what a later phase need not train again."""
    out = {}
    for member in SweepMember.objects.filter(sweep=sweep, run__status=Run.Status.SUCCEEDED, outcome="").select_related(
            "run"):
        out.setdefault(_key(member.config), member.run)
    return out


def _plan_phase(row: SweepPhase, members: list[SweepMember]) -> plan.Phase:
    return plan.Phase(
        template=row.sweep.template, key=row.key, title=row.title, axis=row.axis,
        members=tuple(plan.Member(name=m.name, value=_value(m.value), values=m.values, config=m.config,
                                  steps=m.steps, tokens=m.tokens) for m in members),
        held=row.held, budget=row.budget, rule=row.rule, rule_params=row.rule_params, params=row.params, base=row.base)


def _value(value: Any) -> Any:
    """JSON made LoftQ's (bits, iters) pairs lists; the templates name and compare them as tuples."""
    return tuple(value) if isinstance(value, list) else value


def _send_state(sweep_id: int) -> None:
    sweep = Sweep.objects.filter(id=sweep_id).first()
    if sweep is not None:
        live.send_sweep_state(sweep.id, sweep_state(sweep))


# Advancing: the task a member's end queues --------------------------------------------------------------------------

def sweep_advance(*, sweep_id: int) -> str:
    """Judge the sweep's current phase and, once decided, chain the next one (or finish). Safe to run any number of
    times, at once or twice for one member's end: the sweep row is locked, and a verdict or phase already written is
    never written again. Returns what it did, for the log and the tests."""
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update(of=("self",)).select_related("team", "dataset", "base_run").filter(
            id=sweep_id).first()
        if sweep is None or sweep.is_terminal or sweep.status == Sweep.Status.CONFIRMING:
            return "nothing to do"
        row = SweepPhase.objects.filter(sweep=sweep).order_by("-index").select_related("sweep").first()
        if row is None:
            return "nothing to do"
        members = list(row.members.select_related("run").order_by("index"))
        results = member_results(members)
        phase = _plan_phase(row, members)
        if sweep.prune:  # each ended member's Optuna trial is told its end (pruning.py)
            pruning.tell_ended(sweep_id=sweep.id, phase_index=row.index, phase_key=row.key, params=row.params,
                               first_eval_step=row.base.get("eval_steps"), members=members, results=results)
        searching = sweep.template == Sweep.SEARCH and row.key == search.KEY
        if row.verdict is None and searching and search.ask_next(sweep=sweep, row=row, members=members,
                                                                 results=results, user=sweep.created_by):
            transaction.on_commit(lambda: _send_state(sweep_id))
            return "search: next trials asked"
        if row.verdict is None:
            verdict = search.decide(phase, results) if searching else rules.decide(phase, results,
                                                                                   **judged_by(sweep, row.rule))
            if not verdict.decided:
                did = _undecided(sweep, row, verdict, results)
                transaction.on_commit(lambda: _send_state(sweep_id))
                return did
            now = timezone.now()
            row.verdict, row.decided_at = verdict.as_dict(), now
            row.save(update_fields=["verdict", "decided_at"])
            for m in members:
                m.result = {k: v for k, v in results[m.name].items() if k != "curve"}
                m.save(update_fields=["result"])
        verdict = rules.Verdict.from_dict(row.verdict)
        did = _chain(sweep, row, phase, verdict, results, user=sweep.created_by)
    transaction.on_commit(lambda: _send_state(sweep_id))
    return did


def _undecided(sweep: Sweep, row: SweepPhase, verdict: rules.Verdict, results: dict) -> str:
    """A phase whose every member ended and that still cannot decide (all diverged, say) ends the sweep: failed,
    with the rule's reason. One waiting for a running, lost or stopped member waits."""
    if all(r["status"] in rules.TERMINAL for r in results.values()):
        _finish(sweep, status=Sweep.Status.FAILED, verdict=f"{row.title}: {verdict.text}")
        row.verdict = verdict.as_dict()
        row.decided_at = timezone.now()
        row.save(update_fields=["verdict", "decided_at"])
        return "failed: undecidable"
    return "waiting"


def _chain(sweep: Sweep, row: SweepPhase, phase: plan.Phase, verdict: rules.Verdict, results: dict, *, user) -> str:
    """After a verdict: the next phase of the procedure, else the confirmation phase, else the end."""
    if SweepPhase.objects.filter(sweep=sweep, index=row.index + 1).exists():
        return "next phase already created"
    try:
        if row.key == "confirm":
            nxt = None
        else:
            nxt = None if sweep.template == Sweep.SEARCH else plan.advance(_template(sweep.template), phase, verdict)
            if nxt is None and sweep.confirm_top:
                nxt = plan.confirmation(phase, verdict, results, top=sweep.confirm_top,
                                        metric=judged_by(sweep, row.rule).get("metric", "final_eval_loss"))
    except (ConfigError, ValidationError) as exc:
        _finish(sweep, status=Sweep.Status.FAILED, verdict=_final_text(sweep, row, verdict),
                error=f"the phase after {row.title} could not be made: {_errors(exc)}")
        return "failed: next phase"
    if nxt is None:
        winner = row.members.filter(name=verdict.winner).first()
        _finish(sweep, status=Sweep.Status.FINISHED, verdict=_final_text(sweep, row, verdict), winner=winner)
        return "finished"
    if not sweep.auto_advance:
        sweep.status = Sweep.Status.CONFIRMING
        sweep.save(update_fields=["status"])
        return "waiting for confirmation"
    try:
        with transaction.atomic():
            _phase_create(sweep, nxt, index=row.index + 1, user=user)
    except ValidationError as exc:
        _finish(sweep, status=Sweep.Status.FAILED, verdict=_final_text(sweep, row, verdict),
                error=f"the phase after {row.title} could not be queued: {exc.message_dict}")
        return "failed: next phase"
    return f"phase {nxt.key} created"


def _final_text(sweep: Sweep, row: SweepPhase, verdict: rules.Verdict) -> str:
    return f"{row.title}: {verdict.text}"


def _finish(sweep: Sweep, *, status: str, verdict: str, winner: SweepMember | None = None, error: str = "") -> None:
    sweep.status, sweep.verdict, sweep.winner, sweep.finished_at = status, verdict, winner, timezone.now()
    sweep.error = error or sweep.error
    sweep.save(update_fields=["status", "verdict", "winner", "finished_at", "error"])


# The user's actions ------------------------------------------------------------------------------------------------

def sweep_confirm(*, sweep: Sweep, user) -> Sweep:
    """Start the next phase of a sweep that waits for confirmation."""
    require_role(user=user, team=sweep.team, role=Role.MEMBER, action="Confirming a sweep's next phase")
    with transaction.atomic():
        locked = Sweep.objects.select_for_update().get(id=sweep.id)
        if locked.status != Sweep.Status.CONFIRMING:
            raise ValidationError({"sweep": f"this sweep is {locked.get_status_display().lower()}, not waiting for "
                                            "confirmation"})
        locked.status = Sweep.Status.RUNNING
        locked.save(update_fields=["status"])
        # Chain now, as the advance would have: the lock is held, so a concurrent advance waits and then finds it.
        row = SweepPhase.objects.filter(sweep=locked).order_by("-index").first()
        members = list(row.members.select_related("run").order_by("index"))
        results = member_results(members)
        verdict = rules.Verdict.from_dict(row.verdict)
        phase = _plan_phase(row, members)
        locked.auto_advance = True  # only for this chain step: the flag itself stays the user's choice
        _chain(locked, row, phase, verdict, results, user=user)
    transaction.on_commit(lambda: _send_state(sweep.id))
    sweep.refresh_from_db()
    return sweep


def sweep_stop(*, sweep: Sweep, user) -> None:
    """Stop the sweep and every member that has not ended (queued ones at once, training ones at their next step)."""
    require_role(user=user, team=sweep.team, role=Role.MEMBER, action="Stopping a sweep")
    with transaction.atomic():
        locked = Sweep.objects.select_for_update().get(id=sweep.id)
        if locked.is_terminal:
            raise ValidationError({"sweep": f"this sweep already {locked.status}"})
        _finish(locked, status=Sweep.Status.STOPPED, verdict=locked.verdict or "stopped before a verdict")
    for run in Run.objects.filter(sweep_members__sweep=sweep).exclude(status__in=list(Run.TERMINAL)).distinct():
        runs.run_stop(run=run, user=user)
    _send_state(sweep.id)
    sweep.refresh_from_db()


def sweep_resume(*, sweep: Sweep, user, queue: str | None = None) -> Sweep:
    """Carry on after a worker died or the sweep was stopped: each member of the current phase whose run is lost,
    stopped or failed (not one the sweep ended early) resumes from its last checkpoint, or starts again without one
    (as does one whose run was deleted); the verdict waits for them. With another `queue` (the dead worker's may have
    no other), the members still queued move there too."""
    require_role(user=user, team=sweep.team, role=Role.MEMBER, action="Resuming a sweep")
    if queue is not None and not runs.QUEUE_NAME.match(queue):
        raise ValidationError({"queue": "letters, digits and _ . @ - only, at most 100"})
    with transaction.atomic():
        locked = Sweep.objects.select_for_update().get(id=sweep.id)
        if locked.status == Sweep.Status.FINISHED:
            raise ValidationError({"sweep": "this sweep finished with a verdict; start a new one"})
        moved = queue is not None and queue != locked.queue
        locked.queue = queue or locked.queue
        row = SweepPhase.objects.filter(sweep=locked).order_by("-index").first()
        ended = (Run.Status.LOST, Run.Status.STOPPED, Run.Status.FAILED)
        members = list(row.members.select_related("run").order_by("index"))
        if moved:
            for m in members:
                if not m.outcome and m.run is not None and m.run.status == Run.Status.QUEUED:
                    runs.run_stop(run=m.run, user=user)
        # A member without a run had it deleted (selectors.member_status): it trains again from the start.
        resumable = [m for m in members if not m.outcome and (m.run is None or m.run.status in ended)]
        if not resumable and locked.status == Sweep.Status.RUNNING:
            raise ValidationError({"sweep": "no member of the current phase is lost, stopped or failed, or had its "
                                            "run deleted"})
        for member in resumable:
            old = member.run
            if old is not None and old.last_checkpoint_path and old.last_checkpoint_step is not None:
                member.run = runs.run_resume(run=old, user=user, queue=locked.queue)
            else:
                name = old.name if old is not None else f"{locked.name} · {row.key} · {member.name}"
                member.run = member_run_create(locked, user=user, name=name, config=member.config)
            member.save(update_fields=["run"])
        locked.status, locked.finished_at, locked.error = Sweep.Status.RUNNING, None, ""
        if row.verdict and not row.verdict.get("winner"):  # an undecidable verdict: judged again once they end
            row.verdict, row.decided_at = None, None
            row.save(update_fields=["verdict", "decided_at"])
        locked.verdict = ""
        locked.save(update_fields=["status", "finished_at", "error", "verdict", "queue"])
    transaction.on_commit(lambda: runs.sweep_advance_enqueue(sweep.id))
    sweep.refresh_from_db()
    return sweep


def sweep_apply_run(*, sweep: Sweep, user, max_steps: int | None = None, name: str = "") -> Run:
    """A run of the winner's config (optionally for longer: the sweep's members are short by design)."""
    member = _winner(sweep)
    overrides = _overrides(member.config)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    return member_run_create(sweep, user=user, name=name or f"{sweep.name}: {member.name}", config=overrides,
                             member=False)


def sweep_apply_preset(*, sweep: Sweep, user, name: str) -> Preset:
    """A team preset of the winner's config (team admins, as presets are curated)."""
    require_role(user=user, team=sweep.team, role=Role.ADMIN, action="Saving a team preset")
    member = _winner(sweep)
    name = (name or "").strip()[:200]
    if not name:
        raise ValidationError({"name": "give the preset a name"})
    if problem := text_problem(name):
        raise ValidationError({"name": problem})
    if Preset.objects.filter(team=sweep.team, name=name).exists():
        raise ValidationError({"name": f"the team already has a preset named {name!r}"})
    config = {k: v for k, v in member.config.items() if k not in NOT_OVERRIDES}
    return Preset.objects.create(team=sweep.team, name=name, config=config, created_by=user,
                                 notes=f"The winner of sweep #{sweep.id} ({sweep.name}): {sweep.verdict}")


def _winner(sweep: Sweep) -> SweepMember:
    if sweep.winner_id is None:
        raise ValidationError({"sweep": "this sweep has no winner yet"})
    return sweep.winner
