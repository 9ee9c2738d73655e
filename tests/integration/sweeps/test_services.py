"""The sweep services on the real database, with member runs queued where no worker takes them and their results
written as a worker writes them (metric points, then the terminal transition): phases chained, the winner's run
reused, the confirmation phase, waiting for confirmation, undecidable phases, stop, apply, and bad input."""
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from dashboard.models import Membership
from guidance.models import Finding
from tests.factories import idle_queue, make_member, make_team, tiny_overrides
from training.models import MetricPoint, Run, Sweep, SweepMember, SweepPhase
from training.runs import services as runs
from training.sweeps import services
from training.sweeps import signals as sweep_signals
from training.sweeps.selectors import member_results, stalled_sweep_ids, sweep_state

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = 12


def base(**extra) -> dict:
    return tiny_overrides("tiny-model", **{"max_steps": STEPS, "eval_split": 0.2, "eval_steps": 6, **extra})


def create(team_member, template: str, **kw) -> Sweep:
    team, user, dataset = team_member
    overrides = kw.pop("overrides", base())
    return services.sweep_create(team=team, user=user, template=template, dataset=dataset, overrides=overrides,
                                 queue=kw.pop("queue", idle_queue()), **kw)


def finish(member: SweepMember, eval_loss: float, *, status: str = Run.Status.SUCCEEDED) -> None:
    """What a worker records for a member: its points (eval at the last step), then its end."""
    run = Run.objects.get(id=member.run_id)
    now = timezone.now()
    MetricPoint.objects.bulk_create([MetricPoint(run=run, step=s, loss=eval_loss + 0.1, time=now,
                                                 eval_loss=eval_loss if s == STEPS else None,
                                                 learning_rate=1e-4, tokens_per_s=1000.0)
                                     for s in range(1, STEPS + 1)])
    runs.run_transition(run, to=status, allowed_from=[Run.Status.QUEUED], finished_at=now, last_step=STEPS)


def phase_members(sweep: Sweep, index: int) -> list[SweepMember]:
    return list(SweepMember.objects.filter(sweep=sweep, phase__index=index).order_by("index"))


