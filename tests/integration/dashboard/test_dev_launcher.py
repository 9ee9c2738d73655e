"""`make dev`'s launcher (python -m dashboard.dev) on a fresh database: it creates and migrates it, sets up the
demo, serves the app with a worker training the demo run (and the demo rank sweep after it) and a worker for the cpu
queue, and shuts everything down on Ctrl-C; a missing PostgreSQL or Redis is a clear sentence, not a traceback."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from dashboard import dev
from training.models import Run, Sweep
from training.sweeps import services as sweep_services

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(name: str) -> str:
    """A database `name` on this session's PostgreSQL server (the machine's, or the one `make test` started)."""
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


def connect(name: str, **options) -> psycopg.Connection:
    db = settings.DATABASES["default"]
    return psycopg.connect(dbname=name, user=db["USER"] or "postgres", host=db["HOST"] or "127.0.0.1",
                           port=db["PORT"] or 5432, **options)


def launcher_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "TUNEBOARD_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def test_without_postgresql_it_says_how_to_get_one():
    result = subprocess.run([sys.executable, "-m", "dashboard.dev", "--port", str(free_port())], cwd=ROOT,
                            env=launcher_env(DATABASE_URL="postgres://postgres@127.0.0.1:1/tuneboard"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "PostgreSQL is not reachable at 127.0.0.1:1" in result.stderr and "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_without_a_reachable_redis_it_says_how_to_get_one():
    # A remote Redis it cannot start itself (192.0.2.0/24 is reserved for documentation: nothing answers).
    result = subprocess.run([sys.executable, "-m", "dashboard.dev", "--port", str(free_port())], cwd=ROOT,
                            env=launcher_env(REDIS_URL="redis://192.0.2.1:6379/0"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Redis is not reachable at redis://192.0.2.1:6379/0" in result.stderr and "REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_port_in_use_is_refused_before_anything_starts():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "dashboard.dev", "--port", str(port)], cwd=ROOT,
                                env=launcher_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in result.stderr


class Launcher:
    def __init__(self, env: dict, port: int, *args: str):
        self.log = Path(env["TUNEBOARD_VAR_DIR"]) / f"launcher-{port}.out"
        # Started with SIGINT ignored, as `make dev &` or a CI script's background job starts it: Ctrl-C (the
        # interrupt below) must stop it all the same.
        self.process = subprocess.Popen([sys.executable, "-m", "dashboard.dev", "--port", str(port), *args],
                                        cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, f"the launcher exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output()}"
            time.sleep(0.5)

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the launcher did not stop within 90 s of Ctrl-C:\n{self.output()}") from None


@pytest.mark.slow
def test_on_a_fresh_database_it_sets_up_serves_trains_the_demo_and_stops_cleanly(tmp_path):
    name = f"tuneboard_devtest_{uuid.uuid4().hex[:8]}"
    queue = f"devtest-{uuid.uuid4().hex[:8]}"
    env = launcher_env(DATABASE_URL=database_url(name), TUNEBOARD_VAR_DIR=str(tmp_path),
                       TUNEBOARD_DEFAULT_QUEUE=queue, TUNEBOARD_CPU_QUEUE=f"{queue}-cpu",
                       TUNEBOARD_CHANNEL_PREFIX=queue)
    port = free_port()
    try:
        launcher = Launcher(env, port)
        launcher.wait_for("Tuneboard is running", timeout=240)
        out = launcher.output()
        assert f"creating database {name}" in out and "Log in as demo / demo" in out
        assert f"http://127.0.0.1:{port}/runs/1/" in out
        # The rank sweep queued after the demo run, on the demo dataset's rank bucket.
        assert f"http://127.0.0.1:{port}/sweeps/1/" in out and "demo sweep #1 queued: ranks r=2, r=4, r=8" in out
        # The server's first request (its first templates and queries), beside the workers' imports on a loaded
        # 2-core machine, once took more than 10 s.
        login = urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=90)
        assert login.status == 200 and b"Log in" in login.read()
        plotly = urllib.request.urlopen(f"http://127.0.0.1:{port}/static/vendor/plotly.min.js", timeout=90)
        assert plotly.status == 200

        with connect(name, autocommit=True) as conn:
            deadline = time.monotonic() + 180
            while not conn.execute("SELECT count(*) FROM training_metricpoint WHERE run_id = 1").fetchone()[0]:
                assert time.monotonic() < deadline, f"the demo run drew no point:\n{launcher.output()}"
                time.sleep(1)
            workers = conn.execute("SELECT queues FROM training_worker ORDER BY name").fetchall()
            assert sorted(q for (queues,) in workers for q in queues) == sorted([queue, f"{queue}-cpu"])
            user = conn.execute("SELECT is_superuser FROM auth_user WHERE username = 'demo'").fetchone()
            role = conn.execute("SELECT role FROM dashboard_membership").fetchone()
            assert user == (True,) and role == ("admin",)
            status = conn.execute("SELECT status FROM training_run WHERE id = 1").fetchone()[0]

            assert launcher.interrupt() == 0, launcher.output()[-4000:]
            assert "stopped" in launcher.output().splitlines()[-1]
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            ended = conn.execute("SELECT status FROM training_run WHERE id = 1").fetchone()[0]
            # A run training at Ctrl-C checkpoints and stops instead of being left for the lost-run check.
            assert ended in ("stopped", "succeeded"), (status, ended)
            # The demo sweep is stopped with it (the next launch resumes it): no member is left queued in Redis.
            assert conn.execute("SELECT status FROM training_sweep").fetchone() == ("stopped",)
            assert conn.execute("SELECT count(*) FROM training_run WHERE sweep_id = 1 AND status NOT IN "
                                "('stopped', 'succeeded')").fetchone() == (0,)

        # Run again on the same database: the demo set-up is reused, and --no-demo-run starts nothing.
        again = Launcher(env, port, "--no-demo-run")
        again.wait_for("Tuneboard is running", timeout=120)
        assert "creating database" not in again.output() and "building the tiny demo model" not in again.output()
        assert again.interrupt() == 0, again.output()[-4000:]
        with connect(name) as conn:
            counts = conn.execute("SELECT (SELECT count(*) FROM training_run), (SELECT count(*) FROM auth_user), "
                                  "(SELECT count(*) FROM training_dataset), (SELECT count(*) FROM training_preset), "
                                  "(SELECT count(*) FROM training_sweep)").fetchone()
        assert counts == (4, 1, 1, 1, 1)  # the demo run and the sweep's three members
    finally:
        with connect("postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.django_db
def test_the_demo_sweep_is_started_once_resumed_after_a_stop_and_left_alone_once_finished(tiny_model, tmp_path):
    team, user, dataset, preset = dev.setup_demo(tmp_path)  # the tiny model is the session's, in the model roots
    sweep = dev.start_demo_sweep(team, user, dataset, preset)
    members = list(sweep.phases.get().members.order_by("index").select_related("run"))
    assert [m.name for m in members] == ["r=2", "r=4", "r=8"]
    assert all(m.run.config["max_steps"] == 60 and m.run.config["eval_steps"] == 20 for m in members)
    assert dev.start_demo_sweep(team, user, dataset, preset) == sweep and Sweep.objects.count() == 1

    sweep_services.sweep_stop(sweep=sweep, user=user)  # as Ctrl-C leaves it
    assert dev.start_demo_sweep(team, user, dataset, preset) == sweep
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.RUNNING and Sweep.objects.count() == 1
    assert sorted(Run.objects.filter(sweep=sweep).values_list("status", flat=True)) == ["queued"] * 3 + ["stopped"] * 3

    Sweep.objects.filter(id=sweep.id).update(status=Sweep.Status.FINISHED, verdict="r=2: the smallest")
    assert dev.start_demo_sweep(team, user, dataset, preset) == sweep
    assert Sweep.objects.get(id=sweep.id).status == Sweep.Status.FINISHED and Run.objects.count() == 6
