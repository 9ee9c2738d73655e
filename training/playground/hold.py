"""A playground chat keeps its worker: while a session is live, the runs queued for its worker's queue wait, each with
the reason on its page and in the run list, unless a worker of the queue has a slot that neither a run nor a
playground holds (Celery hands the run to it); the session ends once its chat has been idle
TUNEBOARD_PLAYGROUND_IDLE_S, and the worker takes them."""
from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from training.live import send as live
from training.models import PlaygroundSession, Run, Worker
from training.selectors import run_status_dict

SERVING = [PlaygroundSession.Status.LOADING, PlaygroundSession.Status.READY]


def _prefix(worker_name: str) -> str:
    return f"waiting: a playground chat holds the worker {worker_name} "


def hold_reason(*, worker_name: str, until: datetime, capped: bool = False) -> str:
    """What a held run's page says: which worker, until when, and why then (said to any team: no chat is named)."""
    at = timezone.localtime(until).strftime("%H:%M:%S %Z").strip()
    why = (f"the longest a chat keeps its worker while runs wait, {settings.TUNEBOARD_PLAYGROUND_HOLD_MAX_S:g} s"
           if capped else f"{settings.TUNEBOARD_PLAYGROUND_IDLE_S:g} s after its last message")
    return f"{_prefix(worker_name)}until {at} ({why})"


def held_until(*, last_active: float, idle_s: float, held_since: float | None, max_s: float) -> float:
    """When the chat gives its worker up (epoch seconds): `idle_s` after it was last active, and, while runs wait
    for it (since `held_since`), `max_s` after they began to wait at the latest."""
    until = last_active + idle_s
    return until if held_since is None else min(until, held_since + max_s)


def free_slot(queue: str) -> str | None:
    """A live worker of the queue with a slot no run and no playground session holds, or None."""
    for worker in Worker.objects.filter(queues__contains=[queue]).order_by("name"):
        if worker.is_silent:
            continue
        serving = PlaygroundSession.objects.filter(worker_name=worker.name, status__in=SERVING).count()
        if worker.current_runs.count() + serving < worker.slots:
            return worker.name
    return None


def runs_hold(*, session: PlaygroundSession, until: datetime, capped: bool = False) -> bool:
    """Mark the runs queued for the session's queue as waiting for this chat (those no other reason holds); False,
    and nothing marked, when none is queued or a free slot of the queue will take them."""
    queued = Run.objects.filter(queue=session.queue, status=Run.Status.QUEUED)
    if not queued.exists() or free_slot(session.queue) is not None:
        runs_unhold(worker_name=session.worker_name)
        return False
    reason = hold_reason(worker_name=session.worker_name, until=until, capped=capped)
    mine = queued.filter(Q(held_reason="") | Q(held_reason__startswith=_prefix(session.worker_name)))
    changed = list(mine.exclude(held_reason=reason).values_list("id", flat=True))
    if changed:
        Run.objects.filter(id__in=changed, status=Run.Status.QUEUED).update(held_reason=reason)
        _tell(changed)
    return True


def runs_unhold(*, worker_name: str) -> None:
    """The chat ended (or a slot is free): its reason leaves the runs it held, which their worker now takes."""
    held = Run.objects.filter(status=Run.Status.QUEUED, held_reason__startswith=_prefix(worker_name))
    ids = list(held.values_list("id", flat=True))
    if ids:
        Run.objects.filter(id__in=ids, held_reason__startswith=_prefix(worker_name)).update(held_reason="")
        _tell(ids)


def _tell(run_ids: list[int]) -> None:
    for run in Run.objects.filter(id__in=run_ids).select_related("worker"):
        live.send_run_message(run.id, "status", run_status_dict(run))
        live.send_run_row(run)
