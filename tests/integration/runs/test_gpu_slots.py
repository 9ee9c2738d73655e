"""GPU slots (issue 21): a worker admits runs while their predicted peaks fit its GPU and holds the next with the
reason (services on the real database, a worker row reporting a GPU as its heartbeat would); and on a real Celery
worker of two slots: two tiny runs train at once and both finish, a run whose slots are taken waits in the queue and
starts when one frees, and a run that runs out of memory beside another fails alone with a finding that says so."""
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from guidance.models import Finding
from tests.factories import idle_queue, make_dataset, make_member, make_run, make_team, tiny_overrides
from tests.integration.conftest import wait_for, wait_for_run, wait_terminal
from tests.workers import start_worker, stop_worker
from training.models import MetricPoint, Run, Worker
from training.planner.slots import GiB
from training.runs import execution, services, slots

Status = Run.Status
MiB = 1024 ** 2
CONTEXT = settings.TUNEBOARD_SLOT_CONTEXT_MB * MiB


@pytest.fixture
def member(tmp_path):
    team = make_team()
    user = make_member(team)
    return team, user, make_dataset(team, user, tmp_dir=tmp_path)


def gpu_worker(name: str, gib: float, *, slots: int = 2, used_gib: float | None = None) -> Worker:
    """A worker's row as its heartbeat writes it on a box with one GPU of `gib`."""
    return Worker.objects.create(name=name, hostname="box", queues=[idle_queue()], slots=slots, gpus=[{
        "name": "NVIDIA L4", "memory_total": int(gib * GiB), "utilization": 0.0,
        "memory_used": int(used_gib * GiB) if used_gib is not None else None}])


@pytest.fixture
def queued_run(member, tiny_model):
    """A queued tiny run (its task never sent: the test's transaction does not commit) whose plan, made by the
    planner at creation, predicts a peak of up to `peak_gib` (None: no prediction)."""
    team, user, dataset = member

    def make(peak_gib: float | None) -> Run:
        run = services.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(),
                                  overrides=tiny_overrides(tiny_model))
        plan = ({**run.plan, "peak_low": int(peak_gib * 0.8 * GiB), "peak_bytes": int(peak_gib * 0.9 * GiB),
                 "peak_high": int(peak_gib * GiB)} if peak_gib else {})
        Run.objects.filter(id=run.id).update(plan=plan)
        run.refresh_from_db()
        return run

    return make


def reserved(peak_gib: float) -> int:
    return int(peak_gib * GiB * (1 + settings.TUNEBOARD_SLOT_MARGIN)) + CONTEXT


@pytest.mark.django_db
def test_runs_are_admitted_while_their_predicted_peaks_fit_and_the_next_waits_with_the_reason_on_its_page(member, queued_run):
    team, user, _ = member
    worker = gpu_worker("gpu@l4", 24, slots=3)
    first, second = queued_run(10), queued_run(12)

    claim = slots.run_claim_slot(run_id=first.id, worker_name=worker.name)
    assert claim.run is not None and claim.run.status == Status.STARTING and claim.retry_s is None
    assert claim.run.slot_reserved_bytes == reserved(10)

    # 12 GiB with the margin and a context is 13.7 GiB; 24 - 11.5 leaves 12.5 GiB: it waits, queued, with why
    claim = slots.run_claim_slot(run_id=second.id, worker_name=worker.name)
    assert claim.run is None and claim.retry_s == settings.TUNEBOARD_SLOT_RETRY_S
    second.refresh_from_db()
    assert second.status == Status.QUEUED and second.worker is None
    assert second.held_reason == (f"waiting: it needs 13.7 GiB (peak up to 12.0 GiB + 10% + 0.5 GiB CUDA context); "
                                  f"the NVIDIA L4 of gpu@l4 (24.0 GiB) has 12.5 GiB free (11.5 GiB admitted for run "
                                  f"#{first.id})")
    assert list(worker.current_runs.values_list("id", flat=True)) == [first.id]
    client = Client()
    client.force_login(user)
    assert "has 12.5 GiB free" in client.get(f"/runs/{second.id}/").content.decode()

    # the first ends: its slot and its memory are free, and the second is admitted
    services.run_transition(first, to=Status.SUCCEEDED, allowed_from=Run.ON_WORKER, finished_at=timezone.now())
    services.run_release(run_id=first.id)
    claim = slots.run_claim_slot(run_id=second.id, worker_name=worker.name)
    assert claim.run is not None and claim.run.held_reason == "" and claim.run.slot_reserved_bytes == reserved(12)
    assert "has 12.5 GiB free" not in client.get(f"/runs/{second.id}/").content.decode()


