"""Every write to the playground: a session started (a run's adapter beside its base model or another run of the team,
checked before anything is queued, a live one of the same sides reused) and queued to the run's queue, served by a
worker through a child process (training/engine/serve.py) that reads the prompts the page sends through Redis and
whose tokens go to the page as they come, released once the chat has been idle (a run queued for that worker waits
for it meanwhile, with the reason on its page: training/playground/hold.py) or by the user."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import asdict
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from dashboard.models import Membership
from training.access import require_role
from training.engine.serve import Request
from training.live import send
from training.models import PlaygroundSession, Run, Worker
from training.playground import hold
from training.runs.process import TrainingProcess

log = logging.getLogger(__name__)
Status = PlaygroundSession.Status
POLL_S = 0.5
# At most this many prompts wait for a session's worker: a page (or API client) that sends faster is told to wait.
MAX_WAITING = 8
YIELDED = "yielded"  # the serving process's end reason when the chat gave its worker to the runs waiting for it


def requests_key(session_id: int) -> str:
    """The Redis list of the session's prompts, under the channel layer's prefix (a test session's keys are its own)."""
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG'].get('prefix', 'tuneboard')}:playground:{session_id}:requests"


async def playground_cancel(session_id: int, request_id: str) -> None:
    """Ask the worker serving the session to end the reply to `request_id` where it is (the serving process reads
    the cancel at once, even while it generates)."""
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        await client.rpush(requests_key(session_id), json.dumps({"type": "cancel", "request": request_id}))
        await client.expire(requests_key(session_id), int(settings.TUNEBOARD_PLAYGROUND_IDLE_S) + 60)
    finally:
        await client.aclose()


async def playground_submit(session_id: int, request: Request) -> str:
    """Queue a checked prompt in Redis for the worker serving the session (the page's websocket and the
    OpenAI-compatible endpoint alike); why it was not queued, or ""."""
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        key = requests_key(session_id)
        if await client.llen(key) >= MAX_WAITING:
            return f"{MAX_WAITING} prompts are already waiting for this model; wait for their replies"
        await client.rpush(key, json.dumps(asdict(request)))
        await client.expire(key, int(settings.TUNEBOARD_PLAYGROUND_IDLE_S) + 60)
    finally:
        await client.aclose()
    return ""


def checkpoint_steps(run: Run) -> list[int]:
    """The steps of the run's saved checkpoints (artifact_dir/checkpoints/checkpoint-N with an adapter)."""
    folder = Path(run.artifact_dir) / "checkpoints" if run.artifact_dir else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(int(p.name.split("-", 1)[1]) for p in folder.glob("checkpoint-*")
                  if p.name.split("-", 1)[1].isdigit() and (p / "adapter_config.json").is_file())


def adapter_of(run: Run, checkpoint_step: int | None, *, field: str) -> str:
    """The run's final adapter, or its checkpoint's; the error names `field` and what there is."""
    if checkpoint_step is None:
        if run.status != Run.Status.SUCCEEDED or not run.adapter_path:
            raise ValidationError({field: f"run #{run.id} is {run.status} and saved no final adapter; choose one of "
                                          "its checkpoints, or wait for it to succeed"})
        return run.adapter_path
    path = Path(run.artifact_dir) / "checkpoints" / f"checkpoint-{checkpoint_step}"
    if not run.artifact_dir or not (path / "adapter_config.json").is_file():
        saved = ", ".join(map(str, checkpoint_steps(run))) or "none"
        raise ValidationError({field: f"run #{run.id} has no checkpoint at step {checkpoint_step}; saved: {saved}"})
    return str(path)


def playground_start(*, run: Run, user, checkpoint_step: int | None = None, beside_run: Run | None = None,
                     beside_checkpoint_step: int | None = None) -> PlaygroundSession:
    """A session serving the run's adapter beside its base model (beside_run None) or beside another run of the same
    team and base model; a live session of the same sides is reused rather than loading the model twice."""
    require_role(user=user, team=run.team, role=Membership.Role.MEMBER, action="Using the playground")
    adapter = adapter_of(run, checkpoint_step, field="checkpoint")
    model = str(run.config.get("model") or "")
    beside_adapter = ""
    if beside_run is not None:
        if beside_run.team_id != run.team_id:
            raise ValidationError({"beside_run": "no such run in this team"})
        if str(beside_run.config.get("model") or "") != model:
            raise ValidationError({"beside_run": f"run #{beside_run.id} trains {beside_run.config.get('model')}, "
                                                 f"this run {model}: the two sides share one loaded base model"})
        beside_adapter = adapter_of(beside_run, beside_checkpoint_step, field="beside_checkpoint")
        if beside_adapter == adapter:
            raise ValidationError({"beside_run": "that is the same adapter as the left side; choose another run or "
                                                 "checkpoint, or the base model"})
    elif beside_checkpoint_step is not None:
        raise ValidationError({"beside_checkpoint": "the base model has no checkpoints"})
    sides = {"team": run.team, "run": run, "adapter_path": adapter, "beside_run": beside_run,
             "beside_adapter_path": beside_adapter, "model": model}
    with transaction.atomic():
        existing = PlaygroundSession.objects.filter(status__in=PlaygroundSession.LIVE, **sides).first()
        if existing is not None:
            return existing
        session = PlaygroundSession.objects.create(
            checkpoint_step=checkpoint_step, beside_checkpoint_step=beside_checkpoint_step, queue=run.queue,
            created_by=user, **sides)
        transaction.on_commit(lambda: _enqueue(session))
    return session


def playground_again(*, session: PlaygroundSession, user) -> PlaygroundSession:
    """The same sides loaded again after the session ended (the page keeps its chat and sends what waits in its box
    once the new session is ready); a live session of those sides is reused."""
    return playground_start(run=session.run, user=user, checkpoint_step=session.checkpoint_step,
                            beside_run=session.beside_run, beside_checkpoint_step=session.beside_checkpoint_step)


def _enqueue(session: PlaygroundSession) -> None:
    try:
        current_app.send_task("training.playground_serve", args=[session.id], queue=session.queue)
    except Exception as exc:  # noqa: BLE001 - an unreachable broker fails the session, not the page
        log.exception("playground %s could not be queued", session.id)
        _end(session.id, Status.FAILED, error=f"the task queue (Redis) did not take it: {exc}")


def session_state(session: PlaygroundSession) -> dict[str, Any]:
    """What the page shows of the session: status, load progress, the worker serving it, why it ended."""
    return {"type": "status", "session": session.id, "status": session.status,
            "status_display": session.get_status_display(), "progress": session.progress,
            "worker": session.worker_name, "end_reason": session.end_reason, "error": session.error,
            "is_live": session.is_live}


def _end(session_id: int, status: str, **fields: Any) -> None:
    updated = PlaygroundSession.objects.filter(id=session_id, status__in=PlaygroundSession.LIVE).update(
        status=status, ended_at=timezone.now(), **fields)
    if updated:
        _send_state(session_id)
    try:
        redis.Redis.from_url(settings.REDIS_URL).delete(requests_key(session_id))
    except redis.RedisError:
        pass  # prompts left there are refused by the consumer: the session has ended


def _send_state(session_id: int) -> None:
    session = PlaygroundSession.objects.filter(id=session_id).first()
    if session is not None:
        send.send_playground_message(session_id, session_state(session))


def playground_serve(*, session_id: int, worker_name: str) -> None:
    """Claim the session once, load its model in a child process, relay prompts to it and its tokens to the page until
    it is released. The one wrapper that owns failure: every outcome is ended or failed, with the reason."""
    claimed = PlaygroundSession.objects.filter(id=session_id, status=Status.QUEUED).update(
        status=Status.LOADING, worker_name=worker_name[:200])
    if not claimed:
        return
    _send_state(session_id)
    session = PlaygroundSession.objects.get(id=session_id)
    process: TrainingProcess | None = None
    try:
        folder = settings.VAR_DIR / "playground" / str(session.id)
        folder.mkdir(parents=True, exist_ok=True)
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"model": session.model, "left": session.adapter_path,
                                    "right": session.beside_adapter_path or None,
                                    "idle_s": settings.TUNEBOARD_PLAYGROUND_IDLE_S}))
        process = TrainingProcess([sys.executable, "-m", "training.engine", "serve", str(spec)], cwd=folder,
                                  stop_file=folder / "STOP", stdin=True)
        _follow(session, process)
    except BaseException as exc:
        if process is not None:
            process.kill()
        log.exception("playground %s failed in the worker", session_id)
        _end(session_id, Status.FAILED, error=str(exc) or repr(exc))
        if not isinstance(exc, Exception):
            raise


