"""Team scoping and roles: which teams a user is in, the lookups that make another team's objects look missing,
and the role check every write makes."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404

from dashboard.models import Membership, Team
from training.models import Dataset, Preset, Run

User = AbstractBaseUser | AnonymousUser


def team_ids_for(user: User) -> list[int]:
    """The user's teams, read now: none once the user is deactivated (an open websocket's user object is not)."""
    if not user.is_authenticated:
        return []
    return list(Membership.objects.filter(user=user, user__is_active=True).values_list("team_id", flat=True))


def team_list_for(user: User) -> QuerySet[Team]:
    return Team.objects.filter(id__in=team_ids_for(user))


def memberships_for(user: User) -> QuerySet[Membership]:
    """The user's teams with their role in each, by team name; none once the user is deactivated."""
    if not user.is_authenticated:
        return Membership.objects.none()
    return Membership.objects.filter(user=user, user__is_active=True).select_related("team").order_by("team__name")


def membership_for(user: User, team: Team) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, team=team).first()


def get_team_for_user(user: User, slug: str) -> Team:
    team = Team.objects.filter(slug=slug, id__in=team_ids_for(user)).first()
    if team is None:
        raise Http404("No such team")
    return team


def get_run_for_user(user: User, run_id: int) -> Run:
    """The run if the user is in its team; another team's run is a 404, exactly like a missing one."""
    run = Run.objects.select_related("team", "dataset", "preset", "worker").filter(
        id=run_id, team_id__in=team_ids_for(user)).first()
    if run is None:
        raise Http404("No such run")
    return run


def get_dataset_for_user(user: User, dataset_id: int) -> Dataset:
    dataset = Dataset.objects.select_related("team").filter(id=dataset_id, team_id__in=team_ids_for(user)).first()
    if dataset is None:
        raise Http404("No such dataset")
    return dataset


def get_preset_for_user(user: User, preset_id: int) -> Preset:
    """A preset of one of the user's teams, or a global one."""
    preset = preset_list_for(user).filter(id=preset_id).first()
    if preset is None:
        raise Http404("No such preset")
    return preset


def dataset_list_for(user: User, *, team: Team | None = None) -> QuerySet[Dataset]:
    datasets = Dataset.objects.filter(team_id__in=team_ids_for(user)).select_related("team")
    return datasets.filter(team=team) if team is not None else datasets


def preset_list_for(user: User, *, team: Team | None = None) -> QuerySet[Preset]:
    """The presets of the user's teams (or of one of them) and the global ones."""
    teams = team_ids_for(user)
    if team is not None:
        teams = [team_id for team_id in teams if team_id == team.id]
    return Preset.objects.filter(Q(team_id__in=teams) | Q(team__isnull=True)).select_related("team")


def team_list_where(user: User, role: str) -> QuerySet[Team]:
    """The user's teams in which their role allows `role` (e.g. the teams they may start runs in)."""
    if not user.is_authenticated:
        return Team.objects.none()
    allowed = [r for r, rank in Membership.RANK.items() if rank >= Membership.RANK[role]]
    return Team.objects.filter(memberships__user=user, memberships__role__in=allowed).distinct()


def role_for(user: User, team: Team) -> str | None:
    membership = membership_for(user, team)
    return membership.role if membership else None


def require_role(*, user, team: Team, role: str, action: str) -> None:
    """PermissionDenied unless the user's role in `team` allows `role` ("member" to start runs, "admin" ...)."""
    membership = membership_for(user, team)
    if membership is None or not membership.allows(role):
        raise PermissionDenied(f"{action} needs the {role} role in team {team.name}")
