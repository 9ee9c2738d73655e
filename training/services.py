"""Every write Tuneboard makes: datasets, presets, runs and their lifecycle. Views, tasks and the worker call these."""
from __future__ import annotations

import json
import logging
import re
import signal
import sys
import time
import traceback
from collections import deque
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import Any, Iterable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from dashboard.models import Membership, Team
from training import live
from training.datasets.files import sha256_of
from training.engine.config import ConfigError, parse_config
from training.engine.events import parse_float
from training.findings import RunWatcher
from training.model_source import model_source_error
from training.models import Dataset, MetricPoint, Preset, Run, RunEvent, Sample, Worker
from training.process import TrainingProcess
from training.run_config import ADAPTER_SHAPE_FIELDS, RESERVED_FIELDS, model_errors, model_policy
from training.access import require_role
from training.selectors import event_dict, run_status_dict, sample_dict
from training.workers.services import worker_get_or_create

log = logging.getLogger(__name__)

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
Role = Membership.Role
Status = Run.Status


# Presets ------------------------------------------------------------------------------------------------------


def preset_duplicate(*, preset: Preset, user) -> Preset:
    """A copy named "<name> (copy)", "<name> (copy 2)", ... in the same team, at version 1."""
    base = f"{preset.name} (copy)"
    name, n = base, 1
    while Preset.objects.filter(team=preset.team, name=name).exists():
        n += 1
        name = f"{preset.name} (copy {n})"
    return Preset.objects.create(team=preset.team, name=name, config=dict(preset.config), notes=preset.notes,
                                 created_by=user)


# Runs: creation -----------------------------------------------------------------------------------------------

def run_config_build(*, dataset: Dataset, preset: Preset | None, overrides: dict[str, Any],
                     base_run: Run | None = None, base_kind: str = "") -> dict[str, Any]:
    """The full config a run trains with: the engine's defaults, then the preset, then the overrides; a run that
    builds on `base_run` takes its model (and, from its adapter, its LoRA shape and weights) from that run."""
    if not isinstance(overrides, dict):
        raise ValidationError({"overrides": "must be an object of config fields, e.g. {\"learning_rate\": 0.0001}"})
    errors = {field: RESERVED_FIELDS[field] for field in overrides if field in RESERVED_FIELDS}
    merged = {**(preset.config if preset else {}), **overrides}
    if base_run is not None:
        base = _base_fields(base_run, base_kind, overrides)
        errors.update(base.pop("errors"))
        merged.update(base)
    if "model" in merged and not (base_run is not None and base_kind == Run.BaseKind.MERGED):
        errors = {**model_errors(merged["model"]), **errors}
    merged.update(train_file=dataset.path, output_dir="run")
    merged.pop("eval_file", None)
    try:
        config = parse_config(merged)
    except ConfigError as exc:
        errors = {**exc.errors, **errors}
    if errors:
        raise ValidationError(errors)
    return config.model_dump(mode="json")


