"""Every read the pages, the consumer and the worker make, scoped to the user's teams."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from django.core.paginator import Page, Paginator
from django.db.models import Case, Count, F, Func, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404
from django.urls import reverse

from dashboard.models import Team
from guidance import changes
from guidance.links import IMPACT, guidance_url
from guidance.models import Finding
from training import curves
from training.access import User, team_ids_for
from training.models import Dataset, MetricPoint, Run, RunEvent, Sample, Sweep, Worker
from training.run_config import value_text

log = logging.getLogger(__name__)

# A replay goes out in chunks of this many points: a 100k-step run must not be one 10 MB websocket frame.
REPLAY_CHUNK = 5000


def runs_to_build_on(teams: QuerySet[Team], *, limit: int = 200) -> list[Run]:
    """The teams' succeeded runs that saved an adapter, newest first: what a new run may start from."""
    return list(Run.objects.select_related("team").filter(team__in=teams, status=Run.Status.SUCCEEDED)
                .exclude(adapter_path="").order_by("-id")[:limit])


def recent_models(teams: QuerySet[Team], *, limit: int = 20) -> list[str]:
    """The models the teams' runs trained, newest run first, each once: the run form's picker offers them."""
    names = (Run.objects.filter(team__in=teams).exclude(model_name__isnull=True).exclude(model_name="")
             .order_by("-id").values_list("model_name", flat=True)[:limit * 20])
    return list(dict.fromkeys(names))[:limit]


def _count(queryset: QuerySet, group: str) -> Subquery:
    return Subquery(queryset.order_by().values(group).annotate(n=Count("id")).values("n"), output_field=IntegerField())


def _with_list_columns(runs: QuerySet[Run]) -> QuerySet[Run]:
    """finding_count and, for queued runs, queue_position (1 = next on its queue)."""
    ahead = Run.objects.filter(status=Run.Status.QUEUED, queue=OuterRef("queue"), id__lt=OuterRef("id"))
    return runs.annotate(
        queue_position=Case(
            When(status=Run.Status.QUEUED, then=Coalesce(_count(ahead, "queue"), Value(0)) + 1),
            default=None, output_field=IntegerField(),
        ),
        finding_count=Coalesce(_count(Finding.objects.filter(run=OuterRef("pk")), "run"), Value(0)),
    )


def run_list_for(user: User, *, team: Team | None = None) -> QuerySet[Run]:
    """Runs newest first, with finding_count and queue_position."""
    runs = _with_list_columns(Run.objects.filter(team_id__in=team_ids_for(user))
                              .select_related("team", "dataset", "preset", "worker"))
    return runs.filter(team=team) if team is not None else runs


def run_row_dict(run: Run) -> dict[str, Any]:
    """The live columns of the run list's row (run from _with_list_columns): status, progress, queue, findings."""
    return {"id": run.id, "status": run.status, "status_display": run.get_status_display(),
            "is_terminal": run.is_terminal, "last_step": run.last_step, "total_steps": run.total_steps,
            "progress": run.progress, "queue": run.queue, "queue_position": run.queue_position,
            "finding_count": run.finding_count,
            "held_reason": run.held_reason if run.status == Run.Status.QUEUED else ""}


