"""The New run page: a form generated from the engine's config with guidance beside each field; a valid run is
created and queued, a bad value is refused on its field with nothing saved; a viewer cannot start runs."""
import io
import json
import re
from html import unescape

import pytest
from django.conf import settings
from django.shortcuts import resolve_url
from django.utils.html import escape

from dashboard.models import Membership
from guidance import content
from tests.factories import make_member, make_preset, tiny_overrides

from .conftest import named_run
from training.engine.config import TrainConfig
from training.evaluation import services as evaluation_services
from training.models import Run
from training.run_config import value_text
from training.runs import services as run_services
from training.runs.forms import ESSENTIALS, GROUPS, NOT_OFFERED, NOTES

pytestmark = pytest.mark.django_db


def form_data(world, **fields):
    return {"dataset": str(world.dataset.id), "preset": "", "name": "", "model": "tiny-model", **fields}


def field_errors(response) -> dict:
    return {name: list(errors) for name, errors in response.context["form"].errors.items()}


def test_every_config_field_is_offered_once_or_set_by_tuneboard():
    offered = [name for names in GROUPS.values() for name in names]
    assert len(offered) == len(set(offered))
    assert set(offered) | NOT_OFFERED == set(TrainConfig.model_fields)
    assert not set(offered) & NOT_OFFERED


def test_the_form_shows_each_field_with_its_guidance_and_default(world, member_client):
    page = member_client.get("/runs/new/")
    assert page.status_code == 200
    html = page.content.decode()
    for key in ("Loading the model", "The LoRA adapter", "The SFT trainer"):
        assert f'<span class="group-title">{key}</span>' in html
    for param, guidance in content.load_all().items():
        assert f'data-field="{param}"' in html
        assert escape(guidance.one_line) in html, param
        assert escape(guidance.default_note) in html, param
    # A field without a guidance page says in one line what it does; the guided ones need no second line.
    offered = {name for names in GROUPS.values() for name in names}
    assert set(NOTES) == offered - set(content.load_all())
    for param, note in NOTES.items():
        assert escape(note) in html, param
    assert 'name="train_file"' not in html and 'name="output_dir"' not in html
    assert "beta data" not in html  # the other team's dataset is not offered
    data = page.context["form_data"]
    assert data["datasets"] == {str(world.dataset.id): world.dataset.rows}
    assert data["defaults"]["r"] == 16 and data["required"] == ["model"]
    assert 'src="/static/js/run_new.js"' in html and 'id="run-form-data"' in html


def test_a_valid_form_creates_a_queued_run_with_the_overrides(world, member_client):
    preset = make_preset(world.team, name="small", model="tiny-model", r=8, lora_alpha=16)
    response = member_client.post("/runs/new/", form_data(
        world, preset=str(preset.id), model="", name="my run", r="32", learning_rate="1e-4", warmup_steps="10",
        use_rslora="true", target_modules="q_proj, v_proj", sample_prompts="Hi\n\nWhat colour?\n",
        lr_scheduler_type="cosine", lr_scheduler_kwargs='{"num_cycles": 0.5}', max_steps="none"))
    run = Run.objects.get(name="my run")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.id}/"
    assert run.status == Run.Status.QUEUED and run.team == world.team and run.preset == preset
    config = run.config
    assert config["r"] == 32 and config["lora_alpha"] == 16  # override, and the preset's value kept
    assert config["learning_rate"] == 1e-4 and config["warmup_steps"] == 10 and config["use_rslora"] is True
    assert config["target_modules"] == ["q_proj", "v_proj"] and config["sample_prompts"] == ["Hi", "What colour?"]
    assert config["lr_scheduler_kwargs"] == {"num_cycles": 0.5} and config["max_steps"] is None
    assert config["train_file"] == world.dataset.path


def test_a_warmup_ratio_stays_a_ratio(world, member_client):
    member_client.post("/runs/new/", form_data(world, name="ratio", warmup_steps="0.1"))
    assert Run.objects.get(name="ratio").config["warmup_steps"] == 0.1


