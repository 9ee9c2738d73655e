"""Compare series from real runs: the worker packs a run's curves when it ends, and a resumed run's curve is its
chain's, exactly the points the run page replays."""
import numpy as np
import pytest

from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from tests.integration.conftest import wait_for, wait_for_run, wait_terminal
from training.compare import series
from training.models import Run, SeriesPack
from training.runs import services
from training.selectors import run_points

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_stopped_and_resumed_run_is_packed_and_compared_along_its_chain(celery_worker, tiny_model, tmp_path):
    team = make_team()
    user = make_member(team)
    dataset = make_dataset(team, user, tmp_dir=tmp_path)
    # Long enough that the stop (polled every 0.5 s) lands mid-run even on a fast, idle machine.
    overrides = tiny_overrides(tiny_model, max_steps=160, gradient_accumulation_steps=4, eval_split=0.1,
                               eval_steps=40)
    run = services.run_create(team=team, user=user, dataset=dataset, overrides=overrides)
    wait_for_run(run, lambda r: r.last_step >= 3 or r.is_terminal, timeout=90, what="step 3")
    services.run_stop(run=run, user=user)
    run = wait_terminal(run, timeout=60)
    assert run.status == Run.Status.STOPPED, run.error
    continuation = wait_terminal(services.run_resume(run=run, user=user))
    assert continuation.status == Run.Status.SUCCEEDED, continuation.error

    # Packed by the worker once each ended, every column, before any page asked.
    wait_for(lambda: SeriesPack.objects.filter(run=continuation).count() == len(series.COLUMN_SQL), timeout=30,
             what="the continuation's packs")
    assert SeriesPack.objects.filter(run=run).count() == len(series.COLUMN_SQL)

    curve = run_points(continuation)
    steps, xs, losses = series.fetch_series([continuation, run], "loss", "step")[continuation.id]
    assert steps.tolist() == [p["step"] for p in curve] == list(range(1, 161))
    assert losses.tolist() == [p["loss"] for p in curve]
    _, epochs, evals = series.fetch_series([continuation], "eval_loss", "epoch")[continuation.id]
    expected = [(p["epoch"], p["eval_loss"]) for p in curve if p["eval_loss"] is not None]
    assert list(zip(epochs.tolist(), evals.tolist())) == expected and len(expected) == 4
    # the original alone stops at its own last step
    original_steps = series.fetch_series([run], "loss", "step")[run.id][0]
    assert original_steps[-1] == run.last_step and np.all(np.diff(original_steps) == 1)
