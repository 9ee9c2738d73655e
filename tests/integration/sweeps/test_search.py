"""The open search on the real workers and the tiny model: TPE asks the members through ask-and-tell as they end,
successive halving prunes at the eval steps, the verdict names the best trial, and the study is in PostgreSQL."""
import optuna
import pytest
from django.core.exceptions import ValidationError
from optuna.trial import TrialState

from tests.integration.sweeps.test_sweep_flow import cpu_worker, sweep_overrides, wait_sweep  # noqa: F401
from training.models import Run, Sweep, SweepMember, SweepPhase
from training.sweeps import services, studies

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

SPACE = {"learning_rate": {"low": 1e-4, "high": 3e-3, "log": True}, "r": {"choices": [4, 8]},
         "lora_dropout": {"low": 0.0, "high": 0.1}}


def test_a_search_asks_its_trials_as_members_end_and_names_the_best(celery_worker, cpu_worker, tiny_model,
                                                                     team_member):
    team, user, dataset = team_member
    sweep = services.sweep_create(team=team, user=user, template=Sweep.SEARCH, dataset=dataset,
                                  overrides=sweep_overrides(tiny_model),
                                  params={"space": SPACE, "trials": 4, "parallel": 2, "seed": 0})
    assert sweep.prune  # a search always prunes
    phase = SweepPhase.objects.get(sweep=sweep)
    assert (phase.key, phase.axis, phase.rule) == ("search", "trial", "lowest_eval")
    assert phase.members.count() == 2  # `parallel` asked at the start; the rest as members end
    wait_sweep(sweep, timeout=240)
    assert sweep.status == Sweep.Status.FINISHED, (sweep.verdict, sweep.error)

    members = list(phase.members.select_related("run").order_by("index"))
    assert [m.name.split(":")[0] for m in members] == ["trial 1", "trial 2", "trial 3", "trial 4"]
    for m in members:
        assert set(m.values) == set(SPACE) and m.config["max_steps"] == 12 and m.config["seed"] == 3407
        assert 1e-4 <= m.values["learning_rate"] <= 3e-3 and m.values["r"] in (4, 8)
        assert m.run.config["learning_rate"] == m.values["learning_rate"] and m.run.config["r"] == m.values["r"]
    # The third was asked once a member had ended, not before.
    assert members[2].run.created_at > min(m.run.finished_at for m in members[:2])

    phase.refresh_from_db()
    verdict = phase.verdict
    compared = {m.name: m.result["final_eval_loss"] for m in members if m.result.get("status") == "succeeded"
                and m.name not in verdict["invalid"]}  # lowest_eval leaves out members with an instability finding
    assert verdict["winner"] == sweep.winner.name == min(compared, key=compared.get)
    assert verdict["details"]["params"] == sweep.winner.values and verdict["details"]["trials"] == 4
    pruned = [m.name for m in members if m.outcome == SweepMember.Outcome.PRUNED]
    assert verdict["details"]["pruned"] == len(pruned) and verdict["pruned"] == pruned
    assert sweep.verdict.startswith(f"{phase.title}: trial {sweep.winner.value} (learning_rate=")
    assert f"of 4 trials, {len(pruned)} pruned early by successive halving" in sweep.verdict

    # The study is in PostgreSQL: one trial per member, its params the member's, each told its end.
    study = optuna.load_study(study_name=f"tuneboard-sweep-{sweep.id}-phase-0", storage=studies.storage())
    trials = sorted(study.get_trials(), key=lambda t: t.user_attrs["member_index"])
    assert [t.user_attrs["member_index"] for t in trials] == [0, 1, 2, 3]
    expected = {"succeeded": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "diverged": TrialState.PRUNED,
                "failed": TrialState.FAIL}
    for m, t in zip(members, trials):
        assert t.params == m.values and t.user_attrs["member"] == m.name
        assert t.state == expected[m.result["status"]], (m.name, m.result["status"], t.state)
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(m.result["final_eval_loss"])
    best = next(t for t in trials if t.user_attrs["member"] == sweep.winner.name)
    assert best.state == TrialState.COMPLETE and best.value == min(compared.values())
    assert Run.objects.filter(sweep=sweep).count() == 4


def test_a_bad_space_is_refused_by_field_and_creates_nothing(tiny_model, team_member):
    team, user, dataset = team_member
    bad = {"space": {"learning_rate": {"low": 1e-3, "high": 1e-5}, "model": {"choices": ["x"]}}, "trials": 0}
    with pytest.raises(ValidationError) as exc:
        services.sweep_create(team=team, user=user, template=Sweep.SEARCH, dataset=dataset,
                              overrides=sweep_overrides(tiny_model), params=bad)
    errors = exc.value.message_dict
    assert errors["space.learning_rate"] == ["low must be below high"]
    assert errors["space.model"][0].startswith("a search cannot set model")
    assert errors["trials"] == ["a whole number from 1 to 100"]
    assert not Sweep.objects.exists() and not Run.objects.exists()
