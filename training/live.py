"""The one way worker code tells browsers about a run: a typed message to the run's Channels group, and the run's
row to its team's run lists."""
from __future__ import annotations

import logging
from typing import Any, Literal

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from training.engine.events import json_safe  # the engine's convention for non-finite numbers
from training.models import Run
from training.selectors import run_rows

log = logging.getLogger(__name__)

# points: a batch of metric points, each {kind: metrics | eval, step, ...}, with after: {kind: the highest step of
# that kind sent before it, or null} (a consumer that lacks those reads them from the database); event: a RunEvent;
# sample: a generation; status: the run's status and progress; log: new stderr lines of the training process;
# finding: a symptom a detector just saw.
MessageType = Literal["points", "event", "sample", "status", "log", "finding"]
MESSAGE_TYPES: frozenset[str] = frozenset(MessageType.__args__)  # type: ignore[attr-defined]


def run_group(run_id: int) -> str:
    return f"run.{run_id}"


def team_runs_group(team_id: int) -> str:
    """Everyone with the team's run list open."""
    return f"team.{team_id}.runs"


def send_run_message(run_id: int, type_: MessageType, payload: dict[str, Any]) -> bool:
    """Send to everyone watching the run; False if Redis could not take it (the database still has it)."""
    if type_ not in MESSAGE_TYPES:
        raise ValueError(f"unknown run message type {type_!r}; allowed: {', '.join(sorted(MESSAGE_TYPES))}")
    if "type" in payload:
        raise ValueError(f"a {type_} message's payload must not have its own 'type' key: it would replace {type_!r}")
    return _group_send(run_group(run_id), {"type": "run.message", "message": {"type": type_, **json_safe(payload)}},
                       f"run {run_id}: live {type_} message")


def send_run_row(run: Run) -> bool:
    """Send the run's row as it is now (status, progress, queue, findings) to its team's run lists; False if the run
    is gone or Redis could not take it."""
    rows = run_rows([run.id])
    if not rows:
        return False
    return _group_send(team_runs_group(run.team_id), {"type": "run.row", "row": json_safe(rows[0])},
                       f"run {run.id}: run list row")


def _group_send(group: str, message: dict[str, Any], what: str) -> bool:
    try:
        async_to_sync(get_channel_layer().group_send)(group, message)
    except Exception as exc:  # noqa: BLE001 - a Redis outage must never stop a training run
        log.warning("%s not sent: %s: %s", what, type(exc).__name__, exc)
        return False
    return True
