"""The websockets: a run page's (replay of everything stored, then the run's live messages, each point once) and
the run list's (each row's status, progress, queue position and findings as they change). While open, each re-checks
that its user may still see what it streams, and closes when not: at once when told through the user's group
(training.live.access_signals pushes "access.changed" when a membership is deleted or moved, or the user deactivated
or deleted), and every TUNEBOARD_WS_ACCESS_RECHECK_S as the backstop for changes that send no signal."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import weakref
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http import Http404

from dashboard.tokens.services import token_still_usable
from training import access, selectors
from training.engine.events import json_safe
from training.live.send import run_group, team_runs_group, user_group
from training.selectors import finding_dict

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404  # also for another team's run: the two must look the same
# The run list's user left one of its teams (or was deactivated or deleted): the page reconnects, and the new socket
# joins the teams left (or is refused as logged out).
CLOSE_TEAMS_CHANGED = 4403
# A run list page shows at most this many rows (RUNS_PER_PAGE is 50).
WATCH_MAX_RUNS = 200
# A stored point (one row per step) holds each kind of point when that kind's main value is set.
KIND_FIELDS = (("metrics", "loss"), ("eval", "eval_loss"))
# Group joins and leaves in flight at once per event loop. Each takes a Redis connection from the channel layer's
# pool, which refuses (MaxConnectionsError, a 500 to the browser) past redis-py's default 100: 100 sockets
# connecting together (a server restart, the live bench) each join their user's group before anything else waits.
GROUP_CHANGES_AT_ONCE = 32
_group_changes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _group_change_slot() -> asyncio.Semaphore:
    """This event loop's limit on group changes (a semaphore belongs to one loop; tests run several)."""
    loop = asyncio.get_running_loop()
    slot = _group_changes.get(loop)
    if slot is None:
        slot = _group_changes[loop] = asyncio.Semaphore(GROUP_CHANGES_AT_ONCE)
    return slot


class JsonRequests(AsyncJsonWebsocketConsumer):
    """Text frames holding JSON objects only; anything else is answered with an error naming what is allowed. The
    socket's groups are left, and the socket closed, once may_still_watch() says its user lost access: checked when
    the user's group says their access changed, and periodically."""

    ALLOWED: list[dict[str, str]] = []
    # How the socket closes once its user may no longer see what it streams.
    ACCESS_LOST_CODE = CLOSE_NOT_FOUND
    groups_joined: tuple[str, ...] = ()
    access_check: asyncio.Task | None = None
    access_lost = False

    async def follow_user(self) -> None:
        """Join the user's group before connect reads their access: a change pushed while connect reads is handled
        (re-checked) once connect is done, so none falls between the read and the join."""
        await self.add_groups(user_group(self.user.id))

    async def add_groups(self, *groups: str) -> None:
        for group in groups:
            self.groups_joined += (group,)
            async with _group_change_slot():
                await self.channel_layer.group_add(group, self.channel_name)

    async def join(self, *groups: str) -> None:
        """Join the groups, accept, and start the periodic re-check of the user's access (connect's last step)."""
        await self.add_groups(*groups)
        await self.accept()
        self.access_check = asyncio.create_task(self.recheck_periodically())

    async def refuse(self, code: int) -> None:
        await self.leave()
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        if self.access_check is not None:
            self.access_check.cancel()
        await self.leave()

    async def leave(self) -> None:
        for group in self.groups_joined:
            async with _group_change_slot():
                await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = ()

    async def access_changed(self, message: dict) -> None:
        """The user's access may have shrunk (training.live.send.send_access_changed): re-check now."""
        await self.recheck_access()

    async def recheck_periodically(self) -> None:
        """The backstop for changes no signal announced (a queryset's update(), a message Redis lost): a check at
        least once in TUNEBOARD_WS_ACCESS_RECHECK_S, spread over its last quarter so that sockets opened together (a
        server restart) do not all ask the database at the same moment."""
        while not self.access_lost:
            await asyncio.sleep(settings.TUNEBOARD_WS_ACCESS_RECHECK_S * random.uniform(0.75, 1.0))
            await self.recheck_access()

    async def recheck_access(self) -> None:
        """A member removed from the team, a deactivated or a deleted user stops getting its messages: the check
        reads the database (never writes it), then the socket leaves its groups and closes."""
        if self.access_lost:
            return
        try:
            allowed = await database_sync_to_async(self.may_still_connect)()
        except Exception as exc:  # noqa: BLE001 - a database outage is no loss of access: check again next time
            log.warning("websocket access re-check failed: %s: %s", type(exc).__name__, exc)
            return
        if not allowed and not self.access_lost:
            self.access_lost = True
            await self.leave()
            await self.close(code=self.ACCESS_LOST_CODE)

    # A socket about one object (a run, a sweep, a playground session): getter(user, id) -> the object, or Http404
    # for another team's or a missing one. Set by open_object; the default may_still_watch asks it again.
    watched: tuple[Any, int] | None = None

    async def open_object(self, getter, url_kwarg: str) -> Any | None:
        """connect's first steps for such a socket: the user (4401 without one), their group, then the object named by
        the URL (4404 for another team's or a missing one). None when the socket was closed instead."""
        self.user = self.user_or_none()
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return None
        await self.follow_user()
        try:
            obj = await database_sync_to_async(getter)(self.user, int(self.scope["url_route"]["kwargs"][url_kwarg]))
        except (Http404, ValueError):
            await self.refuse(CLOSE_NOT_FOUND)
            return None
        self.watched = (getter, obj.id)
        return obj

    def may_still_connect(self) -> bool:
        """A socket opened with an API token (dashboard/tokens/websocket.py) needs the token still good (not revoked,
        not expired) as well as its user's access."""
        token_id = self.scope.get("api_token_id")
        if token_id is not None and not token_still_usable(token_id):
            return False
        return self.may_still_watch()

    def may_still_watch(self) -> bool:
        """Gone from the object's team looks like the object gone: the page says "not found" and stops."""
        if self.watched is None:
            raise NotImplementedError
        getter, object_id = self.watched
        try:
            getter(self.user, object_id)
        except Http404:
            return False
        return True

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        if self.access_lost:
            return  # a message that was already on its way when access ended
        await super().send(text_data, bytes_data, close)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.error("send text frames holding JSON")
            return
        try:
            content = json.loads(text_data)
        except json.JSONDecodeError as exc:
            await self.error(f"not JSON: {exc}")
            return
        await self.receive_json(content)

    async def error(self, message: str) -> None:
        await self.send_json({"type": "error", "error": message, "allowed": self.ALLOWED})

    def user_or_none(self):
        user = self.scope.get("user")
        return user if user is not None and user.is_authenticated else None