@pytest.mark.parametrize("field, value, message", [
    ("r", "sixteen", "give a whole number"),
    ("r", "0", "0 is below 1: at least 1"),
    ("learning_rate", "5", "5 is above 1: at most 1"),
    ("learning_rate", "fast", "give a number"),
    ("warmup_steps", "1.5", "a warmup ratio must be in [0, 1)"),
    ("lr_scheduler_kwargs", "{not json", "not valid JSON"),
    ("lr_scheduler_kwargs", '{"bogus": 1}', "bogus not accepted by linear"),
    ("loftq_config", '{"loftq_bits": 3}', "loftq_bits"),
    ("dtype", "float64", "Select a valid choice"),
    ("model", "", "Field required"),
])
def test_a_bad_value_is_shown_on_its_field_and_nothing_is_created(world, member_client, field, value, message):
    before = Run.objects.count()
    response = member_client.post("/runs/new/", form_data(world, **{field: value}))
    assert response.status_code == 400
    errors = field_errors(response)
    assert field in errors and message in " ".join(errors[field]), errors
    assert Run.objects.count() == before
    html = response.content.decode()
    assert 'class="field has-error" data-field="%s"' % field in html


def test_another_teams_dataset_or_preset_is_refused(world, member_client):
    before = Run.objects.count()
    response = member_client.post("/runs/new/", form_data(world, dataset=str(world.other_dataset.id)))
    assert "dataset" in field_errors(response)
    other_preset = make_preset(world.other_team, name="beta preset")
    response = member_client.post("/runs/new/", form_data(world, preset=str(other_preset.id)))
    assert "preset" in field_errors(response)
    response = member_client.post("/runs/new/", form_data(world, dataset="not-a-number"))
    assert response.status_code == 400 and "dataset" in field_errors(response)
    assert Run.objects.count() == before


def make_suite(team, user, name):
    return evaluation_services.suite_create_from_upload(
        team=team, user=user, name=name, file=io.BytesIO(b'{"prompt": "2+2=", "reference": "4"}\n'),
        metric="exact_match", filename="suite.jsonl")


def test_the_run_is_evaluated_at_its_end_on_the_chosen_suites(world, member_client, settings, tmp_path):
    settings.SUITES_DIR = tmp_path / "suites"
    mine, also = make_suite(world.team, world.member, "alpha qa"), make_suite(world.team, world.member, "alpha b")
    make_suite(world.other_team, world.outsider, "beta qa")
    html = member_client.get("/runs/new/").content.decode()
    assert "Evaluate at the end on" in html and 'name="eval_suites"' in html
    assert f'<option value="{mine.id}">alpha qa (1 rows, exact_match)</option>' in html and "beta qa" not in html
    member_client.post("/runs/new/", form_data(world, name="evaluated", eval_suites=[str(mine.id), str(also.id)]))
    assert set(Run.objects.get(name="evaluated").eval_suites.all()) == {mine, also}
    member_client.post("/runs/new/", form_data(world, name="plain"))
    assert not Run.objects.get(name="plain").eval_suites.exists()


def test_a_suite_of_another_team_is_refused_on_its_field(world, member_client, settings, tmp_path):
    settings.SUITES_DIR = tmp_path / "suites"
    theirs = make_suite(world.other_team, world.outsider, "beta qa")
    before = Run.objects.count()
    response = member_client.post("/runs/new/", form_data(world, eval_suites=[str(theirs.id)]))
    assert response.status_code == 400 and "is not one of the available choices" in " ".join(
        field_errors(response)["eval_suites"])
    # A member of both teams may pick either team's suite, but only the dataset's team's suites go with its run.
    make_member(world.other_team, user=world.member)
    response = member_client.post("/runs/new/", form_data(world, eval_suites=[str(theirs.id)]))
    assert response.status_code == 400
    assert field_errors(response)["eval_suites"] == ["no such eval suite in this team"]
    assert Run.objects.count() == before


def test_a_viewer_is_refused_and_nothing_is_created(world, viewer_client):
    before = Run.objects.count()
    page = viewer_client.get("/runs/new/")
    assert page.status_code == 403 and b"viewer" in page.content
    response = viewer_client.post("/runs/new/", form_data(world))
    assert response.status_code == 403
    assert Run.objects.count() == before


def test_a_viewer_of_one_team_starts_runs_only_in_the_team_where_they_are_a_member(world):
    from .conftest import client_for

    user = make_member(world.other_team)
    Membership.objects.create(user=user, team=world.team, role=Membership.Role.VIEWER)
    client = client_for(user)
    html = client.get("/runs/new/").content.decode()
    assert "beta data" in html and "alpha data" not in html
    before = Run.objects.count()
    response = client.post("/runs/new/", form_data(world))  # team Alpha's dataset
    assert response.status_code == 400 and "dataset" in field_errors(response)
    assert Run.objects.count() == before