@pytest.mark.django_db
def test_memory_the_gpu_reports_in_use_and_a_run_without_a_prediction_keep_others_out(member, queued_run):
    busy = gpu_worker("gpu@shared", 24, used_gib=20)  # another process holds 20 GiB
    run = queued_run(6)
    claim = slots.run_claim_slot(run_id=run.id, worker_name=busy.name)
    run.refresh_from_db()
    assert claim.run is None and "20.0 GiB in use by the last heartbeat" in run.held_reason

    whole = gpu_worker("gpu@whole", 24)
    unknown, small = queued_run(None), queued_run(1)
    assert slots.run_claim_slot(run_id=unknown.id, worker_name=whole.name).run.slot_reserved_bytes is None
    assert slots.run_claim_slot(run_id=small.id, worker_name=whole.name).run is None
    small.refresh_from_db()
    assert small.held_reason.endswith(f"is held whole by run #{unknown.id} (no predicted peak)")


@pytest.mark.django_db
def test_a_run_that_fits_no_worker_is_held_with_the_reason_and_one_that_fits_another_waits_for_it(member, queued_run):
    small = gpu_worker("gpu@small", 16)
    run = queued_run(30)
    claim = slots.run_claim_slot(run_id=run.id, worker_name=small.name)
    run.refresh_from_db()
    assert claim.run is None and claim.retry_s == settings.TUNEBOARD_SLOT_RETRY_S * slots.HELD_RETRY_FACTOR
    assert run.status == Status.QUEUED
    assert run.held_reason.startswith(f"held: it fits no live worker of queue {idle_queue()} (needs 30.5 GiB alone; "
                                      "gpu@small: it needs 30.5 GiB even alone")
    assert "make it smaller" in run.held_reason

    gpu_worker("gpu@big", 80)
    Worker.objects.create(name="gpu@silent", queues=[idle_queue()], last_heartbeat_at=timezone.now() - timedelta(
        hours=1), gpus=[{"name": "H200", "memory_total": 140 * GiB}])  # a silent worker is no way out
    claim = slots.run_claim_slot(run_id=run.id, worker_name=small.name)
    run.refresh_from_db()
    assert claim.retry_s == settings.TUNEBOARD_SLOT_RETRY_S
    assert run.held_reason.startswith("waiting for gpu@big: it does not fit gpu@small")


@pytest.mark.django_db
def test_a_stopped_run_is_not_held_and_its_task_ends(member, queued_run):
    worker = gpu_worker("gpu@l4", 24, slots=1)
    team, user, _ = member
    first, second = queued_run(10), queued_run(10)
    slots.run_claim_slot(run_id=first.id, worker_name=worker.name)
    services.run_stop(run=second, user=user)
    claim = slots.run_claim_slot(run_id=second.id, worker_name=worker.name)
    assert claim.run is None and claim.retry_s is None


@pytest.mark.django_db
def test_the_lost_run_check_knows_each_run_a_worker_with_slots_trains(member):
    team, user, dataset = member
    kept = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="slots@test")
    dropped = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="slots@test")
    Run.objects.update(started_at=timezone.now() - timedelta(seconds=120))
    assert sorted(Worker.objects.get(name="slots@test").current_runs.values_list("id", flat=True)) == sorted(
        [kept.id, dropped.id])
    services.run_release(run_id=dropped.id)  # its slot's thread left it without a result
    assert services.runs_mark_lost() == [dropped.id]
    assert dict(Run.objects.values_list("id", "status")) == {kept.id: Status.STARTING, dropped.id: Status.LOST}


