"""The playground page: load a run's adapter (final or a checkpoint) beside its base model or another run of the
team, then chat with both sides over the session's websocket; and Release."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from training import access
from training.models import Run
from training.playground import selectors, services
from training.playground.forms import PlaygroundForm


def _side_label(run: Run, step: int | None) -> str:
    return f"#{run.id} {run.name} · {'final' if step is None else f'checkpoint {step}'}"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"


def _chat_data(session) -> dict[str, Any]:
    right = (_side_label(session.beside_run, session.beside_checkpoint_step) if session.beside_run_id
             else f"base model {session.model.rstrip('/').rsplit('/', 1)[-1]}")
    return {"session": session.id, "socket": f"/ws/playground/{session.id}/",
            "sides": {"left": _side_label(session.run, session.checkpoint_step), "right": right},
            "state": services.session_state(session),
            "page": f"{reverse('run_playground', args=[session.run_id])}?session={session.id}",
            "again": reverse("playground_again", args=[session.run_id, session.id]),
            "release": reverse("playground_release", args=[session.run_id, session.id])}


@login_required
def run_playground(request: HttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id)
    can_use = access.role_for(request.user, run.team) in ("member", "admin")
    steps = services.checkpoint_steps(run)
    form = PlaygroundForm(request.POST or None, run=run, checkpoint_steps=steps,
                          beside_runs=list(selectors.beside_runs(run)), user=request.user)
    status = 200
    if request.method == "POST":
        if not can_use:
            raise PermissionDenied("The playground needs the member role in this run's team")
        if form.is_valid():
            data = form.cleaned_data
            try:
                session = services.playground_start(
                    run=run, user=request.user, checkpoint_step=data["checkpoint"], beside_run=data["beside_run"],
                    beside_checkpoint_step=data["beside_checkpoint"])
            except ValidationError as exc:
                form.add_service_errors(exc)
            else:
                return redirect(f"{reverse('run_playground', args=[run.id])}?session={session.id}")
        status = 400
    session = None
    if "session" in request.GET:
        try:
            session = selectors.get_session_for_user(request.user, int(request.GET["session"]))
        except (Http404, ValueError):
            raise Http404("No such playground session") from None
        if session.run_id != run.id:
            raise Http404("No such playground session")
    elif request.method == "GET":
        session = selectors.latest_live_session(run)
    return render(request, "training/run_playground.html", {
        "run": run, "form": form, "can_use": can_use, "session": session,
        "chat": _chat_data(session) if session else None,
        "system_prompt": selectors.dataset_system_prompt(run) if session else "",
        "idle_minutes": _duration(settings.TUNEBOARD_PLAYGROUND_IDLE_S)}, status=status)


def _run_session(request: HttpRequest, run_id: int, session_id: int):
    """The run and one of its playground sessions, as the user may see them; 404 for a session of another run."""
    run = access.get_run_for_user(request.user, run_id)
    session = selectors.get_session_for_user(request.user, session_id)
    if session.run_id != run.id:
        raise Http404("No such playground session")
    return run, session


@require_POST
@login_required
def playground_again(request: HttpRequest, run_id: int, session_id: int) -> JsonResponse:
    """Load an ended session's sides again, for the page's script: the new session's chat data, or the errors."""
    run, session = _run_session(request, run_id, session_id)
    try:
        again = services.playground_again(session=session, user=request.user)
    except ValidationError as exc:
        return JsonResponse({"errors": exc.message_dict}, status=400)
    return JsonResponse(_chat_data(again))


@require_POST
@login_required
def playground_release(request: HttpRequest, run_id: int, session_id: int) -> HttpResponse:
    run, session = _run_session(request, run_id, session_id)
    services.playground_release(session=session, user=request.user)
    messages.success(request, "The model is released; its worker takes other work once the reply it is writing ends.")
    return redirect(f"{reverse('run_playground', args=[run.id])}?session={session.id}")
