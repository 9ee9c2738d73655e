"""The training pages: runs (list, new, detail, stop, resume, adapter files), datasets and workers."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from training import access, selectors
from training.datasets.stats import run_form_advice
from training.engine.config import TrainConfig
from training.models import Run
from training.planner import services as planner
from training.run_config import value_text
from training.runs import iterate, services
from training.runs.differences import run_differences
from training.runs.filters import SORTS, RunFilter, RunTableFilter
from training.runs.forms import RunForm
from training.trackers.services import tracker_links

RUNS_PER_PAGE = 50
# The `started` facts the run page shows: (where the value is, key, label).
FACTS = (
    ("started", "trainable_params", "Trainable parameters"),
    ("started", "total_params", "Total parameters"),
    ("started", "trainable_bias_params", "Trainable bias parameters"),
    ("started", "lora_scale", "LoRA scale"),
    ("derived", "effective_batch", "Effective batch"),
    ("derived", "total_steps", "Total optimizer steps"),
    ("derived", "warmup_steps", "Warmup steps"),
    ("started", "train_examples", "Training examples"),
    ("started", "eval_examples", "Eval examples"),
    ("started", "device", "Device"),
    ("started", "backend", "Backend"),
    ("started", "dtype", "Compute dtype"),
    ("started", "data_format", "Data format"),
)


def home(request: HttpRequest) -> HttpResponse:
    return redirect("run_list")


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    """The runs table: search, filters and sort from the URL (a view is shared by its link), a page at a time. A
    bad parameter is named on the page with what it allows, and the table shows the runs unfiltered."""
    team_ids = access.team_ids_for(request.user)
    runs = Run.objects.filter(team_id__in=team_ids).order_by("-created_at", "-id")
    table = RunTableFilter(request.GET, queryset=runs, request=request)
    valid = table.is_valid()
    page = selectors.run_page_for(request.user, request.GET.get("page"), per_page=RUNS_PER_PAGE,
                                  runs=table.qs if valid else runs)
    can_start = access.team_list_where(request.user, "member").exists()
    filtered = valid and any(request.GET.get(name) for name in RunFilter.Meta.fields)
    return render(request, "training/run_list.html", {
        "page": page, "can_start": can_start, "table": table, "errors": {} if valid else table.errors,
        "filtered": filtered, "choices": selectors.run_table_choices(team_ids),
        "columns": _sort_columns(table.sort_in_force), "statuses": Run.Status.choices,
        "chosen_statuses": request.GET.getlist("status"),
    }, status=200 if valid else 400)


def _sort_columns(current: str) -> dict[str, dict[str, str]]:
    """Per sortable column: the sort its header link asks for (the other direction when it is the current one) and
    the arrow it shows."""
    out = {}
    for key in SORTS:
        if current.lstrip("-") == key:
            descending = current.startswith("-")
            out[key] = {"next": key if descending else f"-{key}", "arrow": "▼" if descending else "▲",
                        "aria": "descending" if descending else "ascending"}
        else:
            # Eval loss and name read best ascending; time columns newest or longest first.
            out[key] = {"next": key if key in ("eval_loss", "name") else f"-{key}", "arrow": "", "aria": "none"}
    return out


def _run_form_data(form: RunForm) -> dict[str, Any]:
    """What the form's script needs: engine defaults, each preset's config and each dataset's row count."""
    return {
        "defaults": {f.name: f.default for f in form.config_fields if not f.required},
        "required": [f.name for f in form.config_fields if f.required],
        "presets": {str(p.id): p.config for p in form.fields["preset"].queryset},
        "start_from": form.start_from_configs(),
        "preflight_url": reverse("run_preflight"),
        "datasets": {str(d.id): d.rows for d in form.fields["dataset"].queryset},
        "dataset_advice": {str(d.id): run_form_advice(d.rows, (d.stats.get("profile") or {}).get("result"))
                           for d in form.fields["dataset"].queryset},
    }


@login_required
def run_new(request: HttpRequest) -> HttpResponse:
    if not access.team_list_where(request.user, "member").exists():
        in_a_team = access.team_list_for(request.user).exists()
        return render(request, "training/new_refused.html", {"in_a_team": in_a_team, "what": "runs", "one": "run",
                                                              "back": reverse("run_list")}, status=403)
    start = _start_from_run(request) if request.method == "GET" and request.GET.get("from") else None
    form = RunForm(request.POST or None, user=request.user, initial=start["initial"] if start else None)
    if start:
        form.prefilled, form.applied = start["prefilled"], start["applied"]
    if request.method == "POST" and form.is_valid():
        dataset = form.cleaned_data["dataset"]
        try:
            run = services.run_create(team=dataset.team, user=request.user, dataset=dataset,
                                      preset=form.cleaned_data["preset"], overrides=form.overrides,
                                      name=form.cleaned_data["name"], base_run=form.base_run,
                                      base_kind=form.base_kind or Run.BaseKind.ADAPTER,
                                      eval_suites=form.cleaned_data["eval_suites"],
                                      eval_checkpoints=form.cleaned_data["eval_checkpoints"],
                                      trackers=form.cleaned_data["trackers"], parent=form.cleaned_data["parent"])
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            # Not "queued": this message stays on the page while the status line below follows the run.
            messages.success(request, f"Run #{run.id} created; its status below follows it live.")
            return redirect("run_detail", run_id=run.id)
    status = 400 if form.is_bound else 200
    parent = form.cleaned_data.get("parent") if form.is_bound and hasattr(form, "cleaned_data") else None
    return render(request, "training/run_new.html", {
        "form": form, "form_data": _run_form_data(form), "start": start,
        "parent": start["parent"] if start else parent,
    }, status=status)


