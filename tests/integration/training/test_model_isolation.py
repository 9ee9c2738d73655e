"""Team isolation on the worker's disk: a run's model is a hub id or a folder inside the model roots, never another
team's run folder, a dataset folder, a link into either, a ".." climb or a folder outside the roots: refused through
the form, a preset and the admin, and again by the worker when it claims the run. Building on an earlier run is a
choice of a same-team run, not a path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from safetensors.torch import load_file

from tests.factories import make_dataset, make_member, make_preset, make_team, tiny_overrides
from tests.integration.conftest import wait_terminal
from training.datasets import services as dataset_services
from training.models import Preset, Run
from training.runs import services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


@pytest.fixture
def disk(tmp_path):
    """Another team's run folder with an adapter, a dataset folder, links to both inside the model roots, and a
    model folder outside the roots."""
    runs, datasets, models = Path(settings.RUNS_DIR), Path(settings.DATASETS_DIR), Path(settings.MODELS_DIR)
    adapter = runs / "900001" / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}")
    dataset_folder = datasets / "900001"
    dataset_folder.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    tag = tmp_path.name
    run_link, data_link = models / f"run-link-{tag}", models / f"data-link-{tag}"
    run_link.symlink_to(adapter)
    data_link.symlink_to(dataset_folder)
    outside = tmp_path / "outside-model"
    outside.mkdir()
    return {
        "another team's run folder": str(adapter),
        "a dataset folder": str(dataset_folder),
        "a link to a run folder": str(run_link),
        "a link to a dataset folder": str(data_link),
        "a '..' climb": f"{models}/../runs/900001/adapter",
        "a folder outside the roots": str(outside),
    }


CASES = ["another team's run folder", "a dataset folder", "a link to a run folder", "a link to a dataset folder",
         "a '..' climb", "a folder outside the roots"]


def names_the_roots(message: str) -> bool:
    return "TUNEBOARD_MODEL_ROOTS" in message and str(Path(settings.MODELS_DIR).resolve()) in message


@pytest.mark.parametrize("case", CASES)
def test_the_run_form_refuses_the_path_naming_the_roots(team_member, disk, case):
    team, user, dataset = team_member
    client = Client()
    client.force_login(user)
    before = Run.objects.count()
    response = client.post("/runs/new/", {"dataset": str(dataset.id), "preset": "", "name": "",
                                          "model": disk[case], "max_steps": "2"})
    assert response.status_code == 400
    errors = response.context["form"].errors["model"]
    assert len(errors) == 1 and names_the_roots(errors[0]), errors
    assert Run.objects.count() == before


@pytest.mark.parametrize("case", CASES)
def test_a_preset_refuses_the_path_naming_the_roots(team_member, disk, case):
    team = team_member[0]
    with pytest.raises(ValidationError) as caught:
        make_preset(team, model=disk[case])
    (message,) = caught.value.message_dict["config"]
    assert message.startswith("model: ") and names_the_roots(message)
    assert not Preset.objects.filter(team=team).exists()


@pytest.mark.parametrize("case", CASES)
def test_the_admin_refuses_a_preset_with_the_path(team_member, disk, case):
    team = team_member[0]
    admin = User.objects.create_superuser(username=f"root-{case.replace(' ', '-')}"[:30], password="pw")
    client = Client()
    client.force_login(admin)
    response = client.post("/admin/training/preset/add/", {
        "team": str(team.id), "name": "sneaky", "config": json.dumps({"model": disk[case]}), "notes": ""})
    assert response.status_code == 200  # the form again, with the error
    html = response.content.decode()
    assert "TUNEBOARD_MODEL_ROOTS" in html and "errornote" in html
    assert not Preset.objects.filter(name="sneaky").exists()


def test_dataset_statistics_refuse_the_path_for_their_tokenizer(team_member, disk):
    team, user, dataset = team_member
    for case in ("another team's run folder", "a link to a run folder"):
        with pytest.raises(ValidationError) as caught:
            dataset_services.dataset_profile_start(dataset=dataset, user=user, model=disk[case], max_length=64)
        assert names_the_roots(caught.value.message_dict["model"][0])
    dataset.refresh_from_db()
    assert "profile" not in dataset.stats


def test_a_model_folder_inside_the_roots_and_a_hub_id_are_accepted(team_member, tiny_model):
    team, user, dataset = team_member
    for model in (tiny_model, "unsloth/Llama-3.2-1B-Instruct"):
        run = services.run_create(team=team, user=user, dataset=dataset, queue="idle-isolation",
                                  overrides=tiny_overrides(model))
        assert run.config["model"] == model


def test_an_offline_deployment_refuses_hub_ids(team_member, settings):
    settings.TUNEBOARD_HUB_OFFLINE = True
    team, user, dataset = team_member
    with pytest.raises(ValidationError) as caught:
        services.run_create(team=team, user=user, dataset=dataset, overrides=tiny_overrides("unsloth/Llama-3.2-1B"))
    assert "TUNEBOARD_HUB_OFFLINE" in caught.value.message_dict["model"][0]


@pytest.mark.slow
def test_the_worker_refuses_a_row_written_around_the_services(celery_worker, team_member, disk, tiny_model):
    """A row written directly (a preset saved before the rule, say): the worker's claim-time check fails it."""
    team, user, dataset = team_member
    good = services.run_create(team=team, user=user, dataset=dataset, overrides=tiny_overrides(tiny_model))
    good = wait_terminal(good)
    assert good.status == Run.Status.SUCCEEDED, good.error
    runs = []
    for case in ("a link to a run folder", "a '..' climb", "a folder outside the roots"):
        config = {**good.config, "model": disk[case]}
        run = Run.objects.create(team=team, dataset=dataset, created_by=user, name=case, config=config,
                                 dataset_sha256=dataset.sha256, queue=settings.TUNEBOARD_DEFAULT_QUEUE)
        services._run_set_dir(run)
        services._enqueue(run)
        runs.append(run)
    for run in runs:
        run = wait_terminal(run)
        assert run.status == Run.Status.FAILED and run.error_class == "RunSetupError", (run.status, run.error)
        assert run.error.startswith("model: ") and names_the_roots(run.error), run.error
        assert not run.points.exists() and run.started == {}


