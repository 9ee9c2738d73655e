"""Fixtures for every test session: its own var dir, Celery queue and Channels prefix, so parallel sessions
(pytest-xdist workers, a developer's `make dev`) sharing one Redis never see each other's runs."""
import uuid

import pytest
from django.conf import settings


@pytest.fixture(scope="session", autouse=True)
def isolated_session(tmp_path_factory):
    token = uuid.uuid4().hex[:10]
    var = tmp_path_factory.mktemp("var")
    settings.VAR_DIR = var
    settings.RUNS_DIR = var / "runs"
    settings.DATASETS_DIR = var / "datasets"
    settings.MODELS_DIR = var / "models"
    settings.TUNEBOARD_DATASET_ROOTS = [str(var / "registered")]
    settings.TUNEBOARD_DEFAULT_QUEUE = f"test-{token}"
    # Before the first get_channel_layer(): channels builds the layer once, from these settings.
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"test-{token}"
    return token