class _Relay(threading.Thread):
    """Moves the page's prompts from the session's Redis list to the serving process's stdin."""

    def __init__(self, session_id: int, process: TrainingProcess):
        super().__init__(name=f"playground-relay-{session_id}", daemon=True)
        self.key, self.process = requests_key(session_id), process
        self.stopped = threading.Event()
        self.last_prompt_at = time.time()  # the chat is active: the serving process's idle clock restarts

    def run(self) -> None:
        client = redis.Redis.from_url(settings.REDIS_URL)
        while not self.stopped.is_set():
            try:
                item = client.blpop([self.key], timeout=1)
            except redis.RedisError as exc:
                log.warning("playground relay: %s: %s", type(exc).__name__, exc)
                time.sleep(1)
                continue
            if item is None:
                continue
            self.last_prompt_at = time.time()
            if not self.process.write_line(item[1].decode("utf-8", "replace")):
                return

    def stop(self, reason: str) -> None:
        self.stopped.set()
        self.process.write_line(json.dumps({"type": "stop", "reason": reason}))


def _follow(session: PlaygroundSession, process: TrainingProcess) -> None:
    relay = _Relay(session.id, process)
    relay.start()
    terminal: dict | None = None
    stderr: list[str] = []
    last_check, active_at = 0.0, time.time()
    held = False  # runs waited for this chat at some point
    held_since: float | None = None  # since when runs wait for it now
    try:
        for lines in process.batches(timeout=POLL_S):
            for line in lines:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    terminal = _forward(session, event) or terminal
                    if event.get("type") in ("ready", "token", "reply", "refused"):
                        active_at = time.time()
            stderr = (stderr + process.take_stderr())[-50:]
            now = time.monotonic()
            if now - last_check >= 1.0 and not relay.stopped.is_set():
                last_check = now
                if not PlaygroundSession.objects.filter(id=session.id, status__in=PlaygroundSession.LIVE).exists():
                    relay.stop("ended")  # released by the user, or its run deleted
                    continue
                # An active chat keeps its worker until it has been idle for its idle time, when the serving process
                # ends by itself: the runs queued for the worker meanwhile wait, saying until when; but for
                # HOLD_MAX_S at most, when the chat gives the worker to them.
                last_active, idle_s = max(active_at, relay.last_prompt_at), settings.TUNEBOARD_PLAYGROUND_IDLE_S
                cap = settings.TUNEBOARD_PLAYGROUND_HOLD_MAX_S
                until = hold.held_until(last_active=last_active, idle_s=idle_s, held_since=held_since, max_s=cap)
                if held_since is not None and time.time() >= until and until < last_active + idle_s:
                    relay.stop(YIELDED)  # the serving process ends after the reply it is writing
                    continue
                waiting = hold.runs_hold(session=session, until=datetime.fromtimestamp(until, dt_timezone.utc),
                                         capped=until < last_active + idle_s)
                held_since = (held_since or time.time()) if waiting else None
                held = held or waiting
                _show_hold(session, waiting=waiting, until=until)
    finally:
        relay.stopped.set()
        hold.runs_unhold(worker_name=session.worker_name)
    returncode = process.wait()
    if terminal is not None and terminal["type"] == "finished":
        _end(session.id, Status.ENDED, end_reason=_describe(terminal.get("reason"), held=held))
    elif terminal is not None:
        _end(session.id, Status.FAILED, error=str(terminal.get("message") or terminal.get("error_class")))
    else:
        _end(session.id, Status.FAILED, error=f"the serving process exited with code {returncode} without saying why"
                                              f"\n" + "\n".join(stderr[-20:]))


