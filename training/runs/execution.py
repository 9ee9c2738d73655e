"""Training a claimed run on the worker: the child process, its events persisted in order and sent live
(RunRecorder), the stop escalation, and the one wrapper that turns every outcome into a terminal status."""
from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
import traceback
from collections import deque
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from guidance.models import Finding
from training.compare.series import series_packs_build
from training.datasets.files import sha256_of
from training.engine.events import json_safe, parse_float
from training.live import send as live
from training.model_source import model_source_error
from training.models import MetricPoint, Run, RunEvent, Sample
from training.run_config import model_policy
from training.runs import warm
from training.runs.process import TrainingProcess
from training.runs.services import cpu_task, run_release, run_transition
from training.runs.watcher import RunWatcher
from training.selectors import event_dict, sample_dict

log = logging.getLogger(__name__)
Status = Run.Status


# Called with each event after it is stored and the findings it raised; may stop the run through the services, and
# returns True when it did: the worker then asks the child at once instead of at its next status poll (a fast model
# trains several steps in one poll interval).
Observer = Callable[[dict, list[Finding]], bool | None]


class RunSetupError(Exception):
    """The run cannot start on this worker; the message says why and what to do."""


def _event_time(event: dict) -> datetime:
    try:
        return datetime.fromtimestamp(float(event["time"]), tz=dt_timezone.utc)
    except (KeyError, TypeError, ValueError):
        return timezone.now()


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(float(value))


