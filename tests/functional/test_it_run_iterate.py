"""Going on from a run, on the pages: "New run from this run" prefills the form from its config (the fields set apart
from the defaults marked), an Apply on a finding or a pre-flight note makes its change and says so at the top, the
run it starts links its parent (and Compare opens on both); "Save as preset" saves for a team admin and tells a
member why not; a parent from another team, a finding of another run are refused by name."""
import re
from html import unescape

import pytest

from dashboard.models import Membership
from guidance.models import Finding
from tests.factories import make_member
from training.models import Preset, Run

from .conftest import client_for, named_run

pytestmark = pytest.mark.django_db


def value_of(html: str, name: str) -> str | None:
    match = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
    if not match:
        return None
    value = re.search(r'value="([^"]*)"', match.group(0))
    return unescape(value.group(1)) if value else ""


def field_classes(html: str, name: str) -> str:
    return re.search(rf'<div class="([^"]*)" data-field="{name}"', html).group(1)


def test_new_run_from_a_run_prefills_its_config_and_marks_what_it_set(world, member_client):
    html = member_client.get(f"/runs/new/?from={world.run.id}").content.decode()
    assert f"Started from <a href=\"/runs/{world.run.id}/\">run #{world.run.id} alpha run</a>" in html
    assert value_of(html, "parent") == str(world.run.id)
    assert value_of(html, "model") == "tiny-model" and value_of(html, "max_steps") == "20"
    assert "from-parent" in field_classes(html, "max_steps")
    assert value_of(html, "learning_rate") == ""  # the default it kept stays the default, unmarked
    assert "from-parent" not in field_classes(html, "learning_rate")
    assert 'id="applied-change"' not in html


def test_a_findings_apply_makes_its_change_and_the_new_run_links_its_parent(world, member_client):
    run = named_run(world.team, world.member, world.dataset, "frozen", learning_rate=1e-12, max_steps=40)
    finding = Finding.objects.create(run=run, code="flat_loss", severity="warning", step=22,
                                     title="Loss is flat: the adapter is not learning", message="raise it",
                                     parameters=["learning_rate", "lora_alpha"])
    page = member_client.get(f"/runs/{run.id}/").content.decode()
    assert (f'href="/runs/new/?from={run.id}&amp;finding={finding.id}">Apply: a new run with learning_rate 1e-12 '
            "→ 0.0002</a>") in page
    html = member_client.get(f"/runs/new/?from={run.id}&finding={finding.id}").content.decode()
    assert ("Applied:</strong> learning_rate 1e-12 → 0.0002, from the finding at step 22 (Loss is flat: the adapter "
            "is not learning)") in html
    assert value_of(html, "learning_rate") == "0.0002" and "applied" in field_classes(html, "learning_rate")

    form = {name: value_of(html, name) for name in ("parent", "model", "backend", "max_length", "learning_rate",
                                                   "per_device_train_batch_size", "gradient_accumulation_steps",
                                                   "max_steps", "warmup_steps", "logging_steps")}
    form.update(dataset=str(world.dataset.id), optim="adamw_torch", backend="hf")
    response = member_client.post("/runs/new/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    child = Run.objects.get(parent=run)
    assert child.config["learning_rate"] == 2e-4 and child.config["max_steps"] == 40
    page = member_client.get(f"/runs/{child.id}/").content.decode()
    assert f'Started from <a href="/runs/{run.id}/">run #{run.id} frozen</a>' in page
    assert f'href="/compare/?runs={run.id},{child.id}" id="compare-parent">Compare with parent</a>' in page
    assert f'<a href="/runs/{child.id}/">#{child.id}' in member_client.get(f"/runs/{run.id}/").content.decode()


def test_a_notes_apply_makes_its_fix(world, member_client):
    note = next(n for n in world.run.preflight if n["fix"])
    html = member_client.get(f"/runs/new/?from={world.run.id}&note={note['code']}").content.decode()
    assert "from the note before it started" in html
    for field, text in note["fix_text"].items():
        assert value_of(html, field) == text and "applied" in field_classes(html, field)
    assert (f'href="/runs/new/?from={world.run.id}&amp;note={note["code"]}"'
            in member_client.get(f"/runs/{world.run.id}/").content.decode())


def test_bad_starts_are_refused_by_name(world, member_client):
    other = Finding.objects.create(run=world.other_run, code="flat_loss", severity="warning", step=3, title="t",
                                   message="m", parameters=["learning_rate"])
    html = member_client.get(f"/runs/new/?from={world.run.id}&finding={other.id}").content.decode()
    assert f"finding: run #{world.run.id} has no finding &#x27;{other.id}&#x27;" in html
    assert 'id="applied-change"' not in html and value_of(html, "parent") == str(world.run.id)
    assert member_client.get(f"/runs/new/?from={world.other_run.id}").status_code == 404
    response = member_client.post("/runs/new/", {"dataset": str(world.dataset.id), "model": "tiny-model",
                                                 "parent": str(world.other_run.id)})
    assert response.status_code == 400 and f"no such run in your teams: #{world.other_run.id}" in unescape(
        response.content.decode())


def test_save_as_preset_saves_for_an_admin_and_tells_a_member_why_not(world, member_client):
    refused = member_client.post(f"/runs/{world.run.id}/save-preset/", {"name": "from alpha"}, follow=True)
    assert "Presets are curated by the team&#x27;s admins" in refused.content.decode()
    assert not Preset.objects.filter(name="from alpha").exists()
    admin = make_member(world.team, role=Membership.Role.ADMIN)
    page = client_for(admin).get(f"/runs/{world.run.id}/").content.decode()
    assert f'action="/runs/{world.run.id}/save-preset/"' in page
    saved = client_for(admin).post(f"/runs/{world.run.id}/save-preset/", {"name": "from alpha"}, follow=True)
    preset = Preset.objects.get(team=world.team, name="from alpha")
    assert "Saved as the team preset &#x27;from alpha&#x27;" in saved.content.decode()
    assert preset.config["max_steps"] == 20 and "train_file" not in preset.config and "output_dir" not in preset.config
    again = client_for(admin).post(f"/runs/{world.run.id}/save-preset/", {"name": "from alpha"}, follow=True)
    assert "already has a preset named" in unescape(again.content.decode())