@pytest.mark.django_db
def test_an_out_of_memory_alone_has_no_shared_finding_and_one_beside_another_names_it(member, queued_run):
    team, user, dataset = member
    neighbour = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="cpu@box")
    run = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="cpu@box")
    execution.RunRecorder(run).record({"type": "failed", "time": timezone.now().timestamp(), "step": 3, "oom": True,
                                       "error_class": "OutOfMemoryError", "message": "can't allocate memory"})
    finding = slots.run_out_of_memory_shared(run=run)
    assert finding is not None and finding.code == slots.SHARED_OOM and finding.step == 3
    assert f"while sharing cpu@box (CPU only) with run #{neighbour.id}" in finding.message
    assert finding.evidence["sharing"][0]["run"] == neighbour.id
    neighbour.refresh_from_db()
    assert neighbour.status == Status.STARTING  # untouched

    gpu_worker("gpu@l4", 24)
    beside = queued_run(10)
    slots.run_claim_slot(run_id=beside.id, worker_name="gpu@l4")
    gpu_run = slots.run_claim_slot(run_id=queued_run(8).id, worker_name="gpu@l4").run
    MetricPoint.objects.create(run=gpu_run, step=1, loss=2.0, peak_vram_bytes=9 * GiB, time=timezone.now())
    execution.RunRecorder(gpu_run).record({"type": "failed", "time": timezone.now().timestamp(), "step": 1,
                                           "oom": True, "error_class": "OutOfMemoryError",
                                           "message": "CUDA out of memory. Tried to allocate 2.00 GiB"})
    finding = slots.run_out_of_memory_shared(run=gpu_run)
    assert finding.message.startswith(
        f"It ran out of memory at step 1 while sharing the NVIDIA L4 (24.0 GiB) of gpu@l4 with run #{beside.id} "
        f"(#{beside.id} reserved 11.5 GiB; this run reserved 9.3 GiB for a predicted peak of up to 8.0 GiB, and "
        "measured 9.0 GiB before it failed). Only this run failed")
    assert finding.evidence["reserved_bytes"] == reserved(8) and finding.evidence["measured_peak_vram_bytes"] == 9 * GiB

    alone = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="alone@box")
    execution.RunRecorder(alone).record({"type": "failed", "time": timezone.now().timestamp(), "step": 0, "oom": True,
                                         "error_class": "OutOfMemoryError", "message": "CUDA out of memory"})
    assert slots.run_out_of_memory_shared(run=alone) is None


# On a real worker with two slots ------------------------------------------------------------------------------

# Each slot's process may map this much: the tiny run (about 3 GiB of address space with torch loaded) fits; a
# packed micro-batch of 32 rows of 1,024 tokens, attended as one 32k-token sequence on the hf backend, does not.
ADDRESS_SPACE_MB = 4608


@pytest.fixture(scope="module")
def two_slots(django_db_setup, django_db_blocker, isolated_session, tmp_path_factory):
    log = tmp_path_factory.mktemp("slots") / "worker.log"
    with django_db_blocker.unblock():
        worker = start_worker(queue=f"{settings.TUNEBOARD_DEFAULT_QUEUE}-slots", name=f"slots-{isolated_session}@test",
                              log=log, slots=2, env={"TUNEBOARD_SLOT_ADDRESS_SPACE_MB": str(ADDRESS_SPACE_MB),
                                                     "TUNEBOARD_SLOT_RETRY_S": "1"})
    yield worker
    stop_worker(worker)


def worker_row(two_slots) -> Worker:
    """The worker's row with its two slots: a test's flush deletes it and the next heartbeat writes it again."""
    wait_for(lambda: Worker.objects.filter(name=two_slots.name, slots=2).exists(), timeout=20,
             what=f"{two_slots.name}'s heartbeat with its two slots")
    return Worker.objects.get(name=two_slots.name)