class RunRecorder:
    """Persists one run's engine events in order, then sends each to the browsers; keeps its stderr tail."""

    LOG_FLUSH_S = 1.0
    ROW_EVERY_S = 1.0  # the run lists' progress bar moves at most this often (status and findings: at once)

    def __init__(self, run: Run, observers: Sequence[Observer] = ()):
        self.run = run
        self.observers = tuple(observers)
        self.seq = RunEvent.objects.filter(run=run).order_by("-seq").values_list("seq", flat=True).first() or 0
        self.terminal: dict | None = None
        self.log_tail: deque[str] = deque(run.log_tail.splitlines(), maxlen=settings.TUNEBOARD_LOG_TAIL_LINES)
        self._log_dirty = False
        self._log_flushed_at = 0.0
        self._row_sent_at = 0.0
        # The highest step of each kind this recorder has sent: each points message names it, so a consumer that
        # sees a higher one than it has knows a message was lost and reads the gap from the database.
        self._sent_up_to: dict[str, int | None] = {"metrics": None, "eval": None}
        self.findings = RunWatcher(run)
        self.stop_asked = False  # an observer moved the run to stopping since the follow loop last looked
        for observer in self.observers:
            # One that records events of its own (a tracker's warning) does it through this recorder, which owns
            # the run's event sequence.
            attach = getattr(observer, "attach", None)
            if attach is not None:
                attach(self)

    def record(self, event: dict) -> None:
        self.record_many([event])

    def record_many(self, events: list[dict]) -> None:
        """Record events in their order; the metric points among them are written and sent in batches.

        The worker hands over every line the engine wrote since it last looked: at a few points a second that is
        one event, under load it is many, and then one upsert and one group message carry them all.
        """
        points: list[dict] = []
        for event in events:
            if event.get("type") in ("metrics", "eval"):
                points.append(event)
                continue
            self._points(points)
            points = []
            if event.get("type") == "sample":
                self._sample(event)
            else:
                self._event(event)
            self._watch([event])
        self._points(points)

    def _watch(self, events: list[dict]) -> None:
        for event in events:
            found: list = []
            try:
                found = self.findings.feed(event)  # after the event is stored: a finding's page shows the point it cites
            except Exception:  # noqa: BLE001 - a detector's bug must not end a training run
                log.exception("run %s: symptom detectors failed on a %s event", self.run.id, event.get("type"))
            for observer in self.observers:
                try:
                    if observer(event, found):
                        self.stop_asked = True
                except Exception:  # noqa: BLE001 - nor an observer's
                    log.exception("run %s: observer %r failed on a %s event", self.run.id, observer, event.get("type"))

    def _points(self, events: list[dict]) -> None:
        """Upsert the points (one statement per kind: eval must not erase a step's metrics), then send them."""
        if not events:
            return
        by_kind: dict[str, dict[int, dict]] = {"metrics": {}, "eval": {}}
        for event in events:
            by_kind[event["type"]][int(event["step"])] = event  # a step sent twice in a batch: the last wins
        sent = []
        for kind, fields in (("metrics", MetricPoint.METRICS_FIELDS), ("eval", MetricPoint.EVAL_FIELDS)):
            rows = [{"step": step, **{f: v for f, v in _point_values(event).items() if f in fields}}
                    for step, event in by_kind[kind].items()]
            if not rows:
                continue
            # The metrics' statement sets the run's last step too: one round trip and one commit for both.
            _upsert_points(self.run.id, fields, rows, last_step=max(by_kind[kind]) if kind == "metrics" else None)
            if kind == "eval":
                _keep_best_eval(self.run.id, rows)
            sent += [{"kind": kind, **{f: v for f, v in row.items() if f != "time"}} for row in rows]
        live.send_run_message(self.run.id, "points", {"points": sent, "after": dict(self._sent_up_to)})
        for kind, steps in by_kind.items():
            if steps:
                self._sent_up_to[kind] = max(self._sent_up_to[kind] or 0, *steps)
        if time.monotonic() - self._row_sent_at >= self.ROW_EVERY_S:
            live.send_run_row(self.run)
            self._row_sent_at = time.monotonic()
        self._watch(events)

    def _sample(self, event: dict) -> None:
        sample = Sample.objects.create(run_id=self.run.id, step=int(event.get("step") or 0),
                                       prompt=str(event.get("prompt", "")), completion=str(event.get("completion", "")),
                                       time=_event_time(event))
        live.send_run_message(self.run.id, "sample", sample_dict(sample))

    def _event(self, event: dict) -> None:
        kind = str(event.get("type") or "unknown")[:20]
        self.seq += 1
        data = {k: v for k, v in event.items() if k not in ("type", "time", "v")}
        stored = RunEvent.objects.create(run_id=self.run.id, seq=self.seq, type=kind, data=json_safe(data),
                                         time=_event_time(event))
        live.send_run_message(self.run.id, "event", event_dict(stored))
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_started(self, event: dict) -> None:
        facts = ("trainable_params", "total_params", "trainable_bias_params", "lora_scale", "device", "backend",
                 "dtype", "train_examples", "eval_examples", "data_format", "resumed_from_step", "pid", "load_s",
                 "model_config", "gpu_memory_total", "mean_tokens")  # the last three: the fit planner's
        derived = event.get("derived") or {}
        Run.objects.filter(id=self.run.id).update(
            started={k: event.get(k) for k in facts}, derived=derived, versions=event.get("versions") or {},
            total_steps=derived.get("total_steps") or self.run.total_steps)
        run_transition(self.run, to=Status.RUNNING, allowed_from=[Status.STARTING])

    def _on_log(self, event: dict) -> None:
        if "first_step_s" in event:  # the engine's note at the first step's end: how the run started, and how fast
            started = Run.objects.filter(id=self.run.id).values_list("started", flat=True).first() or {}
            Run.objects.filter(id=self.run.id).update(started={**started, **{
                k: event.get(k) for k in ("first_step_s", "warm_process", "base_kept", "phases")}})

    def _on_checkpoint(self, event: dict) -> None:
        step = _int_or_none(event.get("step"))
        Run.objects.filter(id=self.run.id).update(last_checkpoint_path=str(event.get("path") or ""),
                                                  last_checkpoint_step=step)
        if self.run.eval_checkpoints and step is not None:
            # Queued now, run when a worker of the run's queue is free (after this run, on a one-slot worker).
            cpu_task("training.evals_for_checkpoint", self.run.id, step)

    def _on_finished(self, event: dict) -> None:
        self.terminal = event
        run_transition(self.run, to=Status.SUCCEEDED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                       adapter_path=str(event.get("adapter_path") or ""), last_step=int(event.get("step") or 0))

    def _on_stopped(self, event: dict) -> None:
        self.terminal = event
        fields: dict[str, Any] = {"finished_at": timezone.now()}
        if event.get("checkpoint"):
            fields["last_checkpoint_path"] = str(event["checkpoint"])
            fields["last_checkpoint_step"] = int(event.get("step") or 0)
        run_transition(self.run, to=Status.STOPPED, allowed_from=Run.ON_WORKER, **fields)

    def _on_failed(self, event: dict) -> None:
        self.terminal = event
        run_transition(self.run, to=Status.FAILED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                       error_class=str(event.get("error_class") or "Error")[:200], error=str(event.get("message") or ""),
                       traceback=str(event.get("traceback") or ""))

    def add_log_lines(self, lines: list[str]) -> None:
        if lines:
            self.log_tail.extend(line[:2000] for line in lines)
            self._log_dirty = True

    def flush_log(self, *, force: bool = False) -> None:
        """Save the stderr tail and send it whole (the page replaces its log view), at most once a second."""
        now = time.monotonic()
        if not self._log_dirty or (not force and now - self._log_flushed_at < self.LOG_FLUSH_S):
            return
        tail = list(self.log_tail)
        Run.objects.filter(id=self.run.id).update(log_tail="\n".join(tail))
        live.send_run_message(self.run.id, "log", {"tail": tail})
        self._log_dirty = False
        self._log_flushed_at = now