def _show_hold(session: PlaygroundSession, *, waiting: bool, until: float) -> None:
    """Tell the chat's page whether runs wait for its worker, and until when it keeps it (in its progress)."""
    progress = PlaygroundSession.objects.filter(id=session.id).values_list("progress", flat=True).first() or {}
    shown = {"runs_waiting": waiting, "held_until": round(until) if waiting else None}
    if progress.get("runs_waiting", False) == waiting and progress.get("held_until") == shown["held_until"]:
        return
    PlaygroundSession.objects.filter(id=session.id).update(progress={**progress, **shown})
    _send_state(session.id)


def _describe(reason: Any, *, held: bool = False) -> str:
    reason = str(reason or "")
    if reason == YIELDED:
        return (f"kept its worker for {settings.TUNEBOARD_PLAYGROUND_HOLD_MAX_S:g} s while runs waited for it, the "
                "longest a chat may: the worker went on to them")
    if reason == "idle":
        idle = f"idle for {settings.TUNEBOARD_PLAYGROUND_IDLE_S:g} s"
        return f"{idle}; its worker went on to the runs that waited for it" if held else idle
    return reason


def _forward(session: PlaygroundSession, event: dict) -> dict | None:
    """One event of the serving process to the page (and the row, for loading and ready); the terminal one returned."""
    kind = event.get("type")
    if kind == "loading":
        PlaygroundSession.objects.filter(id=session.id).update(
            progress={k: event.get(k) for k in ("stage", "done", "total")})
        _send_state(session.id)
    elif kind == "ready":
        PlaygroundSession.objects.filter(id=session.id, status=Status.LOADING).update(
            status=Status.READY, ready_at=timezone.now(),
            progress={k: event.get(k) for k in ("device", "load_s", "context", "done", "total")})
        _send_state(session.id)
    elif kind in ("token", "reply", "refused"):
        send.send_playground_message(session.id, {k: v for k, v in event.items() if k not in ("v", "time")})
    elif kind in ("finished", "failed"):
        return event
    return None


