"""The dataset pages: the team's datasets with upload and register-a-path, and a dataset's token statistics."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from training import access
from training.datasets import services as dataset_services
from training.datasets.forms import DatasetProfileForm, DatasetRegisterForm, DatasetUploadForm


def _profile_data(dataset) -> dict[str, Any]:
    profile = dict(dataset.stats.get("profile") or {})
    profile.pop("token", None)
    return profile


@login_required
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """A dataset's source, its token statistics with the chosen model (started here, computed by a task), the
    preview of its first rows as the model sees them, and the seed's advice."""
    dataset = access.get_dataset_for_user(request.user, dataset_id)
    can_profile = access.team_list_where(request.user, "member").filter(id=dataset.team_id).exists()
    params = (dataset.stats.get("profile") or {}).get("params") or {}
    initial = {k: v for k, v in params.items() if k != "eval_dataset"} or {"model": _latest_model(dataset)}
    form = DatasetProfileForm(request.POST or None, dataset=dataset, initial=initial) if can_profile else None
    status = 200
    if request.method == "POST":
        if form is None:
            raise PermissionDenied("Computing statistics needs the member role in the dataset's team")
        if form.is_valid():
            try:
                dataset_services.dataset_profile_start(dataset=dataset, user=request.user, **form.cleaned_data)
            except ValidationError as exc:
                form.add_service_errors(exc)
            else:
                return redirect(reverse("dataset_detail", args=[dataset.id]))
        status = 400
    return render(request, "training/dataset_detail.html", {
        "dataset": dataset, "form": form, "profile": _profile_data(dataset),
        "source": dataset.stats.get("source") or {},
        "status_url": reverse("dataset_profile_status", args=[dataset.id]),
    }, status=status)


def _latest_model(dataset) -> str:
    run = dataset.team.runs.order_by("-created_at").values_list("config", flat=True).first()
    return (run or {}).get("model", "")


@login_required
def dataset_profile_status(request: HttpRequest, dataset_id: int) -> JsonResponse:
    """The statistics' state and progress, polled by the dataset page while the task runs."""
    return JsonResponse(_profile_data(access.get_dataset_for_user(request.user, dataset_id)))


@login_required
def dataset_list(request: HttpRequest) -> HttpResponse:
    can_upload = access.team_list_where(request.user, "member").exists()
    can_register = access.team_list_where(request.user, "admin").exists()
    registering = request.method == "POST" and "register-path" in request.POST
    form = DatasetUploadForm(None if registering else request.POST or None, request.FILES or None,
                             user=request.user) if can_upload else None
    register_form = DatasetRegisterForm(request.POST if registering else None,
                                        user=request.user) if can_register else None
    status = 200
    columns: list[str] = []
    register_columns: list[str] = []
    if request.method == "POST":
        bound = register_form if registering else form
        if bound is None:
            raise PermissionDenied("Registering a path needs the admin role in a team" if registering
                                   else "Adding a dataset needs the member role in a team")
        if bound.is_valid():
            data = bound.cleaned_data
            try:
                if registering:
                    dataset = dataset_services.dataset_register(team=data["team"], user=request.user, name=data["name"],
                                                        path=data["path"], mapping=bound.mapping())
                else:
                    dataset = dataset_services.dataset_create_from_upload(
                        team=data["team"], user=request.user, name=data["name"], file=data["file"],
                        filename=data["file"].name, mapping=bound.mapping())
            except ValidationError as exc:
                bound.add_service_errors(exc)
                if registering:
                    register_columns = getattr(exc, "columns", [])
                else:
                    columns = getattr(exc, "columns", [])
            else:
                messages.success(request, f"Dataset {dataset.name} added: {dataset.rows} rows, {dataset.format}.")
                return redirect(reverse("dataset_detail", args=[dataset.id]))
        status = 400
    datasets = access.dataset_list_for(request.user).order_by("-created_at")
    return render(request, "training/dataset_list.html", {
        "datasets": datasets, "form": form, "columns": columns, "register_form": register_form,
        "register_columns": register_columns}, status=status)
