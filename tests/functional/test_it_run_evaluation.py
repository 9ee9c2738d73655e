"""The run page's Evaluation section: the run's evaluations with their headline figures and the examples they got
wrong beside the base model's outputs; Evaluate (a suite, the final adapter or a saved checkpoint, adapters on or
off, the base model too) queues on the run's queue, bad input says why and creates nothing, a viewer cannot; the
JSON the page polls while one is under way."""
import io
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from tests.factories import idle_queue, make_run
from training.evaluation import services
from training.models import EvalExample, EvalSuite, Evaluation, Run

pytestmark = pytest.mark.django_db

QA = b'{"prompt": "2+2=", "reference": "4"}\n{"prompt": "Capital of France?", "reference": "Paris"}\n'
SENTIMENT = (b'{"prompt": "I loved it", "reference": "positive"}\n{"prompt": "Awful", "reference": "negative"}\n'
             b'{"prompt": "Great", "reference": "positive"}\n')


@pytest.fixture(autouse=True)
def suites_dir(settings, tmp_path):
    settings.SUITES_DIR = tmp_path / "suites"


def make_suite(team, user, name="qa", content=QA, metric="exact_match", labels=None) -> EvalSuite:
    return services.suite_create_from_upload(team=team, user=user, name=name, file=io.BytesIO(content),
                                             metric=metric, labels=labels, filename="suite.jsonl")


def succeeded_run(world, tmp_path, *, checkpoints=()) -> Run:
    """A run of the team on a queue no worker takes, succeeded with an adapter and the given checkpoints saved."""
    run = make_run(world.team, world.member, world.dataset)
    adapter = Path(run.artifact_dir) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    for step in checkpoints:
        folder = Path(run.artifact_dir) / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
    (Path(run.artifact_dir) / "checkpoints" / "checkpoint-99").mkdir(parents=True)  # no adapter in it: not offered
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, adapter_path=str(adapter),
                                         finished_at=timezone.now())
    run.refresh_from_db()
    return run


def finished(evaluation: Evaluation, outputs: list[str], scores: list[float], figures: dict, labels=None) -> None:
    """Record an evaluation's results as the worker would."""
    examples = services.suite_examples(evaluation.suite)
    EvalExample.objects.bulk_create([
        EvalExample(evaluation=evaluation, index=e["index"], prompt=services.prompt_of(e), reference=e["reference"],
                    output=o, score=s, label=(labels or [""] * len(outputs))[i])
        for i, (e, o, s) in enumerate(zip(examples, outputs, scores))])
    Evaluation.objects.filter(id=evaluation.id).update(status=Evaluation.Status.SUCCEEDED, figures=figures,
                                                       examples_per_s=42.0, finished_at=timezone.now())
    evaluation.refresh_from_db()


