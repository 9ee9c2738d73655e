"""Run by test_embedded_servers.py inside `python -m dashboard.embedded` (not collected by the suite itself: its
name does not start with test_): a tiny run trains through a real Celery worker on the embedded PostgreSQL and
Redis that wrapper started, and its points reach the database and a websocket client."""
import os

import pytest
from django.conf import settings

from tests.integration.conftest import create_run, session_cookie, wait_terminal, watch_run
from tests.integration.runs.test_run_flow import live_metrics, steps_of
from training.models import Run

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_tiny_run_trains_through_the_embedded_servers(celery_worker, tiny_model, team_member):
    db = settings.DATABASES["default"]
    # The wrapper's servers, not the configured (silent) addresses.
    assert os.environ["DATABASE_URL"].startswith(f"postgres://postgres@127.0.0.1:{db['PORT']}/")
    assert int(db["PORT"]) != int(os.environ["TUNEBOARD_PG_PORT"])
    assert settings.REDIS_URL == os.environ["REDIS_URL"] != f"redis://127.0.0.1:{os.environ['TUNEBOARD_REDIS_PORT']}/0"
    run = create_run(team_member, tiny_model, max_steps=6, save_steps=3)
    messages = watch_run(run.id, session_cookie(team_member[1]), timeout=180)
    run = wait_terminal(run)
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert steps_of(run) == list(range(1, 7))
    assert live_metrics(messages) or any(m["type"] == "replay" and m["points"] for m in messages)
