"""The one way worker code tells browsers about a run: a typed message to the run's Channels group."""
from __future__ import annotations

import logging
from typing import Any, Literal

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from training.engine.events import json_safe  # the engine's convention for non-finite numbers

log = logging.getLogger(__name__)

# point: one step's numbers (metrics or eval); event: a RunEvent; sample: a generation; status: the run's
# status and progress; log: new stderr lines of the training process; finding: a symptom a detector just saw.
MessageType = Literal["point", "event", "sample", "status", "log", "finding"]
MESSAGE_TYPES: frozenset[str] = frozenset(MessageType.__args__)  # type: ignore[attr-defined]


def run_group(run_id: int) -> str:
    return f"run.{run_id}"

def send_run_message(run_id: int, type_: MessageType, payload: dict[str, Any]) -> bool:
    """Send to everyone watching the run; False if Redis could not take it (the database still has it)."""
    if type_ not in MESSAGE_TYPES:
        raise ValueError(f"unknown run message type {type_!r}; allowed: {', '.join(sorted(MESSAGE_TYPES))}")
    if "type" in payload:
        raise ValueError(f"a {type_} message's payload must not have its own 'type' key: it would replace {type_!r}")
    message = {"type": "run.message", "message": {"type": type_, **json_safe(payload)}}
    try:
        async_to_sync(get_channel_layer().group_send)(run_group(run_id), message)
    except Exception as exc:  # noqa: BLE001 - a Redis outage must never stop a training run
        log.warning("run %s: live %s message not sent: %s: %s", run_id, type_, type(exc).__name__, exc)
        return False
    return True