def _base_fields(base_run: Run, base_kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config fields a run that builds on `base_run` takes from it, and {"errors": ...} for what conflicts."""
    errors: dict[str, str] = {}
    label = f"run #{base_run.id}"
    if base_kind not in Run.BaseKind.values:
        return {"errors": {"start_from": f"build on a run's adapter or its merged model; allowed: "
                                         f"{', '.join(Run.BaseKind.values)}"}}
    if base_run.status != Status.SUCCEEDED:
        return {"errors": {"start_from": f"{label} is {base_run.status}; only a succeeded run can be built on"}}
    if base_kind == Run.BaseKind.MERGED:
        if not base_run.merged_path:
            return {"errors": {"start_from": f"{label} saved no merged model (it trained without merge_16bit); "
                                             "build on its adapter instead"}}
        fields = {"model": base_run.merged_path}
    else:
        if not base_run.adapter_path:
            return {"errors": {"start_from": f"{label} saved no adapter"}}
        fields = {"model": base_run.config["model"], "init_adapter": base_run.adapter_path}
        for name in ADAPTER_SHAPE_FIELDS:
            value = base_run.config.get(name)
            if name in overrides and overrides[name] != value:
                errors[name] = (f"a run that starts from {label}'s adapter keeps its {name} "
                                f"({json.dumps(value)}), so the weights fit; leave it blank")
            fields[name] = value
        if overrides.get("loftq_config") is not None:
            errors["loftq_config"] = f"the adapters start from {label}'s trained weights; leave loftq_config empty"
        fields["loftq_config"] = None
    if "model" in overrides and overrides["model"] != fields["model"]:
        what = f"{label}'s merged model" if base_kind == Run.BaseKind.MERGED else f"{label}'s model with its adapter"
        errors["model"] = f"a run that builds on {label} trains {what}; leave model blank"
    return {**fields, "errors": errors}


def run_create(*, team: Team, user, dataset: Dataset, preset: Preset | None = None,
               overrides: dict[str, Any] | None = None, name: str = "", queue: str | None = None,
               base_run: Run | None = None, base_kind: str = Run.BaseKind.ADAPTER) -> Run:
    """Validate and save a run, then queue it once the transaction commits. Nothing is saved on an error.
    `base_run` (a succeeded run of the same team) is what it builds on: its adapter or its merged model."""
    require_role(user=user, team=team, role=Role.MEMBER, action="Starting a run")
    if dataset.team_id != team.id:
        raise ValidationError({"dataset": "no such dataset in this team"})
    if preset is not None and preset.team_id not in (None, team.id):
        raise ValidationError({"preset": "no such preset in this team"})
    if base_run is not None and base_run.team_id != team.id:
        raise ValidationError({"start_from": "no such run in this team"})
    queue = queue or settings.TUNEBOARD_DEFAULT_QUEUE
    if not QUEUE_NAME.match(queue):
        raise ValidationError({"queue": "letters, digits and _ . @ - only, at most 100"})
    config = run_config_build(dataset=dataset, preset=preset, overrides=overrides or {}, base_run=base_run,
                              base_kind=base_kind)
    name = (name or "").strip()[:200] or f"{preset.name if preset else 'custom'} on {dataset.name}"
    with transaction.atomic():
        run = Run.objects.create(
            team=team, dataset=dataset, preset=preset, preset_version=preset.version if preset else None,
            created_by=user, name=name, config=config, dataset_sha256=dataset.sha256, queue=queue,
            total_steps=config["max_steps"], base_run=base_run, base_kind=base_kind if base_run else "",
        )
        _run_set_dir(run)
        transaction.on_commit(lambda: _enqueue(run))
    return run


def run_resume(*, run: Run, user, queue: str | None = None) -> Run:
    """A new run that continues `run` from its last checkpoint, with the same config and dataset, on `queue`
    (by default the original's: a lost run's worker may be gone, so the page can offer another)."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="Resuming a run")
    queue = queue or run.queue
    if not QUEUE_NAME.match(queue):
        raise ValidationError({"queue": "letters, digits and _ . @ - only, at most 100"})
    if run.status not in Run.RESUMABLE:
        raise ValidationError({"run": f"only a stopped, lost or failed run can be resumed; this one is {run.status}"})
    if not run.last_checkpoint_path or run.last_checkpoint_step is None:
        raise ValidationError({"run": "this run saved no checkpoint to resume from (set save_steps to save some)"})
    with transaction.atomic():
        continuation = Run.objects.create(
            team=run.team, dataset=run.dataset, preset=run.preset, preset_version=run.preset_version,
            created_by=user, name=f"{run.name} (resumed)"[:200], config=dict(run.config),
            dataset_sha256=run.dataset_sha256, queue=queue, resumed_from=run,
            resumed_from_checkpoint=run.last_checkpoint_path, resumed_from_step=run.last_checkpoint_step,
            last_step=run.last_checkpoint_step, total_steps=run.total_steps, sweep=run.sweep,
            base_run=run.base_run, base_kind=run.base_kind,
        )
        _run_set_dir(continuation)
        transaction.on_commit(lambda: _enqueue(continuation))
    return continuation


def _run_set_dir(run: Run) -> None:
    run.artifact_dir = str(settings.RUNS_DIR / str(run.id))
    run.config = {**run.config, "output_dir": run.artifact_dir}
    run.save(update_fields=["artifact_dir", "config"])


def _enqueue(run: Run) -> None:
    from training.tasks import run_train  # here, not at the top: tasks imports this module

    try:
        result = run_train.apply_async(args=[run.id], queue=run.queue)
    except Exception as exc:  # noqa: BLE001 - an unreachable broker must not leave the run queued forever
        log.exception("run %s could not be queued", run.id)
        _transition(run, to=Status.FAILED, allowed_from=[Status.QUEUED], finished_at=timezone.now(),
                    error_class=type(exc).__name__, error=f"the task queue (Redis) did not take the run: {exc}")
        return
    Run.objects.filter(id=run.id).update(celery_task_id=result.id)
    live.send_run_row(run)  # teammates' run lists show it


# Runs: lifecycle (the only code that changes Run.status) --------------------------------------------------------

def _transition(run: Run, *, to: str, allowed_from: Iterable[str], **fields: Any) -> bool:
    """Move the run to `to` if its status is one of allowed_from, in one conditional UPDATE; tell the browsers."""
    changed = Run.objects.filter(id=run.id, status__in=list(allowed_from)).update(status=to, **fields)
    try:
        run.refresh_from_db()
    except Run.DoesNotExist:
        return False
    if changed:
        live.send_run_message(run.id, "status", run_status_dict(run))
        live.send_run_row(run)
    return bool(changed)


def run_claim(*, run_id: int, worker_name: str, task_id: str = "") -> Run | None:
    """Atomically take a queued run for this worker; None if another delivery (or a stop) got there first."""
    worker = worker_get_or_create(name=worker_name)
    with transaction.atomic():
        claimed = Run.objects.filter(id=run_id, status=Status.QUEUED).update(
            status=Status.STARTING, worker=worker, started_at=timezone.now(), celery_task_id=task_id)
        if not claimed:
            return None
        Worker.objects.filter(id=worker.id).update(current_run_id=run_id)
    run = Run.objects.select_related("worker").get(id=run_id)
    live.send_run_message(run.id, "status", run_status_dict(run))
    live.send_run_row(run)
    return run


def run_stop(*, run: Run, user) -> None:
    """Stop a run: a queued one at once; a training one at its next step (checkpoint, then `stopped`)."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="Stopping a run")
    if _transition(run, to=Status.STOPPED, allowed_from=[Status.QUEUED], finished_at=timezone.now()):
        return
    _transition(run, to=Status.STOPPING, allowed_from=[Status.STARTING, Status.RUNNING])


def runs_mark_lost(*, now: datetime | None = None) -> list[int]:
    """Runs whose worker went silent, or no longer runs them, become lost; returns their ids."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.TUNEBOARD_WORKER_SILENT_S)
    orphaned = (
        Run.objects.filter(status__in=list(Run.ON_WORKER))
        .filter(
            Q(worker__isnull=True, started_at__lt=cutoff)
            | Q(worker__last_heartbeat_at__lt=cutoff)
            # the worker is alive but says it runs something else (it crashed out of this run unrecorded)
            | (Q(started_at__lt=cutoff) & (Q(worker__current_run__isnull=True) | ~Q(worker__current_run=F("id"))))
        )
        .select_related("worker")
    )
    lost = []
    for run in orphaned:
        who = run.worker.name if run.worker else "its worker"
        silent = f"{who} has been silent since {run.worker.last_heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if (
            run.worker and run.worker.last_heartbeat_at < cutoff) else f"{who} is no longer running it"
        if _transition(run, to=Status.LOST, allowed_from=Run.ON_WORKER, finished_at=now, error_class="WorkerLost",
                       error=f"lost: {silent}; resume it from its last checkpoint"):
            lost.append(run.id)
    return lost


