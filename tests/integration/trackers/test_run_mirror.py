"""The worker side's glue on the real recorder and database, without a training: what the trackers could not take
is counted in a warning on the run, and TensorBoard's files are then rewritten from the stored points; an
observer that only mirrors never asks the run to stop."""
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.factories import make_dataset, make_member, make_run, make_team
from training.models import MetricPoint, Run, RunEvent
from training.runs.execution import RunRecorder
from training.trackers.mirror import Mirror
from training.trackers.services import RunMirror
from training.trackers.tensorboard import TensorBoardWriter

pytestmark = pytest.mark.django_db


def test_what_the_trackers_dropped_is_a_warning_and_tensorboard_is_rewritten_whole(tmp_path):
    team = make_team()
    user = make_member(team)
    run = make_run(team, user, make_dataset(team, user, tmp_dir=tmp_path))
    log_dir = tmp_path / "tensorboard"
    # Not started yet: the queue of 3 fills and the rest is dropped, as when a tracker falls behind.
    mirror = Mirror({"tensorboard": TensorBoardWriter(log_dir)}, config=run.config, capacity=3)
    observer = RunMirror(run, mirror)
    recorder = RunRecorder(run, [observer])
    assert observer.recorder is recorder
    now = time.time()
    recorder.record_many([{"type": "metrics", "step": step, "time": now + step, "loss": 3.0 - step / 10,
                           "grad_norm": 1.0, "learning_rate": 1e-4} for step in range(1, 11)])
    assert MetricPoint.objects.filter(run=run).count() == 10 and mirror.dropped == 7
    assert not recorder.stop_asked
    mirror.start()
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, last_step=10, artifact_dir=str(tmp_path))
    observer.close()
    (warning,) = RunEvent.objects.filter(run=run, type="warning")
    assert warning.data == {"code": "tracker_failed", "field": "trackers", "message": (
        "7 events were not mirrored: the trackers fell behind the run (more than 3 waiting); TensorBoard's files "
        "were rewritten from the stored run")}
    files = EventAccumulator(str(log_dir))
    files.Reload()
    assert [e.step for e in files.Scalars("train/loss")] == list(range(1, 11))
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
