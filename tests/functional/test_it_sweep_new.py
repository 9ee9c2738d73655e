"""The New sweep page and its preview: a procedure from a guidance page's link or a run's, the members it will create
as the user types, a valid form launching the sweep's first phase, and bad input refused on the field it names with
nothing created; viewers cannot start sweeps."""
import pytest
from django.utils import timezone

from tests.factories import idle_queue, make_member, make_preset, tiny_overrides
from tests.functional.conftest import client_for, named_run
from training.models import Run, Sweep, SweepMember
from training.sweeps import plan

pytestmark = pytest.mark.django_db

TINY = {**tiny_overrides("tiny-model"), "max_steps": 12, "eval_split": 0.2, "eval_steps": 6}


def lines(config: dict) -> str:
    return "\n".join(f"{k}={v}" for k, v in config.items())


def form_data(world, **fields) -> dict:
    return {"template": "r", "dataset": str(world.dataset.id), "preset": "", "base_run": "", "values": "2, 4",
            "overrides": lines(TINY), "queue": idle_queue(), "auto_advance": "on", "early_stop": "on",
            "confirm_top": "0", **fields}


def succeeded(run: Run, *, seconds: float = 0, steps: int = 20) -> Run:
    now = timezone.now()
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, adapter_path=f"/adapters/{run.id}",
                                         last_step=steps, total_steps=steps, finished_at=now,
                                         started_at=now - timezone.timedelta(seconds=seconds))
    run.refresh_from_db()
    return run


def errors_of(response) -> dict:
    return {name: list(errors) for name, errors in response.context["form"].errors.items()}


def test_the_form_offers_every_procedure_and_prefills_from_a_link(world, member_client):
    page = member_client.get(f"/sweeps/new/?template=lora_dropout&dataset={world.dataset.id}")
    assert page.status_code == 200
    html = page.content.decode()
    for key, template in plan.TEMPLATES.items():
        assert f'<option value="{key}"' in html, key
    assert '<option value="lora_dropout" selected>' in html
    assert f'<option value="{world.dataset.id}" selected>' in html
    assert "beta data" not in html  # another team's dataset is not offered
    assert 'id="id_early_stop" checked' in html and 'id="id_prune" checked' not in html
    assert 'src="/static/js/sweep_new.js"' in html and 'id="sweep-form-data"' in html


def test_a_succeeded_run_prefills_the_base(world, member_client):
    run = succeeded(world.run)
    html = member_client.get(f"/sweeps/new/?base_run={run.id}").content.decode()
    assert f'<option value="{run.id}" selected>' in html


def test_a_valid_form_launches_the_sweep_with_its_first_phase_queued(world, member_client):
    response = member_client.post("/sweeps/new/", form_data(world, name="ranks on alpha", tolerance="0.02"))
    sweep = Sweep.objects.get(name="ranks on alpha")
    assert response.status_code == 302 and response["Location"] == f"/sweeps/{sweep.id}/"
    assert sweep.template == "r" and sweep.queue == idle_queue() and sweep.early_stop and not sweep.prune
    members = list(SweepMember.objects.filter(sweep=sweep).order_by("index"))
    assert [m.name for m in members] == ["r=2", "r=4"]
    assert all(m.run.status == Run.Status.QUEUED and m.run.config["max_steps"] == 12 for m in members)
    assert sweep.phases.get().rule_params["tolerance"] == 0.02


def test_a_sweep_from_a_run_takes_its_config_and_dataset(world, member_client):
    run = succeeded(named_run(world.team, world.member, world.dataset, "base", max_steps=12, eval_split=0.2,
                              eval_steps=6, learning_rate=3e-4))
    response = member_client.post("/sweeps/new/", form_data(world, dataset="", base_run=str(run.id), overrides="",
                                                            template="learning_rate", values="1e-4, 2e-4"))
    assert response.status_code == 302, errors_of(response)
    sweep = Sweep.objects.get()
    assert sweep.base_run == run and sweep.dataset == world.dataset
    phase = sweep.phases.get()
    assert phase.key == "range_test"  # the procedure's first phase takes the values of its own


