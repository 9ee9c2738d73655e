"""The API tokens settings page: a user makes a token (shown once, then only its prefix), sees when each was made and
last used and when it expires, revokes their own (not another user's: a 404); the admin revokes anyone's."""
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from dashboard.models import ApiToken
from dashboard.tokens.services import digest_of, token_create

from .conftest import client_for

pytestmark = pytest.mark.django_db
PAGE = "/settings/tokens/"


def shown_token(html: str) -> str | None:
    found = re.search(r'id="token-text" type="text" readonly value="(tb_[A-Za-z0-9_-]{43})"', html)
    return found.group(1) if found else None


def test_a_new_token_is_shown_once_and_works_then_only_its_prefix_is_listed(world, member_client):
    response = member_client.post(PAGE, {"name": "CI on the eval box", "expires_in_days": "30"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    html = response.content.decode()
    text = shown_token(html)
    assert text and "Copy it now: it will not be shown again." in html and "It expires on" in html
    token = ApiToken.objects.get(user=world.member)
    assert token.digest == digest_of(text) and token.name == "CI on the eval box" and token.expires_at
    assert Client().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {text}").json()["username"] == \
        world.member.username
    listed = member_client.get(PAGE).content.decode()
    assert text not in listed and shown_token(listed) is None
    assert f"<code>{token.prefix}…</code>" in listed and "CI on the eval box" in listed
    assert "ago" in listed  # last used just now, by the request above
    assert 'class="status status-active"' in listed


def test_a_name_is_required_and_the_expiry_is_one_of_the_choices(world, member_client):
    response = member_client.post(PAGE, {"name": "  ", "expires_in_days": ""})
    assert response.status_code == 400 and b"This field is required." in response.content
    response = member_client.post(PAGE, {"name": "x", "expires_in_days": "100000"})
    assert response.status_code == 400 and b"Select a valid choice" in response.content
    assert not ApiToken.objects.exists()


def test_revoking_my_token_and_not_someone_elses(world, member_client):
    mine, text = token_create(user=world.member, name="laptop")
    theirs, _ = token_create(user=world.outsider, name="theirs")
    assert member_client.post(f"/settings/tokens/{theirs.id}/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    response = member_client.post(f"/settings/tokens/{mine.id}/revoke/", follow=True)
    assert "revoked: it no longer admits anyone" in response.content.decode()
    mine.refresh_from_db()
    assert mine.revoked_at is not None and mine.revoked_by == world.member
    assert 'class="status status-revoked"' in response.content.decode()
    assert Client().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {text}").status_code == 401
    assert "theirs" not in member_client.get(PAGE).content.decode()
    assert member_client.get(f"/settings/tokens/{mine.id}/revoke/").status_code == 405


def test_the_page_needs_a_login_and_is_linked_from_every_page(world, member_client):
    response = Client().get(PAGE)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert 'href="/settings/tokens/"' in member_client.get("/runs/").content.decode()


def test_the_admin_lists_every_token_and_revokes_them_without_seeing_them(world):
    admin = User.objects.create_superuser("root", password="root-password-for-tests")
    token, text = token_create(user=world.member, name="ci")
    client = client_for(admin)
    listing = client.get("/admin/dashboard/apitoken/").content.decode()
    assert "ci" in listing and token.prefix in listing and text not in listing
    assert client.get("/admin/dashboard/apitoken/add/").status_code == 403
    response = client.post("/admin/dashboard/apitoken/", {"action": "revoke", "_selected_action": [token.id]},
                           follow=True)
    assert "1 token revoked." in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None and token.revoked_by == admin
