"""`make dev` keeps going when one of its processes dies: the training worker SIGKILLed mid-run is started again,
the web server and the cpu worker stay up (same processes), and the run it held becomes lost within 60 s."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration.dashboard.test_dev_launcher import Launcher, connect, database_url, free_port, launcher_env

ROOT = Path(__file__).resolve().parents[3]
# The demo's team, dataset and preset (made by the launcher), a run long enough to be killed mid-way.
LONG_RUN = """
from pathlib import Path
from django.conf import settings
from dashboard import dev
from training.runs import services
team, user, dataset, preset = dev.setup_demo(Path(settings.VAR_DIR) / "log")
run = services.run_create(team=team, user=user, dataset=dataset, preset=preset, name="long",
                          overrides={"max_steps": 5000, "save_steps": 1000, "eval_steps": 1000, "sample_prompts": []})
print("RUN", run.id)
"""


def wait(conn, sql: str, ok, *, timeout: float, what: str, launcher: Launcher):
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(sql).fetchone()
        if row and ok(row):
            return row
        assert launcher.process.poll() is None, f"the launcher exited:\n{launcher.output()}"
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}; last {row}\n" \
                                            f"{launcher.output()}"
        time.sleep(0.5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_the_gpu_worker_killed_under_the_launcher_is_restarted_and_its_run_becomes_lost(tmp_path):
    name = f"tuneboard_supervise_{uuid.uuid4().hex[:8]}"
    queue = f"supervise-{uuid.uuid4().hex[:8]}"
    env = launcher_env(DATABASE_URL=database_url(name), TUNEBOARD_VAR_DIR=str(tmp_path),
                       TUNEBOARD_DEFAULT_QUEUE=queue, TUNEBOARD_CPU_QUEUE=f"{queue}-cpu",
                       TUNEBOARD_CHANNEL_PREFIX=queue, OMP_NUM_THREADS="1")
    gpu_worker, cpu_worker = f"dev-{queue}@{socket.gethostname()}", f"dev-{queue}-cpu@{socket.gethostname()}"
    port = free_port()
    launcher = Launcher(env, port, "--no-demo-run")
    try:
        launcher.wait_for("Tuneboard is running", timeout=300)
        out = subprocess.run([sys.executable, "manage.py", "shell", "-c", LONG_RUN], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout
        run_id = int(out.split("RUN")[-1])
        with connect(name, autocommit=True) as conn:
            wait(conn, f"SELECT status, last_step FROM training_run WHERE id = {run_id}",
                 lambda r: r[0] == "running" and (r[1] or 0) >= 1, timeout=180, what="the run to train",
                 launcher=launcher)
            pids = dict(conn.execute("SELECT name, pid FROM training_worker").fetchall())
            os.kill(pids[gpu_worker], signal.SIGKILL)
            killed_at = time.monotonic()

            status, error = wait(conn, f"SELECT status, error FROM training_run WHERE id = {run_id}",
                                 lambda r: r[0] != "running", timeout=75, what="the run to be lost",
                                 launcher=launcher)
            assert time.monotonic() - killed_at <= 61
            assert status == "lost" and gpu_worker in error, (status, error)
            # The worker is started again under the same name; the cpu worker and the web server never stopped.
            wait(conn, f"SELECT pid FROM training_worker WHERE name = '{gpu_worker}'",
                 lambda r: r[0] != pids[gpu_worker] and alive(r[0]), timeout=120, what="the worker's restart",
                 launcher=launcher)
            assert alive(pids[cpu_worker])
            assert conn.execute(f"SELECT pid FROM training_worker WHERE name = '{cpu_worker}'").fetchone() == (
                pids[cpu_worker],)
        assert "worker exited (code -9): starting it again" in launcher.output()
        # The launcher says so of any process it starts again: the web server was never one of them.
        assert "web exited" not in launcher.output() and "cpu-worker exited" not in launcher.output()
        # A generous wait: the restarted worker's imports load the few cores this answer needs too.
        login = urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=90)
        assert login.status == 200
        assert launcher.interrupt() == 0
    finally:
        if launcher.process.poll() is None:
            launcher.process.kill()
        with connect("postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