@pytest.mark.parametrize("fields, field, words", [
    ({"values": " , "}, "values", "at least one value"),
    ({"values": "2, many"}, "values", "r=many"),
    ({"values": "2, -4"}, "values", "r=-4"),
    ({"template": "epochs"}, "template", "Select a valid choice"),
    ({"overrides": "max_steps=twelve"}, "overrides", "max_steps: give a whole number"),
    ({"overrides": "learning_rte=0.1"}, "overrides", "learning_rte: not a config field"),
    ({"overrides": "train_file=/etc/passwd"}, "overrides", "train_file: set by Tuneboard"),
    ({"overrides": lines({k: v for k, v in TINY.items() if not k.startswith("eval")})}, "overrides",
     "judges members on eval loss"),
    ({"tolerance": "one percent"}, "tolerance", "give a number"),
    ({"confirm_top": "9"}, "confirm_top", "less than or equal to 5"),
    ({"queue": "gpu queue!"}, "queue", "letters, digits"),
    ({"dataset": ""}, "dataset", "choose the dataset"),
])
def test_bad_input_names_the_field_and_creates_nothing(world, member_client, fields, field, words):
    response = member_client.post("/sweeps/new/", form_data(world, **fields))
    assert response.status_code == 400
    errors = errors_of(response)
    assert field in errors and any(words in e for e in errors[field]), errors
    assert not Sweep.objects.exists() and Run.objects.count() == 2  # the world's two runs only
    assert words in response.content.decode().replace("&#x27;", "'")


def test_another_teams_run_or_dataset_is_no_such_one_in_this_team(world, member_client):
    other = succeeded(world.other_run)
    response = member_client.post("/sweeps/new/", form_data(world, base_run=str(other.id)))
    assert errors_of(response) == {"base_run": ["no such run in this team"]}
    response = member_client.post("/sweeps/new/", form_data(world, dataset=str(world.other_dataset.id)))
    assert errors_of(response) == {"dataset": ["no such dataset in this team"]}
    assert not Sweep.objects.exists()


def test_a_run_that_did_not_succeed_is_no_base(world, member_client):
    response = member_client.post("/sweeps/new/", form_data(world, base_run=str(world.run.id)))
    assert "a sweep starts from a succeeded run" in errors_of(response)["base_run"][0]


def test_a_procedure_the_base_cannot_take_is_refused_on_the_values(world, member_client, tmp_path):
    """A run built on another run's adapter has that adapter's rank: an r sweep cannot change it."""
    first = succeeded(world.run)
    built = named_run(world.team, world.member, world.dataset, "built", max_steps=12, eval_split=0.2, eval_steps=6)
    Run.objects.filter(id=built.id).update(base_run=first, base_kind=Run.BaseKind.ADAPTER)
    built = succeeded(built)
    response = member_client.post("/sweeps/new/", form_data(world, base_run=str(built.id), dataset="", overrides=""))
    assert response.status_code == 400
    errors = errors_of(response)
    assert "r" not in errors and any("r=2" in e for e in errors.get("values", [])), errors
    assert not Sweep.objects.exists()


def test_a_viewer_cannot_start_a_sweep(world, viewer_client):
    assert viewer_client.get("/sweeps/new/").status_code == 403
    assert viewer_client.post("/sweeps/new/", form_data(world)).status_code == 403
    assert viewer_client.post("/sweeps/new/preview/", form_data(world)).status_code == 403
    assert not Sweep.objects.exists()


def test_logged_out_is_sent_to_log_in(client, world):
    assert client.get("/sweeps/new/")["Location"].startswith("/accounts/login/")


# The preview: JSON, as the user types ------------------------------------------------------------------------------

def test_the_preview_lists_the_members_the_held_fields_budget_and_totals(world, member_client):
    answer = member_client.post("/sweeps/new/preview/", form_data(world, values="")).json()
    assert answer["errors"] == {}
    # 64 rows: the guidance's smallest dataset bucket gives the ranks; alpha = 2r held (the engine default's k).
    names = [m["name"] for m in answer["members"]]
    assert names == ["r=2", "r=4", "r=8"] and answer["values_text"] == "2, 4, 8"
    assert answer["members"][0]["values"] == {"r": 2, "lora_alpha": 4}
    assert answer["held"]["max_steps"] == 12 and answer["held"]["lora_alpha/r"] == 2.0
    assert answer["budget"] == {"max_steps": 12}
    assert answer["total_steps"] == 36
    assert answer["total_tokens"] == 3 * 12 * 8 * 128  # steps x batch x max_length, at most
    assert answer["phase"]["rule"] == "smallest_within_tolerance"
    assert "no history yet" in answer["gpu_time_text"] and answer["gpu_time"] is None
    assert not Sweep.objects.exists() and Run.objects.count() == 2


def test_the_preview_expects_gpu_time_from_the_teams_history(world, member_client):
    for seconds in (12, 24, 60):  # 1, 2 and 5 s a step over 12 steps: the median is 2
        run = named_run(world.team, world.member, world.dataset, f"past {seconds}", max_steps=12)
        succeeded(run, seconds=seconds, steps=12)
    other = named_run(world.team, world.member, world.dataset, "other backend", max_steps=12, backend="unsloth")
    succeeded(other, seconds=1200, steps=12)
    answer = member_client.post("/sweeps/new/preview/", form_data(world)).json()
    assert answer["gpu_time"]["per_step"] == pytest.approx(2.0)
    assert answer["gpu_time"]["runs"] == 3
    assert answer["gpu_time"]["seconds"] == pytest.approx(2.0 * 24)
    assert "48 s" in answer["gpu_time_text"]