class RunConsumer(JsonRequests):
    """Reads only: the worker writes the database and the group; this forwards what the user may see."""

    ALLOWED = [{"type": "replay", "after_step": "integer >= 0: the last step the page already has (0 for none)",
                "after_seq": "optional integer >= 0: the last event seq the page already has"}]

    async def connect(self) -> None:
        self.run = await self.open_object(access.get_run_for_user, "run_id")
        if self.run is None:
            return
        # Live messages are held back until the page asked for its replay; after it, only what is newer.
        self.replayed = False
        self.sent_step = {"metrics": 0, "eval": 0}
        self.sent_seq = 0
        self.sent_samples: set[int] = set()
        await self.join(run_group(self.run.id))

    async def receive_json(self, content: Any, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "replay":
            kind = content.get("type") if isinstance(content, dict) else type(content).__name__
            await self.error(f"unknown message {kind!r}")
            return
        after_step = _count(content, "after_step", required=True)
        after_seq = _count(content, "after_seq", required=False)
        if isinstance(after_step, str) or isinstance(after_seq, str):
            await self.error(after_step if isinstance(after_step, str) else after_seq)
            return
        await self.replay(after_step=after_step, after_seq=after_seq or 0)

    async def stored_points(self, after_step: int):
        """The run's stored points after after_step, a chunk of REPLAY_CHUNK at a time, each with whether it is the
        last (a short chunk, possibly empty)."""
        while True:
            chunk = await database_sync_to_async(selectors.run_points)(
                self.run, after_step=after_step, limit=selectors.REPLAY_CHUNK)
            final = len(chunk) < selectors.REPLAY_CHUNK
            yield chunk, final
            if final:
                return
            after_step = chunk[-1]["step"]

    async def replay(self, *, after_step: int, after_seq: int) -> None:
        """Stored points after after_step in chunks, then events, samples, status and log tail."""
        last = after_step
        newest = {kind: after_step for kind, _ in KIND_FIELDS}
        async for chunk, final in self.stored_points(after_step):
            for point in chunk:
                for kind, field in KIND_FIELDS:
                    if point[field] is not None:
                        newest[kind] = point["step"]
            if chunk:
                last = chunk[-1]["step"]
            if not final:
                await self.send_json({"type": "replay", "points": json_safe(chunk), "done": False})
        rest = await database_sync_to_async(_replay_rest)(self.run, after_seq)
        self.sent_step = {kind: max(self.sent_step[kind], step) for kind, step in newest.items()}
        self.sent_seq = max([self.sent_seq, after_seq, *(e["seq"] for e in rest["events"])])
        self.sent_samples.update(s["id"] for s in rest["samples"])
        self.replayed = True
        await self.send_json({"type": "replay", "points": json_safe(chunk), "last_step": last, "done": True,
                              **json_safe(rest)})

    async def run_message(self, message: dict) -> None:
        """A message from the worker (training.live.send.send_run_message): forward it unless the page has it."""
        body = message["message"]
        if not self.replayed:
            return
        kind = body["type"]
        if kind == "points":
            # Each points message names the last steps the worker sent before it; a status the last step stored.
            await self.catch_up(body.get("after") or {})
            fresh = []
            for point in body["points"]:
                if point["step"] > self.sent_step[point["kind"]]:
                    self.sent_step[point["kind"]] = point["step"]
                    fresh.append(point)
            if not fresh:
                return
            body = {"type": "points", "points": fresh}
        elif kind == "status":
            await self.catch_up({"metrics": body.get("last_step")})
        elif kind == "event":
            if body["seq"] <= self.sent_seq:
                return
            self.sent_seq = body["seq"]
        elif kind == "sample":
            if body["id"] in self.sent_samples:
                return
            self.sent_samples.add(body["id"])
        await self.send_json(body)

    async def catch_up(self, sent: dict) -> None:
        """The worker says it sent points up to these steps; any this page lacks were lost on the way (Redis drops
        what it cannot deliver): send them from the database, where the worker wrote them before sending."""
        behind = [self.sent_step[kind] for kind, step in sent.items()
                  if kind in self.sent_step and isinstance(step, int) and step > self.sent_step[kind]]
        if not behind:
            return
        async for chunk, _ in self.stored_points(min(behind)):
            fresh = []
            for point in chunk:
                new = False
                for kind, field in KIND_FIELDS:
                    if point[field] is not None and point["step"] > self.sent_step[kind]:
                        self.sent_step[kind] = point["step"]
                        new = True
                if new:
                    fresh.append(point)
            if fresh:
                log.info("run %s: %d points a live message missed, sent from the database", self.run.id, len(fresh))
                await self.send_json({"type": "points", "points": json_safe(fresh)})


class RunListConsumer(JsonRequests):
    """The run list: the rows of the user's teams' runs as the worker changes them. `watch` first answers the rows
    the page shows as they are now, so a change between the page's render and the socket's join is not missed."""

    ALLOWED = [{"type": "watch", "runs": f"list of at most {WATCH_MAX_RUNS} run ids: the rows the page shows"}]
    ACCESS_LOST_CODE = CLOSE_TEAMS_CHANGED

    async def connect(self) -> None:
        self.user = self.user_or_none()
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.follow_user()
        self.team_ids = await database_sync_to_async(access.team_ids_for)(self.user)
        await self.join(*(team_runs_group(team_id) for team_id in self.team_ids))

    def may_still_watch(self) -> bool:
        """Still in every team it joined; a team joined since shows on the next page load."""
        return set(self.team_ids) <= set(access.team_ids_for(self.user))

    async def receive_json(self, content: Any, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "watch":
            kind = content.get("type") if isinstance(content, dict) else type(content).__name__
            await self.error(f"unknown message {kind!r}")
            return
        runs = content.get("runs")
        if (not isinstance(runs, list) or len(runs) > WATCH_MAX_RUNS
                or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in runs)):
            await self.error(f"runs must be a list of at most {WATCH_MAX_RUNS} run ids (integers > 0), not {runs!r}")
            return
        rows = await database_sync_to_async(selectors.run_rows)(runs, team_ids=self.team_ids)
        await self.send_json({"type": "rows", "rows": json_safe(rows)})

    async def run_row(self, message: dict) -> None:
        """A run's row from the worker or the web app (training.live.send.send_run_row)."""
        await self.send_json({"type": "row", "row": message["row"]})


def _count(content: dict, key: str, *, required: bool) -> int | str | None:
    """The value if it is a whole number >= 0; else the error text naming the key."""
    if key not in content:
        return f"{key} is required" if required else None
    value = content[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"{key} must be an integer >= 0, not {value!r}"
    return value


def _replay_rest(run, after_seq: int) -> dict[str, Any]:
    run.refresh_from_db()
    return {
        "events": selectors.run_events(run, after_seq=after_seq),
        "samples": selectors.run_samples(run),
        "status": selectors.run_status_dict(run),
        "log": run.log_tail.splitlines(),
        "findings": [finding_dict(f) for f in selectors.run_findings(run)],
    }
