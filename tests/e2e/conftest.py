"""Fixtures for browser tests: the real ASGI server (daphne) and a Celery worker on the test database, and
Debian's Chromium driven headless by Playwright."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, connections

from tests.conftest import CHROMIUM
from tests.workers import stop_process

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

@pytest.fixture
def screenshot_path(tmp_path):
    """Where a test saves its screenshot: docs/ only when UPDATE_SCREENSHOTS=1, so a test run leaves the tree clean."""
    def path(name: str) -> Path:
        return (ROOT / "docs" / name) if os.environ.get("UPDATE_SCREENSHOTS") == "1" else (tmp_path / name)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env() -> dict[str, str]:
    """The environment that points a server or worker process at this test session's database and Redis."""
    db = connection.settings_dict
    return {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "DEBUG": "1",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "TUNEBOARD_VAR_DIR": str(settings.VAR_DIR),
        "TUNEBOARD_CHANNEL_PREFIX": settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        "TUNEBOARD_DEFAULT_QUEUE": settings.TUNEBOARD_DEFAULT_QUEUE,
        "TUNEBOARD_CPU_QUEUE": settings.TUNEBOARD_CPU_QUEUE,
        "TUNEBOARD_DATASET_ROOTS": ",".join(settings.TUNEBOARD_DATASET_ROOTS),
        "TUNEBOARD_MODEL_ROOTS": ",".join(settings.TUNEBOARD_MODEL_ROOTS),
    }


class WebServer:
    """daphne serving dashboard.asgi on a free port; restartable on the same port (a dropped connection); `env`
    overrides its environment (another Redis, say)."""

    def __init__(self, log: Path, env: dict[str, str] | None = None):
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "dashboard.asgi:application"],
            cwd=ROOT, env={**service_env(), **self.env}, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daphne did not start:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.process, timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def web_server(django_db_setup, django_db_blocker, tmp_path_factory):
    server = WebServer(tmp_path_factory.mktemp("logs") / "web.log")
    with django_db_blocker.unblock():
        server.start()
    yield server
    server.stop()


@pytest.fixture
def browser(monkeypatch):
    """One Chromium per test: Playwright's sync API keeps an event loop running in this thread while it is open,
    which must not outlive the test (other tests' async_to_sync refuses to run beside it)."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    # The ORM calls a test makes between browser steps are its own blocking calls, not code inside that loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        # Inside Playwright's loop Django keeps a connection per async context; close the test's own here, or it
        # outlives the session and the test database cannot be dropped.
        connections.close_all()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors
    yield page
    context.close()


def log_in(page, server: WebServer, username: str, password: str) -> None:
    page.goto(f"{server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form[action='/accounts/login/'] button[type=submit]")
    page.wait_for_url(f"{server.url}/runs/")


def unfold(page, *fields: str) -> None:
    """Open the run form's folded groups that hold these fields, as a user does: a click on the group's title."""
    for name in fields:
        group = page.locator(f"details.config-group:has(#field-{name})")
        if group.get_attribute("open") is None:
            group.locator("summary").click()
