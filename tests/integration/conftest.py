"""Fixtures for the run flow on real components: a tiny model, real Celery worker processes on the test
database, and helpers to wait on run rows and to talk to the websocket as a browser would."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection
from django.test import Client

from training.engine.tiny import build_tiny_model
from training.models import Run, Worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@dataclass
class WorkerProcess:
    name: str
    queue: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


def start_worker(*, queue: str, name: str, log: Path, timeout: float = 60, env: dict[str, str] | None = None
                 ) -> WorkerProcess:
    """A real `celery worker` process (solo pool, like the gpu worker) on this session's test database; `env`
    overrides its environment (another Redis, say)."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "TUNEBOARD_VAR_DIR": str(settings.VAR_DIR),
        "TUNEBOARD_CHANNEL_PREFIX": settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        "TUNEBOARD_DEFAULT_QUEUE": queue,
        "TUNEBOARD_DATASET_ROOTS": ",".join(settings.TUNEBOARD_DATASET_ROOTS),
        # A tiny run stops gracefully within a second; a hung one is killed after this (2 minutes in production).
        "TUNEBOARD_STOP_KILL_AFTER_S": "10",
        # Two sessions' trainings share the CPU cores under xdist: one thread each, not two fighting over two.
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "-Q", queue, "-n", name, "--pool", "solo",
         "-c", "1", "--without-gossip", "--without-mingle", "-l", "info"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    handle = WorkerProcess(name=name, queue=queue, process=process, log=log)
    deadline = time.monotonic() + timeout
    while not Worker.objects.filter(name=name, pid=process.pid).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"worker {name} did not start:\n{handle.log_text()}")
        time.sleep(0.2)
    return handle


def stop_worker(worker: WorkerProcess) -> None:
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, isolated_session, tmp_path_factory):
    """The session's worker, consuming the session's default queue."""
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    with django_db_blocker.unblock():
        worker = start_worker(queue=settings.TUNEBOARD_DEFAULT_QUEUE, name=f"session-{isolated_session}@test",
                              log=log)
    yield worker
    stop_worker(worker)


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
    return wait_for_run(run, lambda r: r.is_terminal, timeout=timeout, what=f"run {run.id} to end")


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


def run_async(coroutine_function, *args):
    """Run a coroutine in a new event loop, with a new channel layer: channels_redis binds its receive state to
    the loop that first used it (a server has one loop; each call here makes another)."""
    channel_layers.backends.clear()
    try:
        return async_to_sync(coroutine_function)(*args)
    finally:
        channel_layers.backends.clear()