def _start_from_run(request: HttpRequest) -> dict[str, Any] | None:
    """The form's start from ?from=<run> (its config; fields other than the preset's or the defaults marked) and,
    with &finding=<id> or &note=<code>, that finding's or note's change made and said at the top."""
    text = request.GET.get("from", "")
    if not text.isdigit():
        messages.error(request, f"from: {text!r} is not a run number; open the form from a run's page")
        return None
    parent = access.get_run_for_user(request.user, int(text))
    start = iterate.run_start(parent)
    change = None
    if request.GET.get("finding") or request.GET.get("note"):
        try:
            change = iterate.run_change(parent, finding_id=request.GET.get("finding"), note=request.GET.get("note", ""))
        except ValidationError as exc:
            for key, errors in exc.message_dict.items():
                messages.error(request, f"{key}: {'; '.join(errors)}")
    values = {**start.overrides, **(change.values if change else {})}
    initial: dict[str, Any] = {
        "dataset": parent.dataset_id, "preset": parent.preset_id, "parent": parent.id,
        "eval_suites": list(parent.eval_suites.values_list("id", flat=True)),
        "eval_checkpoints": parent.eval_checkpoints, "trackers": list(parent.trackers or []),
        **({"start_from": f"{parent.base_kind}:{parent.base_run_id}"} if parent.base_run_id and parent.base_kind
           else {}),
        **{name: "\n".join(value) if name == "sample_prompts" and isinstance(value, list) else value_text(value)
           for name, value in values.items()},
    }
    return {"parent": parent, "initial": initial, "change": change,
            "prefilled": {name: value_text(value) for name, value in start.overrides.items()},
            "applied": {name: value_text(value) for name, value in (change.values if change else {}).items()}}


@require_POST
@login_required
def run_preflight(request: HttpRequest) -> JsonResponse:
    """The run form's pre-flight notes and fit planner's prediction for what is typed so far (the form posts its
    fields as the user types): {"notes": [...], "errors": {field: [message]}, "plan": {...} or null}. A field that
    does not parse yet is left out, never a 500."""
    if not access.team_list_where(request.user, "member").exists():  # refused as the run form is
        return JsonResponse({"notes": [], "errors": {"__all__": ["Only a team's members start runs."]}, "plan": None},
                            status=403)
    form = RunForm(request.POST, user=request.user)
    form.is_valid()  # parses what it can; each config field that parses is in form.overrides
    cleaned = getattr(form, "cleaned_data", {})
    result = services.run_config_review(dataset=cleaned.get("dataset"), preset=cleaned.get("preset"),
                                        overrides=form.overrides, base_run=form.base_run,
                                        base_kind=form.base_kind or Run.BaseKind.ADAPTER)
    errors = {**form.errors.get_json_data(),
              **{k: [{"message": form.with_recommended(k, m)} for m in v] for k, v in result["errors"].items()}}
    return JsonResponse({"notes": result["notes"], "plan": result["plan"],
                         "errors": {k: [e["message"] for e in v] for k, v in errors.items()}})


def _facts(run: Run) -> list[dict[str, Any]]:
    sources = {"started": run.started or {}, "derived": run.derived or {}}
    return [{"label": label, "value": sources[where][key]} for where, key, label in FACTS
            if sources[where].get(key) is not None]


