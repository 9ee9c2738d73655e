"""The Trackers page (each team's MLflow server, set by its admins) and a run's TensorBoard files as a zip."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from training import access
from training.models import MlflowSettings
from training.trackers import services
from training.trackers.forms import MlflowSettingsForm
from training.trackers.mlflow_rest import MlflowError, MlflowRest


def _teams(request: HttpRequest, bound: tuple[int, MlflowSettingsForm] | None = None) -> list[dict]:
    saved = {s.team_id: s for s in MlflowSettings.objects.filter(team__in=access.team_list_for(request.user))}
    teams = []
    for team in access.team_list_for(request.user).order_by("name"):
        settings = saved.get(team.id)
        is_admin = access.role_for(request.user, team) == "admin"
        form = None
        if is_admin:
            form = (bound[1] if bound and bound[0] == team.id else
                    MlflowSettingsForm.for_settings(settings, team_name=team.name, prefix=team.slug))
        teams.append({"team": team, "settings": settings, "is_admin": is_admin, "form": form})
    return teams


@login_required
def tracker_settings(request: HttpRequest) -> HttpResponse:
    return render(request, "training/trackers.html", {"teams": _teams(request)})


@require_POST
@login_required
def team_trackers(request: HttpRequest, slug: str) -> HttpResponse:
    team = access.get_team_for_user(request.user, slug)  # another team's is a 404
    if access.role_for(request.user, team) != "admin":
        raise PermissionDenied(f"Setting the team's MLflow server needs the admin role in team {team.name}")
    if request.POST.get("action") == "remove":
        services.mlflow_settings_delete(team=team, user=request.user)
        messages.info(request, f"{team.name} has no MLflow server now; its runs can no longer ask for MLflow.")
        return redirect("tracker_settings")
    settings = MlflowSettings.objects.filter(team=team).first()
    form = MlflowSettingsForm.for_settings(settings, team_name=team.name, data=request.POST, prefix=team.slug)
    if form.is_valid():
        try:
            saved = services.mlflow_settings_save(team=team, user=request.user, values=form.cleaned_data)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, error)
        else:
            messages.success(request, f"Saved {team.name}'s MLflow server.")
            problem = _server_problem(saved)
            if problem:
                messages.warning(request, f"This web server could not use it yet: {problem}. The workers try again "
                                          "for each run (their network may differ).")
            return redirect("tracker_settings")
    return render(request, "training/trackers.html", {"teams": _teams(request, (team.id, form))}, status=400)


def _server_problem(settings: MlflowSettings) -> str:
    """Why the saved server cannot be used from here (one quick request, no retry); empty when it answers."""
    server = services.mlflow_server_for(settings.team_id)
    try:
        MlflowRest(server, timeout_s=5, retries=0).call("GET", "experiments/get-by-name",
                                                        query={"experiment_name": server.experiment})
    except MlflowError as exc:
        return "" if "RESOURCE_DOES_NOT_EXIST" in str(exc) else str(exc)  # made on the first run
    return ""


@login_required
def run_tensorboard_zip(request: HttpRequest, run_id: int) -> FileResponse:
    run = access.get_run_for_user(request.user, run_id)
    try:
        archive = services.tensorboard_zip(run)
    except ValidationError as exc:
        raise Http404(exc.messages[0]) from None
    return FileResponse(archive, as_attachment=True, filename=f"run-{run.id}-tensorboard.zip",
                        content_type="application/zip")
