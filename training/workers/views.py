"""The workers page: every worker's heartbeat, GPUs and what it runs (a run of another team is not named)."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from training import access, selectors


@login_required
def worker_list(request: HttpRequest) -> HttpResponse:
    team_ids = set(access.team_ids_for(request.user))
    workers = [{"worker": w, "run_visible": w.current_run is not None and w.current_run.team_id in team_ids}
               for w in selectors.worker_list()]
    return render(request, "training/worker_list.html", {"workers": workers})