def evaluate(client, run, chosen, **fields):
    return client.post(f"/runs/{run.id}/evaluate/", {"suite": str(chosen.id), "checkpoint": "final",
                                                     "adapters": "on", **fields}, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_section_offers_the_teams_suites_and_the_saved_checkpoints(world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path, checkpoints=(5, 10))
    make_suite(world.team, world.member, name="alpha qa")
    make_suite(world.other_team, world.outsider, name="beta qa")
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    section = html[html.index('<section class="card" id="evaluation"'):html.index('<div class="run-grid lower">')]
    assert "<h2>Evaluation</h2>" in section and "Not evaluated yet." in section
    assert 'action="/runs/%d/evaluate/"' % run.id in section and "alpha qa (2 rows, exact_match)" in section
    assert "beta qa" not in section
    assert ['final', '10', '5'] == [v for v in ("final", "10", "5", "99") if f'<option value="{v}"' in section]
    assert section.index('value="10"') < section.index('value="5"')  # the latest checkpoint first
    assert "Also evaluate the base model" in section and 'src="/static/js/run_evaluation.js"' in html
    assert 'data-active="0"' in section


def test_without_a_suite_or_an_adapter_the_section_says_what_is_missing(world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path)
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    assert "No eval suites in Alpha yet" in html and 'id="evaluate-form"' not in html
    make_suite(world.team, world.member)
    queued = make_run(world.team, world.member, world.dataset)
    html = member_client.get(f"/runs/{queued.id}/").content.decode()
    assert "once it saves a checkpoint or its final adapter" in html and 'id="evaluate-form"' not in html


def test_evaluate_queues_an_evaluation_on_the_runs_queue(world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path)
    suite = make_suite(world.team, world.member)
    response = evaluate(member_client, run, suite)
    assert response.redirect_chain == [(f"/runs/{run.id}/#evaluation", 302)]
    evaluation = Evaluation.objects.get(run=run)
    assert (evaluation.suite, evaluation.queue, evaluation.checkpoint_step, evaluation.adapters,
            evaluation.status, evaluation.adapter_path, evaluation.model) == (
        suite, idle_queue(), None, "on", "queued", run.adapter_path, "tiny-model")
    assert not Evaluation.objects.filter(run__isnull=True).exists()
    assert messages_of(response) == [f"Evaluation of final on qa queued on {idle_queue()}."]
    html = response.content.decode()
    assert f'data-evaluation="{evaluation.id}" data-status="queued"' in html and 'data-active="1"' in html
    assert "waiting for a worker on" in html


def test_evaluate_a_checkpoint_with_its_adapters_off_and_the_base_model_beside_it(world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path, checkpoints=(5,))
    suite = make_suite(world.team, world.member)
    response = evaluate(member_client, run, suite, checkpoint="5", adapters="off", base="on")
    evaluation = Evaluation.objects.get(run=run)
    base = Evaluation.objects.get(run__isnull=True)
    assert evaluation.checkpoint_step == 5 and evaluation.adapters == "off"
    assert evaluation.adapter_path == str(Path(run.artifact_dir) / "checkpoints" / "checkpoint-5")
    assert (base.team, base.suite, base.model, base.queue, base.decoding, base.adapter_path) == (
        world.team, suite, "tiny-model", idle_queue(), evaluation.decoding, "")
    assert "checkpoint 5, adapters off on qa" in messages_of(response)[0]
    assert "the base model's too" in messages_of(response)[0]
    # Asked again, the base model's evaluation of the same suite and decoding is reused.
    response = evaluate(member_client, run, suite, base="on")
    assert Evaluation.objects.filter(run__isnull=True).count() == 1 and Evaluation.objects.filter(run=run).count() == 2
    assert "the base model's from before is reused (queued)" in messages_of(response)[0]


@pytest.mark.parametrize("fields, message", [
    ({"checkpoint": "7"}, "checkpoint: run #{run} saved no checkpoint at step 7; saved: 5"),
    ({"checkpoint": "99"}, "checkpoint: run #{run} saved no checkpoint at step 99; saved: 5"),
    ({"checkpoint": ""}, "checkpoint: This field is required"),
    ({"adapters": "sideways"}, "adapters: Select a valid choice"),
    ({"suite": "999999"}, "suite: no such eval suite in this run's team"),
])
def test_bad_input_says_why_and_creates_nothing(world, member_client, tmp_path, fields, message):
    run = succeeded_run(world, tmp_path, checkpoints=(5,))
    suite = make_suite(world.team, world.member)
    response = evaluate(member_client, run, suite, base="on", **fields)
    assert response.redirect_chain == [(f"/runs/{run.id}/#evaluation", 302)]
    message = message.format(run=run.id)
    assert any(m.startswith(message) for m in messages_of(response)), messages_of(response)
    assert not Evaluation.objects.exists()


def test_another_teams_suite_is_refused(world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path)
    theirs = make_suite(world.other_team, world.outsider, name="beta qa")
    response = evaluate(member_client, run, theirs)
    assert messages_of(response) == ["suite: no such eval suite in this run's team; choose one from the list"]
    assert not Evaluation.objects.exists()


def test_a_run_still_training_has_no_final_adapter_to_evaluate(world, member_client):
    run = make_run(world.team, world.member, world.dataset)
    suite = make_suite(world.team, world.member)
    response = evaluate(member_client, run, suite)
    assert messages_of(response) == [f"checkpoint: run #{run.id} is queued and saved no final adapter; evaluate a "
                                     "saved checkpoint (saved: none), or wait for it to succeed"]
    assert not Evaluation.objects.exists()


def test_a_prompt_beyond_the_models_context_is_refused_on_the_suite(world, member_client, tmp_path, tiny_model):
    run = succeeded_run(world, tmp_path)
    Run.objects.filter(id=run.id).update(config={**run.config, "model": tiny_model})
    run.refresh_from_db()
    suite = make_suite(world.team, world.member, name="long",
                       content=b'{"prompt": "%s", "reference": "x"}\n' % ("word " * 5000).encode())
    response = evaluate(member_client, run, suite, base="on")
    assert any(m.startswith("suite: row 1: its prompt is") for m in messages_of(response)), messages_of(response)
    assert not Evaluation.objects.exists()


def test_a_refused_base_model_evaluation_undoes_the_runs(world, member_client, tmp_path, monkeypatch):
    run = succeeded_run(world, tmp_path)
    suite = make_suite(world.team, world.member)
    create = services.evaluation_create

    def refuse_the_base(**kwargs):
        if kwargs.get("run") is None:
            raise ValidationError({"model": "not a model this worker can load"})
        return create(**kwargs)

    monkeypatch.setattr(services, "evaluation_create", refuse_the_base)
    response = evaluate(member_client, run, suite, base="on")
    assert messages_of(response) == ["model: not a model this worker can load"]
    assert not Evaluation.objects.exists()


def test_a_viewer_sees_the_evaluations_but_cannot_evaluate(world, viewer_client, tmp_path):
    run = succeeded_run(world, tmp_path)
    suite = make_suite(world.team, world.member)
    Evaluation.objects.create(team=world.team, suite=suite, run=run, model="tiny-model", queue=run.queue)
    html = viewer_client.get(f"/runs/{run.id}/").content.decode()
    assert "<h2>Evaluation</h2>" in html and "Queued" in html and 'id="evaluate-form"' not in html
    assert viewer_client.post(f"/runs/{run.id}/evaluate/", {"suite": str(suite.id), "checkpoint": "final",
                                                           "adapters": "on"}).status_code == 403
    assert Evaluation.objects.count() == 1


def test_another_teams_run_cannot_be_evaluated_or_read(world, member_client, tmp_path):
    suite = make_suite(world.team, world.member)
    assert member_client.post(f"/runs/{world.other_run.id}/evaluate/", {"suite": str(suite.id)}).status_code == 404
    assert member_client.get(f"/runs/{world.other_run.id}/evaluations.json").status_code == 404
    assert member_client.get(f"/runs/{world.run.id}/evaluate/").status_code == 405
    assert not Evaluation.objects.exists()


def test_figures_and_the_wrong_examples_beside_the_base_models_outputs(world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path)
    suite = make_suite(world.team, world.member)
    evaluation = Evaluation.objects.create(team=world.team, suite=suite, run=run, model="tiny-model",
                                           queue=run.queue, decoding={"max_new_tokens": 64, "temperature": 0.0,
                                                                      "top_p": 1.0, "seed": 0})
    base = Evaluation.objects.create(team=world.team, suite=suite, model="tiny-model", queue=run.queue,
                                     decoding=evaluation.decoding)
    finished(evaluation, ["4", "Lyon"], [1.0, 0.0], {"exact_match": 0.5, "examples": 2})
    finished(base, ["5", "Berlin, I think"], [0.0, 0.0], {"exact_match": 0.0, "examples": 2})
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    item = html[html.index(f'data-evaluation="{evaluation.id}"'):html.index('id="evaluate-form"')]
    assert "exact match <strong>0.5</strong>" in item and "examples/s <strong>42</strong>" in item
    assert f'data-base="{base.id}"' in item and "exact match <strong>0</strong>" in item
    assert "1 of 2 examples wrong" in item
    wrong = item[item.index("<details"):item.index("</details>")]
    assert "Capital of France?" in wrong and "Lyon" in wrong and "Berlin, I think" in wrong
    assert "2+2=" not in wrong  # right, so not listed
    assert 'data-active="0"' in html


def test_a_classification_suite_shows_accuracy_macro_f1_minority_recall_and_the_predicted_labels(
        world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path)
    suite = make_suite(world.team, world.member, name="sentiment", content=SENTIMENT, metric="classification",
                       labels=["positive", "negative"])
    evaluation = Evaluation.objects.create(team=world.team, suite=suite, run=run, model="tiny-model", queue="q")
    finished(evaluation, ["positive", "positive!", "positive"], [1.0, 0.0, 1.0],
             {"accuracy": 0.6667, "macro_f1": 0.4, "minority_class": "negative", "minority_precision": 0.0,
              "minority_recall": 0.0, "minority_f1": 0.0, "examples": 3}, labels=["positive", "positive", "positive"])
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    assert "accuracy <strong>0.6667</strong>" in html and "macro-F1 <strong>0.4</strong>" in html
    assert "recall of negative (minority) <strong>0</strong>" in html
    start = html.index('<details class="wrong-examples"')
    wrong = html[start:html.index("</details>", start)]
    assert "Awful" in wrong and "positive!" in wrong and "predicted: positive" in wrong and "I loved it" not in wrong
    assert "Base model" not in wrong  # no base-model evaluation of this suite


def test_a_failed_evaluation_shows_its_reason(world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path)
    suite = make_suite(world.team, world.member)
    Evaluation.objects.create(team=world.team, suite=suite, run=run, model="tiny-model", queue="q", status="failed",
                              error="row 1: its prompt is too long\nTraceback ...")
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    assert "Failed" in html and "row 1: its prompt is too long" in html and "Traceback" not in html


def test_the_json_says_to_keep_polling_until_every_evaluation_ended(world, member_client, tmp_path):
    run = succeeded_run(world, tmp_path)
    suite = make_suite(world.team, world.member)
    evaluation = Evaluation.objects.create(team=world.team, suite=suite, run=run, model="tiny-model",
                                           queue=run.queue)
    state = member_client.get(f"/runs/{run.id}/evaluations.json").json()
    assert state["active"] is True and state["pending_suites"] == [] and state["run_ended"] is True
    assert 'id="evaluate-form"' in state["form_html"] and 'name="csrfmiddlewaretoken"' in state["form_html"]
    [row] = state["evaluations"]
    assert (row["id"], row["suite"], row["what"], row["status"], row["queue"]) == (
        evaluation.id, "qa", "final", "queued", run.queue)
    assert f'data-evaluation="{evaluation.id}" data-status="queued"' in state["html"]
    Evaluation.objects.filter(id=evaluation.id).update(status="running")
    assert member_client.get(f"/runs/{run.id}/evaluations.json").json()["evaluations"][0]["status"] == "running"
    finished(evaluation, ["4", "Paris"], [1.0, 1.0], {"exact_match": 1.0, "examples": 2})
    state = member_client.get(f"/runs/{run.id}/evaluations.json").json()
    assert state["active"] is False and state["evaluations"][0]["headline"] == [
        {"name": "exact_match", "label": "exact match", "value": 1.0}]
    assert "Every example right." in state["html"]


def test_a_run_that_evaluates_at_its_end_says_so_and_polls_until_it_is_queued(world, member_client, tmp_path):
    suite = make_suite(world.team, world.member)
    run = make_run(world.team, world.member, world.dataset)
    run.eval_suites.set([suite])
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    assert "At its end the run is evaluated on" in html and 'data-active="1" data-run-ended="0"' in html
    state = member_client.get(f"/runs/{run.id}/evaluations.json").json()
    assert state["run_ended"] is False and "once it saves a checkpoint" in state["form_html"]
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED)
    assert "Queuing the evaluation at the end on" in member_client.get(f"/runs/{run.id}/evaluations.json").json()[
        "html"]
    Evaluation.objects.create(team=world.team, suite=suite, run=run, model="tiny-model", queue=run.queue,
                              status="succeeded", figures={"exact_match": 0.0, "examples": 2})
    state = member_client.get(f"/runs/{run.id}/evaluations.json").json()
    assert state["pending_suites"] == [] and state["active"] is False
    Run.objects.filter(id=world.run.id).update(status=Run.Status.FAILED)
    world.run.eval_suites.set([suite])
    assert member_client.get(f"/runs/{world.run.id}/evaluations.json").json()["active"] is False