def worker_runs_mark_lost(*, name: str) -> list[int]:
    """At a worker's start: whatever it was running in its previous life died with it."""
    lost = []
    for run in Run.objects.filter(worker__name=name, status__in=list(Run.ON_WORKER)):
        if _transition(run, to=Status.LOST, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                       error_class="WorkerLost", error=f"lost: worker {name} restarted while running it; "
                                                        "resume it from its last checkpoint"):
            lost.append(run.id)
    return lost


# Runs: execution ------------------------------------------------------------------------------------------------

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

    def __init__(self, run: Run):
        self.run = run
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
            try:
                self.findings.feed(event)  # after the event is stored: a finding's page shows the point it cites
            except Exception:  # noqa: BLE001 - a detector's bug must not end a training run
                log.exception("run %s: symptom detectors failed on a %s event", self.run.id, event.get("type"))

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
        stored = RunEvent.objects.create(run_id=self.run.id, seq=self.seq, type=kind, data=live.json_safe(data),
                                         time=_event_time(event))
        live.send_run_message(self.run.id, "event", event_dict(stored))
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_started(self, event: dict) -> None:
        facts = ("trainable_params", "total_params", "trainable_bias_params", "lora_scale", "device", "backend",
                 "dtype", "train_examples", "eval_examples", "data_format", "resumed_from_step", "pid")
        derived = event.get("derived") or {}
        Run.objects.filter(id=self.run.id).update(
            started={k: event.get(k) for k in facts}, derived=derived, versions=event.get("versions") or {},
            total_steps=derived.get("total_steps") or self.run.total_steps)
        _transition(self.run, to=Status.RUNNING, allowed_from=[Status.STARTING])

    def _on_checkpoint(self, event: dict) -> None:
        Run.objects.filter(id=self.run.id).update(last_checkpoint_path=str(event.get("path") or ""),
                                                  last_checkpoint_step=_int_or_none(event.get("step")))

    def _on_finished(self, event: dict) -> None:
        self.terminal = event
        _transition(self.run, to=Status.SUCCEEDED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                    adapter_path=str(event.get("adapter_path") or ""), last_step=int(event.get("step") or 0))

    def _on_stopped(self, event: dict) -> None:
        self.terminal = event
        fields: dict[str, Any] = {"finished_at": timezone.now()}
        if event.get("checkpoint"):
            fields["last_checkpoint_path"] = str(event["checkpoint"])
            fields["last_checkpoint_step"] = int(event.get("step") or 0)
        _transition(self.run, to=Status.STOPPED, allowed_from=Run.ON_WORKER, **fields)

    def _on_failed(self, event: dict) -> None:
        self.terminal = event
        _transition(self.run, to=Status.FAILED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
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


def run_execute(*, run: Run) -> None:
    """Train a claimed run in a child process. The one wrapper that owns failure: every outcome is terminal."""
    recorder = RunRecorder(run)
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
        if _transition(run, to=Status.STOPPED, allowed_from=[Status.STOPPING], finished_at=timezone.now()):
            return
        args = [sys.executable, "-m", "training.engine", "run", str(config_path), "--stop-file", str(stop_file)]
        if run.resumed_from_checkpoint:
            args += ["--resume-from", run.resumed_from_checkpoint]
        process = TrainingProcess(args, cwd=run_dir, stop_file=stop_file)
        _run_follow(run, process, recorder)
    except BaseException as exc:
        if process is not None:
            process.kill()
        log.exception("run %s failed in the worker", run.id)
        _transition(run, to=Status.FAILED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                    error_class=type(exc).__name__, error=str(exc) or repr(exc), traceback=traceback.format_exc())
        if not isinstance(exc, Exception):
            raise
    finally:
        Worker.objects.filter(current_run_id=run.id).update(current_run=None)
        _series_packs_build(run)


def _series_packs_build(run: Run) -> None:
    """Pack the ended run's curves for the Compare page now, while the worker has the time, rather than on the
    first compare; a failure here only means that compare packs them instead."""
    from training import compare  # late: compare imports training.forms, which imports this module

    try:
        run.refresh_from_db(fields=["status", "last_step"])
        compare.series_packs_build(run)
    except Exception:  # noqa: BLE001 - the run has ended either way
        log.exception("run %s: compare series not packed", run.id)


def _run_follow(run: Run, process: TrainingProcess, recorder: RunRecorder) -> None:
    """Record the child's events until it exits, acting on a stop request; end the run if it dies unreported."""
    poll_s = 0.5
    last_poll = 0.0
    stop_sent_at: float | None = None
    killed_for_stop = False
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
        if now - last_poll < poll_s:
            continue
        last_poll = now
        status = Run.objects.filter(id=run.id).values_list("status", flat=True).first()
        if status is None or status in Run.TERMINAL:
            # Deleted, or given up on as lost: nobody will read what it does next, and it holds a GPU.
            process.kill()
        elif status == Status.STOPPING:
            if stop_sent_at is None:
                process.request_stop()
                stop_sent_at = now
            elif not killed_for_stop and now - stop_sent_at > settings.TUNEBOARD_STOP_KILL_AFTER_S:
                log.warning("run %s: no stop after %.0f s, killing it", run.id, settings.TUNEBOARD_STOP_KILL_AFTER_S)
                process.kill()
                killed_for_stop = True
    returncode = process.wait()
    recorder.add_log_lines(process.take_stderr())
    recorder.flush_log(force=True)
    if recorder.terminal is not None:
        return
    tail = "\n".join(list(recorder.log_tail)[-50:])
    if killed_for_stop:
        _transition(run, to=Status.STOPPED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                    error_class="StopTimeout",
                    error=f"killed {settings.TUNEBOARD_STOP_KILL_AFTER_S:.0f} s after the stop request: the step "
                          "did not end; resume from the last periodic checkpoint", traceback=tail)
        return
    _transition(run, to=Status.FAILED, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                error_class="ProcessDied", error=_describe_exit(returncode), traceback=tail)


def _parse_event(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None
