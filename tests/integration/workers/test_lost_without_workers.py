"""The promise with no worker left: a run's only worker is SIGKILLed and nothing else heartbeats; the web process's
own lost-run check marks the run lost within its silence limit plus two heartbeats (no page is opened: a GET does
not write). Its own database, so this session's workers, whose heartbeats make the same check, cannot be the ones
that notice."""
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.dashboard.test_dev_launcher import connect, database_url, free_port, launcher_env

ROOT = Path(__file__).resolve().parents[3]
SETUP = """
import io
from tests.factories import make_member, make_team, tiny_overrides
from training.runs import services
from training.datasets import services as dataset_services
from training.engine.tiny import build_tiny_model, write_dataset
from django.conf import settings
team = make_team()
user = make_member(team)
model = build_tiny_model(settings.MODELS_DIR / "tiny")
data = write_dataset(settings.VAR_DIR / "data.jsonl", n=64, fmt="messages")
dataset = dataset_services.dataset_create_from_upload(team=team, user=user, name="d", file=io.BytesIO(data.read_bytes()))
run = services.run_create(team=team, user=user, dataset=dataset, queue=settings.TUNEBOARD_DEFAULT_QUEUE,
                          overrides=tiny_overrides(str(model), max_steps=3000, save_steps=5))
print("RUN", run.id)
"""


def wait(conn, sql: str, ok, *, timeout: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(sql).fetchone()
        if row and ok(row):
            return row
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last {row}\n{tails}")
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_with_every_worker_killed_the_web_process_marks_the_run_lost_within_its_silence_limit(tmp_path):
    name = f"tuneboard_losttest_{uuid.uuid4().hex[:8]}"
    queue = f"losttest-{uuid.uuid4().hex[:8]}"
    # Shorter limits than the defaults' 50 s + 2 x 5 s (test_worker_lost.py holds those to the 60 s): the same
    # arithmetic, SILENT_S + 2 x HEARTBEAT_S, bounds the wait here.
    silent_s, heartbeat_s = 10, 2
    env = launcher_env(DATABASE_URL=database_url(name), TUNEBOARD_VAR_DIR=str(tmp_path),
                       TUNEBOARD_DEFAULT_QUEUE=queue, TUNEBOARD_CHANNEL_PREFIX=queue, OMP_NUM_THREADS="1",
                       TUNEBOARD_WORKER_SILENT_S=str(silent_s), TUNEBOARD_HEARTBEAT_S=str(heartbeat_s))
    logs = [tmp_path / "worker.log", tmp_path / "web.log"]
    processes: list[subprocess.Popen] = []
    with connect("postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout
        run_id = int(out.split("RUN")[-1])
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "-Q", queue, "-n", f"{queue}@test",
             "--pool", "solo", "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=ROOT, env=env, stdout=logs[0].open("w"), stderr=subprocess.STDOUT)
        processes.append(worker)
        web = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(free_port()),
                                "dashboard.asgi:application"], cwd=ROOT, env={**env, "TUNEBOARD_WEB_LOST_RUN_CHECK": "1"},
                               stdout=logs[1].open("w"), stderr=subprocess.STDOUT)
        processes.append(web)
        with connect(name, autocommit=True) as conn:
            wait(conn, f"SELECT status, last_checkpoint_step FROM training_run WHERE id = {run_id}",
                 lambda r: r[0] == "running" and (r[1] or 0) >= 5, timeout=150, what="a checkpoint", logs=logs)
            worker.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            worker.wait()
            assert conn.execute("SELECT count(*) FROM training_worker").fetchone()[0] == 1  # nobody else beats
            status, error = wait(conn, f"SELECT status, error FROM training_run WHERE id = {run_id}",
                                 lambda r: r[0] != "running", timeout=75, what="the run to be lost", logs=logs)
            assert time.monotonic() - killed_at <= silent_s + 2 * heartbeat_s + 1
            assert status == "lost" and f"{queue}@test has been silent" in error, (status, error)
            # The check logs what it marked once its transitions (and their live messages) are done: moments after
            # the status this test reads.
            deadline = time.monotonic() + 10
            while "marked lost by the web process" not in logs[1].read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
        assert web.poll() is None and "marked lost by the web process" in logs[1].read_text()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        with connect("postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

