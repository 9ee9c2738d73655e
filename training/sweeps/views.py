"""The sweep pages: the list, the form (with its preview as the user types), a sweep's page, its actions (stop,
resume, confirm the next phase, apply the winner) and the member points its charts start from."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from training import access, selectors
from training.engine import derived
from training.engine.events import json_safe
from training.models import Run, Sweep
from training.planner import display
from training.run_config import value_text
from training.sweeps import plan, services
from training.sweeps.forms import TEMPLATE_PARAMS, SweepForm, phase_choices, values_text
from training.sweeps.selectors import get_sweep_for_user, seconds_per_step, sweep_list_for, sweep_state

SWEEPS_PER_PAGE = 50
# A chart draws at most this many training-loss points per member (every eval point is kept: they are few).
CHART_POINTS = 1000
# The initial values of the form that a link may set (the guidance page, a run's page, Compare, a verdict's next
# values).
PREFILL = ("template", "base_run", "dataset", "preset", "phase", "values")


@login_required
def sweep_list(request: HttpRequest) -> HttpResponse:
    sweeps = (sweep_list_for(request.user).select_related("winner").annotate(phase_count=Count("phases"))
              .order_by("-created_at"))
    page = Paginator(sweeps, SWEEPS_PER_PAGE).get_page(request.GET.get("page"))
    can_start = access.team_list_where(request.user, "member").exists()
    return render(request, "training/sweep_list.html", {"page": page, "can_start": can_start})


def _form_data(form: SweepForm) -> dict[str, Any]:
    return {
        "preview_url": reverse("sweep_preview"),
        "search": Sweep.SEARCH,
        "template_params": TEMPLATE_PARAMS,
        "phases": {key: phase_choices(t) for key, t in plan.TEMPLATES.items()},
        "base_runs": {str(r.id): {"dataset": r.dataset_id} for r in form.base_runs.values()},
    }


@login_required
def sweep_new(request: HttpRequest) -> HttpResponse:
    if not access.team_list_where(request.user, "member").exists():
        in_a_team = access.team_list_for(request.user).exists()
        return render(request, "training/new_refused.html", {"in_a_team": in_a_team, "what": "sweeps",
                                                              "one": "sweep", "back": reverse("sweep_list")},
                      status=403)
    if request.method == "POST":
        form = SweepForm(request.POST, user=request.user)
    else:
        initial = {k: request.GET[k] for k in PREFILL if request.GET.get(k)}
        form = SweepForm(initial=initial, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            sweep = services.sweep_create(user=request.user, **form.service_kwargs(), **form.create_kwargs())
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            messages.success(request, f"Sweep #{sweep.id} is running: its first phase's members are queued.")
            return redirect("sweep_detail", sweep_id=sweep.id)
    status = 400 if form.is_bound else 200
    return render(request, "training/sweep_new.html", {"form": form, "form_data": _form_data(form)}, status=status)


@require_POST
@login_required
def sweep_preview(request: HttpRequest) -> JsonResponse:
    """What the form would create, for what is typed so far: the members, what is held, the budget, the totals and
    the expected GPU time; or {"errors": {field: [message]}} naming the fields (status 200: typing is not an error).
    Creates nothing."""
    if not access.team_list_where(request.user, "member").exists():
        return JsonResponse({"errors": {"__all__": ["Only a team's members start sweeps."]}}, status=403)
    form = SweepForm(request.POST, user=request.user)
    if not form.is_valid():
        return JsonResponse({"errors": form.error_dict()})
    kwargs = form.service_kwargs()
    try:
        phase = services.sweep_preview(**kwargs)
        fit = services.sweep_fit(team=kwargs["team"], phase=phase, dataset=kwargs["dataset"],
                                 base_run=kwargs["base_run"], queue=form.create_kwargs()["queue"])
    except ValidationError as exc:
        form.add_service_errors(exc)
        return JsonResponse({"errors": form.error_dict()})
    preview = _preview(phase, team=kwargs["team"], mean_tokens=_mean_tokens(kwargs["dataset"]))
    preview["plan"] = {"member": fit["member"], **display.form_plan(fit["plan"], fit["config"])}
    return JsonResponse(json_safe(preview))


def _mean_tokens(dataset) -> float | None:
    return ((dataset.stats or {}).get("tokens") or {}).get("mean")


def _preview(phase: plan.Phase, *, team, mean_tokens: float | None) -> dict[str, Any]:
    members = [{"name": m.name, "values": m.values, "changes": m.budget_changes, "steps": m.steps,
                "tokens": m.tokens if m.tokens is not None else _tokens(m.config, m.steps, mean_tokens)}
               for m in phase.members]
    total_steps = sum(m.steps for m in phase.members)
    total_tokens = sum(m["tokens"] for m in members)
    base = phase.base
    searching = phase.template == Sweep.SEARCH
    if searching:  # its members are asked of the study as others end: only their number and budget are known
        trials, steps = phase.params["trials"], phase.budget["max_steps"]
        total_steps, total_tokens = trials * steps, trials * _tokens(base, steps, mean_tokens)
    history = seconds_per_step(team, model=base.get("model"), backend=base.get("backend"))
    gpu = None
    if history is not None:
        per_step, runs = history
        gpu = {"seconds": per_step * total_steps, "per_step": per_step, "runs": runs,
               "text": f"about {_duration(per_step * total_steps)} of GPU time: {per_step:.2g} s a step, the median "
                       f"of {runs} succeeded run{'s' if runs != 1 else ''} of this model and backend"}
    chain = plan.TEMPLATES[phase.template].phases if not searching else ()
    keys = [p.key for p in chain]
    return {
        "errors": {},
        "phase": {"key": phase.key, "title": phase.title, "axis": phase.axis, "rule": phase.rule,
                  "rule_params": phase.rule_params},
        "later_phases": [p.title for p in chain[keys.index(phase.key) + 1:]] if phase.key in keys else [],
        "search": {k: phase.params[k] for k in ("trials", "parallel", "seed")} if searching else None,
        "members": members,
        "values_text": values_text([m.value for m in phase.members]),
        "held": phase.held,
        "budget": phase.budget,
        "total_steps": total_steps,
        "total_tokens": total_tokens,
        "gpu_time": gpu,
        "gpu_time_text": gpu["text"] if gpu else "Expected GPU time: no history yet (no succeeded run of this model "
                                                 "and backend in the team)",
    }


def _tokens(c: dict[str, Any], steps: int, mean_tokens: float | None) -> int:
    """Tokens a member of config c trains on in `steps`, at most: full batches (of the mean example where known and
    unpacked)."""
    return steps * derived.tokens_per_step(c["per_device_train_batch_size"], c["gradient_accumulation_steps"],
                                                  c["max_length"], packing=c.get("packing", False),
                                                  mean_tokens=mean_tokens)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# How the page says each rule of training/sweeps/rules.py (its script writes the same from the page's data).
RULE_TEXT = {
    "lowest_eval": "the lowest final eval loss",
    "smallest_within_tolerance": "the smallest value whose eval loss is within the tolerance of the best",
    "dropout_fit": "the smallest rank within the tolerance of the best; the winner's fit (overfit, underfit) picks "
                   "the next phase",
    "preferred_unless_better": "the preferred value unless another is better on eval loss by more than the margin",
    "loftq_score": "the lowest final eval loss minus \u03bb \u00d7 init seconds",
    "packing": "packing on where it is materially faster at an eval loss within the tolerance",
    "lr_range": "the rate where the loss blows up; a fraction of it is the next phases' upper bound",
    "confirm": "the winner holds its place at a second seed",
}


def _text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={value_text(v)}" for k, v in values.items())


def _shown_state(state: dict[str, Any]) -> dict[str, Any]:
    """sweep_state with the texts the page's first draw shows."""
    for phase in state["phases"]:
        params = _text(phase["rule_params"]) if phase["rule"] != "confirm" else ""
        phase["rule_text"] = RULE_TEXT.get(phase["rule"], phase["rule"]) + (f" ({params})" if params else "")
        phase["held_text"] = _text(phase["held"])
        phase["budget_text"] = _text(phase["budget"])
        for m in phase["members"]:
            m["values_text"] = _text(m["values"])
        beyond = phase["beyond"]
        if beyond and beyond["values"] and beyond["base_run"]:
            query = {"template": beyond["template"], "phase": beyond["phase"], "base_run": beyond["base_run"],
                     "values": values_text(beyond["values"])}
            beyond["query"] = urlencode({k: v for k, v in query.items() if v is not None})
    return state