def _upsert_points(run_id: int, fields: tuple[str, ...], rows: list[dict[str, Any]], *,
                   last_step: int | None = None) -> None:
    """INSERT ... ON CONFLICT (run, step) DO UPDATE of these columns only, the rows passed as one array per column;
    with last_step, the same statement sets the run's last_step.

    What bulk_create(update_conflicts=True) and an UPDATE of the run did, in one statement whose text does not
    grow with the rows: the ORM built and prepared every value of every row in Python (~40% of a worker's time
    per point at 100 runs), and the two statements cost four round trips and two commits (BEGIN, INSERT, COMMIT,
    UPDATE); this is one round trip and one commit, done before the caller sends the points."""
    key = (fields, last_step is not None)
    sql = _UPSERT_SQL.get(key)
    if sql is None:
        sql = _UPSERT_SQL[key] = _upsert_sql(fields, set_last_step=last_step is not None)
    columns = ("step", *fields)
    params = [run_id, *([row.get(f) for row in rows] for f in columns)]
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(sql, [last_step, run_id, *params] if last_step is not None else params)


_UPSERT_SQL: dict[tuple[tuple[str, ...], bool], str] = {}


def _upsert_sql(fields: tuple[str, ...], *, set_last_step: bool) -> str:
    meta, connection = MetricPoint._meta, transaction.get_connection()
    quote = connection.ops.quote_name
    columns = [meta.get_field(name) for name in ("step", *fields)]
    run, key = meta.get_field("run").column, meta.get_field("step").column
    names = ", ".join(quote(c.column) for c in columns)
    arrays = ", ".join(f"%s::{c.db_type(connection)}[]" for c in columns)
    updates = ", ".join(f"{quote(c.column)} = EXCLUDED.{quote(c.column)}" for c in columns[1:])
    # A data-modifying WITH runs exactly once, in the statement's own transaction, whether or not it is read.
    run_meta = Run._meta
    with_last_step = (f"WITH last_step AS (UPDATE {quote(run_meta.db_table)} SET "
                      f"{quote(run_meta.get_field('last_step').column)} = %s WHERE {quote(run_meta.pk.column)} = %s) "
                      if set_last_step else "")
    return (f"{with_last_step}INSERT INTO {quote(meta.db_table)} ({quote(run)}, {names}) SELECT %s, * FROM "
            f"unnest({arrays}) ON CONFLICT ({quote(run)}, {quote(key)}) DO UPDATE SET {updates}")


