"""Reads of sweeps: a member's result as the decision rules read it, and a sweep's whole state as its page and its
websocket show it."""
from __future__ import annotations

import math
from operator import itemgetter
from typing import Any

from django.db.models import Count, Max, Min, QuerySet
from django.http import Http404

from guidance.models import Finding
from training import access, curves, selectors
from training.models import Evaluation, MetricPoint, Run, Sweep, SweepMember, SweepPhase
from training.sweeps import plan, rules

GB = 1e9

# A member's run status -> the status the rules read (rules.TERMINAL ends it; anything else waits).
RUN_TO_RESULT = {Run.Status.SUCCEEDED: "succeeded", Run.Status.FAILED: "failed", Run.Status.STOPPED: "stopped",
                 Run.Status.LOST: "lost"}


def sweep_list_for(user, *, team=None) -> QuerySet[Sweep]:
    sweeps = Sweep.objects.filter(team_id__in=access.team_ids_for(user)).select_related("team", "dataset")
    return sweeps.filter(team=team) if team is not None else sweeps


def get_sweep_for_user(user, sweep_id: int) -> Sweep:
    """The sweep if it is one of the user's teams'; Http404 otherwise, as for another team's run."""
    sweep = sweep_list_for(user).filter(id=sweep_id).first()
    if sweep is None:
        raise Http404("No such sweep")
    return sweep


# Why a member has no run: every member is created with one (services._phase_create, search._member_create), so a
# member without one had it deleted (the admin, a shell). It counts as failed; Resume trains it again.
RUN_DELETED = "its run was deleted"


def member_status(member: SweepMember, run: Run | None) -> str:
    """What the member is now: its early end (diverged, pruned) wins over its run's status; a member whose run was
    deleted failed."""
    if member.outcome:
        return member.outcome
    if run is None:
        return "failed"
    return RUN_TO_RESULT.get(run.status, run.status)


def member_results(members: list[SweepMember]) -> dict[str, dict[str, Any]]:
    """Each member's result dict (rules.py's keys), read in four queries for the whole phase."""
    runs = {m.run_id: m.run for m in members if m.run_id}
    run_ids = list(runs)
    parts = {rid: selectors.curve_parts(runs[rid]) for rid in run_ids}
    all_ids = sorted({part.run for run_parts in parts.values() for part in run_parts})
    points: dict[int, list[tuple]] = {i: [] for i in all_ids}
    for row in (MetricPoint.objects.filter(run_id__in=all_ids).order_by("run_id", "step")
                .values_list("run_id", "step", "loss", "eval_loss", "learning_rate", "tokens_per_s",
                             "peak_vram_bytes")):
        points[row[0]].append(row[1:])
    findings: dict[int, list[tuple[int, str]]] = {i: [] for i in all_ids}
    for run_id, code, step in (Finding.objects.filter(run_id__in=all_ids).order_by("step", "code")
                               .values_list("run_id", "code", "step")):
        findings[run_id].append((step, code))
    judged = _suite_errors(members, runs)
    out = {}
    for m in members:
        run = runs.get(m.run_id)
        result: dict[str, Any] = {"status": member_status(m, run), "run_id": m.run_id}
        if run is None and not m.outcome:
            result["note"] = RUN_DELETED
        if m.run_id in judged:
            status, error = judged[m.run_id]
            if result["status"] == "succeeded":
                result["status"] = status
            result["suite_error"] = error
        if run is not None:
            curve = curves.joined(parts[run.id], points, step=itemgetter(0))
            result.update(_figures(curve))
            # An earlier run's findings after the checkpoint its continuation resumed from were trained over.
            result["findings"] = [f"{code}@{step}" for step, code in
                                  curves.joined(parts[run.id], findings, step=itemgetter(0))]
            result["trainable_params"] = (run.started or {}).get("trainable_params")
            result["init_s"] = (run.started or {}).get("load_s")
        out[m.name] = result
    return out


