"""The run page's Export section (its exports with progress and files, the Export form, the JSON it polls) and the
download of an export's file, scoped to the user's team."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_POST

from training import access
from training.export import selectors, services
from training.export.forms import ExportForm
from training.models import Run


def run_section(request: HttpRequest, run: Run) -> dict[str, Any]:
    """The context of the run page's export section (templates/training/_run_export.html)."""
    can_export = access.role_for(request.user, run.team) in ("member", "admin")
    exports = selectors.run_exports(run)
    return {"run": run, "exports": exports, "can_export": can_export,
            "form": ExportForm() if can_export and run.status == Run.Status.SUCCEEDED else None,
            "active": any(e["status"] in ("queued", "running") for e in exports),
            "state_url": reverse("run_exports", args=[run.id])}


@require_POST
@login_required
def run_export(request: HttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id)
    access.require_role(user=request.user, team=run.team, role="member", action="Exporting a run")
    back = reverse("run_detail", args=[run.id]) + "#export"
    form = ExportForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            for error in errors:
                messages.error(request, f"{field}: {error}")
        return redirect(back)
    data = form.cleaned_data
    try:
        export = services.export_create(run=run, user=request.user, quantizations=data["quantizations"],
                                        merged_gguf=data["merged_gguf"], lora_gguf=data["lora_gguf"])
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            for error in errors:
                messages.error(request, f"{field}: {error}")
        return redirect(back)
    messages.success(request, f"Export #{export.id} queued on {export.queue}: its files appear here as they are made.")
    return redirect(back)


@login_required
def run_exports(request: HttpRequest, run_id: int) -> JsonResponse:
    """The run's exports as JSON, polled by the run page while one is queued or running."""
    run = access.get_run_for_user(request.user, run_id)
    section = run_section(request, run)
    return JsonResponse({"active": section["active"], "exports": section["exports"],
                         "html": render_to_string("training/_run_export_list.html", section, request=request),
                         "form_html": render_to_string("training/_run_export_form.html", section, request=request)})


@login_required
def export_file(request: HttpRequest, export_id: int, name: str) -> FileResponse:
    export = selectors.get_export_for_user(request.user, export_id)
    path = services.export_file(export, name)
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)
