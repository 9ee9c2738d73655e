"""Fixtures for every test session: its own database, var dir, Celery queue and Channels prefix, so parallel
sessions (pytest-xdist workers, engineers side by side, a running `make dev`) never see each other's runs."""
import os
import uuid

# The web process's lost-run check would mark this session's deliberately silent runs lost in the test process
# (dashboard.asgi reads it at import); a test that needs a server with it turns it on in that server's environment.
os.environ["TUNEBOARD_WEB_LOST_RUN_CHECK"] = "0"

import shutil

import pytest
import redis
from channels.layers import channel_layers
from django.conf import settings

# The browser the browser tests drive; `make test` installs it where it can (scripts/chromium.sh).
CHROMIUM = os.environ.get("TUNEBOARD_CHROMIUM") or "/usr/bin/chromium"
BROWSER_FIXTURES = {"browser", "page"}
LEFT_OUT = pytest.StashKey[int]()


def pytest_collection_modifyitems(config, items):
    """Without Chromium the browser tests are left out with one line saying what to install, unless
    TUNEBOARD_REQUIRE_BROWSER=1 (.ci/run): there they run, and fail for want of it."""
    if shutil.which(CHROMIUM) or os.environ.get("TUNEBOARD_REQUIRE_BROWSER") == "1":
        return
    browser = [item for item in items if BROWSER_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if browser:
        config.hook.pytest_deselected(items=browser)
        items[:] = [item for item in items if item not in browser]
        config.stash[LEFT_OUT] = len(browser)
        if hasattr(config, "workeroutput"):  # an xdist worker: its controller prints the line
            config.workeroutput["browser_tests_left_out"] = len(browser)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    left_out = getattr(node, "workeroutput", {}).get("browser_tests_left_out", 0)
    node.config.stash[LEFT_OUT] = max(node.config.stash.get(LEFT_OUT, 0), left_out)


def pytest_terminal_summary(terminalreporter, config):
    if config.stash.get(LEFT_OUT, 0):
        terminalreporter.write_line(f"The browser tests did not run: {CHROMIUM} is missing. Install Debian's "
                                    "Chromium (apt-get install -y chromium) to run them.", yellow=True, bold=True)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """test_tuneboard_gw0_<pid>: two pytest runs on one PostgreSQL must not create, flush or drop each other's."""
    for db in settings.DATABASES.values():
        test = db.setdefault("TEST", {})
        test["NAME"] = f"{test.get('NAME') or 'test_' + db['NAME']}_{os.getpid()}"


@pytest.fixture(scope="session", autouse=True)
def fast_password_hasher():
    """tests/hashers.py; Django caches its hashers, read again here (a plain settings assignment sends no signal)."""
    from django.contrib.auth import hashers

    settings.PASSWORD_HASHERS = ["tests.hashers.FewIterationsPBKDF2PasswordHasher", *settings.PASSWORD_HASHERS]
    hashers.get_hashers.cache_clear()
    hashers.get_hashers_by_algorithm.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def isolated_session(tmp_path_factory):
    token = uuid.uuid4().hex[:10]
    var = tmp_path_factory.mktemp("var")
    settings.VAR_DIR = var
    settings.RUNS_DIR = var / "runs"
    settings.DATASETS_DIR = var / "datasets"
    settings.MODELS_DIR = var / "models"
    settings.SUITES_DIR = var / "suites"
    settings.EVALS_DIR = var / "evals"
    settings.EXPORTS_DIR = var / "exports"
    settings.TUNEBOARD_DATASET_ROOTS = [str(var / "registered")]
    settings.TUNEBOARD_MODEL_ROOTS = [str(var / "models")]
    settings.TUNEBOARD_DEFAULT_QUEUE = f"test-{token}"
    settings.TUNEBOARD_CPU_QUEUE = f"test-{token}-cpu"
    # Before the first get_channel_layer(): channels builds the layer once, from these settings.
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"test-{token}"
    yield token
    # The session's queues, groups and channels: nothing of it must outlive the session in the shared Redis.
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match=f"*test-{token}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def tiny_model(isolated_session) -> str:
    """The tiny random Llama (tokenizer and chat template included), built once per session inside the model
    roots (a run's model must be there)."""
    from training.engine.tiny import build_tiny_model

    return str(build_tiny_model(settings.MODELS_DIR / "tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen_model(isolated_session) -> str:
    """The tiny Qwen2-style model (its attention projections have biases), built once per session in the model
    roots: the engine's tests and the evaluation tests' runs share it."""
    from training.engine.tiny import build_tiny_model

    return str(build_tiny_model(settings.MODELS_DIR / "tiny-qwen", arch="qwen2"))


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, isolated_session, tmp_path_factory):
    """The session's worker, consuming the session's default queue. Defined here, once: a copy per test folder
    would start a second worker of the same name on the same queue in a session that runs both folders."""
    from tests.workers import start_worker, stop_worker

    log = tmp_path_factory.mktemp("logs") / "worker.log"
    with django_db_blocker.unblock():
        worker = start_worker(queue=settings.TUNEBOARD_DEFAULT_QUEUE, name=f"session-{isolated_session}@test",
                              log=log)
    yield worker
    stop_worker(worker)


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """A new channel layer per test: channels_redis ties its receive locks to the event loop that first used
    them, and each test's async_to_sync runs its own loop (a server has one), so a reused layer can hang."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