def _suite_errors(members: list[SweepMember], runs: dict[int, Run]) -> dict[int, tuple[str, float | None]]:
    """For a sweep judged on an eval suite: each succeeded member run's (status, 1 - figure) from its final
    evaluation on the suite; "evaluating" while that is queued or running (the verdict waits), "failed" if it
    failed or lacks the figure."""
    sweep = members[0].sweep if members else None
    if sweep is None or not sweep.eval_suite_id:
        return {}
    latest: dict[int, Evaluation] = {}
    for evaluation in Evaluation.objects.filter(run_id__in=list(runs), suite_id=sweep.eval_suite_id, adapters="on",
                                                checkpoint_step=None).order_by("id"):
        latest[evaluation.run_id] = evaluation
    out: dict[int, tuple[str, float | None]] = {}
    for run_id, run in runs.items():
        if run.status != Run.Status.SUCCEEDED:
            continue
        evaluation = latest.get(run_id)
        if evaluation is None or not evaluation.is_terminal:
            out[run_id] = ("evaluating", None)
            continue
        figure = (evaluation.figures or {}).get(sweep.eval_figure)
        if evaluation.status != Evaluation.Status.SUCCEEDED or not isinstance(figure, (int, float)):
            out[run_id] = ("failed", None)
        else:
            out[run_id] = ("succeeded", 1.0 - float(figure))
    return out