def test_the_preview_names_the_bad_field_with_status_200(world, member_client):
    response = member_client.post("/sweeps/new/preview/", form_data(world, values="2, x"))
    assert response.status_code == 200
    assert any("r=x" in e for e in response.json()["errors"]["values"])
    answer = member_client.post("/sweeps/new/preview/", form_data(world, base_run=str(world.other_run.id))).json()
    assert answer["errors"] == {"base_run": ["no such run in this team"]}
    assert member_client.get("/sweeps/new/preview/").status_code == 405
    assert not Sweep.objects.exists()


def test_loftq_pairs_and_none_are_values(world, member_client):
    preset = make_preset(world.team, name="4-bit", **TINY)
    answer = member_client.post("/sweeps/new/preview/", form_data(
        world, template="loftq_config", preset=str(preset.id), overrides="", values="none, 4:1, 4:2")).json()
    assert answer["errors"] == {}
    assert [m["name"] for m in answer["members"]] == ["standard", "loftq(4,1)", "loftq(4,2)"]
    assert answer["members"][1]["values"] == {"loftq_config": {"loftq_bits": 4, "loftq_iter": 1}}


def test_a_member_of_two_teams_is_offered_both_and_each_sweep_is_its_dataset_team(world):
    user = make_member(world.other_team, user=world.member)
    client = client_for(user)
    html = client.get("/sweeps/new/").content.decode()
    assert "alpha data" in html and "beta data" in html
    response = client.post("/sweeps/new/", form_data(world, dataset=str(world.other_dataset.id)))
    assert response.status_code == 302
    assert Sweep.objects.get().team == world.other_team


# The open search: a space instead of values ----------------------------------------------------------------------

SPACE = '{"learning_rate": {"low": 1e-5, "high": 1e-3, "log": true}, "r": {"choices": [4, 8]}}'


def test_the_preview_of_a_search_says_how_many_trials_and_their_budget(world, member_client):
    answer = member_client.post("/sweeps/new/preview/", form_data(
        world, template="search", values="", search_space=SPACE, search_trials="6", search_parallel="3")).json()
    assert answer["errors"] == {}
    assert answer["search"] == {"trials": 6, "parallel": 3, "seed": 0}
    assert answer["members"] == [] and answer["total_steps"] == 6 * 12
    assert answer["phase"]["title"] == "Search over learning_rate, r: 6 trials, 3 at a time"
    assert not Sweep.objects.exists()


@pytest.mark.parametrize("fields, field, words", [
    ({"search_space": ""}, "search_space", "choose at least one field"),
    ({"search_space": "{learning_rate: 1}"}, "search_space", "not valid JSON"),
    ({"search_space": '{"model": {"choices": ["a", "b"]}}'}, "search_space", "model:"),
    ({"search_trials": "500"}, "search_trials", "a whole number from 1"),
])
def test_a_bad_search_names_the_field_and_creates_nothing(world, member_client, fields, field, words):
    data = form_data(world, template="search", values="", **{"search_space": SPACE, **fields})
    answer = member_client.post("/sweeps/new/preview/", data).json()
    assert any(words in e for e in answer["errors"].get(field, [])), answer["errors"]
    response = member_client.post("/sweeps/new/", data)
    assert response.status_code == 400 and field in errors_of(response)
    assert not Sweep.objects.exists()


def test_a_sweep_can_be_judged_on_an_eval_suite_and_a_bad_figure_is_named(world, member_client):
    import io
    import json

    from training.evaluation import services as evals

    rows = [{"prompt": f"q{i}", "reference": "red" if i % 2 else "blue"} for i in range(4)]
    suite = evals.suite_create_from_upload(team=world.team, user=world.member, name="colours", filename="s.jsonl",
                                           metric="classification", labels=["red", "blue"],
                                           file=io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode()))
    page = member_client.get("/sweeps/new/").content.decode()
    assert f'<option value="{suite.id}">colours (classification, 4 rows)</option>' in page
    bad = member_client.post("/sweeps/new/", form_data(world, eval_suite=str(suite.id), eval_figure="bleu"))
    assert bad.status_code == 400 and "has no figure 'bleu'" in " ".join(errors_of(bad)["eval_figure"])
    assert not Sweep.objects.exists()
    response = member_client.post("/sweeps/new/", form_data(world, name="on f1", eval_suite=str(suite.id),
                                                             eval_figure="macro_f1"))
    sweep = Sweep.objects.get(name="on f1")
    assert response.status_code == 302 and sweep.eval_suite == suite and sweep.eval_figure == "macro_f1"
    assert all(list(m.run.eval_suites.all()) == [suite] for m in SweepMember.objects.filter(sweep=sweep))
