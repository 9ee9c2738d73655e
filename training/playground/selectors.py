"""Reads of the playground: a session as its team's members may see it, the runs a session can sit beside, and the
system prompt a chat starts with."""
from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from training.access import team_ids_for
from training.datasets.files import first_system_turn
from training.models import PlaygroundSession, Run


def get_session_for_user(user, session_id: int) -> PlaygroundSession:
    """Another team's session is a 404, exactly like a missing one."""
    session = PlaygroundSession.objects.select_related("run", "beside_run", "team").filter(
        id=session_id, team_id__in=team_ids_for(user)).first()
    if session is None:
        raise Http404("No such playground session")
    return session


def beside_runs(run: Run) -> QuerySet[Run]:
    """The team's other runs with something to serve (a final adapter or a checkpoint), newest first."""
    return (Run.objects.filter(team_id=run.team_id).exclude(id=run.id)
            .exclude(adapter_path="", last_checkpoint_path="").order_by("-created_at")[:200])


def latest_live_session(run: Run) -> PlaygroundSession | None:
    return PlaygroundSession.objects.filter(run=run, status__in=PlaygroundSession.LIVE).order_by("-id").first()


def dataset_system_prompt(run: Run) -> str:
    """The first system turn of the dataset the run trained on ("" if its rows have none)."""
    return first_system_turn(run.dataset.path) if run.dataset_id and run.dataset.path else ""