def _figures(curve: list[tuple]) -> dict[str, Any]:
    evals = [p[2] for p in curve if p[2] is not None]
    losses = [p[1] for p in curve if p[1] is not None]
    speeds = sorted(p[4] for p in curve if p[4] is not None and math.isfinite(p[4]))
    vram = [p[5] for p in curve if p[5] is not None]
    tail = losses[-10:]
    return {
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None,
        "train_loss": sum(tail) / len(tail) if tail else None,
        "tokens_per_s": speeds[len(speeds) // 2] if speeds else None,  # the median: the first steps warm up
        "peak_vram_gb": max(vram) / GB if vram else None,
        "curve": [[p[3], p[1]] for p in curve if p[1] is not None and p[3] is not None],
        "last_step": curve[-1][0] if curve else 0,
    }


def sweep_state(sweep: Sweep) -> dict[str, Any]:
    """Everything the sweep page draws, in a handful of queries whatever the number of members."""
    phases = list(SweepPhase.objects.filter(sweep=sweep).order_by("index"))
    members = list(SweepMember.objects.filter(sweep=sweep).select_related("run").order_by("phase__index", "index"))
    by_phase: dict[int, list[SweepMember]] = {}
    for m in members:
        by_phase.setdefault(m.phase_id, []).append(m)
    run_ids = [m.run_id for m in members if m.run_id]
    finding_counts = dict(Finding.objects.filter(run_id__in=run_ids).values("run_id").annotate(n=Count("id"))
                          .values_list("run_id", "n")) if run_ids else {}
    evals = {}
    if run_ids:
        last = (MetricPoint.objects.filter(run_id__in=run_ids, eval_loss__isnull=False).values("run_id")
                .annotate(best=Min("eval_loss"), step=Max("step")))
        evals = {row["run_id"]: row for row in last}
    out_phases = []
    for phase in phases:
        rows = []
        for m in by_phase.get(phase.id, []):
            run = m.run
            rows.append({
                "id": m.id, "name": m.name, "value": m.value, "values": m.values, "steps": m.steps,
                "tokens": m.tokens, "status": member_status(m, run), "outcome": m.outcome,
                "outcome_note": m.outcome_note or (RUN_DELETED if run is None else ""), "run_id": m.run_id,
                "run_status": run.status if run else None,
                "progress": run.progress if run else None,
                "last_step": run.last_step if run else 0,
                "best_eval_loss": evals.get(m.run_id, {}).get("best"),
                "final_eval_loss": (m.result or {}).get("final_eval_loss"),
                "findings": finding_counts.get(m.run_id, 0),
                "winner": bool(phase.verdict and phase.verdict.get("winner") == m.name),
            })
        out_phases.append({
            "id": phase.id, "index": phase.index, "key": phase.key, "title": phase.title, "axis": phase.axis,
            "rule": phase.rule, "rule_params": phase.rule_params, "held": phase.held, "budget": phase.budget,
            "verdict": phase.verdict, "members": rows, "beyond": _beyond(sweep, phase, by_phase.get(phase.id, [])),
        })
    winner = next((m for m in members if m.id == sweep.winner_id), None)
    return {
        "id": sweep.id, "name": sweep.name, "template": sweep.template, "status": sweep.status,
        "status_label": sweep.get_status_display(), "is_terminal": sweep.is_terminal, "verdict": sweep.verdict,
        "error": sweep.error, "auto_advance": sweep.auto_advance, "early_stop": sweep.early_stop,
        "prune": sweep.prune, "confirm_top": sweep.confirm_top, "phases": out_phases,
        "winner": {"id": winner.id, "name": winner.name, "values": winner.values, "run_id": winner.run_id}
        if winner else None,
        "run_ids": run_ids,
    }


def _beyond(sweep: Sweep, phase: SweepPhase, members: list[SweepMember]) -> dict[str, Any] | None:
    """plan.beyond for a decided phase of a procedure: whether its winner sits at an edge of the values swept, the
    values past it, and the winner's run a follow-up sweep builds on (None when that run is gone or not succeeded:
    then the values are said but no sweep is offered)."""
    template = plan.TEMPLATES.get(sweep.template)
    winner_name = (phase.verdict or {}).get("winner")
    winner = next((m for m in members if m.name == winner_name), None)
    if template is None or winner is None:
        return None
    found = plan.beyond(template, phase.key, rule=phase.rule, axis=phase.axis, swept=[m.value for m in members],
                        winner_value=winner.value, winner_config=winner.config, params=phase.params)
    if found is None:
        return None
    builds_on = winner.run_id if winner.run is not None and winner.run.status == Run.Status.SUCCEEDED else None
    later = phase.key if phase.key != template.phases[0].key else None  # the sweep form's blank: the first phase
    return {**found.as_dict(), "template": sweep.template, "phase": later, "base_run": builds_on}


def stalled_sweep_ids(*, now, grace_s: float = 30.0) -> list[int]:
    """Running sweeps whose current phase has every member ended more than `grace_s` ago but no verdict, or a
    winning verdict and no next phase: their advance message was lost (Redis down as the last member ended) and
    the periodic check (training/workers/heartbeat.py) queues it again. A phase waiting for a lost or stopped member
    to be resumed is not stalled."""
    out = []
    for sweep in Sweep.objects.filter(status=Sweep.Status.RUNNING).only("id"):
        row = SweepPhase.objects.filter(sweep=sweep).order_by("-index").first()
        if row is None or (row.verdict is not None and not row.verdict.get("winner")):
            continue
        everyone = list(SweepMember.objects.filter(phase=row).values_list("run_id", "run__status",
                                                                          "run__finished_at"))
        # A member whose run was deleted has ended (failed) too, at no recorded time.
        statuses = [(status, ended) for run_id, status, ended in everyone if run_id is not None]
        if not everyone or any(status not in (Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.STOPPED)
                               or ended is None for status, ended in statuses):
            continue
        waits_for_resume = SweepMember.objects.filter(phase=row, outcome="", run__status=Run.Status.STOPPED).exists()
        if Evaluation.objects.filter(run__sweep_members__phase=row, status__in=[Evaluation.Status.QUEUED,
                                                                               Evaluation.Status.RUNNING]).exists():
            continue  # a sweep judged on a suite waits for its members' evaluations, whose end advances it
        last = max((ended.timestamp() for _, ended in statuses), default=0.0)
        if not waits_for_resume and last < now.timestamp() - grace_s:
            out.append(sweep.id)
    return out


def verdict_of(phase: SweepPhase) -> rules.Verdict | None:
    return rules.Verdict.from_dict(phase.verdict) if phase.verdict else None


def seconds_per_step(team, *, model: str, backend: str, limit: int = 50) -> tuple[float, int] | None:
    """The median wall seconds per step (model loading included) of the team's latest succeeded runs of this model
    and backend, and how many runs it read: the sweep form's expected GPU time. None with no such run yet."""
    rows = (Run.objects.filter(team=team, status=Run.Status.SUCCEEDED, config__model=model, config__backend=backend,
                               started_at__isnull=False, finished_at__isnull=False, last_step__gt=0)
            .order_by("-id").values_list("started_at", "finished_at", "last_step")[:limit])
    per_step = sorted((end - start).total_seconds() / steps for start, end, steps in rows)
    if not per_step:
        return None
    return per_step[len(per_step) // 2], len(per_step)
