"""Slot admission of runs on several GPUs (issue 23): taken only by a worker with that many GPUs and its other slots
free, holding the worker whole while it trains; why it waits, in words."""
from training.planner.slots import Admitted, GiB, Gpu, Margin, admit, devices_held_reason

MARGIN = Margin(fraction=0.10, context_bytes=GiB // 2)
H200 = Gpu(name="NVIDIA H200", total_bytes=140 * GiB, used_bytes=None)


def test_a_run_asking_more_gpus_than_the_worker_has_never_starts_there_even_when_it_is_busy():
    decision = admit(worker="gpu@one", slots=1, running=[Admitted(4, None)], peak=10 * GiB, gpu=H200, margin=MARGIN,
                     devices=2, gpu_count=1)
    assert not decision.admit and decision.never and decision.gpus_short
    assert decision.reason == "it asks for 2 GPUs and gpu@one has 1"


def test_a_run_of_two_gpus_takes_a_free_two_gpu_worker_whole():
    decision = admit(worker="gpu@two", slots=4, running=[], peak=10 * GiB, gpu=H200, margin=MARGIN, devices=2,
                     gpu_count=2)
    assert decision.admit and decision.reserved_bytes is None
    assert decision.reason == "gpu@two, 2 of its 2 GPUs, to itself"


def test_it_waits_for_the_workers_other_slots_which_share_its_first_gpu():
    decision = admit(worker="gpu@eight", slots=4, running=[Admitted(3, 20 * GiB)], peak=10 * GiB, gpu=H200,
                     margin=MARGIN, devices=4, gpu_count=8)
    assert not decision.admit and not decision.never
    assert decision.reason == "it asks for 4 GPUs of gpu@eight, which its other slots share: waiting for run #3 to end"


def test_while_it_trains_no_other_run_joins_it():
    running = [Admitted(7, None, devices=2)]
    small = admit(worker="gpu@two", slots=4, running=running, peak=1 * GiB, gpu=H200, margin=MARGIN, gpu_count=2)
    assert not small.admit and small.reason == "gpu@two is held whole by run #7 (on 2 GPUs)"
    cpu = admit(worker="cpu@box", slots=2, running=running, peak=None, gpu=None, margin=MARGIN)
    assert not cpu.admit


def test_a_cpu_worker_runs_the_ranks_as_cpu_processes():
    decision = admit(worker="cpu@box", slots=1, running=[], peak=None, gpu=None, margin=MARGIN, devices=2,
                     gpu_count=0)
    assert decision.admit and decision.reason == "cpu@box, 2 CPU processes (CPU only), to itself"


def test_one_gpu_runs_are_admitted_as_before():
    assert admit(worker="gpu@two", slots=1, running=[], peak=None, gpu=H200, margin=MARGIN, gpu_count=2).admit


def test_the_held_reason_names_the_workers_that_could_take_it():
    here = "it asks for 2 GPUs and gpu@one has 1"
    text, elsewhere = devices_held_reason(devices=2, here=here, others=[("gpu@two", 2), ("gpu@b", 1)], queue="gpu")
    assert elsewhere and text == "waiting for gpu@two: it asks for 2 GPUs and gpu@one has 1"
    text, elsewhere = devices_held_reason(devices=2, here=here, others=[("gpu@b", 1)], queue="gpu")
    assert not elsewhere
    assert text == ("held: no live worker of queue gpu has 2 GPUs (it asks for 2 GPUs and gpu@one has 1; gpu@b (1)); "
                    "stop it and ask for fewer GPUs, or start a worker on a box with 2")