def test_a_chained_procedure_judges_each_phase_and_reuses_the_winners_run(team_member):
    sweep = create(team_member, "weight_decay")
    coarse = phase_members(sweep, 0)
    assert [m.value for m in coarse] == [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    losses = [1.30, 1.28, 1.25, 1.21, 1.20, 1.10, 1.15, 1.40]
    for member, loss in zip(coarse, losses):
        assert services.sweep_advance(sweep_id=sweep.id) == "waiting"
        finish(member, loss)
    assert services.sweep_advance(sweep_id=sweep.id) == "phase refine created"
    assert services.sweep_advance(sweep_id=sweep.id) == "waiting"  # a duplicate delivery: nothing new

    first = SweepPhase.objects.get(sweep=sweep, index=0)
    assert first.verdict["winner"] == "weight_decay=0.01" and "1.100" in first.verdict["text"]
    refine = phase_members(sweep, 1)
    assert [m.value for m in refine] == [0.005, 0.01, 0.02]
    winner_run = next(m.run_id for m in coarse if m.name == "weight_decay=0.01")
    assert refine[1].run_id == winner_run  # the same config: its run stands in, nothing retrained
    assert Run.objects.filter(sweep=sweep).count() == 8 + 2

    finish(refine[0], 1.12)
    finish(refine[2], 1.09)
    assert services.sweep_advance(sweep_id=sweep.id) == "finished"
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.FINISHED and sweep.winner.name == "weight_decay=0.02"
    assert sweep.verdict.startswith("Weight decay, around the best: weight_decay = 0.02: the lowest eval loss, 1.090")
    assert services.sweep_advance(sweep_id=sweep.id) == "nothing to do"


def test_the_confirmation_phase_reruns_the_top_two_at_a_second_seed_and_judges_the_mean(team_member):
    sweep = create(team_member, "r", params={"values": [2, 4, 8]}, confirm_top=2)
    for member, loss in zip(phase_members(sweep, 0), [1.20, 1.10, 1.15]):
        finish(member, loss)
    assert services.sweep_advance(sweep_id=sweep.id) == "phase confirm created"
    confirm = phase_members(sweep, 1)
    assert [m.name for m in confirm] == ["r=4 (seed 3408)", "r=8 (seed 3408)"]
    assert all(m.config["seed"] == 3408 and m.config["random_state"] == 3408 for m in confirm)
    assert confirm[0].config["r"] == 4 and confirm[1].config["r"] == 8
    finish(confirm[0], 1.16)  # mean 1.13
    finish(confirm[1], 1.09)  # mean 1.12: the order changes
    assert services.sweep_advance(sweep_id=sweep.id) == "finished"
    sweep.refresh_from_db()
    assert sweep.winner.name == "r=8 (seed 3408)" and "the first seed had picked r=4" in sweep.verdict


def test_without_auto_advance_the_next_phase_waits_for_the_users_confirmation(team_member):
    team, user, _ = team_member
    sweep = create(team_member, "weight_decay", params={"values": [0.0, 0.01]}, auto_advance=False)
    for member, loss in zip(phase_members(sweep, 0), [1.2, 1.1]):
        finish(member, loss)
    assert services.sweep_advance(sweep_id=sweep.id) == "waiting for confirmation"
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.CONFIRMING and SweepPhase.objects.filter(sweep=sweep).count() == 1
    services.sweep_confirm(sweep=sweep, user=user)
    assert sweep.status == Sweep.Status.RUNNING
    assert [m.value for m in phase_members(sweep, 1)] == [0.005, 0.01, 0.02]
    with pytest.raises(ValidationError) as exc:
        services.sweep_confirm(sweep=sweep, user=user)
    assert "not waiting for confirmation" in str(exc.value)


def test_a_phase_whose_members_all_failed_ends_the_sweep_failed_with_the_reason(team_member):
    sweep = create(team_member, "r", params={"values": [2, 4]})
    for member in phase_members(sweep, 0):
        finish(member, 1.0, status=Run.Status.FAILED)
    assert services.sweep_advance(sweep_id=sweep.id) == "failed: undecidable"
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.FAILED and "no member finished stable" in sweep.verdict
    assert "failed, not compared: r=2, r=4" in sweep.verdict


def test_stop_ends_the_queued_members_and_later_advances_do_nothing(team_member):
    team, user, _ = team_member
    sweep = create(team_member, "r", params={"values": [2, 4]})
    services.sweep_stop(sweep=sweep, user=user)
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.STOPPED
    assert set(Run.objects.filter(sweep=sweep).values_list("status", flat=True)) == {Run.Status.STOPPED}
    assert services.sweep_advance(sweep_id=sweep.id) == "nothing to do"
    resumed = services.sweep_resume(sweep=sweep, user=user)
    assert resumed.status == Sweep.Status.RUNNING
    fresh = [Run.objects.get(id=m.run_id) for m in phase_members(sweep, 0)]
    assert [r.status for r in fresh] == [Run.Status.QUEUED, Run.Status.QUEUED]  # no checkpoint: started again


def test_a_member_whose_queued_run_is_deleted_fails_and_the_phase_is_judged_without_it(team_member, monkeypatch):
    queued = []
    monkeypatch.setattr(sweep_signals, "sweep_advance_enqueue", queued.append)
    sweep = create(team_member, "r", params={"values": [2, 4, 8]})
    first, second, third = phase_members(sweep, 0)
    finish(first, 1.20)
    finish(second, 1.10)
    Run.objects.get(id=third.run_id).delete()  # as the admin or a shell deletes it, while it is queued
    assert queued == [sweep.id]  # the deletion queued the sweep's advance
    assert stalled_sweep_ids(now=timezone.now() + timezone.timedelta(seconds=31)) == [sweep.id]
    services.sweep_advance(sweep_id=sweep.id)
    phase = SweepPhase.objects.get(sweep=sweep, index=0)
    assert phase.verdict["winner"] == "r=4" and phase.verdict["failed"] == ["r=8"]
    assert "failed, not compared: r=8 (its run was deleted)" in phase.verdict["text"]
    state = sweep_state(sweep)["phases"][0]["members"]
    assert [(m["status"], m["outcome_note"]) for m in state][2] == ("failed", "its run was deleted")


def test_a_sweep_whose_every_member_run_was_deleted_fails_and_resume_trains_them_again(team_member):
    _, user, _ = team_member
    sweep = create(team_member, "r", params={"values": [2, 4]})
    with pytest.raises(ValidationError):  # before the deletion, Resume has nothing to carry on
        services.sweep_resume(sweep=sweep, user=user)
    for member in phase_members(sweep, 0):
        Run.objects.get(id=member.run_id).delete()
    assert services.sweep_advance(sweep_id=sweep.id) == "failed: undecidable"
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.FAILED
    assert "failed, not compared: r=2 (its run was deleted), r=4 (its run was deleted)" in sweep.verdict
    resumed = services.sweep_resume(sweep=sweep, user=user)
    assert resumed.status == Sweep.Status.RUNNING and resumed.verdict == ""
    members = phase_members(sweep, 0)
    assert all(m.run_id is not None for m in members)
    assert [Run.objects.get(id=m.run_id).status for m in members] == [Run.Status.QUEUED, Run.Status.QUEUED]
    assert Run.objects.get(id=members[0].run_id).config["r"] == 2
    for member, loss in zip(members, [1.2, 1.1]):
        finish(member, loss)
    services.sweep_advance(sweep_id=sweep.id)
    assert SweepPhase.objects.get(sweep=sweep, index=0).verdict["winner"] == "r=4"


def test_resume_retrains_a_deleted_members_run_while_the_others_still_train(team_member):
    _, user, _ = team_member
    sweep = create(team_member, "r", params={"values": [2, 4]})
    first, second = phase_members(sweep, 0)
    Run.objects.get(id=first.run_id).delete()
    assert services.sweep_advance(sweep_id=sweep.id) == "waiting"  # r=4 still queued
    services.sweep_resume(sweep=sweep, user=user)
    first.refresh_from_db()
    assert Run.objects.get(id=first.run_id).status == Run.Status.QUEUED
    assert Run.objects.get(id=second.run_id).status == Run.Status.QUEUED  # untouched


def test_the_winner_becomes_a_run_or_an_admins_team_preset(team_member):
    team, user, dataset = team_member
    sweep = create(team_member, "r", params={"values": [2, 4]})
    with pytest.raises(ValidationError, match="no winner yet"):
        services.sweep_apply_run(sweep=sweep, user=user)
    for member, loss in zip(phase_members(sweep, 0), [1.2, 1.1]):
        finish(member, loss)
    services.sweep_advance(sweep_id=sweep.id)
    sweep.refresh_from_db()
    run = services.sweep_apply_run(sweep=sweep, user=user, max_steps=200)
    assert run.config["r"] == 4 and run.config["lora_alpha"] == 8 and run.config["max_steps"] == 200
    assert run.sweep_id is None  # a run of its own, not a member
    with pytest.raises(PermissionDenied):
        services.sweep_apply_preset(sweep=sweep, user=user, name="tuned r")
    admin = make_member(team, role=Membership.Role.ADMIN)
    preset = services.sweep_apply_preset(sweep=sweep, user=admin, name="tuned r")
    assert preset.team == team and preset.config["r"] == 4 and "train_file" not in preset.config
    with pytest.raises(ValidationError, match="already has a preset"):
        services.sweep_apply_preset(sweep=sweep, user=admin, name="tuned r")


def counts() -> tuple[int, int, int, int]:
    return Sweep.objects.count(), SweepPhase.objects.count(), SweepMember.objects.count(), Run.objects.count()


@pytest.mark.parametrize("kw, field, says", [
    ({"params": {"values": []}}, "values", "at least one value"),
    ({"params": {"values": [8, 0]}}, "r", "r=0"),
    ({"params": {"colour": 1}}, "colour", "not a parameter of a sweep"),
    ({"template": "temperature"}, "template", "no procedure for 'temperature'"),
    ({"overrides": base(eval_split=None, eval_steps=None)}, "eval_steps", "judges members on eval loss"),
    ({"confirm_top": 9}, "confirm_top", "0 (none) to 5"),
    ({"queue": "no spaces"}, "queue", "letters, digits"),
])
def test_bad_input_names_the_field_and_creates_nothing(team_member, kw, field, says):
    before = counts()
    template = kw.pop("template", "r")
    with pytest.raises(ValidationError) as exc:
        create(team_member, template, **kw)
    assert field in exc.value.message_dict and says in " ".join(exc.value.message_dict[field])
    assert counts() == before


def test_another_teams_base_run_or_a_base_that_cannot_take_the_parameter_is_refused(team_member, tmp_path):
    team, user, dataset = team_member
    other = make_team()
    theirs = runs.run_create(team=other, user=make_member(other), dataset=dataset.__class__.objects.create(
        team=other, name="x", path=dataset.path, source=dataset.source, format=dataset.format, rows=dataset.rows,
        size_bytes=dataset.size_bytes, sha256=dataset.sha256), queue=idle_queue(), overrides=base())
    before = counts()
    with pytest.raises(ValidationError) as exc:
        services.sweep_create(team=team, user=user, template="r", dataset=dataset, base_run=theirs)
    assert exc.value.message_dict == {"base_run": ["no such run in this team"]}

    # A run built on another run's adapter keeps that adapter's rank: a rank sweep cannot vary it.
    parent = runs.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(), overrides=base())
    runs.run_transition(parent, to=Run.Status.SUCCEEDED, allowed_from=[Run.Status.QUEUED],
                        adapter_path=str(tmp_path / "adapter"))
    built = Run.objects.create(team=team, dataset=dataset, created_by=user, name="built", queue=idle_queue(),
                               config={**parent.config, "init_adapter": parent.adapter_path}, base_run=parent,
                               base_kind=Run.BaseKind.ADAPTER, dataset_sha256=dataset.sha256,
                               status=Run.Status.SUCCEEDED)
    before = counts()
    with pytest.raises(ValidationError) as exc:
        services.sweep_create(team=team, user=user, template="r", dataset=dataset, base_run=built,
                              params={"values": [2, 4]}, queue=idle_queue())
    assert "r" in exc.value.message_dict and "keeps its r" in " ".join(exc.value.message_dict["r"])
    assert counts() == before


