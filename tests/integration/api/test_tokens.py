"""API tokens on the real PostgreSQL and Redis: a good token is its user; a malformed, unknown, revoked or expired
token, or one whose user was deactivated or deleted, is a 401 naming why; failures from one address are limited;
the session keeps working for the pages' own calls, with CSRF."""
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.utils import timezone

from dashboard.models import ApiToken
from dashboard.tokens.services import digest_of, token_create, token_revoke
from tests.factories import make_user

from .conftest import ApiClient

pytestmark = pytest.mark.django_db


def test_a_token_is_its_user_with_their_teams_and_roles(api_world):
    response = api_world.client(api_world.a.viewer).get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json() == {"username": "alpha-viewer", "teams": [
        {"id": api_world.a.team.id, "name": "Alpha", "slug": api_world.a.team.slug, "role": "viewer"}]}


def test_only_the_digest_is_stored_and_last_use_is_noted(api_world):
    text = api_world.tokens[api_world.a.member]
    token = ApiToken.objects.get(digest=digest_of(text))
    assert text.startswith("tb_") and len(text) == 46 and token.prefix == text[:8]
    assert not ApiToken.objects.filter(digest=text).exists() and text not in token.digest
    assert token.last_used_at is None
    api_world.client(api_world.a.member).get("/api/v1/me/")
    token.refresh_from_db()
    assert token.last_used_at is not None and timezone.now() - token.last_used_at < timedelta(seconds=30)


@pytest.mark.parametrize(("header", "reason"), [
    ("Bearer", "no token"),
    ("Bearer abc", "starts with 'tb_'"),
    ("Bearer tb_short", "46 expected"),
    ("Bearer tb_" + "A" * 43, "unknown token"),
    ("Token tb_" + "A" * 43, "unsupported Authorization scheme 'Token'"),
    ("Basic dXNlcjpwYXNz", "unsupported Authorization scheme 'Basic'"),
])
def test_a_malformed_or_unknown_token_is_a_401_saying_why(api_world, header, reason):
    response = Client().get("/api/v1/runs/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert reason in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_no_credentials_is_a_401_naming_the_header(db):
    response = Client().get("/api/v1/runs/")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert "Authentication credentials were not provided" in response.json()["detail"]


def test_a_revoked_token_is_refused_with_when(api_world):
    user = api_world.a.member
    text = api_world.tokens[user]
    token = ApiToken.objects.get(digest=digest_of(text))
    assert ApiClient(text).get("/api/v1/runs/").status_code == 200
    token_revoke(token=token, user=user)
    response = ApiClient(text).get("/api/v1/runs/")
    assert response.status_code == 401
    assert "was revoked at" in response.json()["detail"] and token.prefix in response.json()["detail"]


def test_an_expired_token_is_refused_and_one_not_yet_expired_works(api_world):
    user = api_world.a.member
    token, text = token_create(user=user, name="short", expires_in_days=1)
    assert ApiClient(text).get("/api/v1/me/").status_code == 200
    ApiToken.objects.filter(id=token.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = ApiClient(text).get("/api/v1/me/")
    assert response.status_code == 401 and "expired at" in response.json()["detail"]


def test_a_deactivated_or_deleted_users_token_is_refused(api_world):
    member = api_world.a.member
    text = api_world.tokens[member]
    member.is_active = False
    member.save()
    response = ApiClient(text).get("/api/v1/me/")
    assert response.status_code == 401 and "alpha-member, who is deactivated" in response.json()["detail"]
    viewer_text = api_world.tokens[api_world.a.viewer]
    User.objects.filter(id=api_world.a.viewer.id).delete()
    response = ApiClient(viewer_text).get("/api/v1/me/")
    assert response.status_code == 401 and "belonged to a user who was removed" in response.json()["detail"]


def test_a_member_removed_from_the_team_sees_its_objects_as_missing(api_world):
    member, run = api_world.a.member, api_world.a.run
    client = api_world.client(member)
    assert client.get(f"/api/v1/runs/{run.id}/").status_code == 200
    member.memberships.all().delete()
    assert client.get(f"/api/v1/runs/{run.id}/").status_code == 404
    assert client.get("/api/v1/me/").json()["teams"] == []
    assert client.get("/api/v1/runs/").json()["count"] == 0


@override_settings(TUNEBOARD_TOKEN_FAILURE_LIMIT=3, TUNEBOARD_TOKEN_FAILURE_WINDOW_S=60)
def test_failed_tokens_from_one_address_are_limited_then_every_token_from_it_waits(api_world):
    bad = ApiClient("tb_" + "B" * 43)
    assert [bad.get("/api/v1/me/").status_code for _ in range(3)] == [401, 401, 401]
    refused = bad.get("/api/v1/me/")
    assert refused.status_code == 429
    assert "too many failed token attempts from this address (3 within 60 s)" in refused.json()["detail"]
    assert 1 <= int(refused["Retry-After"]) <= 60
    # A good token from the same address waits too: the limit is on the address, not on the token tried.
    assert api_world.client(api_world.a.member).get("/api/v1/me/").status_code == 429
    # Another address is not held up.
    other = Client(REMOTE_ADDR="10.9.8.7")
    good = other.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {api_world.tokens[api_world.a.member]}")
    assert good.status_code == 200


def test_the_session_works_for_the_pages_own_calls_with_csrf(api_world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(api_world.a.member)
    assert client.get("/api/v1/me/").json()["username"] == "alpha-member"
    refused = client.post(f"/api/v1/runs/{api_world.a.run.id}/stop/")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    # A token needs no CSRF token: no browser sends it on its own.
    assert api_world.client(api_world.a.member).post(f"/api/v1/runs/{api_world.a.run.id}/stop/").status_code == 200


def test_tokens_of_one_user_are_told_apart_by_prefix_and_revoking_one_leaves_the_other(db):
    user = make_user()
    first, first_text = token_create(user=user, name="laptop")
    second, second_text = token_create(user=user, name="ci")
    assert first.prefix != second.prefix or first_text != second_text
    token_revoke(token=first, user=user)
    assert ApiClient(first_text).get("/api/v1/me/").status_code == 401
    assert ApiClient(second_text).get("/api/v1/me/").status_code == 200
