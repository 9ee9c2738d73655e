"""Successive halving on the real workers and the tiny model: with prune on, a member whose eval loss is not in the
best third at the first rung is stopped there with the rung's evidence, and the phase's Optuna study in PostgreSQL
holds one trial per member, each told its end."""
import optuna
import pytest
from optuna.trial import TrialState

from tests.integration.conftest import wait_for
from tests.integration.sweeps.test_sweep_flow import cpu_worker, sweep_overrides  # noqa: F401 - a fixture
from training.models import Run, Sweep, SweepMember, SweepPhase
from training.sweeps import services, studies

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def test_a_member_far_behind_at_the_first_rung_is_pruned_with_the_rungs_evidence(celery_worker, cpu_worker,
                                                                                  tiny_model, team_member):
    team, user, dataset = team_member
    # One solo gpu worker trains the members in queue order, so the tiny learning rate, listed last, reaches step 6
    # last, when the two others' losses are there to compare: with 3 at the rung only the best goes on. The worker
    # reads the engine's events behind it (the first eval also opens the study), so the stop lands some steps after
    # the rung (13 steps on a 2-core dev machine): 90 leave room for a faster CPU, where 18 finished before the stop.
    sweep = services.sweep_create(
        team=team, user=user, template="learning_rate", dataset=dataset, prune=True, auto_advance=False,
        overrides=sweep_overrides(tiny_model, max_steps=90, save_steps=90, learning_rate=1e-3,
                                  lr_scheduler_type="constant"),
        params={"phase": "coarse", "values": [1e-3, 2e-3, 1e-6]})
    phase = SweepPhase.objects.get(sweep=sweep)

    def decided():
        sweep.refresh_from_db()
        return sweep.status != Sweep.Status.RUNNING

    wait_for(decided, timeout=240, what="the coarse phase's verdict")
    assert sweep.status == Sweep.Status.CONFIRMING, (sweep.status, sweep.verdict, sweep.error)
    tiny = SweepMember.objects.get(phase=phase, name="learning_rate=1e-06")
    assert tiny.outcome == SweepMember.Outcome.PRUNED, tiny.outcome_note
    assert tiny.run.status == Run.Status.STOPPED and tiny.run.last_step < 90, tiny.run.last_step
    assert tiny.outcome_note.startswith("pruned at step 6: eval loss ")
    assert "not in the best third of the 3 members that reached step 6 (best " in tiny.outcome_note
    first = SweepMember.objects.get(phase=phase, name="learning_rate=0.001")
    assert first.outcome == "" and first.run.status == Run.Status.SUCCEEDED  # the first at the rung goes on
    phase.refresh_from_db()
    assert tiny.name in phase.verdict["pruned"] and "pruned early by successive halving" in phase.verdict["text"]
    assert phase.verdict["winner"] not in phase.verdict["pruned"]

    study = optuna.load_study(study_name=f"tuneboard-sweep-{sweep.id}-phase-0", storage=studies.storage())
    trials = {t.user_attrs["member_index"]: t for t in study.get_trials()}
    assert sorted(trials) == [0, 1, 2]
    assert trials[2].state == TrialState.PRUNED and set(trials[2].intermediate_values) == {6}
    assert trials[0].state == TrialState.COMPLETE and set(trials[0].intermediate_values) == set(range(6, 91, 6))
    assert trials[0].value == pytest.approx(first.result["final_eval_loss"])
    assert trials[2].intermediate_values[6] > max(trials[0].intermediate_values[6], trials[1].intermediate_values[6])
    assert f"{trials[2].intermediate_values[6]:.3f}" in tiny.outcome_note
