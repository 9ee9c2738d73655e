"""The one way worker code tells browsers about a run: a typed message to the run's Channels group, and the run's
row to its team's run lists; and the way the web app tells a user's open websockets that their access changed."""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any, Literal

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


def user_group(user_id: int) -> str:
    """Every open websocket of the user: told when the user's access may have shrunk."""
    return f"user.{user_id}"


def sweep_group(sweep_id: int) -> str:
    """Everyone with the sweep's page open: its state whenever a member ends, a phase is decided or one begins."""
    return f"sweep.{sweep_id}"


def playground_group(session_id: int) -> str:
    """Everyone with the playground session's page open: its loading, status and the tokens of its replies."""
    return f"playground.{session_id}"


def send_playground_message(session_id: int, message: dict[str, Any]) -> bool:
    """A playground message ({type: status | token | reply | refused, ...}) to the session's pages; False if Redis
    could not take it."""
    return _group_send(playground_group(session_id), {"type": "playground.message", "message": json_safe(message)},
                       f"playground {session_id}: {message.get('type')}")


def send_sweep_state(sweep_id: int, state: dict[str, Any]) -> bool:
    """The sweep's whole state (training.sweeps.selectors.sweep_state) to its page; False if Redis could not take it."""
    return _group_send(sweep_group(sweep_id), {"type": "sweep.state", "state": json_safe(state)},
                       f"sweep {sweep_id}: state")


def send_access_changed(user_id: int) -> bool:
    """Ask every open websocket of the user to re-check its access now (training.live.access_signals sends it on
    commit); False if Redis could not take it (the sockets' periodic re-check still catches the change)."""
    return _group_send(user_group(user_id), {"type": "access.changed"}, f"user {user_id}: access changed")


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
    future = None
    try:
        future = _sender_loop().submit(group, message)
        future.result(timeout=SEND_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - a Redis outage must never stop a training run
        if future is not None:
            future.cancel()  # given up: it must not arrive later, out of order
        log.warning("%s not sent: %s: %s", what, type(exc).__name__, exc)
        return False
    return True


SEND_TIMEOUT_S = 30.0  # past the layer's 15 s socket timeout: a send that hangs longer is given up, not waited on


class _SenderLoop:
    """One event loop in a daemon thread that every group send of this process runs on.

    async_to_sync would start a thread and an event loop for each send, and channels-redis keeps its connections
    per event loop, so each message paid a new thread, a new loop and a new Redis connection (~3 ms, a third of a
    batch's recording time on a 2-core machine). Here the loop, and so the layer's Redis connections, live as
    long as the process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="tuneboard-live-sender", daemon=True).start()

    def submit(self, group: str, message: dict[str, Any]):
        async def send() -> None:
            await get_channel_layer().group_send(group, message)

        return asyncio.run_coroutine_threadsafe(send(), self.loop)


_sender: _SenderLoop | None = None
_sender_lock = threading.Lock()


def _sender_loop() -> _SenderLoop:
    """This process's sender loop; a new one after a fork (a forked child has the loop but not its thread)."""
    global _sender
    with _sender_lock:
        if _sender is None or _sender.pid != os.getpid():
            _sender = _SenderLoop()
        return _sender
