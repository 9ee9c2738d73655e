"""The evaluation pages: the team's eval suites with an upload, a suite's examples and evaluations, the run page's
evaluation section (its evaluations, the examples they got wrong, Evaluate, the base drift check, and the JSON it
polls), and the LoftQ check page."""
from __future__ import annotations

import itertools
import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_POST

from training import access
from training.datasets import files
from training.evaluation import drift, loftq, metrics, selectors, services
from training.evaluation.forms import LoftqCheckForm, RunEvaluateForm, SuiteUploadForm
from training.models import EvalSuite, LoftqCheck, Run

SUITE_PREVIEW_ROWS = 20


@login_required
def suite_list(request: HttpRequest) -> HttpResponse:
    can_upload = access.team_list_where(request.user, "member").exists()
    form = SuiteUploadForm(request.POST or None, request.FILES or None, user=request.user) if can_upload else None
    status = 200
    if request.method == "POST":
        if form is None:
            raise PermissionDenied("Adding an eval suite needs the member role in a team")
        if form.is_valid():
            data = form.cleaned_data
            try:
                suite = services.suite_create_from_upload(
                    team=data["team"], user=request.user, name=data["name"], file=data["file"],
                    metric=data["metric"], labels=data["labels"], max_new_tokens=data["max_new_tokens"],
                    filename=data["file"].name, task_config=data["task_config"])
            except ValidationError as exc:
                form.add_service_errors(exc)
            else:
                messages.success(request, f"Eval suite {suite.name} added: {suite.rows} examples, {suite.metric}.")
                return redirect(reverse("suite_detail", args=[suite.id]))
        status = 400
    suites = selectors.suite_list_for(request.user).order_by("-created_at")
    return render(request, "training/suite_list.html", {"suites": suites, "form": form}, status=status)


def _suite_preview(suite: EvalSuite) -> list[dict[str, Any]]:
    try:
        if suite.format == EvalSuite.Format.HARNESS:  # the task's documents as they are: the YAML makes the prompts
            return _task_documents(suite)
        examples = services.suite_examples(suite)[:SUITE_PREVIEW_ROWS]
    except (OSError, files.DatasetError):
        return []  # the file is gone from the shared var dir: the page says so
    return [{"index": e["index"], "prompt": services.prompt_of(e), "reference": e["reference"]} for e in examples]


def _task_documents(suite: EvalSuite) -> list[dict[str, Any]]:
    with open(suite.path, "rb") as fh:
        records = itertools.islice(files.read_records(fh, files.file_kind(suite.path)), SUITE_PREVIEW_ROWS)
        return [{"index": index, "prompt": json.dumps(record, ensure_ascii=False), "reference": ""}
                for index, (_, record) in enumerate(records)]


@login_required
def suite_detail(request: HttpRequest, suite_id: int) -> HttpResponse:
    suite = selectors.get_suite_for_user(request.user, suite_id)
    return render(request, "training/suite_detail.html", {
        "suite": suite, "metric_description": metrics.METRICS.get(suite.metric, ""),
        "examples": _suite_preview(suite), "preview_rows": SUITE_PREVIEW_ROWS,
        "evaluations": _harness_headlines(selectors.suite_evaluations(suite))})


def _harness_headlines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An lm_eval suite's figures are the harness's own metrics (acc, acc_norm, ...): each is a headline figure."""
    for row in rows:
        for one in (row, row.get("base")):
            if one and one["metric"] == metrics.HARNESS and not one["headline"]:
                one["headline"] = [{"name": name, "label": name, "value": value}
                                   for name, value in sorted(one["figures"].items())
                                   if name != "examples" and not name.endswith("_stderr")
                                   and isinstance(value, (int, float)) and not isinstance(value, bool)]
    return rows


def run_section(request: HttpRequest, run: Run) -> dict[str, Any]:
    """The context of the run page's evaluation section (templates/training/_run_evaluation.html)."""
    can_evaluate = access.role_for(request.user, run.team) in ("member", "admin")
    state = selectors.run_evaluation_state(run)
    _harness_headlines(state["evaluations"])
    form = RunEvaluateForm(run=run, checkpoint_steps=selectors.run_checkpoint_steps(run)) if can_evaluate else None
    suites = EvalSuite.objects.filter(team=run.team).exclude(metric=metrics.HARNESS).order_by("name")
    checks = [{"suite": suite, **(drift.drift_for(run, suite) or {"pending": True})}
              for suite in suites.filter(evaluations__run=run, evaluations__adapters="off").distinct()]
    return {"run": run, "state": state, "form": form, "can_evaluate": can_evaluate,
            "state_url": reverse("run_evaluations", args=[run.id]), "drift_checks": checks,
            "drift_suites": suites if can_evaluate and run.status == Run.Status.SUCCEEDED else []}


