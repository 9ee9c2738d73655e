"""The admin's preset pages: saving a preset runs the pre-flight review on it and shows each note as a warning
(a note never refuses the preset; the engine's own validation still does)."""
import json

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import constants

from training.models import Preset

from .conftest import client_for

pytestmark = pytest.mark.django_db

ADD = "/admin/training/preset/add/"


@pytest.fixture
def admin_client_(db):
    return client_for(User.objects.create_superuser("root", "root@example.com", "pw-for-tests"))


def save(client, url: str, config: dict, name: str = "hot", team: str = ""):
    return client.post(url, {"team": team, "name": name, "config": json.dumps(config), "notes": ""}, follow=True)


def preflight_warnings(response) -> list[str]:
    return [str(m) for m in response.context["messages"]
            if m.level == constants.WARNING and str(m).startswith("Pre-flight: ")]


def test_saving_a_preset_with_learning_rate_0_3_shows_the_pre_flight_warnings(admin_client_):
    response = save(admin_client_, ADD, {"learning_rate": 0.3})
    assert response.status_code == 200 and response.redirect_chain[-1][0] == "/admin/training/preset/"
    preset = Preset.objects.get(name="hot")
    assert preset.config == {"learning_rate": 0.3}  # saved: a note is not a refusal
    warnings = preflight_warnings(response)
    assert [w.split(".")[0] for w in warnings] == [
        "Pre-flight: Learning rate 0", "Pre-flight: weight_decay 0"]
    assert warnings[0].startswith("Pre-flight: Learning rate 0.3 is 1,500x above the LoRA default. The guidance starts "
                                  "LoRA/QLoRA with AdamW at 0.0002; 0.3 is 1,500 times that")
    assert warnings[0].endswith("(guidance: /guidance/learning_rate/#too_high)")
    assert warnings[1].startswith("Pre-flight: weight_decay 0.01 is heavy at learning rate 0.3.")
    assert warnings[1].endswith("(guidance: /guidance/weight_decay/#too_high)")
    html = response.content.decode()
    assert "Learning rate 0.3 is 1,500x above the LoRA default" in html  # shown on the page it lands on

    # Editing it back to the seed's learning rate: saved, and nothing to warn about.
    response = save(admin_client_, f"/admin/training/preset/{preset.id}/change/", {"learning_rate": 2e-4})
    preset.refresh_from_db()
    assert preset.config == {"learning_rate": 2e-4} and preset.version == 2
    assert preflight_warnings(response) == []


def test_a_preset_the_engine_refuses_is_not_saved_and_gets_no_pre_flight_notes(admin_client_):
    response = save(admin_client_, ADD, {"learning_rate": 5})
    assert response.status_code == 200 and not response.redirect_chain
    assert not Preset.objects.filter(name="hot").exists()
    assert "learning_rate" in str(response.context["adminform"].form.errors["config"])
    assert preflight_warnings(response) == []
