"""Every write to a run and its lifecycle: presets copied, runs created, resumed, claimed, stopped and found lost; the
one status transition. Views, tasks, the execution and the workers call these."""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from dashboard.models import Membership, Team
from training.access import require_role
from training.engine.config import STEPS_MAX, ConfigError, parse_config, text_problem
from training.engine.derived import derive
from training.engine.data import answers_only, encode_chats, load_data, load_tokenizer
from training.live import send as live
from training.models import (MAX_TAGS, NOTE_MAX_LENGTH, TAG_MAX_LENGTH, Dataset, EvalSuite, Preset, Run, Sweep,
                             Worker)
from training.planner import display
from training.planner import services as planner
from training.run_config import ADAPTER_SHAPE_FIELDS, PRESET_PLACEHOLDERS, RESERVED_FIELDS, model_errors
from training.runs import preflight
from training.selectors import run_status_dict
from training.trackers.services import trackers_check

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

def run_config_build(*, train_file: str, preset: Preset | None, overrides: dict[str, Any],
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
    merged.update(train_file=train_file, output_dir="run")
    merged.pop("eval_file", None)
    try:
        config = parse_config(merged)
    except ConfigError as exc:
        errors = {**exc.errors, **errors}
    if errors:
        raise ValidationError(errors)
    return config.model_dump(mode="json")


def run_config_review(*, dataset: Dataset | None, preset: Preset | None, overrides: dict[str, Any],
                      base_run: Run | None = None, base_kind: str = "", queue: str | None = None) -> dict[str, Any]:
    """What the run form shows as the user types: the pre-flight notes of the config the fields make so far and the
    fit planner's prediction on `queue` (display.form_plan: None until a model and a dataset are chosen), or the
    engine's field errors when it is not a config yet ({"notes": [...], "errors": {field: [message]}, "plan": ...}).
    A model not typed yet stands in as a placeholder, so the other fields are reviewed already."""
    placeholder = base_run is None and "model" not in overrides and not (preset and preset.config.get("model"))
    if placeholder:
        overrides = {**overrides, "model": PRESET_PLACEHOLDERS["model"]}
    try:
        config = run_config_build(train_file=dataset.path if dataset else PRESET_PLACEHOLDERS["train_file"],
                                  preset=preset, overrides=overrides, base_run=base_run, base_kind=base_kind)
    except ValidationError as exc:
        return {"notes": [], "errors": exc.message_dict, "plan": None}
    plan = None
    if dataset is not None and not placeholder:
        found = run_plan(team=dataset.team, config=config, dataset=dataset,
                         queue=queue or settings.TUNEBOARD_DEFAULT_QUEUE)
        plan = display.form_plan(found, config)
    return {"notes": preflight.review(config, dataset=dataset), "errors": {}, "plan": plan}


def run_plan(*, team: Team, config: dict[str, Any], dataset: Dataset | None, queue: str) -> dict[str, Any]:
    """The fit planner's prediction for a full config on `queue` (training.planner.services.plan_config), with
    the dataset's size and median row length where its statistics were computed with this model's tokenizer."""
    facts = preflight.dataset_facts(dataset, str(config.get("model") or ""))
    try:
        return planner.plan_config(team_id=team.id, config=config, queue=queue, num_examples=facts.get("rows"),
                                   mean_tokens=facts.get("p50_tokens"))
    except Exception:  # noqa: BLE001 - a prediction advises; its bug must not refuse a run
        log.exception("fit planner failed")
        return {"error": "the fit planner failed on this config (the server's log has why)"}


def _base_fields(base_run: Run, base_kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config fields a run that builds on `base_run` takes from it, and {"errors": ...} for what conflicts."""
    errors: dict[str, str] = {}
    label = f"run #{base_run.id}"
    if base_kind not in Run.BaseKind.values:
        return {"errors": {"start_from": f"build on a run's adapter or its merged model; allowed: "
                                         f"{', '.join(Run.BaseKind.values)}"}}
    if base_run.status != Status.SUCCEEDED:
        return {"errors": {"start_from": f"{label} is {base_run.status}; only a succeeded run can be built on"}}
    if base_kind == Run.BaseKind.MERGED and not base_run.merged_path:
        return {"errors": {"start_from": f"{label} saved no merged model (it trained without merge_16bit); "
                                         "build on its adapter instead"}}
    if base_kind == Run.BaseKind.ADAPTER and not base_run.adapter_path:
        return {"errors": {"start_from": f"{label} saved no adapter"}}
    fields = base_run.fields_for_builds(base_kind)
    if base_kind == Run.BaseKind.ADAPTER:
        for name in ADAPTER_SHAPE_FIELDS:
            if name in overrides and overrides[name] != fields[name]:
                errors[name] = (f"a run that starts from {label}'s adapter keeps its {name} "
                                f"({json.dumps(fields[name])}), so the weights fit; leave it blank")
        if overrides.get("loftq_config") is not None:
            errors["loftq_config"] = f"the adapters start from {label}'s trained weights; leave loftq_config empty"
    if "model" in overrides and overrides["model"] != fields["model"]:
        what = f"{label}'s merged model" if base_kind == Run.BaseKind.MERGED else f"{label}'s model with its adapter"
        errors["model"] = f"a run that builds on {label} trains {what}; leave model blank"
    return {**fields, "errors": errors}


def steps_check(config: dict[str, Any], *, rows: int) -> None:
    """Refuse epochs that make more steps than a run's step columns hold: each field is bounded, but epochs times
    rows is only known with the dataset."""
    steps = derive(parse_config(config), rows).total_steps
    if steps and steps > STEPS_MAX:
        raise ValidationError({"num_train_epochs": f"{config.get('num_train_epochs')} epochs of {rows:,} rows make "
                                                   f"{steps:,} steps; at most {STEPS_MAX:,}: fewer epochs, or set "
                                                   "max_steps"})


def run_create(*, team: Team, user, dataset: Dataset, preset: Preset | None = None,
               overrides: dict[str, Any] | None = None, name: str = "", queue: str | None = None,
               base_run: Run | None = None, base_kind: str = Run.BaseKind.ADAPTER, sweep: Sweep | None = None,
               eval_suites: Iterable[EvalSuite] = (), eval_checkpoints: bool = False,
               trackers: Iterable[str] = (), parent: Run | None = None) -> Run:
    """Validate and save a run, then queue it once the transaction commits. Nothing is saved on an error.
    `base_run` (a succeeded run of the same team) is what it builds on: its adapter or its merged model; `trackers`
    what its worker mirrors it to (training.trackers); `parent` the run of the same team it was started from."""
    require_role(user=user, team=team, role=Role.MEMBER, action="Starting a run")
    if dataset.team_id != team.id:
        raise ValidationError({"dataset": "no such dataset in this team"})
    if preset is not None and preset.team_id not in (None, team.id):
        raise ValidationError({"preset": "no such preset in this team"})
    if base_run is not None and base_run.team_id != team.id:
        raise ValidationError({"start_from": "no such run in this team"})
    if parent is not None and parent.team_id != team.id:
        raise ValidationError({"parent": f"run #{parent.id} is another team's; a run is started from its own team's"})
    queue = queue or settings.TUNEBOARD_DEFAULT_QUEUE
    if not QUEUE_NAME.match(queue):
        raise ValidationError({"queue": "letters, digits and _ . @ - only, at most 100"})
    config = run_config_build(train_file=dataset.path, preset=preset, overrides=overrides or {}, base_run=base_run,
                              base_kind=base_kind)
    template_check(config)
    steps_check(config, rows=dataset.rows)
    notes = preflight.review(config, dataset=dataset)
    plan = run_plan(team=team, config=config, dataset=dataset, queue=queue)
    refusal = planner.plan_refusal(plan)
    if refusal:
        raise ValidationError({"fit": refusal})
    name = (name or "").strip()[:200] or f"{preset.name if preset else 'custom'} on {dataset.name}"
    if problem := text_problem(name):
        raise ValidationError({"name": problem})
    trackers = trackers_check(team=team, trackers=list(trackers))
    with transaction.atomic():
        run = Run.objects.create(
            team=team, dataset=dataset, preset=preset, preset_version=preset.version if preset else None,
            created_by=user, name=name, config=config, dataset_sha256=dataset.sha256, queue=queue,
            total_steps=config["max_steps"], base_run=base_run, base_kind=base_kind if base_run else "",
            preflight=notes, sweep=sweep, eval_checkpoints=eval_checkpoints, plan=plan, trackers=trackers,
            parent=parent,
        )
        _run_set_dir(run)
        suites = list(eval_suites)
        if any(suite.team_id != team.id for suite in suites):
            raise ValidationError({"eval_suites": "no such eval suite in this team"})
        if eval_checkpoints and not suites:
            raise ValidationError({"eval_checkpoints": "choose the suites to evaluate the checkpoints on"})
        run.eval_suites.set(suites)
        transaction.on_commit(lambda: _enqueue(run))
    return run


def template_check(config: dict[str, Any]) -> None:
    """Refuse, before a run exists, a messages dataset whose rows the model's chat template cannot train as asked
    (rows it refuses, answers it rewrites), with the engine's own check (training.engine.data.encode_chats) on every
    row. Needs the model's tokenizer here: a model that is not a folder on this machine is checked by the engine
    when it starts, still before the model loads."""
    parsed = parse_config(config)
    tokenizer_file = Path(parsed.model) / "tokenizer_config.json"
    if not tokenizer_file.is_file() or not Path(parsed.train_file).is_file():
        return
    errors = _template_errors(parsed.model, parsed.train_file, parsed.data_format, parsed.completion_only_loss,
                              Path(parsed.train_file).stat().st_mtime_ns, tokenizer_file.stat().st_mtime_ns)
    if errors:
        raise ValidationError(errors)


@functools.lru_cache(maxsize=64)
def _template_errors(model: str, train_file: str, data_format: str, completion_only_loss: bool | None,
                     *_mtimes: int) -> dict[str, str] | None:
    """The verdict for one pairing of data and tokenizer on every row of the file (row numbers are the file's; an
    eval split is made of the same rows), the files' mtimes in the key: a sweep's members share theirs instead of
    each rendering every row again."""
    parsed = parse_config({"model": model, "train_file": train_file, "data_format": data_format,
                           "completion_only_loss": completion_only_loss})
    try:
        train, _, fmt = load_data(parsed)
        if fmt == "messages":
            encode_chats(train, load_tokenizer(model), answers_only=answers_only(parsed, fmt), field="dataset")
    except ConfigError as exc:
        return exc.errors
    return None


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
            base_run=run.base_run, base_kind=run.base_kind, preflight=run.preflight,
            eval_checkpoints=run.eval_checkpoints, trackers=run.trackers,
        )
        _run_set_dir(continuation)
        continuation.eval_suites.set(run.eval_suites.all())
        transaction.on_commit(lambda: _enqueue(continuation))
    return continuation


def _run_set_dir(run: Run) -> None:
    run.artifact_dir = str(settings.RUNS_DIR / str(run.id))
    run.config = {**run.config, "output_dir": run.artifact_dir}
    run.save(update_fields=["artifact_dir", "config"])


def _enqueue(run: Run) -> None:
    try:
        # By the task's name (training/tasks.py): the tasks import the services, not the other way round.
        result = current_app.send_task("training.run_train", args=[run.id], queue=run.queue)
    except Exception as exc:  # noqa: BLE001 - an unreachable broker must not leave the run queued forever
        log.exception("run %s could not be queued", run.id)
        run_transition(run, to=Status.FAILED, allowed_from=[Status.QUEUED], finished_at=timezone.now(),
                       error_class=type(exc).__name__, error=f"the task queue (Redis) did not take the run: {exc}")
        return
    Run.objects.filter(id=run.id).update(celery_task_id=result.id)
    live.send_run_row(run)  # teammates' run lists show it


# Runs: lifecycle (the only code that changes Run.status) --------------------------------------------------------

def run_transition(run: Run, *, to: str, allowed_from: Iterable[str], **fields: Any) -> bool:
    """Move the run to `to` if its status is one of allowed_from, in one conditional UPDATE; tell the browsers."""
    changed = Run.objects.filter(id=run.id, status__in=list(allowed_from)).update(status=to, **fields)
    try:
        run.refresh_from_db()
    except Run.DoesNotExist:
        return False
    if changed:
        live.send_run_message(run.id, "status", run_status_dict(run))
        live.send_run_row(run)
        if run.sweep_id and to in Run.TERMINAL:
            sweep_id = run.sweep_id
            transaction.on_commit(lambda: sweep_advance_enqueue(sweep_id))
        if to == Status.SUCCEEDED and run.eval_suites.exists():
            transaction.on_commit(lambda: _cpu_task("training.evals_after_run", run.id))
    return bool(changed)


def cpu_task(name: str, *args: Any) -> None:
    """Queue a task by name on the cpu queue (the runs know the evaluation and sweep tasks only by name)."""
    _cpu_task(name, *args)


def _cpu_task(name: str, *args: Any) -> None:
    try:
        current_app.send_task(name, args=list(args), queue=settings.TUNEBOARD_CPU_QUEUE)
    except Exception:  # noqa: BLE001 - the page can start it again by hand
        log.exception("%s%s not queued", name, args)


def sweep_advance_enqueue(sweep_id: int) -> None:
    """Queue the sweep's advance (training/sweeps/services.py) on the cpu queue: a member ended, or the sweep was
    resumed. By the task's name: the runs know nothing of sweeps. Never on a GPU queue, where it would wait behind
    the next member's training."""
    try:
        current_app.send_task("training.sweep_advance", args=[sweep_id], queue=settings.TUNEBOARD_CPU_QUEUE)
    except Exception:  # noqa: BLE001 - the periodic check (workers/heartbeat.py) advances it later
        log.exception("sweep %s: advance not queued", sweep_id)


def run_claim(*, run_id: int, worker_name: str, task_id: str = "", admit: Callable[[Worker], Any] | None = None
              ) -> Run | None:
    """Atomically take a queued run for this worker; None if another delivery (or a stop) got there first, or if
    `admit` (the worker's slots: training/runs/slots.py) says no. `admit` sees the worker's row locked, so the tasks
    arriving at one worker's slots at once are judged one after the other; its answer has `admit` and
    `reserved_bytes` (training.planner.slots.Admission)."""
    worker, _ = Worker.objects.get_or_create(name=worker_name, defaults={"hostname": socket.gethostname(),
                                                                        "pid": os.getpid()})
    with transaction.atomic():
        worker = Worker.objects.select_for_update().get(id=worker.id)
        decision = admit(worker) if admit is not None else None
        if decision is not None and not decision.admit:
            return None
        claimed = Run.objects.filter(id=run_id, status=Status.QUEUED).update(
            status=Status.STARTING, worker=worker, started_at=timezone.now(), celery_task_id=task_id, held_reason="",
            slot_reserved_bytes=decision.reserved_bytes if decision is not None else None)
        if not claimed:
            return None
        worker.current_runs.add(run_id)
    run = Run.objects.select_related("worker").get(id=run_id)
    live.send_run_message(run.id, "status", run_status_dict(run))
    live.send_run_row(run)
    return run


def run_release(*, run_id: int) -> None:
    """The worker no longer trains the run (run_execute ended): its slot is free."""
    Worker.current_runs.through.objects.filter(run_id=run_id).delete()


TAG_RE = re.compile(rf"^[a-z0-9][a-z0-9._-]{{0,{TAG_MAX_LENGTH - 1}}}$")


def run_label(*, run: Run, user, tags: Iterable[str], note: str) -> None:
    """Set a run's tags (lower-cased, each once, in the order given) and note; a bad one changes nothing and is
    named with what is allowed."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="Tagging a run")
    cleaned: list[str] = []
    for tag in tags:
        tag = tag.strip().lower()
        if not tag or tag in cleaned:
            continue
        if not TAG_RE.match(tag):
            raise ValidationError({"tags": f"{tag[:60]!r} is not a tag: 1 to {TAG_MAX_LENGTH} characters, letters, "
                                           "digits and - _ . only, starting with a letter or digit"})
        cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise ValidationError({"tags": f"{len(cleaned)} tags; a run has at most {MAX_TAGS}"})
    if len(note) > NOTE_MAX_LENGTH:
        raise ValidationError({"note": f"{len(note):,} characters; a note has at most {NOTE_MAX_LENGTH:,}"})
    Run.objects.filter(id=run.id).update(tags=cleaned, note=note)
    run.tags, run.note = cleaned, note


def run_stop(*, run: Run, user) -> None:
    """Stop a run: a queued one at once; a training one at its next step (checkpoint, then `stopped`)."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="Stopping a run")
    if run_transition(run, to=Status.STOPPED, allowed_from=[Status.QUEUED], finished_at=timezone.now()):
        return
    run_transition(run, to=Status.STOPPING, allowed_from=[Status.STARTING, Status.RUNNING])


def runs_mark_lost(*, now: datetime | None = None) -> list[int]:
    """Runs whose worker went silent, or no longer runs them, become lost; returns their ids."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.TUNEBOARD_WORKER_SILENT_S)
    held = Worker.current_runs.through.objects.filter(worker_id=OuterRef("worker_id"), run_id=OuterRef("pk"))
    orphaned = (
        Run.objects.filter(status__in=list(Run.ON_WORKER))
        .filter(
            Q(worker__isnull=True, started_at__lt=cutoff)
            | Q(worker__last_heartbeat_at__lt=cutoff)
            # the worker is alive but says it runs something else (it crashed out of this run unrecorded)
            | (Q(started_at__lt=cutoff) & ~Exists(held))
        )
        .select_related("worker")
    )
    lost = []
    for run in orphaned:
        who = run.worker.name if run.worker else "its worker"
        silent = f"{who} has been silent since {run.worker.last_heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if (
            run.worker and run.worker.last_heartbeat_at < cutoff) else f"{who} is no longer running it"
        if run_transition(run, to=Status.LOST, allowed_from=Run.ON_WORKER, finished_at=now, error_class="WorkerLost",
                          error=f"lost: {silent}; resume it from its last checkpoint"):
            lost.append(run.id)
    return lost


def worker_runs_mark_lost(*, name: str) -> list[int]:
    """At a worker's start: whatever it was running in its previous life died with it."""
    lost = []
    for run in Run.objects.filter(worker__name=name, status__in=list(Run.ON_WORKER)):
        if run_transition(run, to=Status.LOST, allowed_from=Run.ON_WORKER, finished_at=timezone.now(),
                          error_class="WorkerLost", error=f"lost: worker {name} restarted while running it; "
                                                        "resume it from its last checkpoint"):
            lost.append(run.id)
    return lost


