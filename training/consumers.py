"""The run page's websocket: replay of everything stored, then the run's live messages, each point once."""
from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404

from training import selectors
from training.findings import finding_dict
from training.live import json_safe, run_group

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404  # also for another team's run: the two must look the same
ALLOWED = [{"type": "replay", "after_step": "integer >= 0: the last step the page already has (0 for none)",
            "after_seq": "optional integer >= 0: the last event seq the page already has"}]


class RunConsumer(AsyncJsonWebsocketConsumer):
    """Reads only: the worker writes the database and the group; this forwards what the user may see."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            self.run = await database_sync_to_async(selectors.get_run_for_user)(
                user, int(self.scope["url_route"]["kwargs"]["run_id"]))
        except (Http404, ValueError):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = run_group(self.run.id)
        # Live messages are held back until the page asked for its replay; after it, only what is newer.
        self.replayed = False
        self.sent_step = {"metrics": 0, "eval": 0}
        self.sent_seq = 0
        self.sent_samples: set[int] = set()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

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

    async def error(self, message: str) -> None:
        await self.send_json({"type": "error", "error": message, "allowed": ALLOWED})

    async def replay(self, *, after_step: int, after_seq: int) -> None:
        """Stored points after after_step in chunks, then events, samples, status and log tail."""
        run = self.run
        last = after_step
        chunk_after = after_step
        metrics_step = eval_step = after_step
        while True:
            chunk = await database_sync_to_async(selectors.run_points)(
                run, after_step=chunk_after, limit=selectors.REPLAY_CHUNK)
            for point in chunk:
                if point["loss"] is not None:
                    metrics_step = point["step"]
                if point["eval_loss"] is not None:
                    eval_step = point["step"]
            if len(chunk) < selectors.REPLAY_CHUNK:
                break
            chunk_after = chunk[-1]["step"]
            await self.send_json({"type": "replay", "points": json_safe(chunk), "done": False})
        rest = await database_sync_to_async(_replay_rest)(run, after_seq)
        if chunk:
            last = chunk[-1]["step"]
        self.sent_step = {"metrics": max(self.sent_step["metrics"], metrics_step),
                          "eval": max(self.sent_step["eval"], eval_step)}
        self.sent_seq = max([self.sent_seq, after_seq, *(e["seq"] for e in rest["events"])])
        self.sent_samples.update(s["id"] for s in rest["samples"])
        self.replayed = True
        await self.send_json({"type": "replay", "points": json_safe(chunk), "last_step": last, "done": True,
                              **json_safe(rest)})

    async def run_message(self, message: dict) -> None:
        """A message from the worker (training.live.send_run_message): forward it unless the page has it."""
        body = message["message"]
        if not self.replayed:
            return
        kind = body["type"]
        if kind == "point":
            if body["step"] <= self.sent_step[body["kind"]]:
                return
            self.sent_step[body["kind"]] = body["step"]
        elif kind == "event":
            if body["seq"] <= self.sent_seq:
                return
            self.sent_seq = body["seq"]
        elif kind == "sample":
            if body["id"] in self.sent_samples:
                return
            self.sent_samples.add(body["id"])
        await self.send_json(body)


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
