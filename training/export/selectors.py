"""Reads of GGUF exports, scoped to the user's teams like every file: another team's export is a 404."""
from __future__ import annotations

from typing import Any

from django.http import Http404
from django.urls import reverse

from training.access import team_ids_for
from training.engine.gguf_export import QUANTIZATIONS
from training.models import Export, Run


def get_export_for_user(user, export_id: int) -> Export:
    export = Export.objects.select_related("run", "team").filter(
        id=export_id, team_id__in=team_ids_for(user)).first()
    if export is None:
        raise Http404("No such export")
    return export


def export_dict(export: Export, *, api: bool = False) -> dict[str, Any]:
    """An export as the run page and the API show it, each file with its size, sha256 and download URL."""
    name = "api:export-file" if api else "export_file"
    files = [{**f, "url": reverse(name, args=[export.id, f["name"]]) if export.status == Export.Status.SUCCEEDED
              else None} for f in export.files]
    done, total = export.progress.get("done") or 0, export.progress.get("total") or 0
    return {"id": export.id, "run": export.run_id, "status": export.status, "queue": export.queue,
            "quantizations": export.quantizations, "quantization_labels": [QUANTIZATIONS.get(q, q)
                                                                           for q in export.quantizations],
            "merged_gguf": export.merged_gguf, "lora_gguf": export.lora_gguf,
            "progress": {"stage": export.progress.get("stage") or "", "done": done, "total": total,
                         "message": export.progress.get("message") or "",
                         "percent": round(100 * done / total) if total else 0},
            "files": files, "seconds": export.seconds, "error": export.error, "worker": export.worker_name,
            "created_at": export.created_at.isoformat(), "finished_at":
                export.finished_at.isoformat() if export.finished_at else None}


def run_exports(run: Run, *, api: bool = False) -> list[dict[str, Any]]:
    return [export_dict(e, api=api) for e in run.exports.all()[:20]]