def _keep_best_eval(run_id: int, rows: list[dict[str, Any]]) -> None:
    """The run's best_eval_loss/step, if this batch holds a lower finite eval loss (the runs table sorts on it)."""
    finite = [(row["eval_loss"], row["step"]) for row in rows
              if row.get("eval_loss") is not None and math.isfinite(row["eval_loss"])]
    if not finite:
        return
    loss, step = min(finite)
    Run.objects.filter(Q(best_eval_loss__isnull=True) | Q(best_eval_loss__gt=loss), id=run_id).update(
        best_eval_loss=loss, best_eval_step=step)


def _point_values(event: dict) -> dict[str, Any]:
    return {
        "epoch": parse_float(event.get("epoch")),
        "tokens_seen": _int_or_none(event.get("tokens_seen")),
        "loss": parse_float(event.get("loss")),
        "eval_loss": parse_float(event.get("eval_loss")),
        "grad_norm": parse_float(event.get("grad_norm")),
        "learning_rate": parse_float(event.get("learning_rate")),
        "tokens_per_s": parse_float(event.get("tokens_per_s")),
        "peak_vram_bytes": _int_or_none(event.get("peak_vram_bytes")),
        "time": _event_time(event),
    }


def _check_dataset_unchanged(run: Run) -> None:
    path = Path(run.config["train_file"])
    if not path.is_file():
        raise RunSetupError(f"train_file: {path} is not on this worker; the var dir must be shared with the web app")
    if sha256_of(path) != run.dataset_sha256:
        raise RunSetupError(f"train_file: {path} changed since the run was created (checksum differs); "
                            "datasets are immutable, upload it again as a new dataset")


def _check_model_source(run: Run) -> None:
    """The model rule again, on this worker's real paths (links resolved), whatever the row says: a preset saved
    before the rule, a row written around the services, or a folder changed on disk since must not slip through."""
    model = str(run.config.get("model") or "")
    init_adapter = run.config.get("init_adapter")
    base = run.base_run
    if (run.base_run_id or run.base_kind) and (base is None or base.team_id != run.team_id):
        raise RunSetupError("start_from: the run it builds on is gone or belongs to another team; start it again")

    def same(path: str, expected: str) -> bool:
        return bool(expected) and Path(path).resolve() == Path(expected).resolve()

    if init_adapter is not None and not (base and run.base_kind == Run.BaseKind.ADAPTER
                                         and same(init_adapter, base.adapter_path)):
        raise RunSetupError(f"init_adapter: {init_adapter} is not the adapter of the run this one builds on; only "
                            "Tuneboard sets init_adapter, from 'Start from'")
    if base and run.base_kind == Run.BaseKind.MERGED and same(model, base.merged_path):
        return
    error = model_source_error(model, model_policy())
    if error:
        raise RunSetupError(f"model: {error}")


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "the training process did not exit"
    if returncode < 0:
        return f"the training process was killed by {signal.Signals(-returncode).name} without reporting a result"
    return f"the training process exited with code {returncode} without reporting a result"