def test_a_sweep_whose_advance_was_lost_is_found_by_the_periodic_check(team_member):
    sweep = create(team_member, "weight_decay", params={"values": [0.0, 0.01]})
    for member, loss in zip(phase_members(sweep, 0), [1.2, 1.1]):
        finish(member, loss)
    later = timezone.now() + timezone.timedelta(seconds=31)
    assert stalled_sweep_ids(now=timezone.now()) == []  # within the grace: its own advance is on the way
    assert stalled_sweep_ids(now=later) == [sweep.id]
    services.sweep_advance(sweep_id=sweep.id)  # what the re-queued advance does
    assert stalled_sweep_ids(now=later) == []  # the next phase's members are queued, not ended


def test_a_sweep_judged_on_an_eval_suite_waits_for_the_evaluations_and_reads_the_figure(team_member):
    import io
    import json

    from training.evaluation import services as evals
    from training.models import Evaluation

    team, user, dataset = team_member
    rows = [{"prompt": f"q{i}", "reference": "red" if i % 2 else "blue"} for i in range(4)]
    suite = evals.suite_create_from_upload(team=team, user=user, name="colours", metric="classification",
                                           labels=["red", "blue"], filename="s.jsonl",
                                           file=io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode()))
    with pytest.raises(ValidationError) as exc:
        create(team_member, "r", params={"values": [2, 4]}, eval_suite=suite, eval_figure="bleu")
    assert "has no figure 'bleu'; allowed: accuracy, macro_f1" in exc.value.message_dict["eval_figure"][0]
    sweep = create(team_member, "r", params={"values": [2, 4]}, eval_suite=suite, eval_figure="macro_f1")
    members = phase_members(sweep, 0)
    assert all(list(Run.objects.get(id=m.run_id).eval_suites.all()) == [suite] for m in members)
    for member, loss in zip(members, [1.0, 1.5]):  # by eval loss r=2 would win
        finish(member, loss)
    assert services.sweep_advance(sweep_id=sweep.id) == "waiting"  # the runs ended; their evaluations have not
    for member, f1 in zip(members, [0.50, 0.75]):
        Evaluation.objects.create(team=team, suite=suite, run_id=member.run_id, model="tiny-model", queue=idle_queue(),
                                  status=Evaluation.Status.SUCCEEDED, figures={"accuracy": 0.5, "macro_f1": f1})
    assert services.sweep_advance(sweep_id=sweep.id) == "finished"
    sweep.refresh_from_db()
    assert sweep.winner.name == "r=4"
    assert "r = 4: the best error (1 - macro_f1 on colours), 0.250" in sweep.verdict