@pytest.mark.parametrize("junk", ["{[", "-1", "1e999", "nan", "none", "true", "[]", "{}", "\u00e9\u2603", "9" * 400])
def test_junk_in_every_field_gets_field_errors_never_a_server_error(world, member_client, junk):
    before = Run.objects.count()
    fields = {name: junk for names in GROUPS.values() for name in names}
    response = member_client.post("/runs/new/", form_data(world, **fields))
    assert response.status_code == 400
    assert field_errors(response)
    assert Run.objects.count() == before


# The pre-flight endpoint: the run form posts its fields as the user types (issue 18) --------------------------------

PREFLIGHT = "/runs/new/preflight/"


def preflight(client, world, **fields) -> dict:
    response = client.post(PREFLIGHT, form_data(world, **fields))
    assert response.status_code == 200, response.content[:500]
    return response.json()


def codes(body: dict) -> list[str]:
    return [note["code"] for note in body["notes"]]


def test_preflight_notes_an_out_of_range_value_with_its_guidance_and_the_seeds_value(world, member_client):
    before = Run.objects.count()
    body = preflight(member_client, world, learning_rate="0.3")
    assert body["errors"] == {}
    # Warnings first; the engine's default r 16 is above the seed's 4-8 for a dataset of 64 rows (an info).
    assert codes(body) == ["learning_rate_off", "weight_decay_heavy_for_learning_rate", "rank_for_dataset"]
    note = body["notes"][0]
    assert note["parameters"] == ["learning_rate"] and note["severity"] == "warning"
    assert note["title"] == "Learning rate 0.3 is 1,500x above the LoRA default"
    assert note["fix"] == {"learning_rate": 0.0002} and note["fix_text"] == {"learning_rate": "0.0002"}
    assert note["guidance_url"] == "/guidance/learning_rate/#too_high"
    assert note["evidence"]["learning_rate"] == 0.3
    decay = body["notes"][1]
    assert decay["combines_with"] == ["learning_rate"] and decay["fix_text"] == {"weight_decay": "6.7e-06"}
    rank = body["notes"][2]
    assert rank["fix_text"] == {"r": "8", "lora_alpha": "16"} and rank["evidence"]["rows"] == world.dataset.rows
    assert Run.objects.count() == before  # a review creates nothing
    # The seed's value back: its notes go, the others stay.
    assert codes(preflight(member_client, world, learning_rate="0.0002")) == ["rank_for_dataset"]


def test_preflight_reviews_the_preset_under_the_typed_fields(world, member_client):
    preset = make_preset(world.team, name="hot", model="tiny-model", learning_rate=0.3, lora_alpha=1)
    body = preflight(member_client, world, preset=str(preset.id), model="")
    assert body["errors"] == {}
    assert codes(body)[:3] == ["learning_rate_off", "lora_scale_off", "weight_decay_heavy_for_learning_rate"]
    assert body["notes"][1]["fix_text"] == {"lora_alpha": "32"}
    # A typed field wins over the preset's.
    assert codes(preflight(member_client, world, preset=str(preset.id), learning_rate="2e-4",
                           lora_alpha="32")) == ["rank_for_dataset"]


def test_preflight_without_a_model_yet_reviews_the_other_fields(world, member_client):
    body = preflight(member_client, world, model="", lora_dropout="0.5")
    assert body["errors"] == {}
    assert codes(body)[0] == "lora_dropout_high" and body["notes"][0]["fix_text"] == {"lora_dropout": "0.05"}


def test_a_field_that_does_not_parse_yet_is_named_and_the_rest_is_still_reviewed(world, member_client):
    body = preflight(member_client, world, r="sixteen", learning_rate="0.3")
    assert list(body["errors"]) == ["r"] and "give a whole number" in body["errors"]["r"][0]
    assert codes(body)[0] == "learning_rate_off"
    # Refused by the engine rather than the form field: named too, and no notes on a config that is not one.
    body = preflight(member_client, world, learning_rate="5")
    assert list(body["errors"]) == ["learning_rate"]
    assert "is above 1: at most 1" in body["errors"]["learning_rate"][0] and body["notes"] == []
    body = preflight(member_client, world, lr_scheduler_kwargs="{not json")
    assert "lr_scheduler_kwargs" in body["errors"]


def test_preflight_uses_neither_another_teams_dataset_nor_its_preset(world, member_client):
    # Team Beta's dataset: refused on its field, and its rows are not used (no rank note "for 64 examples").
    body = preflight(member_client, world, dataset=str(world.other_dataset.id))
    assert list(body["errors"]) == ["dataset"]
    assert "rank_for_dataset" not in codes(body)
    assert "beta" not in json.dumps(body).lower()
    assert "rank_for_dataset" in codes(preflight(member_client, world))  # team Alpha's own dataset is used
    other = make_preset(world.other_team, name="beta hot", model="tiny-model", learning_rate=0.3)
    body = preflight(member_client, world, preset=str(other.id))
    assert list(body["errors"]) == ["preset"]
    assert "learning_rate_off" not in codes(body) and "beta" not in json.dumps(body).lower()


