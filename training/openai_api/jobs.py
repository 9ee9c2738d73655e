"""OpenAI's files and fine-tuning jobs over Tuneboard's services: a file of purpose fine-tune is a dataset of the
caller's team (checked row by row as on the datasets page: training/datasets/services.py), a job is a run
(training/runs/services.py run_create/run_stop) on that dataset, its events the run's events and metric points, its
checkpoints the adapters it saved. Team scoping as everywhere: another team's file or job is a 404."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError

from dashboard.models import Membership
from training import access
from training.datasets import services as dataset_services
from training.models import Dataset, MetricPoint, Run, RunEvent
from training.playground.services import checkpoint_steps
from training.runs import services as run_services

from . import names
from .errors import OpenAIError, bad, from_field_errors, not_found
from .fine_tuning import JobRequest, hyperparameters_of, job_status, refused

PURPOSE = "fine-tune"
MAX_LIMIT = 100


def _ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    return exc.message_dict if hasattr(exc, "error_dict") else {"__all__": list(exc.messages)}


# Files ------------------------------------------------------------------------------------------------------------

def file_object(dataset: Dataset) -> dict[str, Any]:
    source = (dataset.stats or {}).get("source") or {}
    return {"id": names.file_id(dataset.id), "object": "file", "bytes": source.get("bytes") or dataset.size_bytes,
            "created_at": _ts(dataset.created_at), "filename": source.get("file") or Path(dataset.path).name,
            "purpose": PURPOSE, "status": "processed", "expires_at": None, "status_details": None}


def _upload_team(user, team_id: Any):
    """The team an upload goes to: the one named (form field `team`), else the caller's only team where they may add
    datasets."""
    allowed = list(access.team_list_where(user, Membership.Role.MEMBER).order_by("name"))
    if team_id not in (None, ""):
        team = next((t for t in allowed if str(t.id) == str(team_id)), None)
        if team is None:
            raise bad("team", f"not a team of yours where you may add datasets: {team_id!r}")
        return team
    if len(allowed) == 1:
        return allowed[0]
    if not allowed:
        raise OpenAIError(403, "adding a file needs the member role in a team", code="permission_denied")
    raise bad("team", "you are a member of several teams; send the team's id as the form field team: "
                      + ", ".join(f"{t.id} ({t.name})" for t in allowed))


def file_create(*, user, upload, purpose: Any, team_id: Any = None) -> Dataset:
    """An uploaded JSONL file of purpose fine-tune as a dataset of the caller's team, named after the file (with a
    number where the team has one of that name already)."""
    if purpose != PURPOSE:
        raise bad("purpose", f"only {PURPOSE!r} files are kept here, not {purpose!r}")
    if upload is None:
        raise bad("file", "required: the JSONL file (multipart field file)")
    team = _upload_team(user, team_id)
    filename = Path(upload.name or "upload.jsonl").name
    name = filename
    for number in range(2, 1000):
        if not Dataset.objects.filter(team=team, name=name).exists():
            break
        name = f"{filename} ({number})"
    try:
        return dataset_services.dataset_create_from_upload(team=team, user=user, name=name, file=upload,
                                                           filename=filename)
    except PermissionDenied as exc:
        raise OpenAIError(403, str(exc), code="permission_denied") from None
    except ValidationError as exc:
        raise from_field_errors(_errors(exc), {"name": "file"}) from None


def get_file(user, file_id: Any, *, param: str = "file_id") -> Dataset:
    number = names.parse_file(file_id)
    dataset = (Dataset.objects.filter(id=number, team_id__in=access.team_ids_for(user)).select_related("team").first()
               if number else None)
    if dataset is None:
        raise not_found(f"No such File object: {file_id}", param=param)
    return dataset


def file_list(user, *, after: Any = None, limit: Any = None) -> dict[str, Any]:
    datasets = Dataset.objects.filter(team_id__in=access.team_ids_for(user)).order_by("-id")
    return _page(datasets, after, names.parse_file, limit, file_object, default_limit=MAX_LIMIT)


# Jobs -------------------------------------------------------------------------------------------------------------

def job_create(*, user, request: JobRequest) -> Run:
    """A run of the training file's dataset with the job's fields; run_create's checks (the model roots, the engine's
    ranges, the fit planner) name the job's parameter they refuse."""
    dataset = get_file(user, request.training_file, param="training_file")
    overrides = dict(request.overrides)
    if request.validation_file:
        overrides["eval_file"] = get_file(user, request.validation_file, param="validation_file").path
    name = request.suffix or f"fine-tune of {Path(request.model).name} on {dataset.name}"
    try:
        return run_services.run_create(team=dataset.team, user=user, dataset=dataset, overrides=overrides, name=name,
                                       queue=request.queue)
    except PermissionDenied as exc:
        raise OpenAIError(403, str(exc), code="permission_denied") from None
    except ValidationError as exc:
        raise refused(_errors(exc)) from None


