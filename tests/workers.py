"""Real `celery worker` processes on this test session's database and Redis, for integration and browser tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection

from training.models import Worker

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class WorkerProcess:
    name: str
    queue: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


def start_worker(*, queue: str, name: str, log: Path, timeout: float = 120, env: dict[str, str] | None = None,
                 slots: int = 1) -> WorkerProcess:
    """A real `celery worker` process (solo pool, like the gpu worker; with `slots` > 1 a thread per slot, as
    TUNEBOARD_WORKER_SLOTS makes it) on this session's test database, returned once its first heartbeat is in the
    database; `env` overrides its environment (another Redis, say)."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "TUNEBOARD_VAR_DIR": str(settings.VAR_DIR),
        "TUNEBOARD_CHANNEL_PREFIX": settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        "TUNEBOARD_DEFAULT_QUEUE": queue,
        "TUNEBOARD_CPU_QUEUE": settings.TUNEBOARD_CPU_QUEUE,  # where a member's end queues its sweep's advance
        "TUNEBOARD_DATASET_ROOTS": ",".join(settings.TUNEBOARD_DATASET_ROOTS),
        "TUNEBOARD_MODEL_ROOTS": ",".join(settings.TUNEBOARD_MODEL_ROOTS),
        # A tiny run stops gracefully within a second; a hung one is killed after this (2 minutes in production).
        "TUNEBOARD_STOP_KILL_AFTER_S": "10",
        # Two sessions' trainings share the CPU cores under xdist: one thread each, not two fighting over two.
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        # The pool and concurrency come from this (dashboard/settings.py), as for a worker started by hand.
        "TUNEBOARD_WORKER_SLOTS": str(slots),
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "-Q", queue, "-n", name,
         "--without-gossip", "--without-mingle", "-l", "info"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    handle = WorkerProcess(name=name, queue=queue, process=process, log=log)
    started = time.monotonic()
    while not Worker.objects.filter(name=name, pid=process.pid).exists():
        if process.poll() is not None or time.monotonic() - started > timeout:
            waiting = _lock_waits()
            process.kill()
            raise RuntimeError(f"worker {name} did not record a heartbeat within {time.monotonic() - started:.0f} s "
                               f"(exit code {process.poll()}); queries waiting on a lock: {waiting or 'none'}\n"
                               f"{handle.log_text()}")
        time.sleep(0.2)
    return handle


def _lock_waits() -> list[str]:
    """What is blocked in the test database, and by whom: the first thing to know when a worker hangs at start."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pg_blocking_pids(pid), state, left(query, 200) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'")
        return [f"pid {pid} blocked by {blockers} ({state}): {query}" for pid, blockers, state, query in cursor]


def stop_worker(worker: WorkerProcess) -> None:
    stop_process(worker.process, timeout=20)


def stop_process(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM (a worker's warm shutdown, a server's clean close), and SIGKILL if it is still there after `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
