"""Sweeps on real workers and the tiny model: a rank sweep to its verdict with two workers training members at once,
a diverging member stopped early, a worker killed mid-sweep and the sweep resumed, and a duplicate advance."""
import os
import signal

import pytest
from django.conf import settings

from tests.factories import tiny_overrides
from tests.integration.conftest import wait_for
from tests.workers import start_worker, stop_worker
from training import tasks
from training.models import Run, Sweep, SweepMember, SweepPhase
from training.runs import services as runs
from training.sweeps import services
from training.sweeps.selectors import sweep_state

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(420)]


@pytest.fixture
def cpu_worker(tmp_path):
    worker = start_worker(queue=settings.TUNEBOARD_CPU_QUEUE, name=f"cpu-{tmp_path.name}@test",
                          log=tmp_path / "cpu-worker.log")
    yield worker
    stop_worker(worker)


@pytest.fixture
def second_worker(tmp_path, celery_worker):
    """Another worker on the session's gpu queue: with the session's own, two members train at once."""
    worker = start_worker(queue=settings.TUNEBOARD_DEFAULT_QUEUE, name=f"gpu2-{tmp_path.name}@test",
                          log=tmp_path / "gpu2-worker.log")
    yield worker
    stop_worker(worker)


def sweep_overrides(model: str, **extra) -> dict:
    return tiny_overrides(model, **{"max_steps": 12, "eval_split": 0.2, "eval_steps": 6, "save_steps": 6, **extra})


def wait_sweep(sweep: Sweep, statuses=Sweep.TERMINAL, timeout: float = 300) -> Sweep:
    def done():
        sweep.refresh_from_db()
        return sweep.status in statuses

    try:
        wait_for(done, timeout=timeout, what=f"sweep {sweep.id} to reach {sorted(statuses)}")
    except AssertionError as exc:
        state = sweep_state(sweep)
        members = [(m["name"], m["status"], m["run_id"]) for p in state["phases"] for m in p["members"]]
        raise AssertionError(f"{exc}: {sweep.status}, members {members}") from None
    return sweep


def overlapped(runs_: list[Run]) -> bool:
    spans = sorted((r.started_at, r.finished_at) for r in runs_)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_a_rank_sweep_trains_members_on_two_workers_at_once_and_picks_by_its_rule(
        celery_worker, second_worker, cpu_worker, tiny_model, team_member):
    team, user, dataset = team_member
    sweep = services.sweep_create(team=team, user=user, template="r", dataset=dataset,
                                  overrides=sweep_overrides(tiny_model, r=8, lora_alpha=16))
    phase = SweepPhase.objects.get(sweep=sweep)
    # 64 rows: the guidance's smallest dataset bucket, so its ranks, with alpha = 2r held.
    assert [m.name for m in phase.members.order_by("index")] == ["r=2", "r=4", "r=8"]
    assert [m.config["lora_alpha"] for m in phase.members.order_by("index")] == [4, 8, 16]
    wait_sweep(sweep)
    assert sweep.status == Sweep.Status.FINISHED, (sweep.verdict, sweep.error)
    member_runs = list(Run.objects.filter(sweep=sweep))
    assert len(member_runs) == 3 and all(r.status == Run.Status.SUCCEEDED for r in member_runs)
    assert {r.worker.name for r in member_runs} == {celery_worker.name, second_worker.name}
    assert overlapped(member_runs), "no two members trained at the same time"
    phase.refresh_from_db()
    verdict = phase.verdict
    assert verdict["rule"] == "smallest_within_tolerance" and verdict["winner"] == sweep.winner.name
    losses = {m.name: m.result["final_eval_loss"] for m in phase.members.all()}
    best = min(losses.values())
    within = [n for n in ("r=2", "r=4", "r=8") if losses[n] <= best * 1.01]
    assert sweep.winner.name == within[0]
    assert f"{losses[within[0]]:.3f}" in sweep.verdict and "tolerance" in sweep.verdict

    # A duplicate "member ended" delivery changes nothing: no second verdict, phase or run.
    decided_at = phase.decided_at
    assert tasks.sweep_advance(sweep.id) == "nothing to do"
    sweep.refresh_from_db()
    phase.refresh_from_db()
    assert phase.decided_at == decided_at and SweepPhase.objects.filter(sweep=sweep).count() == 1
    assert Run.objects.filter(sweep=sweep).count() == 3


def test_a_member_with_a_huge_learning_rate_is_stopped_early_as_diverged(celery_worker, cpu_worker, tiny_model,
                                                                         team_member):
    team, user, dataset = team_member
    sweep = services.sweep_create(
        team=team, user=user, template="learning_rate", dataset=dataset,
        overrides=sweep_overrides(tiny_model, max_steps=40, eval_steps=10, save_steps=10),
        params={"phase": "coarse", "values": [1e-3, 1.0]})
    phase = SweepPhase.objects.get(sweep=sweep, index=0)
    wait_for(lambda: SweepPhase.objects.get(id=phase.id).verdict, timeout=300, what="the coarse phase's verdict")
    services.sweep_stop(sweep=sweep, user=user)  # the refine phase it chained to is not this test's
    diverged = SweepMember.objects.get(sweep=sweep, name="learning_rate=1")
    assert diverged.outcome == SweepMember.Outcome.DIVERGED, diverged.outcome_note
    assert diverged.run.status == Run.Status.STOPPED and diverged.run.last_step < 40
    phase.refresh_from_db()
    assert phase.verdict["winner"] == "learning_rate=0.001"
    assert phase.verdict["diverged"] == ["learning_rate=1"] and "diverged, not compared" in phase.verdict["text"]


def test_a_worker_killed_mid_sweep_leaves_its_member_lost_and_the_resumed_sweep_reaches_its_verdict(
        celery_worker, cpu_worker, tiny_model, team_member, isolated_session, tmp_path):
    team, user, dataset = team_member
    doomed = start_worker(queue=f"doomed-{isolated_session}", name=f"doomed-{isolated_session}@test",
                          log=tmp_path / "doomed.log")
    try:
        sweep = services.sweep_create(team=team, user=user, template="r", dataset=dataset, queue=doomed.queue,
                                      overrides=sweep_overrides(tiny_model, max_steps=30, eval_steps=10, save_steps=5),
                                      params={"values": [2, 4]})
        first = SweepMember.objects.get(sweep=sweep, name="r=2")
        wait_for(lambda: (Run.objects.get(id=first.run_id).last_checkpoint_step or 0) >= 5, timeout=90,
                 what="the first member's checkpoint")
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait()
    finally:
        stop_worker(doomed)
    # What the worker's restart (or, within a minute, the lost-run check) does: its run is lost.
    assert runs.worker_runs_mark_lost(name=doomed.name) == [first.run_id]
    assert sweep_state(sweep)["phases"][0]["members"][0]["status"] == "lost"
    assert tasks.sweep_advance(sweep.id) == "waiting"  # the verdict waits for the lost member
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.RUNNING and SweepPhase.objects.get(sweep=sweep).verdict is None

    services.sweep_resume(sweep=sweep, user=user, queue=celery_worker.queue)
    wait_sweep(sweep)
    assert sweep.status == Sweep.Status.FINISHED, (sweep.verdict, sweep.error)
    first.refresh_from_db()
    assert first.run.resumed_from_id is not None and first.run.resumed_from.status == Run.Status.LOST
    assert first.run.resumed_from_step >= 5 and first.run.status == Run.Status.SUCCEEDED
    assert first.result["final_eval_loss"] is not None and sweep.winner is not None