def run_execute(*, run: Run, observers: Sequence[Observer] = ()) -> None:
    """Train a claimed run in a child process. The one wrapper that owns failure: every outcome is terminal.
    `observers` see every event after it is stored, with the findings it raised (a sweep watches its members)."""
    recorder = RunRecorder(run, observers)
    process: TrainingProcess | None = None
    try:
        run_dir = Path(run.artifact_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "config.json"
        config_path.write_text(json.dumps(run.config, indent=2))
        stop_file = run_dir / "STOP"
        stop_file.unlink(missing_ok=True)
        _check_dataset_unchanged(run)
        _check_model_source(run)
        # Stopped between the claim and here: end without loading anything.
        if run_transition(run, to=Status.STOPPED, allowed_from=[Status.STOPPING], finished_at=timezone.now()):
            return
        args = [sys.executable, "-m", "training.engine", "run", str(config_path), "--stop-file", str(stop_file)]
        if run.resumed_from_checkpoint:
            args += ["--resume-from", run.resumed_from_checkpoint]
        process = warm.start(run=run, args=args, cwd=run_dir, stop_file=stop_file, config_path=config_path)
        _run_follow(run, process, recorder)
    except BaseException as exc:
        if process is not None:
            process.kill()
        log.exception("run %s failed in the worker", run.id)
        run_transition(run, to=Status.FAILED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                       error_class=type(exc).__name__, error=str(exc) or repr(exc), traceback=traceback.format_exc())
        if not isinstance(exc, Exception):
            raise
    finally:
        # Packed before the release, which is then the worker's last write for the run (its slot serves nothing else
        # until this task returns either way): whoever sees the run released sees the worker done with it.
        _series_packs_build(run)
        run_release(run_id=run.id)


def _series_packs_build(run: Run) -> None:
    """Pack the ended run's curves for the Compare page now, while the worker has the time, rather than on the
    first compare; a failure here only means that compare packs them instead."""
    try:
        run.refresh_from_db(fields=["status", "last_step"])
        series_packs_build(run)
    except Exception:  # noqa: BLE001 - the run has ended either way
        log.exception("run %s: compare series not packed", run.id)


class StopEscalation:
    """A stop request followed to its end: the child is asked once (the stop file, then it checkpoints at its next
    step), and killed if it has not ended `kill_after_s` later (its step hangs)."""

    def __init__(self, process: TrainingProcess, kill_after_s: float):
        self.process, self.kill_after_s = process, kill_after_s
        self.asked_at: float | None = None
        self.killed = False

    def tick(self, now: float) -> bool:
        """Called while the run is `stopping`; True when this call killed the child."""
        if self.asked_at is None:
            self.process.request_stop()
            self.asked_at = now
        elif not self.killed and now - self.asked_at > self.kill_after_s:
            self.process.kill()
            self.killed = True
            return True
        return False


def _run_follow(run: Run, process: TrainingProcess, recorder: RunRecorder) -> None:
    """Record the child's events until it exits, acting on a stop request; end the run if it dies unreported."""
    poll_s = 0.5
    last_poll = 0.0
    stop = StopEscalation(process, settings.TUNEBOARD_STOP_KILL_AFTER_S)
    for lines in process.batches(timeout=poll_s):
        events = []
        for line in lines:
            event = _parse_event(line)
            if event is None:
                recorder.add_log_lines([f"[stdout] {line}"])
            else:
                events.append(event)
        recorder.record_many(events)
        recorder.add_log_lines(process.take_stderr())
        recorder.flush_log()
        now = time.monotonic()
        if now - last_poll < poll_s and not recorder.stop_asked:
            continue
        last_poll, recorder.stop_asked = now, False
        status = Run.objects.filter(id=run.id).values_list("status", flat=True).first()
        if status is None or status in Run.TERMINAL:
            # Deleted, or given up on as lost: nobody will read what it does next, and it holds a GPU.
            process.kill()
        elif status == Status.STOPPING and stop.tick(now):
            log.warning("run %s: no stop after %.0f s, killed it", run.id, stop.kill_after_s)
    returncode = process.wait()
    recorder.add_log_lines(process.take_stderr())
    recorder.flush_log(force=True)
    if recorder.terminal is not None:
        return
    tail = "\n".join(list(recorder.log_tail)[-50:])
    if stop.killed:
        run_transition(run, to=Status.STOPPED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                       error_class="StopTimeout",
                       error=f"killed {stop.kill_after_s:.0f} s after the stop request: the step did not end; "
                             "resume from the last periodic checkpoint", traceback=tail)
        return
    run_transition(run, to=Status.FAILED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                   error_class="ProcessDied", error=_describe_exit(returncode), traceback=tail)


def _parse_event(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None
