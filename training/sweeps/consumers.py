"""The sweep page's websocket: the sweep's state on connect and whenever it changes, and its member runs' status,
points and findings, each tagged with its run's id. Reads only. Its own module, not training/live/consumers.py: it
reads the sweep's selectors, and training.sweeps already imports training.live (the services send through it), so
live importing sweeps would be a cycle; the shared connect, access re-check and close codes come from JsonRequests."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async

from training.engine.events import json_safe
from training.live.consumers import JsonRequests, _group_change_slot
from training.live.send import run_group, sweep_group
from training.sweeps import selectors

log = logging.getLogger(__name__)

# The run messages the sweep page draws: a member's status and progress, its curve, its findings count.
FORWARDED = frozenset({"status", "points", "finding"})
RELAY_RETRY_S = 1.0


class SweepConsumer(JsonRequests):
    """Joins the sweep's group, then each member run's group on a channel of its own, so that a run's message (which
    does not name its run) is forwarded tagged with the run it came from. A new phase's runs are joined when the
    state naming them arrives, before it is forwarded; a run no longer a member (resumed as another run) is left."""

    ALLOWED: list[dict[str, str]] = []  # the page only listens

    async def connect(self) -> None:
        self.runs: dict[int, tuple[str, asyncio.Task]] = {}
        self.sweep = await self.open_object(selectors.get_sweep_for_user, "sweep_id")
        if self.sweep is None:
            return
        # The group first, then the state: a change made while the state is read arrives after it.
        await self.join(sweep_group(self.sweep.id))
        state = await database_sync_to_async(selectors.sweep_state)(self.sweep)
        await self.forward_state(json_safe(state))

    async def receive_json(self, content: Any, **kwargs) -> None:
        await self.error("this socket only sends; it takes no messages")

    async def sweep_state(self, message: dict) -> None:
        """training.live.send.send_sweep_state: after every change the services make."""
        await self.forward_state(message["state"])

    async def forward_state(self, state: dict[str, Any]) -> None:
        """Follow the runs the state names (so that the page, which loads a new member's stored points when it sees
        it, misses none of its live ones), then forward it."""
        wanted = set(state.get("run_ids") or ())
        for run_id in sorted(set(self.runs) - wanted):
            await self.unfollow_run(run_id)
        for run_id in sorted(wanted - set(self.runs)):
            await self.follow_run(run_id)
        await self.send_json({"type": "state", "state": state})

    async def follow_run(self, run_id: int) -> None:
        channel = await self.channel_layer.new_channel()
        async with _group_change_slot():
            await self.channel_layer.group_add(run_group(run_id), channel)
        self.runs[run_id] = (channel, asyncio.create_task(self.relay(run_id, channel)))

    async def unfollow_run(self, run_id: int) -> None:
        channel, task = self.runs.pop(run_id)
        task.cancel()
        async with _group_change_slot():
            await self.channel_layer.group_discard(run_group(run_id), channel)

    async def relay(self, run_id: int, channel: str) -> None:
        while True:
            try:
                message = await self.channel_layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the page keeps its socket, the run its stream
                log.warning("sweep %s, run %s: receive failed: %s: %s", self.sweep.id, run_id, type(exc).__name__, exc)
                await asyncio.sleep(RELAY_RETRY_S)
                continue
            body = message.get("message") if message.get("type") == "run.message" else None
            if isinstance(body, dict) and body.get("type") in FORWARDED:
                await self.send_json({"type": "run", "run_id": run_id, "message": body})

    async def leave(self) -> None:
        await super().leave()
        for run_id in list(getattr(self, "runs", {})):
            await self.unfollow_run(run_id)