def playground_release(*, session: PlaygroundSession, user) -> None:
    """Release the loaded model now (the worker's serving process ends after the reply it is writing)."""
    require_role(user=user, team=session.team, role=Membership.Role.MEMBER, action="Releasing a playground model")
    _end(session.id, Status.ENDED, end_reason=f"released by {user.get_username()}")


def playground_sessions_mark_lost(*, worker_name: str | None = None) -> list[int]:
    """Sessions loading or served by a worker that went silent (or, given its name, that just restarted) are
    ended: the serving process died with that worker, and the page must not say 'ready' for a model nobody holds.
    The periodic check (training/workers/heartbeat.py) calls it."""
    live = PlaygroundSession.objects.filter(status__in=[PlaygroundSession.Status.LOADING,
                                                        PlaygroundSession.Status.READY]).exclude(worker_name="")
    if worker_name is not None:
        doomed = list(live.filter(worker_name=worker_name).values_list("id", flat=True))
        reason = f"its worker {worker_name} restarted"
    else:
        silent = {w.name for w in Worker.objects.filter(name__in=live.values("worker_name")) if w.is_silent}
        doomed = [s.id for s in live.only("id", "worker_name") if s.worker_name in silent]
        reason = "its worker went silent"
    for session_id in doomed:
        _end(session_id, PlaygroundSession.Status.ENDED, end_reason=reason)
    return doomed