@login_required
def sweep_detail(request: HttpRequest, sweep_id: int) -> HttpResponse:
    sweep = get_sweep_for_user(request.user, sweep_id)
    role = access.role_for(request.user, sweep.team)
    can_control = role in ("member", "admin")
    state = _shown_state(json_safe(sweep_state(sweep)))
    data = {"id": sweep.id, "ws": f"/ws/sweeps/{sweep.id}/", "state": state, "rules": RULE_TEXT,
            "points_url": reverse("sweep_points", args=[sweep.id]), "run_url": reverse("run_detail", args=[0]),
            "new_url": reverse("sweep_new") if can_control else None}
    steps = (sweep.base_config or {}).get("max_steps")
    winner = state["winner"]
    return render(request, "training/sweep_detail.html", {
        "sweep": sweep, "state": state, "can_control": can_control,
        "can_admin": role == "admin", "actions": _actions(state, can_control),
        "apply_placeholder": str(steps) if steps else "",
        "winner_values": _text(winner["values"]) if winner else "",
        "findings": sum(m["findings"] for p in state["phases"] for m in p["members"]),
        "sweep_data": data,
    })


def _actions(state: dict[str, Any], can_control: bool) -> dict[str, bool]:
    """Which buttons the page shows now (its script recomputes them from each state message)."""
    current = state["phases"][-1]["members"] if state["phases"] else []
    lost = any(m["status"] in ("lost", "stopped", "failed") and not m["outcome"] for m in current)
    return {
        "stop": can_control and not state["is_terminal"],
        "resume": can_control and state["status"] != Sweep.Status.FINISHED and (
            state["status"] in (Sweep.Status.STOPPED, Sweep.Status.FAILED) or lost),
        "confirm": can_control and state["status"] == Sweep.Status.CONFIRMING,
        "apply": can_control and state["winner"] is not None,
    }