def get_job(user, job_id: str) -> Run:
    number = names.parse_job(job_id)
    run = (Run.objects.filter(id=number, team_id__in=access.team_ids_for(user)).select_related("team", "dataset")
           .first() if number else None)
    if run is None:
        raise not_found(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return run


def job_object(run: Run) -> dict[str, Any]:
    status = job_status(run.status)
    config = run.config or {}
    hyper = hyperparameters_of(config)
    error = None
    if status == "failed":
        error = {"code": run.error_class or run.status, "message": run.error or f"the run is {run.status}",
                 "param": None}
    tokens = (MetricPoint.objects.filter(run=run, tokens_seen__isnull=False).order_by("-step")
              .values_list("tokens_seen", flat=True).first())
    eval_file = config.get("eval_file")
    validation = (Dataset.objects.filter(team=run.team, path=eval_file).values_list("id", flat=True).first()
                  if eval_file else None)
    return {"id": names.job_id(run.id), "object": "fine_tuning.job", "created_at": _ts(run.created_at),
            "error": error, "fine_tuned_model": names.model_name(run.id) if status == "succeeded" else None,
            "finished_at": _ts(run.finished_at) if run.is_terminal else None, "hyperparameters": hyper,
            "model": config.get("model"), "organization_id": f"team-{run.team_id}", "result_files": [],
            "seed": config.get("seed"), "status": status, "trained_tokens": tokens,
            "training_file": names.file_id(run.dataset_id),
            "validation_file": names.file_id(validation) if validation else None,
            "estimated_finish": None, "integrations": None, "metadata": None, "suffix": run.name,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
            "tuneboard": {"run": run.id, "status": run.status, "queue": run.queue, "last_step": run.last_step,
                          "total_steps": run.total_steps}}


def job_list(user, *, after: Any = None, limit: Any = None) -> dict[str, Any]:
    runs = Run.objects.filter(team_id__in=access.team_ids_for(user)).select_related("team").order_by("-id")
    return _page(runs, after, names.parse_job, limit, job_object)


def job_cancel(*, user, run: Run) -> Run:
    if run.is_terminal:
        raise bad("fine_tuning_job_id", f"the job has already ended ({job_status(run.status)}); only a queued or "
                                        "running job can be cancelled")
    try:
        run_services.run_stop(run=run, user=user)
    except PermissionDenied as exc:
        raise OpenAIError(403, str(exc), code="permission_denied") from None
    run.refresh_from_db()
    return run


def _limit(limit: Any, default: int = 20) -> int:
    if limit in (None, ""):
        return default
    if not str(limit).isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        raise bad("limit", f"a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    return int(limit)


def _page(rows, after: Any, parse, limit: Any, shape, *, default_limit: int = 20) -> dict[str, Any]:
    """Newest first; `after` is the last id of the page before (OpenAI's cursor)."""
    count = _limit(limit, default_limit)
    if after not in (None, ""):
        number = parse(after)
        if number is None:
            raise bad("after", f"an id of this list, not {after!r}")
        rows = rows.filter(id__lt=number)
    items = list(rows[:count + 1])
    return {"object": "list", "data": [shape(row) for row in items[:count]], "has_more": len(items) > count}


# Events and checkpoints ---------------------------------------------------------------------------------------------

def _event(run: Run, key: str, moment: datetime, message: str, *, level: str = "info", kind: str = "message",
           data: dict | None = None) -> dict[str, Any]:
    return {"id": f"ftevent-{run.id}-{key}", "object": "fine_tuning.job.event", "created_at": _ts(moment),
            "level": level, "message": message, "type": kind, "data": data or {}}


def _run_event(run: Run, event: RunEvent) -> dict[str, Any]:
    data = event.data or {}
    kind = event.type
    if kind == "failed" or kind == "warning":
        text = str(data.get("message") or data.get("error_class") or kind)
        return _event(run, f"e{event.seq}", event.time, f"{kind}: {text}",
                      level="error" if kind == "failed" else "warn", data=data)
    messages = {"started": "Training started", "checkpoint": f"Checkpoint saved at step {data.get('step')}",
                "finished": f"Training finished at step {data.get('step')}",
                "stopped": f"Training stopped at step {data.get('step')}"}
    return _event(run, f"e{event.seq}", event.time, messages.get(kind, kind), data=data)


def _point_event(run: Run, point: MetricPoint) -> dict[str, Any]:
    total = f"/{run.total_steps}" if run.total_steps else ""
    loss = f"training loss={point.loss:.4f}" if point.loss is not None else ""
    valid = f"validation loss={point.eval_loss:.4f}" if point.eval_loss is not None else ""
    return _event(run, f"m{point.step}", point.time, f"Step {point.step}{total}: " + ", ".join(p for p in (loss, valid)
                                                                                            if p),
                  kind="metrics", data={"step": point.step, "total_steps": run.total_steps, "train_loss": point.loss,
                                        "valid_loss": point.eval_loss, "learning_rate": point.learning_rate})


def _end_event(run: Run) -> dict[str, Any] | None:
    status = job_status(run.status)
    if not run.is_terminal:
        return None
    moment = run.finished_at or run.created_at
    if status == "succeeded":
        return _event(run, "end", moment, "The job has successfully completed")
    if status == "cancelled":
        return _event(run, "end", moment, "The job was cancelled")
    return _event(run, "end", moment, f"The job failed: {run.error or run.status}", level="error")


def job_events(run: Run, *, after: Any = None, limit: Any = None) -> dict[str, Any]:
    """The job's events newest first, as OpenAI lists them: its creation, the run's events, a metrics event per
    step, its end. Read whole from the database (a run's events and points are what its page shows too)."""
    count = _limit(limit)
    events = [_event(run, "created", run.created_at, f"Created fine-tuning job: {names.job_id(run.id)}")]
    rows = [(e.time, 1, e.seq, _run_event(run, e)) for e in RunEvent.objects.filter(run=run).order_by("seq")]
    rows += [(p.time, 2, p.step, _point_event(run, p)) for p in MetricPoint.objects.filter(run=run).order_by("step")]
    events += [row[3] for row in sorted(rows, key=lambda row: row[:3])]
    end = _end_event(run)
    if end is not None:
        events.append(end)
    events.reverse()
    if after not in (None, ""):
        ids = [e["id"] for e in events]
        if after not in ids:
            raise bad("after", f"an event id of this job, not {after!r}")
        events = events[ids.index(after) + 1:]
    return {"object": "list", "data": events[:count], "has_more": len(events) > count}


def job_checkpoints(run: Run, *, after: Any = None, limit: Any = None) -> dict[str, Any]:
    """The adapters the run saved while training, newest first; each is a model the chat takes
    (run-<id>:ckpt-<step>)."""
    count = _limit(limit, 10)
    saved = set(checkpoint_steps(run))
    times = {int((e.data or {}).get("step") or 0): e.time
             for e in RunEvent.objects.filter(run=run, type="checkpoint")}
    points = {p.step: p for p in MetricPoint.objects.filter(run=run, step__in=saved)}
    items = []
    for step in sorted(saved, reverse=True):
        point = points.get(step)
        items.append({"id": f"ftckpt-{run.id}-{step}", "object": "fine_tuning.job.checkpoint",
                      "created_at": _ts(times.get(step) or run.finished_at or run.created_at),
                      "fine_tuned_model_checkpoint": names.model_name(run.id, checkpoint=step),
                      "fine_tuning_job_id": names.job_id(run.id), "step_number": step,
                      "metrics": {"step": step, "train_loss": point.loss if point else None,
                                  "valid_loss": point.eval_loss if point else None}})
    if after not in (None, ""):
        ids = [c["id"] for c in items]
        if after not in ids:
            raise bad("after", f"a checkpoint id of this job, not {after!r}")
        items = items[ids.index(after) + 1:]
    return {"object": "list", "data": items[:count], "has_more": len(items) > count,
            "first_id": items[0]["id"] if items else None, "last_id": items[:count][-1]["id"] if items else None}