@require_POST
@login_required
def run_drift_check(request: HttpRequest, run_id: int) -> HttpResponse:
    """The bias check's base drift: the base model, the run and the run with its adapters disabled on a suite."""
    run = access.get_run_for_user(request.user, run_id)
    access.require_role(user=request.user, team=run.team, role="member", action="Checking base drift")
    back = reverse("run_detail", args=[run.id]) + "#evaluation"
    suite = EvalSuite.objects.filter(team=run.team, id=request.POST.get("suite") or 0).first() if (
        request.POST.get("suite") or "").isdecimal() else None
    if suite is None:
        messages.error(request, "suite: no such eval suite in this run's team; choose one from the list")
        return redirect(back)
    try:
        with transaction.atomic():
            services.drift_check_create(run=run, suite=suite, user=request.user)
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            for error in errors:
                messages.error(request, f"{field}: {error}")
        return redirect(back)
    messages.success(request, f"Base drift check on {suite.name} queued: the base model, this run, and this run with "
                              "its adapters disabled (greedy).")
    return redirect(back)


@login_required
def loftq_checks(request: HttpRequest) -> HttpResponse:
    """loftq_config's check before training: the form, and the team's checks with their figures."""
    teams = access.team_list_where(request.user, "member")
    form = LoftqCheckForm(request.POST or None, datasets=access.dataset_list_for(request.user).filter(team__in=teams))
    status = 200
    if request.method == "POST":
        if not teams.exists():
            raise PermissionDenied("Running the LoftQ check needs the member role in a team")
        if form.is_valid():
            data = form.cleaned_data
            try:
                loftq.loftq_check_create(team=data["dataset"].team, user=request.user, dataset=data["dataset"],
                                         config=form.config(), queue=data["queue"] or None)
                messages.success(request, "LoftQ check queued.")
                return redirect("loftq_checks")
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    for error in errors:
                        form.add_error(field if field in form.fields else None, error)
        status = 400
    checks = [loftq.check_dict(c) for c in LoftqCheck.objects.filter(
        team_id__in=access.team_ids_for(request.user)).select_related("dataset", "team")[:50]]
    return render(request, "training/loftq_checks.html", {"form": form, "checks": checks,
                                                          "can_check": teams.exists()}, status=status)


@require_POST
@login_required
def run_evaluate(request: HttpRequest, run_id: int) -> HttpResponse:
    """Queue an evaluation of the run (and, when asked, of its base model on the same suite and decoding)."""
    run = access.get_run_for_user(request.user, run_id)
    access.require_role(user=request.user, team=run.team, role="member", action="Evaluating a run")
    back = reverse("run_detail", args=[run.id]) + "#evaluation"
    form = RunEvaluateForm(request.POST, run=run, checkpoint_steps=selectors.run_checkpoint_steps(run))
    if not form.is_valid():
        for field, errors in form.errors.items():
            for error in errors:
                messages.error(request, f"{field}: {error}" if field != "__all__" else error)
        return redirect(back)
    data = form.cleaned_data
    try:
        with transaction.atomic():  # the run's and the base model's, or neither
            evaluation = services.evaluation_create(suite=data["suite"], user=request.user, run=run,
                                                    checkpoint_step=data["checkpoint"], adapters=data["adapters"])
            base = None
            if data["base"]:
                base = services.evaluation_create(suite=data["suite"], user=request.user, team=run.team,
                                                  model=run.config.get("model"), decoding=evaluation.decoding,
                                                  queue=run.queue)
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            for error in errors:
                messages.error(request, f"{field}: {error}" if field != "__all__" else error)
        return redirect(back)
    text = f"Evaluation of {selectors.what_of(evaluation)} on {data['suite'].name} queued on {evaluation.queue}"
    if base is not None:
        text += ("; the base model's too" if base.id > evaluation.id else
                 f"; the base model's from before is reused ({base.get_status_display().lower()})")
    messages.success(request, text + ".")
    return redirect(back)


@login_required
def run_evaluations(request: HttpRequest, run_id: int) -> JsonResponse:
    """The run's evaluations as JSON, polled by the run page while one is queued or running (and, slower, while the
    run trains: it may save a checkpoint to evaluate): each row, whether one is under way, and the section's list
    and Evaluate form as HTML to put in place."""
    run = access.get_run_for_user(request.user, run_id)
    section = run_section(request, run)
    state = section["state"]
    rows = [{k: v for k, v in e.items() if k != "wrong"} for e in state["evaluations"]]
    return JsonResponse({
        "active": state["active"], "run_ended": run.is_terminal, "pending_suites": state["pending_suites"],
        "evaluations": rows, "html": render_to_string("training/_run_evaluation_list.html", section, request=request),
        "form_html": render_to_string("training/_run_evaluate_form.html", section, request=request)})