@login_required
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id)
    role = access.role_for(request.user, run.team)
    can_control = role in ("member", "admin")
    status = selectors.run_status_dict(run)
    events = selectors.run_events(run)
    earlier = selectors.run_earlier_parts(run)
    data = {
        "id": run.id,
        "ws": f"/ws/runs/{run.id}/",
        "status": status,
        "resumed_from_step": run.resumed_from_step,
        # The replay's points of these runs are drawn as theirs (muted, dashed), apart from the run's own.
        "earlier": [{**part, "url": reverse("run_detail", args=[part["run"]])} for part in earlier],
        "can_control": can_control,
        "playground_url": reverse("run_playground", args=[run.id]),
        "sweep_url": f"{reverse('sweep_new')}?base_run={run.id}",
        "resumable": sorted(Run.RESUMABLE),
        "facts": [{"where": where, "key": key, "label": label} for where, key, label in FACTS],
    }
    return render(request, "training/run_detail.html", {
        "run": run,
        "status": status,
        "can_control": can_control,
        "can_resume": can_control and run.status in Run.RESUMABLE and run.last_checkpoint_step is not None,
        "facts": _facts(run),
        "versions": sorted((run.versions or {}).items()),
        "warnings": [e for e in events if e["event"] == "warning"],
        "events": [e for e in events if e["event"] != "warning"],
        "samples": list(reversed(selectors.run_samples(run))),
        "findings": [selectors.finding_dict(f) for f in selectors.run_findings(run)],
        "children": run.children.filter(team=run.team).order_by("id"),
        "can_admin": role == "admin",
        "preflight": run.preflight or [],
        "plan_check": planner.run_plan_check(run),
        "differences": run_differences(run),
        "adapter_files": selectors.run_adapter_files(run),
        "adapter_origin": _adapter_origin(events),
        "trackers": tracker_links(run),
        "continuations": run.continuations.filter(team=run.team).order_by("id"),
        "earlier": earlier,
        "config": [(name, value_text(run.config.get(name))) for name in TrainConfig.model_fields
                   if name in run.config],
        "run_data": data,
    })


def _adapter_origin(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """With early stopping, the finished event's word on where the adapter came from: the best eval's step and loss,
    the step training ended at, and whether patience ran out."""
    finished = next((e["data"] for e in reversed(events) if e["event"] == "finished"), None)
    if not finished or finished.get("best_step") is None:
        return None
    return {"best_step": finished["best_step"], "best_eval_loss": finished.get("best_eval_loss"),
            "step": finished.get("step"), "stopped_early": bool(finished.get("stopped_early"))}


@require_POST
@login_required
def run_save_preset(request: HttpRequest, run_id: int) -> HttpResponse:
    """A team preset of the run's config (team admins; a member is told why not)."""
    run = access.get_run_for_user(request.user, run_id)
    try:
        preset = iterate.preset_from_run(run=run, user=request.user, name=request.POST.get("name", ""))
    except PermissionDenied as exc:
        messages.error(request, f"Not saved: {exc}. Presets are curated by the team's admins: ask one to save it.")
    except ValidationError as exc:
        for key, errors in exc.message_dict.items():
            messages.error(request, f"Not saved: {key}: {'; '.join(errors)}")
    else:
        messages.success(request, f"Saved as the team preset {preset.name!r} (v{preset.version}).")
    return redirect("run_detail", run_id=run.id)


@require_POST
@login_required
def run_stop(request: HttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id)
    services.run_stop(run=run, user=request.user)  # PermissionDenied (a viewer) is a 403
    messages.info(request, "Stop requested: the run checkpoints and ends at its next step."
                  if run.status == Run.Status.STOPPING else f"The run is {run.get_status_display().lower()}.")
    return redirect("run_detail", run_id=run.id)


@require_POST
@login_required
def run_label(request: HttpRequest, run_id: int) -> HttpResponse:
    """Save a run's tags (comma-separated) and note from its page; a refused value is named in a message."""
    run = access.get_run_for_user(request.user, run_id)
    try:
        services.run_label(run=run, user=request.user, tags=request.POST.get("tags", "").split(","),
                           note=request.POST.get("note", "").strip())
    except ValidationError as exc:
        for field, problems in exc.message_dict.items():
            messages.error(request, f"{field}: {' '.join(problems)}. Nothing was saved.")
    else:
        messages.success(request, "Tags and note saved.")
    return redirect("run_detail", run_id=run.id)


@require_POST
@login_required
def run_resume(request: HttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id)
    try:
        continuation = services.run_resume(run=run, user=request.user)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("run_detail", run_id=run.id)
    messages.success(request, f"Resumed from step {continuation.resumed_from_step}.")
    return redirect("run_detail", run_id=continuation.id)


@login_required
def run_adapter_list(request: HttpRequest, run_id: int) -> JsonResponse:
    """The adapter's files as JSON: the run page lists them when the run succeeds."""
    run = access.get_run_for_user(request.user, run_id)
    files = [{**f, "url": reverse("run_adapter_file", args=[run.id, f["name"]])}
             for f in selectors.run_adapter_files(run)]
    return JsonResponse(files, safe=False)


@login_required
def run_adapter_file(request: HttpRequest, run_id: int, name: str) -> FileResponse:
    run = access.get_run_for_user(request.user, run_id)
    path = selectors.run_adapter_file(run, name)
    return FileResponse(path.open("rb"), as_attachment=True, filename=f"run-{run.id}-{path.name}")


