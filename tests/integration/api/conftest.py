"""Fixtures for the API's tests: two teams with a member, a viewer and an admin each, a dataset and a run in each,
and each user's token; a client that sends a token (or nothing); the token failure limit cleared for each test."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from dashboard.models import Membership, Team
from dashboard.tokens import limits
from dashboard.tokens.services import token_create
from tests.factories import idle_queue, make_dataset, make_member, make_team, make_user, tiny_overrides
from training.models import Dataset, Run
from training.runs import services


def read(response):
    """A streamed response (metrics, exports) read whole, so a test can take its .json() or .body like any other."""
    response.body = b"".join(response.streaming_content) if response.streaming else response.content
    if response.streaming and response["Content-Type"].startswith("application/json"):
        response.json = lambda: json.loads(response.body)
    return response


def upload(name: str, content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content)


class ApiClient:
    """Django's test client with a token in every request's Authorization header (or none), JSON bodies."""

    def __init__(self, token: str | None = None, client: Client | None = None):
        self.client = client or Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def get(self, path: str, **params):
        return read(self.client.get(path, params, **self.headers))

    def post(self, path: str, body=None, **extra):
        return self.client.post(path, json.dumps(body if body is not None else {}), content_type="application/json",
                                **self.headers, **extra)

    def upload(self, path: str, data: dict):
        return self.client.post(path, data, **self.headers)


@dataclass
class Team_:
    team: Team
    admin: object
    member: object
    viewer: object
    dataset: Dataset
    run: Run


@dataclass
class ApiWorld:
    a: Team_
    b: Team_
    tokens: dict  # user -> token text

    def client(self, user) -> ApiClient:
        return ApiClient(self.tokens[user])


def _team(name: str, tmp_path) -> Team_:
    team = make_team(name)
    admin = make_member(team, role=Membership.Role.ADMIN, user=make_user(f"{name.lower()}-admin"))
    member = make_member(team, user=make_user(f"{name.lower()}-member"))
    viewer = make_member(team, role=Membership.Role.VIEWER, user=make_user(f"{name.lower()}-viewer"))
    dataset = make_dataset(team, member, tmp_dir=tmp_path, name=f"{name} data")
    run = services.run_create(team=team, user=member, dataset=dataset, name=f"{name} run", queue=idle_queue(),
                              overrides=tiny_overrides("tiny-model"))
    return Team_(team=team, admin=admin, member=member, viewer=viewer, dataset=dataset, run=run)


@pytest.fixture
def api_world(db, tmp_path) -> ApiWorld:
    a, b = _team("Alpha", tmp_path), _team("Beta", tmp_path)
    tokens = {user: token_create(user=user, name="tests")[1]
              for t in (a, b) for user in (t.admin, t.member, t.viewer)}
    return ApiWorld(a=a, b=b, tokens=tokens)


@pytest.fixture(autouse=True)
def no_token_failures():
    """The test client's address (and the in-process websockets', which have none) starts each test with no failed
    token attempts counted."""
    for address in ("127.0.0.1", None):
        limits.reset(address)
    yield
    for address in ("127.0.0.1", None):
        limits.reset(address)
