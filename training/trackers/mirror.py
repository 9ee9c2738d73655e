"""The worker's hand-off to a run's trackers: a bounded queue the recorder puts into without ever waiting, and one
background thread that writes what it takes to each tracker. A tracker that fails is reported once and left alone
for the rest of the run; the others go on. Pure: no Django (the observer in services.py is the Django side)."""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from training.trackers.points import FindingNote, Point, RunEnd

log = logging.getLogger(__name__)

# Events waiting for the trackers; past this the recorder drops (and counts) rather than wait. At a few hundred
# points a second this is most of a minute of a tracker being slower than the run.
QUEUE_SIZE = 10_000
# Items the thread takes in one go: the points among them go to each tracker in one call (one MLflow request).
BATCH = 1_000


class TrackerWriter(Protocol):
    name: str

    def open(self, config: dict[str, Any], *, title: str = "", start_time: float | None = None) -> dict[str, Any]:
        """Start the run on the tracker; returns what the run page may link to."""

    def points(self, points: Iterable[Point]) -> None: ...

    def finding(self, note: FindingNote) -> None: ...

    def end(self, end: RunEnd) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Report:
    """What the thread tells the recorder's side: a tracker opened (its links) or failed (why)."""

    key: str
    tracker: str
    failed: bool
    message: str = ""
    links: dict[str, Any] = field(default_factory=dict)


_END = "end"


class Mirror:
    """One run's trackers (`writers`, by key), written from a thread of their own."""

    def __init__(self, writers: dict[str, TrackerWriter], *, config: dict[str, Any], title: str = "",
                 start_time: float | None = None, capacity: int = QUEUE_SIZE):
        self.writers = dict(writers)
        self.config, self.title, self.start_time = config, title, start_time
        self.capacity = capacity
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._reports: deque[Report] = deque()
        self._failed: set[str] = set()
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"trackers {title}"[:60], daemon=True)
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def put_points(self, points: list[Point]) -> bool:
        return self._put(("points", points))

    def put_finding(self, note: FindingNote) -> bool:
        return self._put(("finding", note))

    def _put(self, item: tuple[str, Any]) -> bool:
        """Never waits: with the queue full the item is dropped and counted (the caller is the training's recorder)."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("trackers of %s fell behind: dropping what does not fit in the queue (%d)", self.title,
                            self._queue.maxsize)
            return False

    def take_reports(self) -> list[Report]:
        reports = []
        while self._reports:
            reports.append(self._reports.popleft())
        return reports

    def close(self, end: RunEnd, *, wait_s: float) -> bool:
        """Send the run's end and wait up to `wait_s` for the trackers to take everything; False (and the trackers
        still busy reported as failed) when they did not, and the thread gives up at its next item."""
        if not self._thread.is_alive():
            return True
        deadline = time.monotonic() + wait_s
        try:
            self._queue.put((_END, end), timeout=max(0.0, wait_s))
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            return True
        self._abandoned.set()
        for key, writer in self.writers.items():
            self._fail(key, writer, f"still busy {wait_s:.0f} s after the run ended; the rest is not mirrored")
        return False

    @property
    def failed(self) -> frozenset[str]:
        return frozenset(self._failed)

    def _work(self) -> None:
        try:
            for key, writer in self.writers.items():
                self._call(key, writer, "open", lambda k=key, w=writer: self._reports.append(Report(
                    key=k, tracker=w.name, failed=False,
                    links=w.open(self.config, title=self.title, start_time=self.start_time) or {})))
            while not self._abandoned.is_set():
                items = [self._queue.get()]
                while len(items) < BATCH and items[-1][0] != _END:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if self._write(items):
                    return
        finally:
            for writer in self.writers.values():
                try:
                    writer.close()  # flushes what a tracker buffers (TensorBoard's file), failed or not
                except Exception:  # noqa: BLE001 - the run has ended either way
                    log.debug("tracker %s did not close", writer.name, exc_info=True)

    def _write(self, items: list[tuple[str, Any]]) -> bool:
        """Hand the items to every tracker still working, the points between two others in one call; True at the end."""
        points: list[Point] = []
        for kind, value in items:
            if self._abandoned.is_set():
                return True
            if kind == "points":
                points += value
                continue
            self._each("points", points)
            points = []
            if kind == "finding":
                self._each("finding", value)
            elif kind == _END:
                self._each("end", value)
                return True
        self._each("points", points)
        return False

    def _each(self, method: str, value: Any) -> None:
        if method == "points" and not value:
            return
        for key, writer in self.writers.items():
            self._call(key, writer, method, lambda w=writer: getattr(w, method)(value))

    def _call(self, key: str, writer: TrackerWriter, what: str, call) -> None:
        if key in self._failed:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - whatever a tracker raises, the run and the other trackers go on
            log.warning("tracker %s failed on %s: %s", writer.name, what, exc, exc_info=True)
            self._fail(key, writer, str(exc) or type(exc).__name__)

    def _fail(self, key: str, writer: TrackerWriter, message: str) -> None:
        if key in self._failed:
            return
        self._failed.add(key)
        self._reports.append(Report(key=key, tracker=writer.name, failed=True, message=message))
