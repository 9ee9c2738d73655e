"""Log in and out: anonymous visitors are sent to the login page for every page, then back where they were."""
import pytest
from django.test import Client
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
