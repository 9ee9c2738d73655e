"""Fixtures for the page tests: two teams, their members by role, a dataset and a run each, logged-in clients."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.test import Client

from dashboard.models import Membership, Team
from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from training.models import Dataset, Run
from training.runs import services


@dataclass
class World:
    team: Team
    member: object
    viewer: object
    dataset: Dataset
    run: Run
    other_team: Team
    outsider: object
    other_dataset: Dataset
    other_run: Run


@pytest.fixture
def world(db, tmp_path) -> World:
    team, other_team = make_team("Alpha"), make_team("Beta")
    member = make_member(team)
    viewer = make_member(team, role=Membership.Role.VIEWER)
    outsider = make_member(other_team)
    dataset = make_dataset(team, member, tmp_dir=tmp_path, name="alpha data")
    other_dataset = make_dataset(other_team, outsider, tmp_dir=tmp_path, name="beta data")
    return World(team=team, member=member, viewer=viewer, dataset=dataset,
                 run=named_run(team, member, dataset, "alpha run"), other_team=other_team, outsider=outsider,
                 other_dataset=other_dataset, other_run=named_run(other_team, outsider, other_dataset, "beta run"))


def named_run(team: Team, user, dataset: Dataset, name: str, **overrides) -> Run:
    return services.run_create(team=team, user=user, dataset=dataset, name=name,
                               overrides=tiny_overrides("tiny-model", **overrides))


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def member_client(world) -> Client:
    return client_for(world.member)


@pytest.fixture
def viewer_client(world) -> Client:
    return client_for(world.viewer)