def point_times(run: Run) -> tuple:
    times = list(MetricPoint.objects.filter(run=run).order_by("step").values_list("time", flat=True))
    return times[0], times[-1]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_two_tiny_runs_share_a_worker_with_two_slots_and_both_finish(two_slots, tiny_model, tmp_path):
    worker = worker_row(two_slots)
    team = make_team()
    user = make_member(team)
    dataset = make_dataset(team, user, tmp_dir=tmp_path)
    runs = [services.run_create(team=team, user=user, dataset=dataset, queue=two_slots.queue,
                                overrides=tiny_overrides(tiny_model, max_steps=200)) for _ in range(2)]
    wait_for(lambda: worker.current_runs.count() == 2, timeout=60, what="both runs on the worker at once")
    a, b = (wait_terminal(run, timeout=180) for run in runs)
    assert a.status == b.status == Status.SUCCEEDED, (a.error, b.error, two_slots.log_text())
    assert a.worker_id == b.worker_id == worker.id
    # they trained at the same time: each one's steps began before the other's ended
    (a_first, a_last), (b_first, b_last) = point_times(a), point_times(b)
    assert a_first < b_last and b_first < a_last
    assert a.started_at < b.finished_at and b.started_at < a.finished_at
    wait_for(lambda: worker.current_runs.count() == 0, timeout=20, what="both slots freed")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_a_run_whose_slots_are_taken_waits_in_the_queue_with_the_reason_and_starts_when_one_frees(
        two_slots, tiny_model, tmp_path):
    worker = worker_row(two_slots)
    team = make_team()
    user = make_member(team)
    dataset = make_dataset(team, user, tmp_dir=tmp_path)
    # Two runs the worker holds (as a slot's thread would, mid-training), made here so that none of its threads is busy
    held = [make_run(team, user, dataset) for _ in range(2)]
    Run.objects.filter(id__in=[r.id for r in held]).update(status=Status.RUNNING, worker=worker,
                                                           started_at=timezone.now())
    worker.current_runs.add(*held)
    run = services.run_create(team=team, user=user, dataset=dataset, queue=two_slots.queue,
                              overrides=tiny_overrides(tiny_model, max_steps=10))
    run = wait_for_run(run, lambda r: bool(r.held_reason), timeout=30, what="the reason it waits")
    assert run.status == Status.QUEUED
    assert run.held_reason == f"waiting: all 2 slots of {worker.name} are busy (runs #{held[0].id} and #{held[1].id})"
    time.sleep(2.5)  # asked again (every second here) and still waiting
    run.refresh_from_db()
    assert run.status == Status.QUEUED
    services.run_transition(held[0], to=Status.SUCCEEDED, allowed_from=Run.ON_WORKER, finished_at=timezone.now())
    services.run_release(run_id=held[0].id)
    run = wait_terminal(run, timeout=120)
    assert run.status == Status.SUCCEEDED and run.worker_id == worker.id and run.held_reason == ""
    services.run_transition(held[1], to=Status.SUCCEEDED, allowed_from=Run.ON_WORKER, finished_at=timezone.now())
    services.run_release(run_id=held[1].id)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_a_run_out_of_memory_in_a_shared_slot_fails_alone_with_a_finding_and_the_other_trains_on(
        two_slots, tiny_model, tmp_path):
    worker = worker_row(two_slots)
    team = make_team()
    user = make_member(team)
    small = make_dataset(team, user, tmp_dir=tmp_path)
    large = make_dataset(team, user, tmp_dir=tmp_path, rows=2000)
    # The survivor has more steps than it can train in this test; it is stopped once it has trained on past the other's
    # failure, so the test does not depend on which of the two is faster on this machine (with a slot's share of the
    # cores, 250 steps once ended before the other's out-of-memory).
    survivor = services.run_create(team=team, user=user, dataset=small, queue=two_slots.queue,
                                   overrides=tiny_overrides(tiny_model, max_steps=100_000))
    hog = services.run_create(team=team, user=user, dataset=large, queue=two_slots.queue, overrides=tiny_overrides(
        tiny_model, max_steps=5, packing=True, max_length=1024, per_device_train_batch_size=32))
    hog = wait_terminal(hog, timeout=150)
    survivor.refresh_from_db()
    assert survivor.status in Run.ON_WORKER, (survivor.status, survivor.error, two_slots.log_text())
    assert hog.status == Status.FAILED and hog.error_class == "OutOfMemoryError", (hog.error, hog.log_tail[-2000:])
    assert "can't allocate memory" in hog.error  # torch's own allocator refused, under the slot's limit
    finding = wait_for(lambda: Finding.objects.filter(run=hog, code=slots.SHARED_OOM).first(), timeout=10,
                       what="the shared out-of-memory finding")
    assert finding.severity == "error" and f"beside run #{survivor.id}" in finding.title
    assert f"while sharing {worker.name} (CPU only, each slot limited to 4.5 GiB) with run #{survivor.id}" in (
        finding.message)
    assert "Only this run failed; the others went on" in finding.message
    assert finding.evidence["sharing"][0]["run"] == survivor.id
    assert finding.evidence["address_space_limit_bytes"] == ADDRESS_SPACE_MB * MiB
    survivor.refresh_from_db()
    step_after_failure = survivor.last_step
    survivor = wait_for_run(survivor, lambda r: r.last_step >= step_after_failure + 20, timeout=120,
                            what="the other run training on after the failure")
    assert survivor.status in Run.ON_WORKER
    services.run_stop(run=survivor, user=user)
    survivor = wait_terminal(survivor, timeout=60)
    assert survivor.status == Status.STOPPED and survivor.error == "", (survivor.error, two_slots.log_text())
    assert survivor.finished_at > hog.finished_at
    assert not Finding.objects.filter(run=survivor, code__startswith="out_of_memory").exists()