def test_preflight_is_refused_as_the_run_form_is(world, viewer_client, client, member_client):
    response = viewer_client.post(PREFLIGHT, form_data(world, learning_rate="0.3"))
    assert response.status_code == 403 and response.json()["notes"] == []
    response = client.post(PREFLIGHT, form_data(world, learning_rate="0.3"))  # logged out: to log in, as /runs/new/
    assert response.status_code == 302
    login = resolve_url(settings.LOGIN_URL)
    assert response["Location"] == f"{login}?next={PREFLIGHT}"
    assert client.get("/runs/new/")["Location"] == f"{login}?next=/runs/new/"
    assert member_client.get(PREFLIGHT).status_code == 405
    assert client.get(PREFLIGHT).status_code == 405


def test_each_checkpoint_can_be_evaluated_too_and_needs_a_suite(world, member_client, settings, tmp_path):
    settings.SUITES_DIR = tmp_path / "suites"
    suite = make_suite(world.team, world.member, "alpha qa")
    assert 'name="eval_checkpoints"' in member_client.get("/runs/new/").content.decode()
    member_client.post("/runs/new/", form_data(world, name="each", eval_suites=[str(suite.id)], eval_checkpoints="on"))
    assert Run.objects.get(name="each").eval_checkpoints
    before = Run.objects.count()
    response = member_client.post("/runs/new/", form_data(world, name="none", eval_checkpoints="on"))
    assert response.status_code == 400 and "choose the suites" in " ".join(field_errors(response)["eval_checkpoints"])
    assert Run.objects.count() == before


def details_of(html: str) -> dict[str, bool]:
    """Each folded group on the page: open or not."""
    return {key: bool(rest.strip()) for key, rest in
            re.findall(r'<details class="card config-group" data-group="(\w+)"([^>]*)>', html)}


def picker_of(html: str) -> dict[str, list[str]]:
    """The model picker's options, by the group they are listed under ("" for those outside a group)."""
    select = re.search(r'<select name="model_pick".*?</select>', html, re.S).group(0)
    found: dict[str, list[str]] = {}
    for label, body in re.findall(r'<optgroup label="([^"]*)">(.*?)</optgroup>', select, re.S):
        found[unescape(label)] = [unescape(v) for v in re.findall(r'value="([^"]*)"', body)]
    found[""] = [unescape(v) for v in re.findall(r'value="([^"]*)"', re.sub(r"<optgroup.*?</optgroup>", "", select,
                                                                             flags=re.S))]
    return found


