"""Every write to a GGUF export: created for a succeeded run and queued to the run's own queue (its worker has the
model and the adapter), executed there in a child process (`python -m training.engine gguf`, with the allow-list
environment of every child) with its progress saved as it goes, and its files read back for download."""
from __future__ import annotations

import json
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from dashboard.models import Membership
from training.access import require_role
from training.datasets import files as dataset_files
from training.engine import gguf_export
from training.jobs import job_claim, job_enqueue
from training.models import Export, Run, Worker
from training.runs.process import TrainingProcess

log = logging.getLogger(__name__)
Status = Export.Status
SYSTEM_ROWS = 200  # a dataset's system prompt is the one its first rows share


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError({name: f"true or false, not {value!r}"})
    return value


def export_create(*, run: Run, user, quantizations: Any = None, merged_gguf: Any = True, lora_gguf: Any = True,
                  queue: str | None = None) -> Export:
    """Queue an export of a succeeded run on its own queue (or `queue`, another training queue); the same export
    asked again while one is under way is that one. Bad input is a ValidationError naming the field."""
    require_role(user=user, team=run.team, role=Membership.Role.MEMBER, action="Exporting a run")
    if run.status != Run.Status.SUCCEEDED or not run.adapter_path:
        raise ValidationError({"run": f"run #{run.id} is {run.status}: only a succeeded run has a final adapter to "
                                      "export; wait for it to succeed, or export a run that did"})
    try:
        chosen = gguf_export.check_quantizations(
            list(gguf_export.DEFAULT_QUANTIZATIONS) if quantizations is None else quantizations)
    except gguf_export.SpecError as exc:
        raise ValidationError(exc.errors) from None
    merged_gguf, lora_gguf = _flag("merged_gguf", merged_gguf), _flag("lora_gguf", lora_gguf)
    if not merged_gguf and not lora_gguf:
        raise ValidationError({"merged_gguf": "choose the merged model, the adapter (lora_gguf) or both"})
    if chosen and not merged_gguf:
        raise ValidationError({"quantizations": "quantizations are of the merged model: set merged_gguf, or give "
                                                "none"})
    queue = queue or run.queue
    if not isinstance(queue, str) or len(queue) > 100:
        raise ValidationError({"queue": "a queue name of at most 100 characters"})
    if queue == settings.TUNEBOARD_CPU_QUEUE:
        raise ValidationError({"queue": f"{queue} is the queue for dataset statistics and sweep advances, whose "
                                        f"workers hold no model; export on the run's own queue ({run.queue})"})
    with transaction.atomic():
        existing = (Export.objects.select_for_update().filter(
            run=run, quantizations=list(chosen), merged_gguf=merged_gguf, lora_gguf=lora_gguf,
            status__in=[Status.QUEUED, Status.RUNNING]).first())
        if existing is not None:
            return existing
        export = Export.objects.create(team=run.team, run=run, quantizations=list(chosen), merged_gguf=merged_gguf,
                                       lora_gguf=lora_gguf, queue=queue, created_by=user,
                                       progress={"done": 0, "total": 0, "message": f"queued on {queue}"})
        transaction.on_commit(lambda: job_enqueue(export, "training.export_run"))
    return export


def dataset_system(run: Run) -> str | None:
    """The system prompt of the run's dataset, where it has one: the system turn its first rows all start with."""
    dataset = run.dataset
    if dataset is None or dataset.format != "messages":
        return None
    found: set[str] = set()
    try:
        with open(dataset.path, "rb") as fh:
            for n, (_, row) in enumerate(dataset_files.read_records(fh, dataset_files.file_kind(dataset.path))):
                if n >= SYSTEM_ROWS:
                    break
                messages = row.get("messages") if isinstance(row, dict) else None
                first = messages[0] if isinstance(messages, list) and messages else None
                if not isinstance(first, dict) or first.get("role") != "system":
                    return None
                found.add(str(first.get("content") or ""))
    except (OSError, dataset_files.DatasetError, ValueError):
        return None
    return found.pop() if len(found) == 1 and "" not in found else None


def export_folder(export: Export) -> Path:
    return settings.EXPORTS_DIR / str(export.id)


