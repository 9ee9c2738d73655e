"""TensorBoard event files of a run: its scalars, its config (as text and as HParams) and its findings and end as
text, written with tensorboard's own event writer (no torch, no TensorFlow). Pure: no Django."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from training.trackers.points import MIB, SERIES, FindingNote, Point, RunEnd, value_text

# Where a run's files live inside its run folder, and the folder an export or a download puts them in.
FOLDER = "tensorboard"
EVENT_FILE_GLOB = "events.out.tfevents.*"
TAGS = {name: tag for name, tag, _ in SERIES}


def export_folder(run_id: int) -> str:
    """The folder a run's files go in inside an export's DIR (or a download's zip): one per run, so
    `tensorboard --logdir DIR` shows several runs side by side."""
    return f"run-{run_id}"


def _text_summary(tag: str, text: str) -> summary_pb2.Summary:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto())
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, metadata=text_metadata.create_summary_metadata(display_name=tag, description=""), tensor=tensor)])


def config_markdown(config: dict[str, Any]) -> str:
    rows = "\n".join(f"| {name} | `{value_text(config[name])}` |" for name in sorted(config))
    return f"| field | value |\n|---|---|\n{rows}"


def hparams_of(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The config as HParams values: numbers and booleans as they are, everything else as its text."""
    return {name: value if isinstance(value, (bool, int, float, str)) else value_text(value)
            for name, value in config.items()}


class TensorBoardWriter:
    """One run's event file in `log_dir`. Each call writes; the event writer's own thread flushes every few
    seconds (so a TensorBoard open on the folder follows the run) and on close."""

    name = "TensorBoard"

    def __init__(self, log_dir: Path, *, flush_secs: float = 5):
        self.log_dir = Path(log_dir)
        self.flush_secs = flush_secs
        self._writer = None
        self._last_step = 0

    def open(self, config: dict[str, Any], *, title: str = "", start_time: float | None = None) -> dict[str, Any]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.log_dir), flush_secs=self.flush_secs)
        header = f"# {title}\n\n" if title else ""
        self._summary(_text_summary("config", header + config_markdown(config)), step=0, wall_time=start_time)
        self._summary(hparams.hparams_pb(hparams_of(config), start_time_secs=start_time), step=0,
                      wall_time=start_time)
        return {"log_dir": str(self.log_dir)}

    def points(self, points: Iterable[Point]) -> None:
        for point in points:
            values = [summary_pb2.Summary.Value(tag=TAGS[name], simple_value=value / MIB if name == "peak_vram_bytes"
                                                else value) for name, value in point.values.items()]
            if values:
                self._summary(summary_pb2.Summary(value=values), step=point.step, wall_time=point.time)
            self._last_step = max(self._last_step, point.step)

    def finding(self, note: FindingNote) -> None:
        self._summary(_text_summary("findings", note.text), step=note.step)

    def note(self, tag: str, text: str, *, step: int = 0, wall_time: float | None = None) -> None:
        self._summary(_text_summary(tag, text), step=step, wall_time=wall_time)

    def end(self, end: RunEnd) -> None:
        text = f"{end.status} at step {end.step}" + (f": {end.error}" if end.error else "")
        self._summary(_text_summary("status", text), step=end.step or self._last_step)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _summary(self, summary: summary_pb2.Summary, *, step: int, wall_time: float | None = None) -> None:
        if self._writer is None:
            raise RuntimeError("the TensorBoard writer is not open")
        self._writer.add_event(event_pb2.Event(summary=summary, step=step,
                                               wall_time=time.time() if wall_time is None else wall_time))


def write_run(log_dir: Path, *, config: dict[str, Any], title: str, points: Iterable[Point],
              findings: Iterable[FindingNote], notes: Iterable[tuple[str, str, int]], end: RunEnd | None,
              start_time: float | None = None) -> Path:
    """A whole run's event file at once, from what was stored (a finished run's export): earlier event files in
    `log_dir` are replaced, so an export run twice shows the run once."""
    log_dir = Path(log_dir)
    for old in log_dir.glob(EVENT_FILE_GLOB):
        old.unlink()
    writer = TensorBoardWriter(log_dir)
    writer.open(config, title=title, start_time=start_time)
    writer.points(points)
    for note in findings:
        writer.finding(note)
    for tag, text, step in notes:
        writer.note(tag, text, step=step)
    if end is not None:
        writer.end(end)
    writer.close()
    return log_dir