@pytest.fixture
def model_layout(settings, tmp_path):
    """Model roots holding two model folders, a stray folder without config.json, and the runs' folder itself (a
    deployment whose roots overlap the runs: its run folders must still never be listed)."""
    settings.RUNS_DIR = tmp_path / "runs"
    models = tmp_path / "models"
    for folder in (models / "qwen-0.5b", models / "org" / "llama-1b", settings.RUNS_DIR / "7" / "merged"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (models / "not-a-model").mkdir()
    (settings.RUNS_DIR / "8").mkdir()
    (settings.RUNS_DIR / "8" / "config.json").write_text("{}")
    settings.TUNEBOARD_MODEL_ROOTS = [str(models), str(settings.RUNS_DIR)]
    return models


def test_the_model_picker_lists_the_roots_folders_and_the_teams_recent_models_never_another_teams(
        world, member_client, model_layout, settings):
    run_services.run_create(team=world.team, user=world.member, dataset=world.dataset, name="alpha tuned",
                            overrides=tiny_overrides("alpha-org/tuned-base"))
    run_services.run_create(team=world.other_team, user=world.outsider, dataset=world.other_dataset,
                            name="beta secret", overrides=tiny_overrides("beta-org/secret-model"))
    # A run of the team built on another's merged model names a run folder: offered under Start from, not here.
    merged = named_run(world.team, world.member, world.dataset, "on merged")
    Run.objects.filter(id=merged.id).update(config={**merged.config, "model": str(settings.RUNS_DIR / "8")})
    html = member_client.get("/runs/new/").content.decode()
    picker = picker_of(html)
    assert picker["Model folders on the workers"] == [str(model_layout / "org" / "llama-1b"),
                                                      str(model_layout / "qwen-0.5b")]
    assert picker["Trained recently by your team"] == ["alpha-org/tuned-base", "tiny-model"]
    assert picker[""] == ["", "other"]
    assert f'>org/llama-1b  in {model_layout}</option>' in html  # named by its path under its root first
    assert "beta-org/secret-model" not in html and str(settings.RUNS_DIR) not in html.split('name="model_pick"')[1]
    assert "not-a-model" not in html
    assert "Other: type a hub id (owner/name) or a model folder below" in html


def test_with_the_hub_off_the_picker_keeps_folders_only(world, member_client, model_layout, settings):
    settings.TUNEBOARD_HUB_OFFLINE = True
    html = member_client.get("/runs/new/").content.decode()
    picker = picker_of(html)
    assert "Trained recently by your team" not in picker  # tiny-model is a hub id: refused here now
    assert len(picker["Model folders on the workers"]) == 2
    assert "Other: type a model folder below (the hub is off here)" in html


def test_a_model_picked_from_the_list_is_the_runs_model_and_one_not_listed_is_refused(
        world, member_client, model_layout):
    picked = str(model_layout / "qwen-0.5b")
    response = member_client.post("/runs/new/", form_data(world, name="picked", model="", model_pick=picked))
    assert response.status_code == 302 and Run.objects.get(name="picked").config["model"] == picked
    # The typed model wins over the list (the page's script keeps them in step); "other" takes the typed one.
    member_client.post("/runs/new/", form_data(world, name="typed", model="org2/typed", model_pick="other"))
    assert Run.objects.get(name="typed").config["model"] == "org2/typed"
    before = Run.objects.count()
    response = member_client.post("/runs/new/", form_data(world, model="", model_pick="/etc"))
    assert response.status_code == 400 and Run.objects.count() == before
    assert "/etc is not in the list" in " ".join(field_errors(response)["model_pick"])
    summary = response.context["form"].error_summary()
    assert summary[0]["field"] == "model" and summary[0]["anchor"] == "field-model"
    assert 'class="field has-error" data-field="model"' in response.content.decode()


def test_the_first_layer_holds_what_a_first_run_needs_and_the_rest_is_folded_closed(world, member_client):
    html = member_client.get("/runs/new/").content.decode()
    first, folded = html.split('<details class="card config-group"', 1)
    for name in ("dataset", *ESSENTIALS):
        assert f'id="field-{name}"' in first and f'id="field-{name}"' not in folded, name
    for name in ("preset", "name", "start_from", "lora_dropout", "gradient_accumulation_steps", "backend"):
        assert f'id="field-{name}"' in folded and f'id="field-{name}"' not in first, name
    assert details_of(html) == {"run": False, "model": False, "lora": False, "sft": False}


def test_a_group_opens_when_a_field_in_it_is_set_or_refused(world, member_client):
    response = member_client.post("/runs/new/", form_data(world, lora_dropout="0.1", warmup_steps="lots",
                                                           learning_rate="3"))
    assert response.status_code == 400
    assert details_of(response.content.decode()) == {"run": False, "model": False, "lora": True, "sft": True}
    preset = make_preset(world.team, name="small", model="tiny-model")
    response = member_client.post("/runs/new/", form_data(world, preset=str(preset.id), r="0"))
    assert details_of(response.content.decode()) == {"run": True, "model": False, "lora": False, "sft": False}


def test_started_from_a_run_the_groups_holding_what_it_set_are_open(world, member_client):
    # tiny_overrides set backend, optim, batch and warmup fields apart from the defaults: model and sft groups.
    html = member_client.get(f"/runs/new/?from={world.run.id}").content.decode()
    assert details_of(html) == {"run": False, "model": True, "lora": False, "sft": True}
    assert re.search(r'<option value="tiny-model" selected>', html)  # its model, picked in the list


def test_each_guided_field_shows_one_recommended_value_with_a_button_that_fills_it(world, member_client):
    html = member_client.get("/runs/new/").content.decode()
    assert "Simple default" not in html
    for param, guidance in content.load_all().items():
        block = re.search(rf'<div class="field[^"]*" data-field="{param}".*?data-live-error-for', html, re.S)
        field = html[block.start():html.index("</div>", html.index(f'data-recommended-for="{param}"'))]
        assert field.count("Recommended:") == 1, param
        value = escape(value_text(guidance.default))
        assert f'data-use-recommended="{param}" data-value="{value}"' in field, param
