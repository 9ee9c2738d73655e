"""A job row (an export, an evaluation) that the broker does not take fails at once with the reason, and one it
takes is sent by its task's name to its own queue."""
import pytest

from tests.factories import make_dataset, make_member, make_run, make_team
from training import jobs
from training.models import Export

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def export(tmp_path):
    team = make_team()
    user = make_member(team)
    run = make_run(team, user, make_dataset(team, user, tmp_dir=tmp_path))
    return Export.objects.create(team=team, run=run, queue="gpu-a", created_by=user, quantizations=["q8_0"])


def test_a_job_the_broker_takes_goes_to_its_queue_by_the_tasks_name(export, monkeypatch):
    sent = []
    monkeypatch.setattr(jobs.current_app, "send_task", lambda name, args, queue: sent.append((name, args, queue)))
    jobs.job_enqueue(export, "training.export_run")
    assert sent == [("training.export_run", [export.id], "gpu-a")]
    export.refresh_from_db()
    assert export.status == Export.Status.QUEUED and export.error == ""


def test_a_job_the_broker_refuses_fails_with_the_reason(export, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(jobs.current_app, "send_task", refuse)
    jobs.job_enqueue(export, "training.export_run")
    export.refresh_from_db()
    assert export.status == Export.Status.FAILED and export.finished_at is not None
    assert export.error == ("the task queue (Redis) did not take it: Error 111 connecting to 127.0.0.1:6379. "
                            "Connection refused.")