def adapter_weights(run: Run) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run.adapter_path) / "adapter_model.safetensors"))


@pytest.mark.slow
def test_a_run_builds_on_a_same_team_runs_adapter_or_merged_model(celery_worker, team_member, tiny_model):
    team, user, dataset = team_member
    base = services.run_create(team=team, user=user, dataset=dataset, name="base",
                               overrides=tiny_overrides(tiny_model, max_steps=10, r=8, merge_16bit=True))
    base = wait_terminal(base)
    assert base.status == Run.Status.SUCCEEDED, base.error
    # A learning rate too small to move a weight: the continuation's adapter is where it started.
    still = {"learning_rate": 1e-12, "max_steps": 1, "weight_decay": 0.0}
    on_adapter = services.run_create(team=team, user=user, dataset=dataset, base_run=base, base_kind="adapter",
                                     overrides=tiny_overrides("", **still) | {"model": tiny_model})
    on_merged = services.run_create(team=team, user=user, dataset=dataset, base_run=base, base_kind="merged",
                                    overrides={k: v for k, v in tiny_overrides("", max_steps=2).items()
                                               if k != "model"})
    fresh = services.run_create(team=team, user=user, dataset=dataset,
                                overrides=tiny_overrides(tiny_model, r=8, **still))
    for run in (on_adapter, on_merged, fresh):
        run = wait_terminal(run)
        assert run.status == Run.Status.SUCCEEDED, (run.name, run.error, run.log_tail[-1500:])
    assert on_adapter.config["init_adapter"] == base.adapter_path and on_adapter.config["r"] == 8
    assert on_merged.config["model"] == base.merged_path and on_merged.config.get("init_adapter") is None
    trained = adapter_weights(base)
    continued, untouched = adapter_weights(on_adapter), adapter_weights(fresh)
    assert continued.keys() == trained.keys()
    assert all(torch.allclose(continued[k], trained[k], atol=1e-6) for k in trained)
    # The control: without the base, lora_B starts at zero, far from the trained weights.
    assert not all(torch.allclose(untouched[k], trained[k], atol=1e-6) for k in trained)
    page = Client()
    page.force_login(user)
    html = page.get(f"/runs/{on_adapter.id}/").content.decode()
    assert f'href="/runs/{base.id}/"' in html and "Builds on" in html and "its adapter" in html
    assert "its merged model" in page.get(f"/runs/{on_merged.id}/").content.decode()


@pytest.mark.slow
def test_another_teams_run_is_no_such_run(celery_worker, team_member, tiny_model, tmp_path):
    team, user, dataset = team_member
    base = wait_terminal(services.run_create(team=team, user=user, dataset=dataset,
                                             overrides=tiny_overrides(tiny_model, max_steps=2)))
    assert base.status == Run.Status.SUCCEEDED, base.error
    other = make_team()
    outsider = make_member(other)
    other_dataset = make_dataset(other, outsider, tmp_dir=tmp_path)
    before = Run.objects.count()
    with pytest.raises(ValidationError) as caught:
        services.run_create(team=other, user=outsider, dataset=other_dataset, base_run=base,
                            overrides=tiny_overrides(tiny_model))
    assert caught.value.message_dict == {"start_from": ["no such run in this team"]}
    client = Client()
    client.force_login(outsider)
    form_page = client.get("/runs/new/").content.decode()
    assert f"adapter:{base.id}" not in form_page
    response = client.post("/runs/new/", {"dataset": str(other_dataset.id), "preset": "", "name": "",
                                          "start_from": f"adapter:{base.id}", "max_steps": "2"})
    assert response.status_code == 400
    assert "no such run to build on" in response.context["form"].errors["start_from"][0]
    # Its own member sees it offered, and a conflicting rank is refused naming the field.
    mine = Client()
    mine.force_login(user)
    assert f'value="adapter:{base.id}"' in mine.get("/runs/new/").content.decode()
    response = mine.post("/runs/new/", {"dataset": str(dataset.id), "preset": "", "name": "",
                                        "start_from": f"adapter:{base.id}", "r": "64"})
    assert response.status_code == 400 and "keeps its r" in response.context["form"].errors["r"][0]
    assert Run.objects.count() == before
