"""Helpers for the run flow on real components: wait on run rows, talk to the websocket as a browser would.
The tiny model and the session's Celery worker are fixtures of tests/conftest.py; tests/workers.py starts more."""
from __future__ import annotations

import asyncio
import time
from typing import Callable

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from tests.e2e.conftest import WebServer
from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from training.models import Run, Worker
from training.runs import services


@pytest.fixture
def team_member(tmp_path):
    """A team, a member of it and a 64-row chat dataset of theirs."""
    team = make_team()
    user = make_member(team)
    return team, user, make_dataset(team, user, tmp_dir=tmp_path)


def create_run(team_member, model: str, **overrides) -> Run:
    """A tiny CPU run of the team_member's dataset, created through the services and queued to the session's worker."""
    team, user, dataset = team_member
    return services.run_create(team=team, user=user, dataset=dataset, overrides=tiny_overrides(model, **overrides))


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_for_run(run: Run, predicate: Callable[[Run], bool], *, timeout: float, what: str) -> Run:
    def check():
        run.refresh_from_db()
        return predicate(run)

    try:
        wait_for(check, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; run is {run.status} at step {run.last_step}: {run.error}\n"
                             f"{run.log_tail[-2000:]}") from None
    return run


def wait_terminal(run: Run, timeout: float = 120) -> Run:
    """The run ended, and its worker done with it: the worker's last writes (the compare packs, then the slot's
    release) follow the terminal status, and a test's teardown flush racing them deadlocked once. A lost run's
    worker is gone: nothing follows."""
    run = wait_for_run(run, lambda r: r.is_terminal, timeout=timeout, what=f"run {run.id} to end")
    if run.status != Run.Status.LOST:
        wait_for(lambda: not Worker.current_runs.through.objects.filter(run_id=run.id).exists(), timeout=30,
                 what=f"run {run.id}'s worker to release it")
    return run


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def communicator(run_id: int | None, cookie: str | None) -> WebsocketCommunicator:
    """A browser's websocket to a run's page, or (run_id None) to the run list."""
    from dashboard.asgi import application

    headers = [(b"origin", b"http://testserver")]
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    path = f"/ws/runs/{run_id}/" if run_id is not None else "/ws/runs/"
    return WebsocketCommunicator(application, path, headers=headers)


async def receive_until(comm: WebsocketCommunicator, stop: Callable[[dict], bool], *, timeout: float = 120) -> list:
    """Messages until (and including) the first for which stop() is true."""
    messages = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await comm.receive_json_from(timeout=timeout)
                messages.append(message)
                if stop(message):
                    return messages
    except TimeoutError:
        got = [(m["type"], m.get("step") or m.get("status")) for m in messages]
        raise AssertionError(f"no closing message within {timeout} s; got {got}") from None


def is_terminal_status(message: dict) -> bool:
    return message["type"] == "status" and message["is_terminal"]


def run_ended(message: dict) -> bool:
    """The message that says a run is over: a complete replay of an ended run, or a terminal status."""
    if message["type"] == "replay":
        return message["done"] and message["status"]["is_terminal"]
    return is_terminal_status(message)


def watch_run(run_id: int, cookie: str, *, timeout: float = 120) -> list[dict]:
    """What a run page's websocket gets from a replay from step 0 to the run's end."""
    async def watch():
        comm = communicator(run_id, cookie)
        connected, _ = await comm.connect(timeout=10)
        assert connected
        await comm.send_json_to({"type": "replay", "after_step": 0})
        messages = await receive_until(comm, run_ended, timeout=timeout)
        await comm.disconnect()
        return messages

    return run_async(watch)


def run_async(coroutine_function, *args):
    """Run a coroutine in a new event loop, with a new channel layer: channels_redis binds its receive state to
    the loop that first used it (a server has one loop; each call here makes another)."""
    channel_layers.backends.clear()
    try:
        return async_to_sync(coroutine_function)(*args)
    finally:
        channel_layers.backends.clear()


@pytest.fixture
def server(tmp_path):
    """A daphne web server of its own (real HTTP and websockets) on this session's database, for API and CLI tests."""
    web = WebServer(tmp_path / "web.log")
    web.start()
    yield web
    web.stop()
