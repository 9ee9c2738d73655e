"""Slot admission (training.planner.slots): a run starts beside others only when its reservation fits what they leave
free; a run with no prediction runs alone; one that cannot fit the GPU even alone is told so."""
import random

import pytest

from training.planner.slots import Admitted, Candidate, GiB, Gpu, Margin, admit, held_reason, predicted_peak, runs_text

MARGIN = Margin(fraction=0.10, context_bytes=GiB // 2)
H200 = Gpu(name="NVIDIA H200", total_bytes=140 * GiB, used_bytes=None)


def test_a_run_alone_on_an_empty_gpu_needs_its_peak_and_a_context_and_reserves_the_margin_for_later_runs():
    decision = admit(worker="gpu@box", slots=4, running=[], peak=100 * GiB, gpu=H200, margin=MARGIN)
    assert decision.admit and not decision.never
    assert decision.reserved_bytes == int(100 * GiB * 1.1) + GiB // 2
    assert "needs 100.5 GiB" in decision.reason and "of 140.0 GiB free" in decision.reason


def test_a_run_beside_others_needs_its_peak_plus_the_margin_in_what_they_leave_free():
    running = [Admitted(1, 40 * GiB), Admitted(2, 40 * GiB)]
    # 60 GiB free: a 50 GiB peak needs 55.5 GiB with the margin and fits; 55 GiB needs 61 GiB and waits.
    fits = admit(worker="gpu@box", slots=4, running=running, peak=50 * GiB, gpu=H200, margin=MARGIN)
    assert fits.admit and fits.reserved_bytes == int(50 * GiB * 1.1) + GiB // 2
    assert "beside runs #1 and #2" in fits.reason
    waits = admit(worker="gpu@box", slots=4, running=running, peak=55 * GiB, gpu=H200, margin=MARGIN)
    assert not waits.admit and not waits.never and waits.reserved_bytes is None
    assert waits.reason == ("it needs 61.0 GiB (peak up to 55.0 GiB + 10% + 0.5 GiB CUDA context); the NVIDIA H200 "
                            "of gpu@box (140.0 GiB) has 60.0 GiB free (80.0 GiB admitted for runs #1 and #2)")


def test_what_the_gpu_reports_in_use_counts_when_it_is_more_than_the_admitted_runs_reserved():
    gpu = Gpu(name="NVIDIA H200", total_bytes=140 * GiB, used_bytes=100 * GiB)  # another process holds memory too
    decision = admit(worker="gpu@box", slots=4, running=[Admitted(1, 40 * GiB)], peak=40 * GiB, gpu=gpu,
                     margin=MARGIN)
    assert not decision.admit
    assert "has 40.0 GiB free (40.0 GiB admitted for run #1, 100.0 GiB in use by the last heartbeat)" in decision.reason
    alone = admit(worker="gpu@box", slots=4, running=[], peak=60 * GiB, gpu=gpu, margin=MARGIN)
    assert not alone.admit and not alone.never and "nothing of Tuneboard's running" in alone.reason


def test_busy_slots_refuse_whatever_the_memory():
    decision = admit(worker="gpu@box", slots=2, running=[Admitted(1, GiB), Admitted(2, GiB)], peak=GiB, gpu=H200,
                     margin=MARGIN)
    assert not decision.admit and decision.reason == "all 2 slots of gpu@box are busy (runs #1 and #2)"
    one = admit(worker="gpu@box", slots=1, running=[Admitted(7, None)], peak=None, gpu=None, margin=MARGIN)
    assert not one.admit and one.reason == "all 1 slot of gpu@box are busy (run #7)"


def test_a_run_with_no_predicted_peak_has_the_gpu_to_itself():
    alone = admit(worker="gpu@box", slots=4, running=[], peak=None, gpu=H200, margin=MARGIN)
    assert alone.admit and alone.reserved_bytes is None
    waits = admit(worker="gpu@box", slots=4, running=[Admitted(3, GiB)], peak=None, gpu=H200, margin=MARGIN)
    assert not waits.admit and "not predicted" in waits.reason and "waiting for run #3 to end" in waits.reason
    # and once it runs, nothing is admitted beside it
    beside = admit(worker="gpu@box", slots=4, running=[Admitted(4, None)], peak=GiB, gpu=H200, margin=MARGIN)
    assert not beside.admit
    assert beside.reason == "the NVIDIA H200 of gpu@box (140.0 GiB) is held whole by run #4 (no predicted peak)"


def test_a_run_that_cannot_fit_even_alone_is_told_so_rather_than_left_waiting():
    small = Gpu(name="RTX 4090", total_bytes=24 * GiB)
    decision = admit(worker="gpu@small", slots=2, running=[Admitted(1, GiB)], peak=30 * GiB, gpu=small, margin=MARGIN)
    assert not decision.admit and decision.never
    assert decision.reason == ("it needs 30.5 GiB even alone (peak up to 30.0 GiB + 0.5 GiB CUDA context), more than "
                               "the RTX 4090 of gpu@small (24.0 GiB) has in all")
    # a peak that fits alone but not with the sharing margin is not 'never': it waits to run alone
    tight = admit(worker="gpu@small", slots=2, running=[Admitted(1, GiB)], peak=23 * GiB, gpu=small, margin=MARGIN)
    assert not tight.admit and not tight.never
    assert admit(worker="gpu@small", slots=2, running=[], peak=23 * GiB, gpu=small, margin=MARGIN).admit


def test_a_cpu_worker_admits_by_slot_count_alone():
    assert admit(worker="cpu@laptop", slots=2, running=[Admitted(1, None)], peak=500 * GiB, gpu=None,
                 margin=MARGIN).admit
    assert admit(worker="cpu@laptop", slots=2, running=[Admitted(1, None)], peak=None, gpu=None, margin=MARGIN).admit
    assert not admit(worker="cpu@laptop", slots=2, running=[Admitted(1, None), Admitted(2, None)], peak=None,
                     gpu=None, margin=MARGIN).admit


def test_admission_never_admits_past_free_memory():
    """Random workers, GPUs, running runs and candidates: whatever is admitted fits in what was free, with the
    margin when it shares; the count of runs never passes the slots; a run with no prediction is only ever alone."""
    rng = random.Random(21)
    admitted_any = refused_any = 0
    for _ in range(20000):
        total = rng.choice([16, 24, 40, 80, 140]) * GiB
        used = rng.choice([None, 0, rng.randrange(0, total)])
        gpu = Gpu(name="G", total_bytes=total, used_bytes=used)
        slots = rng.randint(2, 8)  # one slot admits by count alone (the test above)
        running = [Admitted(i, None if rng.random() < 0.1 else rng.randrange(GiB // 4, total // 2))
                   for i in range(rng.randint(0, slots))]
        peak = rng.choice([None, rng.randrange(GiB // 10, total * 2)])
        margin = Margin(fraction=rng.choice([0.0, 0.1, 0.25]), context_bytes=rng.choice([0, GiB // 2]))
        d = admit(worker="w", slots=slots, running=running, peak=peak, gpu=gpu, margin=margin)
        if not d.admit:
            refused_any += 1
            assert d.reason
            continue
        admitted_any += 1
        assert len(running) < slots
        if peak is None:
            assert not running and d.reserved_bytes is None
            continue
        assert all(r.reserved_bytes is not None for r in running)
        in_use = max(sum(r.reserved_bytes for r in running), used or 0)
        need = margin.shared(peak) if running else margin.alone(peak)
        assert in_use + need <= total, (running, peak, used, total)
        assert d.reserved_bytes == margin.shared(peak)
    assert admitted_any > 1000 and refused_any > 1000  # both sides were exercised


def test_a_worker_of_one_slot_admits_whatever_fits_its_free_slot_as_before_slots():
    """One slot: the run has the GPU to itself (the launch check refuses a config that fits no worker)."""
    small = Gpu(name="RTX 4090", total_bytes=24 * GiB, used_bytes=20 * GiB)
    assert admit(worker="gpu@one", slots=1, running=[], peak=30 * GiB, gpu=small, margin=MARGIN).admit
    assert not admit(worker="gpu@one", slots=1, running=[Admitted(1, None)], peak=GiB, gpu=small, margin=MARGIN).admit


def test_the_predicted_peak_is_the_upper_end_of_the_band_else_the_central_figure_else_unknown():
    assert predicted_peak({"peak_bytes": 3 * GiB, "peak_high": 4 * GiB}) == 4 * GiB
    assert predicted_peak({"peak_bytes": 3 * GiB, "peak_high": None}) == 3 * GiB
    assert predicted_peak({"error": "no shapes"}) is None
    assert predicted_peak({}) is None and predicted_peak(None) is None
    assert predicted_peak({"peak_high": True}) is None and predicted_peak({"peak_high": -1}) is None


def test_a_run_that_fits_no_live_worker_is_held_with_the_reason_and_one_that_fits_another_waits_for_it():
    text, elsewhere = held_reason(peak=30 * GiB, here="gpu@small: too big", queue="gpu", margin=MARGIN,
                                  others=[Candidate("gpu@mid", 24 * GiB)])
    assert not elsewhere
    assert text.startswith("held: it fits no live worker of queue gpu (needs 30.5 GiB alone; gpu@small: too big; "
                           "gpu@mid (24.0 GiB))")
    assert "4-bit" in text and "larger GPU" in text
    text, elsewhere = held_reason(peak=30 * GiB, here="gpu@small", queue="gpu", margin=MARGIN,
                                  others=[Candidate("gpu@mid", 24 * GiB), Candidate("gpu@big", 80 * GiB),
                                          Candidate("cpu@box", None)])
    assert elsewhere and text == "waiting for gpu@big, cpu@box: it does not fit gpu@small"


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="fraction"):
        Margin(fraction=-0.1)
    with pytest.raises(ValueError, match="context_bytes"):
        Margin(context_bytes=-1)
    with pytest.raises(ValueError, match="slots"):
        admit(worker="w", slots=0, running=[], peak=None, gpu=None, margin=MARGIN)


def test_runs_are_named_as_a_sentence_would():
    assert runs_text([3]) == "run #3"
    assert runs_text([3, 4]) == "runs #3 and #4"
    assert runs_text([3, 4, 5]) == "runs #3, #4 and #5"


def test_each_slot_gets_its_share_of_the_cores_and_at_least_one_thread():
    from training.planner.slots import slot_threads

    assert slot_threads(1, 16) is None
    assert slot_threads(4, 16) == 4
    assert slot_threads(3, 16) == 5
    assert slot_threads(8, 2) == 1
