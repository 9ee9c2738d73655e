"""A playground session whose worker went silent or restarted is ended by the periodic check: the serving process
died with the worker, so the page must not say 'ready'."""
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import make_dataset, make_member, make_run, make_team
from training.models import PlaygroundSession, Worker
from training.playground.services import playground_sessions_mark_lost

pytestmark = pytest.mark.django_db(transaction=True)


def session(run, worker: str, status=PlaygroundSession.Status.READY) -> PlaygroundSession:
    return PlaygroundSession.objects.create(team=run.team, run=run, adapter_path="/a", model="m", queue=run.queue,
                                            status=status, worker_name=worker)


def test_sessions_of_a_silent_or_restarted_worker_end_and_others_stay(tmp_path):
    team = make_team()
    user = make_member(team)
    run = make_run(team, user, make_dataset(team, user, tmp_dir=tmp_path))
    Worker.objects.create(name="quiet@box", hostname="box", last_heartbeat_at=timezone.now() - timedelta(hours=1))
    Worker.objects.create(name="alive@box", hostname="box")
    quiet, alive = session(run, "quiet@box"), session(run, "alive@box", PlaygroundSession.Status.LOADING)
    assert playground_sessions_mark_lost() == [quiet.id]
    quiet.refresh_from_db()
    assert quiet.status == PlaygroundSession.Status.ENDED and quiet.end_reason == "its worker went silent"
    assert playground_sessions_mark_lost(worker_name="alive@box") == [alive.id]
    alive.refresh_from_db()
    assert alive.status == PlaygroundSession.Status.ENDED and "restarted" in alive.end_reason
