"""The workers page: every worker's heartbeat, GPUs, slots and what it runs (a run of another team is not named)."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from training import access, selectors


@login_required
def worker_list(request: HttpRequest) -> HttpResponse:
    team_ids = set(access.team_ids_for(request.user))
    workers = []
    for w in selectors.worker_list():
        runs = sorted(w.current_runs.all(), key=lambda run: run.id)
        workers.append({"worker": w, "runs": [run for run in runs if run.team_id in team_ids],
                        "hidden_runs": sum(run.team_id not in team_ids for run in runs), "busy": len(runs)})
    return render(request, "training/worker_list.html", {"workers": workers})