def _act(request: HttpRequest, sweep_id: int, action, done: str) -> HttpResponse:
    sweep = get_sweep_for_user(request.user, sweep_id)
    try:
        action(sweep=sweep, user=request.user)  # PermissionDenied (a viewer) is a 403
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.info(request, done)
    return redirect("sweep_detail", sweep_id=sweep.id)


@require_POST
@login_required
def sweep_stop(request: HttpRequest, sweep_id: int) -> HttpResponse:
    return _act(request, sweep_id, services.sweep_stop,
                "Sweep stopped: queued members are stopped, training ones stop at their next step.")


@require_POST
@login_required
def sweep_resume(request: HttpRequest, sweep_id: int) -> HttpResponse:
    return _act(request, sweep_id, services.sweep_resume,
                "Sweep resumed: its lost and stopped members carry on from their checkpoints.")


@require_POST
@login_required
def sweep_confirm(request: HttpRequest, sweep_id: int) -> HttpResponse:
    return _act(request, sweep_id, services.sweep_confirm, "Next phase started.")


@require_POST
@login_required
def sweep_apply(request: HttpRequest, sweep_id: int) -> HttpResponse:
    """action=run (optional max_steps): a run of the winner's config; action=preset (name): a team preset of it."""
    sweep = get_sweep_for_user(request.user, sweep_id)
    action = request.POST.get("action")
    try:
        if action == "run":
            run = services.sweep_apply_run(sweep=sweep, user=request.user, max_steps=_max_steps(request))
            messages.success(request, f"Run #{run.id} of the winner is queued.")
            return redirect("run_detail", run_id=run.id)
        if action == "preset":
            preset = services.sweep_apply_preset(sweep=sweep, user=request.user, name=request.POST.get("name", ""))
            messages.success(request, f"Saved the winner as the team preset {preset.name!r}.")
        else:
            raise ValidationError({"action": f"unknown action {action!r}; allowed: run, preset"})
    except ValidationError as exc:
        for key, errors in exc.message_dict.items():
            for message in errors:
                messages.error(request, f"{key}: {message}" if key != "__all__" else message)
    return redirect("sweep_detail", sweep_id=sweep.id)


def _max_steps(request: HttpRequest) -> int | None:
    text = request.POST.get("max_steps", "").strip()
    if not text:
        return None
    if not text.isdecimal() or int(text) < 1:
        raise ValidationError({"max_steps": f"{text!r} is not a step count; give a whole number >= 1, or leave it "
                                            "blank for the sweep's own"})
    return int(text)


@login_required
def sweep_points(request: HttpRequest, sweep_id: int) -> JsonResponse:
    """The loss and eval-loss points of the sweep's member runs named in runs=1,2,3 (all its member runs without
    it): where the page's charts start; live points follow over the websocket."""
    sweep = get_sweep_for_user(request.user, sweep_id)
    member_runs = {r.id: r for r in Run.objects.filter(sweep_members__sweep=sweep).distinct()}
    asked = [int(p) for p in request.GET.get("runs", "").split(",") if p.strip().isdecimal()]
    runs = [member_runs[i] for i in asked if i in member_runs] if asked else list(member_runs.values())
    out = {}
    for run in runs:
        points = selectors.run_points(run)
        losses = [(p["step"], p["loss"]) for p in points if p["loss"] is not None]
        stride = max(1, -(-len(losses) // CHART_POINTS))
        kept = losses[::stride] + ([losses[-1]] if losses and (len(losses) - 1) % stride else [])
        out[str(run.id)] = {"loss": kept, "eval_loss": [(p["step"], p["eval_loss"]) for p in points
                                                        if p["eval_loss"] is not None]}
    return JsonResponse(json_safe({"runs": out}))
