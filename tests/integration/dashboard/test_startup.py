"""Start-up paths: production settings pass `check --deploy`; a worker without PostgreSQL or Redis says how to
get one and exits, without a traceback."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def run(args, **env):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


def test_production_settings_pass_the_deploy_check():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], DEBUG="0",
                 SECRET_KEY="k" * 20 + "-production-secret-with-enough-variety-9f8e7d6c5b4a",
                 ALLOWED_HOSTS="tuneboard.example")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_without_a_secret_key_refuses_to_start():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRET_KEY")}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env={**env, "DEBUG": "0"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SECRET_KEY (or SECRET_KEY_FILE) must be set" in result.stderr


def worker(**env):
    return run(["-m", "celery", "-A", "dashboard", "worker", "-Q", "never-used", "--pool", "solo"], **env)


def test_a_worker_without_postgresql_says_how_to_get_one():
    result = worker(DATABASE_URL="postgres://postgres@127.0.0.1:1/tuneboard")
    assert result.returncode == 2
    assert "PostgreSQL is not reachable at 127.0.0.1:1" in result.stderr and "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_without_redis_says_how_to_get_one():
    result = worker(REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert "Redis is not reachable at redis://127.0.0.1:1/0" in result.stderr and "REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_detector_threshold_stops_start_up_naming_it():
    result = run(["manage.py", "check"], TUNEBOARD_DETECTOR_THRESHOLDS='{"flat_step": 30}')
    assert result.returncode != 0
    assert "TUNEBOARD_DETECTOR_THRESHOLDS: unknown detector threshold(s) flat_step; allowed: window" in result.stderr
    result = run(["manage.py", "check"], TUNEBOARD_DETECTOR_THRESHOLDS='{"flat_steps": -1}')
    assert result.returncode != 0 and "flat_steps must be greater than 0" in result.stderr


def test_a_one_slot_worker_starts_without_the_training_libraries_and_the_web_server_imports_them_before_serving():
    """A worker with one slot imports torch and transformers only when a task needs them (every worker start would
    spend seconds of CPU on them otherwise); the web server, whose request threads would import them at the same
    moment, imports them before it serves (training/engine/libraries.py)."""
    libraries = "sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules)"
    code = f"import sys, django; django.setup(); import dashboard.celery, training.tasks; print({libraries})"
    worker = run(["-c", code], DJANGO_SETTINGS_MODULE="dashboard.settings", TUNEBOARD_WORKER_SLOTS="1")
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert worker.stdout.split("\n")[-2] == "[]", worker.stdout
    web = run(["-c", f"import sys; import dashboard.asgi; print({libraries})"],
              DJANGO_SETTINGS_MODULE="dashboard.settings", TUNEBOARD_WEB_LOST_RUN_CHECK="0")
    assert web.returncode == 0, web.stderr[-2000:]
    assert web.stdout.split("\n")[-2] == "['accelerate', 'torch', 'transformers']", web.stdout