def run_rows(run_ids: Iterable[int], *, team_ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """run_row_dict of these runs (only those of team_ids, when given), in one query."""
    runs = Run.objects.filter(id__in=list(run_ids))
    if team_ids is not None:
        runs = runs.filter(team_id__in=list(team_ids))
    return [run_row_dict(run) for run in _with_list_columns(runs).order_by("id")]


def run_queue_position(run: Run) -> int | None:
    """1 for the next queued run on its queue; None once it left the queue."""
    if run.status != Run.Status.QUEUED:
        return None
    return Run.objects.filter(status=Run.Status.QUEUED, queue=run.queue, id__lt=run.id).count() + 1


def worker_list() -> QuerySet[Worker]:
    return Worker.objects.prefetch_related("current_runs").order_by("name")


def run_lineage(run: Run) -> list[tuple[int, int | None]]:
    """(run id, the step its own points start after) from the first run of a resume chain to this one."""
    chain: list[tuple[int, int | None]] = []
    current: Run | None = run
    seen: set[int] = set()
    while current is not None and current.id not in seen:
        seen.add(current.id)
        chain.append((current.id, current.resumed_from_step))
        current = current.resumed_from
    return list(reversed(chain))


def curve_parts(run: Run) -> list[curves.Part]:
    """The run's curve as its resume chain's parts (training.curves): what the run page, Compare, sweeps and the API
    draw or serve as the run's points."""
    return curves.curve_parts(run_lineage(run))


def run_earlier_parts(run: Run) -> list[dict[str, Any]]:
    """The parts of the run's curve that earlier runs logged (its resume chain before it, oldest first), as the run
    page draws them apart from its own points: each run, the steps it contributes and the words for it."""
    return [{"run": part.run, "after": part.after, "upto": part.upto,
             "label": f"run #{part.run}, up to step {part.upto}"} for part in curve_parts(run)[:-1]]


def _curve_filter(run: Run) -> Q:
    where = Q()
    for source, after, upto in curve_parts(run):
        part = Q(run_id=source)
        if after >= 0:
            part &= Q(step__gt=after)
        if upto < curves.CURVE_END:
            part &= Q(step__lte=upto)
        where |= part
    return where


POINT_FIELDS = ("step", *MetricPoint.SERIES)
# A point of a run's curve: its values and the run of the resume chain that logged it (the run itself, or one it
# resumed from), so that a page or a script can tell the curve it continues from its own.
CURVE_FIELDS = (*POINT_FIELDS, "run")


def point_dict(point: MetricPoint | dict[str, Any]) -> dict[str, Any]:
    if isinstance(point, dict):
        return {field: point.get(field) for field in POINT_FIELDS}
    return {field: getattr(point, field) for field in POINT_FIELDS}


def run_points(run: Run, *, after_step: int = 0, limit: int | None = None,
               before_step: int | None = None) -> list[dict[str, Any]]:
    """The run's curve after after_step (and before before_step) in step order, joined to the runs it resumed from:
    dicts of CURVE_FIELDS."""
    points = MetricPoint.objects.filter(_curve_filter(run), step__gt=after_step)
    if before_step is not None:
        points = points.filter(step__lt=before_step)
    points = points.order_by("step").values(*CURVE_FIELDS)
    if limit is not None:
        points = points[:limit]
    return list(points)


def run_point_chunks(run: Run, *, after_step: int = 0, before_step: int | None = None
                     ) -> Iterable[list[dict[str, Any]]]:
    """run_points in REPLAY_CHUNK pieces (keyset pagination on step, the unique index's order)."""
    while True:
        chunk = run_points(run, after_step=after_step, limit=REPLAY_CHUNK, before_step=before_step)
        if not chunk:
            return
        yield chunk
        if len(chunk) < REPLAY_CHUNK:
            return
        after_step = chunk[-1]["step"]


def run_point_rows(run: Run, *, after_step: int = 0, before_step: int | None = None,
                   chunk_size: int = 10_000) -> Iterable[tuple]:
    """run_points as tuples of CURVE_FIELDS, in one query read through a server-side cursor `chunk_size` rows at a
    time: an export of a 100,000-step curve, without a dict per point or a query per chunk."""
    points = MetricPoint.objects.filter(_curve_filter(run), step__gt=after_step)
    if before_step is not None:
        points = points.filter(step__lt=before_step)
    return points.order_by("step").values_list(*CURVE_FIELDS).iterator(chunk_size=chunk_size)


def event_dict(event: RunEvent) -> dict[str, Any]:
    # "event", not "type": a live message's own "type" ("event") must not be overwritten by the event's kind.
    return {"seq": event.seq, "event": event.type, "data": event.data, "time": event.time.timestamp()}


def run_events(run: Run, *, after_seq: int = 0) -> list[dict[str, Any]]:
    return [event_dict(e) for e in RunEvent.objects.filter(run=run, seq__gt=after_seq).order_by("seq")]


def sample_dict(sample: Sample) -> dict[str, Any]:
    return {"id": sample.id, "step": sample.step, "prompt": sample.prompt, "completion": sample.completion}


def run_samples(run: Run) -> list[dict[str, Any]]:
    return [sample_dict(s) for s in Sample.objects.filter(run=run).order_by("step", "id")]


def run_status_dict(run: Run) -> dict[str, Any]:
    """What the run page's header shows; sent on every status change and with every replay."""
    return {
        "id": run.id,
        "status": run.status,
        "is_terminal": run.is_terminal,
        "last_step": run.last_step,
        "total_steps": run.total_steps,
        "progress": run.progress,
        "queue_position": run_queue_position(run),
        "held_reason": run.held_reason if run.status == Run.Status.QUEUED else "",
        "started": run.started,
        "derived": run.derived,
        "last_checkpoint_step": run.last_checkpoint_step,
        "error_class": run.error_class,
        "error": run.error,
        "worker": run.worker.name if run.worker_id and run.worker else None,
        "started_at": run.started_at.timestamp() if run.started_at else None,
        "finished_at": run.finished_at.timestamp() if run.finished_at else None,
        # The playground can load it (its final adapter, or a checkpoint): the page shows its button.
        "has_adapter": bool(run.adapter_path or run.last_checkpoint_path),
    }


def run_findings(run: Run) -> QuerySet[Finding]:
    return Finding.objects.filter(run=run).select_related("run__dataset").order_by("step", "code")


def finding_change(finding: Finding) -> dict[str, Any] | None:
    """The config values the finding's Apply sets (guidance.changes), judged on its run's config and size."""
    run = finding.run
    rows = (run.started or {}).get("train_examples") or run.dataset.rows
    found = changes.finding_change(finding.code, list(finding.parameters), run.config or {}, rows=rows,
                                   total=run.total_steps or None)
    return found[1] if found else None


def change_text(config: dict[str, Any], values: dict[str, Any]) -> str:
    """"learning_rate 2e-05 → 0.0002": each changed field from the run's value to the new one."""
    return ", ".join(f"{name} {value_text(config.get(name))} → {value_text(value)}" for name, value in values.items())


def run_adapter_files(run: Run) -> list[dict[str, Any]]:
    """The files of the run's saved adapter (name and size), for download; [] until it finished."""
    if not run.adapter_path:
        return []
    folder = Path(run.adapter_path)
    if not folder.is_dir():
        return []
    return [{"name": f.name, "size": f.stat().st_size} for f in sorted(folder.iterdir()) if f.is_file()]


def run_adapter_file(run: Run, name: str):
    """The path of one adapter file of the run; Http404 for any name that is not one of run_adapter_files (other
    folders, "..", a NUL byte, links out): the name is only ever compared with the folder's own listing, never handed
    to the OS."""
    listed = {f["name"] for f in run_adapter_files(run)}
    if name not in listed or name.startswith("."):
        raise Http404("No such file")
    folder = Path(run.adapter_path).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        raise Http404("No such file")
    return path


def run_page_for(user: User, page_number: Any, *, per_page: int, runs: QuerySet[Run] | None = None) -> Page:
    """One page of run_list_for: of `runs` (the user's, filtered and ordered) when given, else newest first. The
    page's ids come from the ordered ids alone (for newest first, the (team, -created_at) index); only those rows get
    the per-run subqueries, so a deep page of 10,000 runs costs what the first one does."""
    ordered = runs if runs is not None else (Run.objects.filter(team_id__in=team_ids_for(user))
                                             .order_by("-created_at", "-id"))
    page = Paginator(ordered.values_list("id", flat=True), per_page).get_page(page_number)
    ids = list(page.object_list)
    by_id = {run.id: run for run in run_list_for(user).filter(id__in=ids)}
    return Page([by_id[i] for i in ids if i in by_id], page.number, page.paginator)


def run_table_choices(team_ids: list[int]) -> dict[str, list]:
    """What the runs table's filters offer: the teams' datasets, models run, sweeps (newest 200) and tags in use."""
    runs = Run.objects.filter(team_id__in=team_ids)
    tags = (runs.exclude(tags=[]).annotate(tag=Func(F("tags"), function="unnest")).order_by("tag")
            .values_list("tag", flat=True).distinct())
    return {
        "datasets": list(Dataset.objects.filter(team_id__in=team_ids).order_by("name").values_list("id", "name")),
        "models": [m for m in runs.order_by("model_name").values_list("model_name", flat=True).distinct() if m],
        "sweeps": list(Sweep.objects.filter(team_id__in=team_ids).order_by("-id").values_list("id", "name")[:200]),
        "tags": list(tags),
    }


def finding_dict(finding: Finding) -> dict[str, Any]:
    """What the run page, the run list and the live message show of a finding."""
    return {"id": finding.id, "code": finding.code, "severity": finding.severity, "step": finding.step,
            "title": finding.title, "message": finding.message, "evidence": finding.evidence,
            "parameters": list(finding.parameters),
            "guidance": [{"param": p, "url": guidance_url(p, IMPACT)} for p in finding.parameters],
            "apply": _finding_apply(finding)}


def _finding_apply(finding: Finding) -> dict[str, str] | None:
    """The finding's Apply: the New run form from its run with its change made; None where it names no change."""
    try:
        values = finding_change(finding)
    except Exception:  # noqa: BLE001 - an Apply advises; its bug must not hide the finding
        log.exception("finding %s: no change computed", finding.id)
        return None
    if not values:
        return None
    return {"url": f"{reverse('run_new')}?from={finding.run_id}&finding={finding.id}",
            "text": change_text(finding.run.config or {}, values)}


def findings_for_runs(runs: Iterable[Run]) -> dict[int, list[dict[str, Any]]]:
    """Each run's findings in step order, in one query (the Compare page)."""
    out: dict[int, list[dict[str, Any]]] = {run.id: [] for run in runs}
    for finding in Finding.objects.filter(run_id__in=list(out)).order_by("run_id", "step", "code"):
        out[finding.run_id].append(finding_dict(finding))
    return out
