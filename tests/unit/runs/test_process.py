"""The worker's view of a training process's stdout: every line once, in order, in batches of what is waiting."""
import sys
import time

from training.runs.process import TrainingProcess


def test_lines_come_in_order_in_batches_of_what_is_waiting_up_to_the_limit(tmp_path, settings):
    # 250 lines at once, then a pause, then one more: the reader hands over what is queued, never more than `limit`.
    script = "import sys, time\nfor i in range(250): print(i)\nsys.stdout.flush(); time.sleep(2.0); print('last')\n"
    process = TrainingProcess([sys.executable, "-c", script], cwd=tmp_path, stop_file=tmp_path / "STOP")
    deadline = time.monotonic() + 10
    while process._stdout.qsize() < 250 and time.monotonic() < deadline:  # the whole burst waits in the queue
        time.sleep(0.05)
    batches = list(process.batches(timeout=0.2, limit=100))
    assert process.wait() == 0
    lines = [line for batch in batches for line in batch]
    assert lines == [str(i) for i in range(250)] + ["last"]
    assert [len(b) for b in batches[:3]] == [100, 100, 50]  # the burst, in full batches
    assert [] in batches  # the pause gave the worker its turn (stop requests, heartbeats)
    assert batches[-1] == ["last"]


SHOW_THREADS = "import os; print(os.environ.get('OMP_NUM_THREADS'))"


def test_on_a_worker_of_several_slots_each_process_gets_one_slots_share_of_the_cores(tmp_path, settings, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))

    def threads(**kwargs) -> str:
        process = TrainingProcess([sys.executable, "-c", SHOW_THREADS], cwd=tmp_path, stop_file=None, **kwargs)
        lines = [line for batch in process.batches(timeout=5) for line in batch]
        assert process.wait() == 0
        return lines[-1]

    settings.TUNEBOARD_WORKER_SLOTS = 1
    assert threads() == "None"  # one slot: the run has the machine, torch picks
    settings.TUNEBOARD_WORKER_SLOTS = 3
    assert threads() == "5"
    assert threads(share_cores=False) == "None"  # a run of several ranks holds the worker; its launcher divides
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads() == "2"  # the worker's own setting wins
