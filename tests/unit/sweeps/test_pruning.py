"""Pruning's pure parts, and Optuna's successive halving driven through them on an in-memory study (no database):
the rung's evidence text, which member is dropped at a rung, what an ended member's trial is told, once."""
import math

import optuna
import pytest
from optuna.trial import TrialState

from training.sweeps import pruning


@pytest.fixture
def study():
    return optuna.create_study(direction="minimize", pruner=pruning.pruner(6),
                               storage=optuna.storages.InMemoryStorage())


def test_evidence_quotes_the_members_loss_and_the_others_at_the_rung():
    assert pruning.evidence(12, 2.31, [2.10, 2.05]) == (
        "pruned at step 12: eval loss 2.310, not in the best third of the 3 members that reached step 12 "
        "(best 2.050, 2.100)")
    assert pruning.evidence(6, 2.4, [2.0]) == (
        "pruned at step 6: eval loss 2.400, not the best of the 2 members that reached step 6 (best 2.000)")
    assert "best half of the 4" in pruning.evidence(6, 2.4, [1.0, 2.0, 3.0], reduction_factor=2)
    assert pruning.evidence(6, 2.4, [1.0] * 7).endswith("(best 1.000, 1.000, 1.000, 1.000, 1.000, ...)")
    assert pruning.evidence(6, math.nan, []) == "pruned at step 6: eval loss not finite (nan)"


def test_end_states():
    assert pruning.end_state({"status": "succeeded", "final_eval_loss": 2.1}) == (TrialState.COMPLETE, 2.1)
    assert pruning.end_state({"status": "succeeded", "final_eval_loss": None}) == (TrialState.FAIL, None)
    assert pruning.end_state({"status": "pruned"}) == (TrialState.PRUNED, None)
    assert pruning.end_state({"status": "diverged"}) == (TrialState.PRUNED, None)
    assert pruning.end_state({"status": "failed"}) == (TrialState.FAIL, None)


def eval_at(study, index, step, loss, last_step=12):
    trial = pruning.member_trial(study, index=index, name=f"m{index}")
    return pruning.report(study, trial, step=step, value=loss, last_step=last_step)


def test_members_in_queue_order_the_worse_later_ones_are_pruned_at_the_first_eval(study):
    # Solo workers: member 0 trains first, so it reaches step 6 first and is never compared; each later member
    # goes on only if it is the best so far (fewer than 3 at the rung) or in the best third.
    assert eval_at(study, 0, 6, 2.0) is None
    assert eval_at(study, 0, 12, 1.8) is None
    assert eval_at(study, 1, 6, 1.9) is None
    note = eval_at(study, 2, 6, 2.6)
    assert note == ("pruned at step 6: eval loss 2.600, not in the best third of the 3 members that reached step 6 "
                    "(best 1.900, 2.000)")


def test_the_last_step_is_never_pruned_and_a_not_finite_loss_is(study):
    assert eval_at(study, 0, 6, 2.0) is None
    assert eval_at(study, 1, 6, 2.5, last_step=6) is None  # its budget is spent: its result counts
    assert eval_at(study, 2, 6, math.nan) == "pruned at step 6: eval loss not finite (nan)"


def test_a_resumed_member_keeps_its_trial_and_an_ended_one_is_told_once(study):
    eval_at(study, 0, 6, 2.0)
    first = pruning.trial_of(study.get_trials(), 0)
    again = pruning.member_trial(study, index=0, name="m0")  # the continuation's watch
    assert again.number == first.number
    ended = [(0, "m0", {"status": "succeeded", "final_eval_loss": 1.7}), (1, "m1", {"status": "diverged"})]
    assert pruning.tell(study, ended) == 2
    assert pruning.tell(study, ended) == 0  # a duplicate advance
    by_index = {t.user_attrs[pruning.MEMBER]: t for t in study.get_trials()}
    assert (by_index[0].state, by_index[0].value) == (TrialState.COMPLETE, 1.7)
    assert by_index[1].state == TrialState.PRUNED and by_index[1].user_attrs["outcome"] == "diverged"
    assert pruning.member_trial(study, index=0, name="m0") is None  # ended: a resumed failed member is not pruned
