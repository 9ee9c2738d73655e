"""The hand-off to the trackers: the recorder's put never waits, what does not fit is dropped and counted, a tracker
that fails is reported once and left alone while the others go on, and the end waits (a while) for the rest."""
import threading
import time

from training.trackers.mirror import Mirror
from training.trackers.points import FindingNote, Point, RunEnd, point_from_event


class Recording:
    """A tracker that keeps what it is given, optionally waiting on a gate before each call, or failing."""

    def __init__(self, name="Recording", *, gate: threading.Event | None = None, fail_on: str = ""):
        self.name, self.gate, self.fail_on = name, gate, fail_on
        self.calls: list[tuple[str, object]] = []
        self.closed = False

    def _take(self, what, value):
        if self.gate is not None:
            self.gate.wait(10)
        if what == self.fail_on:
            raise ConnectionError(f"{what} refused")
        self.calls.append((what, value))

    def open(self, config, *, title="", start_time=None):
        self._take("open", config)
        return {"url": f"http://tracker/{title}"}

    def points(self, points):
        self._take("points", [p.step for p in points])

    def finding(self, note):
        self._take("finding", note.code)

    def end(self, end):
        self._take("end", end.status)

    def close(self):
        self.closed = True


def points(*steps):
    return [Point(step=s, time=1000.0 + s, values={"loss": 1.0 / s}) for s in steps]


def test_everything_reaches_the_tracker_in_order_and_the_end_closes_it():
    tracker = Recording()
    mirror = Mirror({"rec": tracker}, config={"r": 8}, title="#1 demo")
    mirror.start()
    for step in range(1, 6):
        assert mirror.put_points(points(step))
    assert mirror.put_finding(FindingNote(step=5, code="flat_loss", title="Flat", message="m"))
    assert mirror.close(RunEnd(status="succeeded", step=5), wait_s=10)
    assert tracker.calls[0] == ("open", {"r": 8})
    sent = [s for what, steps in tracker.calls if what == "points" for s in steps]
    assert sent == [1, 2, 3, 4, 5]
    assert tracker.calls[-2:] == [("finding", "flat_loss"), ("end", "succeeded")]
    assert tracker.closed
    (opened,) = mirror.take_reports()
    assert not opened.failed and opened.links == {"url": "http://tracker/#1 demo"} and opened.key == "rec"
    assert mirror.dropped == 0


def test_put_never_waits_for_a_slow_tracker_and_counts_what_it_drops():
    gate = threading.Event()  # the tracker is stuck until the gate opens
    tracker = Recording(gate=gate)
    mirror = Mirror({"rec": tracker}, config={}, capacity=5)
    mirror.start()
    started = time.perf_counter()
    taken = [mirror.put_points(points(step)) for step in range(1, 21)]
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05, f"20 puts took {elapsed:.3f} s: the recorder waited on the tracker"
    assert taken[:5] == [True] * 5 and taken.count(False) == mirror.dropped == 15
    gate.set()
    assert mirror.close(RunEnd(status="succeeded", step=20), wait_s=10)
    assert [s for what, steps in tracker.calls if what == "points" for s in steps] == [1, 2, 3, 4, 5]


def test_a_failing_tracker_is_reported_once_and_the_others_go_on():
    broken, fine = Recording("Broken", fail_on="points"), Recording("Fine")
    mirror = Mirror({"broken": broken, "fine": fine}, config={})
    mirror.start()
    for step in range(1, 4):
        mirror.put_points(points(step))
        time.sleep(0.02)  # separate batches: the broken one would be called again if it were not left alone
    assert mirror.close(RunEnd(status="failed", step=3, error="OOM"), wait_s=10)
    failures = [r for r in mirror.take_reports() if r.failed]
    assert [(r.key, r.tracker, r.message) for r in failures] == [("broken", "Broken", "points refused")]
    assert [what for what, _ in broken.calls] == ["open"]  # nothing after its failure, not even the end
    assert [s for what, steps in fine.calls if what == "points" for s in steps] == [1, 2, 3]
    assert fine.calls[-1] == ("end", "failed")
    assert mirror.failed == {"broken"} and broken.closed and fine.closed


def test_a_tracker_that_cannot_open_gets_nothing_more():
    tracker = Recording(fail_on="open")
    mirror = Mirror({"rec": tracker}, config={})
    mirror.start()
    mirror.put_points(points(1))
    assert mirror.close(RunEnd(status="succeeded", step=1), wait_s=10)
    (report,) = mirror.take_reports()
    assert report.failed and report.message == "open refused"
    assert tracker.calls == []


def test_the_end_waits_only_so_long_for_a_stuck_tracker():
    gate = threading.Event()
    tracker = Recording(gate=gate)
    mirror = Mirror({"rec": tracker}, config={})
    mirror.start()
    mirror.put_points(points(1))
    started = time.monotonic()
    assert not mirror.close(RunEnd(status="succeeded", step=1), wait_s=0.3)
    assert time.monotonic() - started < 2
    (report,) = mirror.take_reports()
    assert report.failed and "still busy" in report.message
    gate.set()


def test_a_point_is_read_from_an_event_as_the_recorder_stores_it():
    point = point_from_event({"type": "metrics", "step": "7", "time": 1700000000.5, "loss": "nan", "grad_norm": 0.5,
                              "learning_rate": 2e-4, "tokens_per_s": 1234.5, "peak_vram_bytes": 123456789.0,
                              "epoch": 0.1})
    assert point.step == 7 and point.time == 1700000000.5
    assert point.values["loss"] != point.values["loss"]  # NaN kept: a diverged run shows as one
    assert point.values["peak_vram_bytes"] == 123456789.0 and "epoch" not in point.values
    assert point_from_event({"type": "eval", "step": 10, "eval_loss": 1.25}).values == {"eval_loss": 1.25}
    assert point_from_event({"type": "checkpoint", "step": 10}) is None
    assert point_from_event({"type": "metrics", "step": 3, "loss": "not a number"}).values == {}
