"""Log in and out: anonymous visitors are sent to the login page for every page, then back where they were;
repeated failed logins lock the account and the address for a while."""
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.db.models import F
from django.test import Client, override_settings
from django.urls import reverse

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/runs/", "/runs/new/", "/runs/1/", "/runs/1/adapter/", "/runs/1/adapter/x.json",
                                 "/datasets/", "/workers/"])
def test_anonymous_visitors_are_sent_to_log_in(url):
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize("url", ["/runs/1/stop/", "/runs/1/resume/"])
def test_anonymous_posts_change_nothing_and_are_sent_to_log_in(world, url):
    url = url.replace("1", str(world.run.id))
    response = Client().post(url)
    assert response.status_code in (302, 405)
    world.run.refresh_from_db()
    assert world.run.status == "queued"


def test_log_in_with_the_form_then_land_on_the_page_asked_for(world):
    world.member.set_password("right-password")
    world.member.save()
    client = Client()
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b'name="username"' in page.content
    wrong = client.post(reverse("login"), {"username": world.member.username, "password": "nope"})
    assert wrong.status_code == 200
    assert b"Please enter a correct username and password" in wrong.content
    right = client.post(reverse("login") + "?next=/workers/",
                        {"username": world.member.username, "password": "right-password", "next": "/workers/"})
    assert right.status_code == 302 and right["Location"] == "/workers/"
    assert client.get("/runs/").status_code == 200


def test_log_out_is_a_post_and_ends_the_session(member_client):
    page = member_client.get("/runs/")
    assert b'action="/accounts/logout/"' in page.content
    assert member_client.post("/accounts/logout/").status_code == 302
    assert member_client.get("/runs/").status_code == 302


def test_the_admin_link_shows_for_staff_only(world, member_client):
    assert b'href="/admin/"' not in member_client.get("/runs/").content
    world.member.is_staff = True
    world.member.save()
    assert b'href="/admin/"' in member_client.get("/runs/").content


def test_home_goes_to_the_run_list(member_client):
    response = member_client.get("/")
    assert response.status_code == 302 and response["Location"] == reverse("run_list")


# Login lockout (django-axes, settings in dashboard/settings.py): 5 failed logins lock the account and the address.
LIMIT = 5


def log_in(client, username, password, address="192.0.2.1", **headers):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=address,
                       **headers)


def text(response) -> str:
    return " ".join(response.content.decode().split())


def assert_locked(response, username, limit=LIMIT, wait="15 minutes"):
    assert response.status_code == 429
    assert f"Too many failed logins for {username} or from your address: after {limit} failed attempts the " \
           f"account or the address is locked for {wait}." in text(response)


def assert_logged_in(response, client):
    assert response.status_code == 302, response.content[:300]
    assert client.get("/runs/").status_code == 200


@pytest.fixture
def member(world):
    world.member.set_password("right-password")
    world.member.save()
    return world.member


def test_failed_logins_lock_the_account_even_from_other_addresses(member):
    client = Client()
    for n in range(1, LIMIT):
        wrong = log_in(client, member.username, "nope", address=f"192.0.2.{n}")
        assert wrong.status_code == 200 and b"Please enter a correct username and password" in wrong.content
    assert_locked(log_in(client, member.username, "nope", address="192.0.2.99"), member.username)
    # The right password, from an address that never failed, is refused while the account is locked.
    assert_locked(log_in(client, member.username, "right-password", address="198.51.100.1"), member.username)
    assert client.get("/runs/").status_code == 302


def test_failed_logins_from_one_address_lock_it_even_for_other_accounts(member, world):
    client = Client()
    for n in range(1, LIMIT):
        assert log_in(client, f"nobody{n}", "nope").status_code == 200
    assert_locked(log_in(client, f"nobody{LIMIT}", "nope"), f"nobody{LIMIT}")
    assert_locked(log_in(client, member.username, "right-password"), member.username)
    assert client.get("/runs/").status_code == 302
    # The account itself is not locked: from another address it logs in.
    elsewhere = Client()
    assert_logged_in(log_in(elsewhere, member.username, "right-password", address="198.51.100.1"), elsewhere)


def test_the_lock_ends_after_the_lockout_time_and_each_locked_attempt_restarts_it(member):
    client = Client()
    for _ in range(LIMIT):
        log_in(client, member.username, "nope")

    def age_attempts(minutes):
        AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=minutes))

    age_attempts(14)
    assert_locked(log_in(client, member.username, "right-password"), member.username)
    age_attempts(14)  # 28 minutes after the fifth failure, but only 14 after the last attempt
    assert_locked(log_in(client, member.username, "right-password"), member.username)
    age_attempts(15.1)
    assert_logged_in(log_in(client, member.username, "right-password"), client)


def test_a_successful_login_resets_the_count(member):
    client = Client()
    for _ in range(LIMIT - 1):
        log_in(client, member.username, "nope")
    assert_logged_in(log_in(client, member.username, "right-password"), client)
    client = Client()
    for _ in range(LIMIT - 1):
        assert log_in(client, member.username, "nope").status_code == 200
    assert_logged_in(log_in(client, member.username, "right-password"), client)


@override_settings(AXES_FAILURE_LIMIT=2, AXES_COOLOFF_TIME=timedelta(seconds=30))
def test_the_page_names_the_configured_limit_and_time(member):
    client = Client()
    assert log_in(client, member.username, "nope").status_code == 200
    assert_locked(log_in(client, member.username, "nope"), member.username, limit=2, wait="30 seconds")


def test_a_forged_x_forwarded_for_does_not_escape_the_address_lock(member):
    client = Client()
    for n in range(LIMIT):
        response = log_in(client, f"nobody{n}", "nope", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")
    assert_locked(response, f"nobody{LIMIT - 1}")
    assert_locked(log_in(client, member.username, "right-password", HTTP_X_FORWARDED_FOR="203.0.113.200"),
                  member.username)


@override_settings(TUNEBOARD_PROXY_COUNT=1)
def test_behind_a_proxy_the_address_is_the_one_the_proxy_saw(member):
    proxy = "10.0.0.1"
    client = Client()
    for n in range(LIMIT):
        # The client writes the left entries; the proxy appends the address it saw.
        response = log_in(client, f"nobody{n}", "nope", address=proxy,
                          HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 203.0.113.5")
    assert_locked(response, f"nobody{LIMIT - 1}")
    assert_locked(log_in(client, member.username, "right-password", address=proxy,
                         HTTP_X_FORWARDED_FOR="203.0.113.5"), member.username)
    # Another client behind the same proxy is not locked out with it.
    other = Client()
    assert_logged_in(log_in(other, member.username, "right-password", address=proxy,
                            HTTP_X_FORWARDED_FOR="198.51.100.7"), other)
