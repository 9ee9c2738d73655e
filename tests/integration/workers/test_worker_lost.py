"""A worker SIGKILLed mid-run: its training dies with it, another worker marks the run lost within 60 s, and
Resume continues from the last checkpoint with every point before it kept."""
import os
import signal
import time

import pytest

from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from tests.integration.conftest import wait_for, wait_for_run, wait_terminal
from tests.workers import start_worker, stop_worker
from training.models import MetricPoint, Run
from training.runs import services

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_a_killed_workers_run_is_lost_within_60_s_and_resumes_from_its_checkpoint(
        celery_worker, tiny_model, isolated_session, tmp_path):
    team = make_team()
    user = make_member(team)
    dataset = make_dataset(team, user, tmp_dir=tmp_path)
    doomed = start_worker(queue=f"doomed-{isolated_session}", name=f"doomed-{isolated_session}@test",
                          log=tmp_path / "doomed.log")
    try:
        run = services.run_create(team=team, user=user, dataset=dataset, queue=doomed.queue,
                                  overrides=tiny_overrides(tiny_model, max_steps=3000, save_steps=5))
        run = wait_for_run(run, lambda r: (r.last_checkpoint_step or 0) >= 5 or r.is_terminal, timeout=90,
                           what="a checkpoint")
        assert run.status == Run.Status.RUNNING and run.worker.name == doomed.name
        child = run.started["pid"]
        doomed.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        doomed.process.wait()
        wait_for(lambda: not pid_alive(child), timeout=10, what="the training process to die with its worker")

        run = wait_for_run(run, lambda r: r.status == Run.Status.LOST, timeout=75, what="the run to be lost")
        assert time.monotonic() - killed_at <= 61
        assert run.error_class == "WorkerLost" and doomed.name in run.error
    finally:
        stop_worker(doomed)

    checkpoint = run.last_checkpoint_step
    points_before = list(MetricPoint.objects.filter(run=run, step__lte=checkpoint).values_list("step", flat=True))
    assert points_before == list(range(1, checkpoint + 1))
    continuation = services.run_resume(run=run, user=user, queue=celery_worker.queue)
    continuation = wait_for_run(continuation, lambda r: r.last_step > checkpoint or r.is_terminal, timeout=90,
                                what="the continuation's first step")
    services.run_stop(run=continuation, user=user)
    continuation = wait_terminal(continuation, timeout=60)
    assert continuation.status == Run.Status.STOPPED
    first_own = MetricPoint.objects.filter(run=continuation).order_by("step").first()
    assert first_own.step == checkpoint + 1
    assert list(MetricPoint.objects.filter(run=run, step__lte=checkpoint).values_list("step", flat=True)) == points_before