def test_a_resumed_members_result_is_its_chains_curve_each_step_once(team_member):
    """Lost twice and resumed twice: the member is judged on the earlier runs' points up to each checkpoint resumed
    from, then its own; what an earlier run trained after that checkpoint (and found there) was trained over."""
    _, user, _ = team_member
    sweep = create(team_member, "r")
    member = phase_members(sweep, 0)[0]
    now = timezone.now()

    def record(run: Run, steps: range) -> None:
        # The learning rate holds the step: the result's curve is (learning rate, loss) pairs.
        MetricPoint.objects.bulk_create([MetricPoint(run=run, step=s, loss=float(run.id), learning_rate=float(s),
                                                     time=now) for s in steps])

    def find(run: Run, step: int) -> None:
        Finding.objects.create(run=run, code="loss_spike", severity="warning", step=step, title="t", message="m")

    def lose_and_resume(run: Run, steps: range, checkpoint: int) -> Run:
        record(run, steps)
        find(run, steps[-1])  # after the checkpoint: trained over by the continuation
        Run.objects.filter(id=run.id).update(status=Run.Status.LOST, last_checkpoint_path=f"/c/{checkpoint}",
                                             last_checkpoint_step=checkpoint)
        run.refresh_from_db()
        return runs.run_resume(run=run, user=user)

    first = member.run
    find(first, 3)
    second = lose_and_resume(first, range(1, 6), checkpoint=4)
    third = lose_and_resume(second, range(4, 10), checkpoint=8)  # re-logs step 4, the one it resumed from
    record(third, range(8, STEPS + 1))
    find(third, 10)
    SweepMember.objects.filter(id=member.id).update(run=third)
    member.refresh_from_db()

    result = member_results([member])[member.name]
    assert [lr for lr, _ in result["curve"]] == list(range(1, STEPS + 1))
    assert [loss for _, loss in result["curve"]] == [first.id] * 4 + [second.id] * 4 + [third.id] * 4
    assert result["last_step"] == STEPS
    assert result["findings"] == ["loss_spike@3", "loss_spike@10"]
