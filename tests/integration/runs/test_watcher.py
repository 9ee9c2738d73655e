"""The worker's RunWatcher on the database: findings saved once, thresholds from settings, peers' best loss from
comparable runs only, and a resumed run judged over the curve it continues without repeating its findings."""
import math
import random

import numpy as np
import pytest
from django.utils import timezone

from guidance import detectors
from guidance.models import Finding
from tests.factories import idle_queue, make_dataset, make_member, make_run, make_team, tiny_overrides
from training.models import MetricPoint, Run, RunEvent
from training.runs import services
from training.runs.watcher import RunWatcher, _loss_floor, peer_best_loss

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(tmp_path):
    team = make_team()
    user = make_member(team)
    return team, user, make_dataset(team, user, tmp_dir=tmp_path)


def started(total: int = 100, warmup: int = 0) -> dict:
    return {"type": "started", "config": {"packing": False}, "dtype": "float32",
            "derived": {"total_steps": total, "warmup_steps": warmup}}


def metrics(step: int, loss: float, lr: float = 1e-4) -> dict:
    return {"type": "metrics", "step": step, "loss": loss, "grad_norm": 1.0, "learning_rate": lr}


def store(run: Run, losses: list[float]) -> None:
    now = timezone.now()
    MetricPoint.objects.bulk_create([MetricPoint(run=run, step=i + 1, loss=v, grad_norm=1.0, learning_rate=1e-4,
                                                 time=now) for i, v in enumerate(losses)])


def test_the_numpy_loss_floor_is_the_detectors_loss_floor():
    rng = random.Random(3)
    for n in (0, 1, 7, 50, 51, 333):
        losses = [rng.uniform(0.5, 3.0) for _ in range(n)]
        if n > 10:
            losses[5], losses[9] = math.nan, math.inf
        expected = detectors.loss_floor(losses)
        got = _loss_floor(np.array(losses, dtype=float), detectors.Thresholds().window)
        assert got == pytest.approx(expected) if expected is not None else got is None


def test_a_flat_run_gets_one_finding_saved_once(setup):
    team, user, dataset = setup
    run = make_run(team, user, dataset)
    watcher = RunWatcher(run)
    found = [f for event in [started(), *(metrics(s, 2.0) for s in range(1, 41))] for f in watcher.feed(event)]
    assert [(f.code, f.step) for f in found] == [("flat_loss", 20)]
    assert found[0].parameters[0] == "learning_rate"
    assert watcher.feed(metrics(41, 2.0)) == []  # once per run
    assert Finding.objects.filter(run=run).count() == 1


def test_thresholds_come_from_the_setting(setup, settings):
    team, user, dataset = setup
    settings.TUNEBOARD_DETECTOR_THRESHOLDS = {"flat_steps": 12}
    run = make_run(team, user, dataset)
    watcher = RunWatcher(run)
    found = [f for event in [started(), *(metrics(s, 2.0) for s in range(1, 21))] for f in watcher.feed(event)]
    assert [(f.code, f.step) for f in found] == [("flat_loss", 12)]  # not the default 20
    assert found[0].evidence["thresholds"]["flat_steps"] == 12


def test_peer_best_loss_comes_from_succeeded_runs_on_the_same_dataset_and_model(setup, tmp_path):
    team, user, dataset = setup
    good = make_run(team, user, dataset)
    other_model = services.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(),
                                      overrides=tiny_overrides("another-model"))
    running = make_run(team, user, dataset)
    other_team = make_team()
    outsider = make_member(other_team)
    elsewhere = make_run(other_team, outsider, make_dataset(other_team, outsider, tmp_dir=tmp_path))
    for run, level in ((good, 1.5), (other_model, 0.2), (running, 0.3), (elsewhere, 0.1)):
        store(run, [level] * 60)
    Run.objects.filter(id__in=[good.id, other_model.id, elsewhere.id]).update(status=Run.Status.SUCCEEDED)
    new = make_run(team, user, dataset)
    assert peer_best_loss(new, detectors.Thresholds()) == pytest.approx(1.5)
    assert RunWatcher(new).watcher.series.peer_best_loss == pytest.approx(1.5)
    lonely = make_run(team, user, make_dataset(team, user, tmp_dir=tmp_path))
    assert peer_best_loss(lonely, detectors.Thresholds()) is None


def test_a_resumed_run_is_judged_over_the_curve_it_continues_without_repeating_findings(setup):
    team, user, dataset = setup
    original = make_run(team, user, dataset)
    RunEvent.objects.create(run=original, seq=1, type="started", time=timezone.now(),
                            data={k: v for k, v in started().items() if k != "type"})
    store(original, [2.0] * 30)  # flat: the original's own watcher reported flat_loss at step 20
    Run.objects.filter(id=original.id).update(status=Run.Status.STOPPED, last_checkpoint_path="/x/checkpoint-30",
                                              last_checkpoint_step=30)
    original.refresh_from_db()
    continuation = services.run_resume(run=original, user=user)
    watcher = RunWatcher(continuation)
    assert watcher.watcher.series.steps == list(range(1, 31))  # seeded with the curve up to the checkpoint
    found = [f for event in [started(), *(metrics(s, 2.0) for s in range(31, 41)), metrics(41, math.nan)]
             for f in watcher.feed(event)]
    assert [(f.code, f.step) for f in found] == [("loss_not_finite", 41)]  # flat_loss belongs to the original
    assert list(Finding.objects.filter(run=continuation).values_list("code", flat=True)) == ["loss_not_finite"]