# Execution on the worker -----------------------------------------------------------------------------------------

def export_execute(*, export_id: int, worker_name: str) -> None:
    """Claim the export (once, whatever the deliveries), run the converters in a child, save each stage and file as
    it comes. The one wrapper that owns failure: every outcome is succeeded or failed with the reason."""
    if not job_claim(Export, export_id, worker_name=worker_name):
        return
    export = Export.objects.select_related("run", "run__dataset").get(id=export_id)
    try:
        files, seconds = _convert(export)
    except Exception as exc:  # noqa: BLE001
        log.exception("export %s failed", export.id)
        Export.objects.filter(id=export.id).update(status=Status.FAILED, error=str(exc) or repr(exc),
                                                   finished_at=timezone.now())
        return
    Export.objects.filter(id=export.id).update(
        status=Status.SUCCEEDED, files=files, seconds=seconds, finished_at=timezone.now(),
        progress={**export.progress, "done": export.progress.get("total", 0), "message": "done"})


class ExportFailed(Exception):
    """The converter reported a failure; the message is its own."""


def _convert(export: Export) -> tuple[list[dict[str, Any]], float | None]:
    run, folder = export.run, export_folder(export)
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"model": run.config.get("model"), "adapter": run.adapter_path, "merged": run.merged_path or None,
            "out_dir": str(folder), "llama_cpp_dir": settings.TUNEBOARD_LLAMA_CPP_DIR, "name": f"run-{run.id}",
            "quantizations": export.quantizations, "merged_gguf": export.merged_gguf, "lora_gguf": export.lora_gguf,
            "system": dataset_system(run)}
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    process = TrainingProcess([sys.executable, "-m", "training.engine", "gguf", str(spec_path)], cwd=folder,
                              stop_file=None)
    files: list[dict[str, Any]] = []
    terminal: dict[str, Any] | None = None
    for lines in process.batches(timeout=0.5):
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "export-stage":
                export.progress = {k: event.get(k) for k in ("stage", "done", "total", "message")}
                Export.objects.filter(id=export.id).update(progress=export.progress)
            elif kind == "export-file":
                files.append({k: event.get(k) for k in ("name", "size", "sha256", "kind")})
                Export.objects.filter(id=export.id).update(files=files)
            elif kind in ("finished", "failed"):
                terminal = event
        process.take_stderr()
    returncode = process.wait()
    spec_path.unlink(missing_ok=True)
    if terminal is None:
        raise ExportFailed(f"the export process exited with code {returncode} without reporting a result")
    if terminal["type"] == "failed":
        raise ExportFailed(terminal.get("message") or terminal.get("error_class") or "the export failed")
    return files, terminal.get("seconds")


def exports_mark_lost(*, worker_name: str | None = None) -> list[int]:
    """Running exports whose worker went silent (or, at a worker's start, that it held in its previous life) fail
    with the reason: their child died with the worker, and nothing else would end them."""
    running = Export.objects.filter(status=Status.RUNNING)
    if worker_name is not None:
        running = running.filter(worker_name=worker_name)
        reason = f"its worker {worker_name} restarted while exporting; export again"
    else:
        cutoff = timezone.now() - timedelta(seconds=settings.TUNEBOARD_WORKER_SILENT_S)
        silent = Worker.objects.filter(last_heartbeat_at__lt=cutoff).values_list("name", flat=True)
        running = running.filter(worker_name__in=list(silent))
        reason = "its worker went silent while exporting; export again"
    lost = list(running.values_list("id", flat=True))
    Export.objects.filter(id__in=lost, status=Status.RUNNING).update(status=Status.FAILED, error=reason,
                                                                     finished_at=timezone.now())
    return lost


# Files -----------------------------------------------------------------------------------------------------------

def export_file(export: Export, name: str) -> Path:
    """The path of one file the export wrote; Http404 for any name it did not list (other folders, "..", a NUL
    byte, links out): the name is only compared with the export's own list, never handed to the OS as given."""
    listed = {f["name"] for f in export.files if isinstance(f, dict)}
    if export.status != Status.SUCCEEDED or name not in listed or name.startswith("."):
        raise Http404("No such file")
    folder = export_folder(export).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        raise Http404("No such file")
    return path
