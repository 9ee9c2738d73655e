"""The Trackers page (each team's MLflow server, set by its admins only, secrets never shown back), the New run
form's "Mirror to" boxes (MLflow refused on its field where the team has no server), and a run's TensorBoard zip
(team-scoped, 404 while there is nothing to give)."""
import socket

import pytest

from dashboard.models import Membership
from tests.factories import make_member
from tests.functional.conftest import client_for
from training.models import MlflowSettings, Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(world):
    return client_for(make_member(world.team, role=Membership.Role.ADMIN))


def free_port() -> int:
    """A local port nothing listens on (the save's check then fails at once, as a server that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_form(team, **fields):
    values = {"tracking_uri": f"http://127.0.0.1:{free_port()}", "experiment_name": "alpha runs", "username": "",
              "password": "", "token": "", **fields}
    return {f"{team.slug}-{name}": value for name, value in values.items() if value is not None}


def test_a_team_admin_sets_the_server_and_its_secret_is_never_shown_back(world, admin_client):
    page = admin_client.get("/trackers/")
    assert page.status_code == 200 and "No MLflow server" in page.content.decode()
    saved = admin_client.post(f"/trackers/{world.team.slug}/", settings_form(world.team, token="tok-123456"),
                              follow=True)
    assert saved.status_code == 200
    html = saved.content.decode()
    assert f"Saved {world.team.name}&#x27;s MLflow server." in html
    assert "could not use it yet: could not reach" in html  # checked from here: nothing listens on that port
    assert "signs in with a token" in html and "tok-123456" not in html
    settings = MlflowSettings.objects.get(team=world.team)
    assert settings.token == "tok-123456" and settings.experiment_name == "alpha runs"

    # Saved again with the secret left blank: kept; then forgotten on request.
    admin_client.post(f"/trackers/{world.team.slug}/", settings_form(world.team, experiment_name="renamed"))
    settings.refresh_from_db()
    assert settings.token == "tok-123456" and settings.experiment_name == "renamed"
    admin_client.post(f"/trackers/{world.team.slug}/", settings_form(world.team, clear_secrets="on"))
    settings.refresh_from_db()
    assert settings.token == ""
    admin_client.post(f"/trackers/{world.team.slug}/", {"action": "remove"})
    assert not MlflowSettings.objects.filter(team=world.team).exists()


def test_bad_settings_are_refused_on_their_field(world, admin_client):
    refused = admin_client.post(f"/trackers/{world.team.slug}/",
                                settings_form(world.team, tracking_uri="mlflow.internal:5000"))
    assert refused.status_code == 400
    assert "give the server&#x27;s http:// or https:// address" in refused.content.decode()
    refused = admin_client.post(f"/trackers/{world.team.slug}/", settings_form(world.team, username="ana"))
    assert refused.status_code == 400 and "a username needs its password" in refused.content.decode()
    assert not MlflowSettings.objects.exists()


def test_only_the_teams_admins_set_it_and_another_team_is_not_there(world, member_client, admin_client):
    MlflowSettings.objects.create(team=world.team, tracking_uri="http://mlflow.internal", experiment_name="e",
                                  username="ana", password="pw-secret")
    page = member_client.get("/trackers/").content.decode()
    assert "http://mlflow.internal" in page and "signs in as <code>ana</code>" in page
    assert "pw-secret" not in page and f'action="/trackers/{world.team.slug}/"' not in page
    assert member_client.post(f"/trackers/{world.team.slug}/", settings_form(world.team)).status_code == 403
    assert admin_client.post(f"/trackers/{world.other_team.slug}/", settings_form(world.other_team)).status_code == 404
    assert MlflowSettings.objects.get(team=world.team).tracking_uri == "http://mlflow.internal"


def test_the_run_form_offers_the_trackers_and_refuses_mlflow_without_a_server(world, member_client):
    page = member_client.get("/runs/new/").content.decode()
    assert 'name="trackers" value="tensorboard"' in page and 'name="trackers" value="mlflow"' in page
    form = {"dataset": str(world.dataset.id), "preset": "", "name": "", "model": "tiny-model",
            "trackers": ["tensorboard", "mlflow"]}
    refused = member_client.post("/runs/new/", form)
    assert refused.status_code == 400
    (error,) = refused.context["form"].errors["trackers"]
    assert error.startswith(f"team {world.team.name} has no MLflow server yet")
    assert not Run.objects.filter(trackers__contains=["mlflow"]).exists()
    MlflowSettings.objects.create(team=world.team, tracking_uri="http://mlflow.internal", experiment_name="e")
    created = member_client.post("/runs/new/", form)
    assert created.status_code == 302
    run = Run.objects.get(id=int(created["Location"].rstrip("/").rsplit("/", 1)[1]))
    assert run.trackers == ["tensorboard", "mlflow"]
    bad = member_client.post("/runs/new/", {**form, "trackers": ["wandb"]})
    assert bad.status_code == 400 and "wandb" in bad.context["form"].errors["trackers"][0]


def test_the_tensorboard_zip_is_scoped_to_the_team_and_needs_something_to_give(world, member_client):
    assert member_client.get(f"/runs/{world.other_run.id}/tensorboard.zip").status_code == 404
    assert member_client.get(f"/runs/{world.run.id}/tensorboard.zip").status_code == 404  # queued, no files
    page = member_client.get(f"/runs/{world.run.id}/").content.decode()
    assert "Mirrored to no tracker." in page and "tensorboard.zip" not in page
    Run.objects.filter(id=world.run.id).update(status=Run.Status.FAILED)  # ended: written from what was stored
    download = member_client.get(f"/runs/{world.run.id}/tensorboard.zip")
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
