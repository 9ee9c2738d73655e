"""The Eval suites pages: the team's suites with an upload checked by the services (each error on the field it
names, nothing saved), a suite's facts, first examples and evaluations; another team's suite is a 404 and a viewer
cannot upload."""
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from django.utils.html import escape

from training.evaluation import metrics, services
from training.models import EvalSuite, Evaluation

pytestmark = pytest.mark.django_db

QA = b'{"prompt": "2+2=", "reference": "4"}\n{"prompt": "Capital of France?", "reference": "Paris"}\n'
SENTIMENT = b'{"prompt": "I loved it", "reference": "positive"}\n{"prompt": "Awful", "reference": "negative"}\n'


@pytest.fixture(autouse=True)
def suites_dir(settings, tmp_path):
    """This test's own folder for the stored suites (the session's var dir does not cover SUITES_DIR)."""
    settings.SUITES_DIR = tmp_path / "suites"
    return settings.SUITES_DIR


def stored_files(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def upload(client, team, name="qa", content=QA, *, filename="suite.jsonl", metric="exact_match", labels="",
           max_new_tokens="32"):
    return client.post("/evaluation/suites/", {
        "team": str(team.id), "name": name, "file": SimpleUploadedFile(filename, content), "metric": metric,
        "labels": labels, "max_new_tokens": max_new_tokens})


def make_suite(team, user, name="qa", content=QA, metric="exact_match", labels=None) -> EvalSuite:
    return services.suite_create_from_upload(team=team, user=user, name=name, file=io.BytesIO(content),
                                             metric=metric, labels=labels, filename="suite.jsonl")


def errors_of(response) -> dict:
    return {name: " ".join(errors) for name, errors in response.context["form"].errors.items()}


def test_the_page_lists_only_the_teams_suites_and_offers_every_metric(world, member_client):
    make_suite(world.team, world.member, name="alpha qa")
    make_suite(world.other_team, world.outsider, name="beta qa")
    response = member_client.get("/evaluation/suites/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "alpha qa" in html and "beta qa" not in html and "Add an eval suite" in html
    for name, description in metrics.METRICS.items():
        assert f'value="{name}"' in html and escape(description) in html, name
    assert 'name="labels"' in html and 'name="max_new_tokens"' in html
    assert '<a href="/evaluation/suites/" aria-current="page">Eval suites</a>' in html


def test_an_upload_is_checked_and_recorded(world, member_client, suites_dir):
    response = upload(member_client, world.team, "arithmetic")
    suite = EvalSuite.objects.get(name="arithmetic")
    assert response.status_code == 302 and response["Location"] == f"/evaluation/suites/{suite.id}/"
    assert (suite.team, suite.rows, suite.format, suite.metric, suite.max_new_tokens, suite.labels) == (
        world.team, 2, "prompt_completion", "exact_match", 32, [])
    assert stored_files(suites_dir) == [suites_dir / str(world.team.id) / suite.path.rsplit("/", 1)[1]]
    html = member_client.get(response["Location"]).content.decode()
    assert "Eval suite arithmetic added: 2 examples, exact_match." in html
    assert "Capital of France?" in html and "Paris" in html
    row = member_client.get("/evaluation/suites/").content.decode()
    assert f'data-suite="{suite.id}"' in row and "prompt and reference" in row


def test_a_classification_suite_keeps_its_label_set(world, member_client):
    response = upload(member_client, world.team, "sentiment", SENTIMENT, metric="classification",
                      labels=" positive, negative ,")
    assert response.status_code == 302
    assert EvalSuite.objects.get(name="sentiment").labels == ["positive", "negative"]


def test_labels_left_in_the_hidden_field_do_not_count_for_another_metric(world, member_client):
    assert upload(member_client, world.team, "qa", labels="yes, no").status_code == 302
    assert EvalSuite.objects.get(name="qa").labels == []


def test_chat_rows_end_in_their_reference(world, member_client):
    chats = "".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}"},
                                             {"role": "assistant", "content": w}]}) + "\n" for w in ("hi", "bye"))
    response = upload(member_client, world.team, "chat", chats.encode())
    suite = EvalSuite.objects.get(name="chat")
    assert response.status_code == 302 and suite.format == "messages"
    html = member_client.get(f"/evaluation/suites/{suite.id}/").content.decode()
    assert "user: Say bye" in html


@pytest.mark.parametrize("fields, field, message", [
    ({"content": b'{"prompt": "a", "reference": "b"}\nnot json\n'}, "file", "row 2"),
    ({"content": b""}, "file", "empty"),
    ({"content": b'{"text": "no answer here"}\n'}, "file", "plain text rows have no reference answer"),
    ({"content": b'{"colour": "red"}\n'}, "file", "match no single format"),
    ({"content": b'{"prompt": "a", "reference": "b"}\n', "filename": "suite.exe"}, "file", ""),
    ({"content": SENTIMENT.replace(b'"negative"', b'"meh"'), "metric": "classification",
      "labels": "positive, negative"}, "file", "row 2: reference 'meh' is not one of the labels"),
    ({"metric": "classification", "labels": "positive"}, "labels", "at least two labels"),
    ({"metric": "classification", "labels": "Yes, yes!"}, "labels", "the same once normalised"),
    ({"metric": "bleu"}, "metric", "Select a valid choice"),
    ({"max_new_tokens": "0"}, "max_new_tokens", "an integer from 1 to 4096"),
    ({"max_new_tokens": "lots"}, "max_new_tokens", "Enter a whole number"),
    ({"name": ""}, "name", "required"),
    ({"name": "alpha qa"}, "name", "already has an eval suite called 'alpha qa'"),
])
def test_each_bad_input_is_refused_on_its_field_and_nothing_is_saved(world, member_client, suites_dir, fields,
                                                                      field, message):
    make_suite(world.team, world.member, name="alpha qa")
    before, files = EvalSuite.objects.count(), stored_files(suites_dir)
    response = upload(member_client, world.team, **{"name": "new", **fields})
    assert response.status_code == 400
    errors = errors_of(response)
    assert field in errors and message in errors[field], errors
    assert EvalSuite.objects.count() == before and stored_files(suites_dir) == files
    html = response.content.decode()
    assert 'class="field has-error" data-field="%s"' % field in html or field == "metric"


TASK = b"""task: team_colours
output_type: multiple_choice
doc_to_text: "{{question}} Answer:"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
DOCS = b"".join(json.dumps({"question": f"Colour of thing {i}?", "choices": ["red", "blue"], "label": i % 2}).encode()
                + b"\n" for i in range(3))


def upload_task(client, team, name="harness", task=TASK, docs=DOCS, metric="lm_eval"):
    return client.post("/evaluation/suites/", {
        "team": str(team.id), "name": name, "file": SimpleUploadedFile("docs.jsonl", docs), "metric": metric,
        "labels": "", "max_new_tokens": "64", "task_config": SimpleUploadedFile("task.yaml", task)})


def test_an_lm_eval_task_is_its_yaml_and_its_documents(world, member_client):
    response = upload_task(member_client, world.team)
    suite = EvalSuite.objects.get(name="harness")
    assert response.status_code == 302 and (suite.metric, suite.rows) == ("lm_eval", 3)
    assert suite.task_config == TASK.decode()
    Evaluation.objects.create(team=world.team, suite=suite, model="tiny-model", queue="q", status="succeeded",
                              figures={"acc": 0.5, "acc_stderr": 0.2, "examples": 3})
    html = member_client.get(f"/evaluation/suites/{suite.id}/").content.decode()
    assert "Task YAML" in html and "doc_to_text" in html and escape('"question": "Colour of thing 2?"') in html
    assert "acc <strong>0.5</strong>" in html and "acc_stderr" not in html


@pytest.mark.parametrize("task, message", [
    (None, "an lm_eval suite needs its task's YAML file"),
    (b"\xff\xfe", "UTF-8"),
    (b"task: x\noutput_type: multiple_choice\ndoc_to_text: !function utils.f\ndoc_to_target: b", "!function"),
    (TASK.replace(b'"{{choices}}"', b"\"{{ lipsum.__globals__['os'].popen('id').read() }}\""),
     "doc_to_choice: the template reads __globals__, lipsum"),
    (TASK.replace(b'"{{question}} Answer:"', b"\"{{ question|attr('__cla' ~ 'ss__') }}\""),
     "doc_to_text: document 1: the template tried what a task's template may not"),
    (TASK.replace(b'"{{question}} Answer:"', b'"{{ answer }}"'), "doc_to_text: document 1: UndefinedError"),
])
def test_a_bad_task_yaml_is_refused_on_its_field(world, member_client, task, message):
    if task is None:
        response = member_client.post("/evaluation/suites/", {
            "team": str(world.team.id), "name": "harness", "file": SimpleUploadedFile("docs.jsonl", DOCS),
            "metric": "lm_eval", "max_new_tokens": "64"})
    else:
        response = upload_task(member_client, world.team, task=task)
    assert response.status_code == 400 and message in errors_of(response)["task_config"]
    assert not EvalSuite.objects.exists()


def test_a_task_yaml_left_in_its_hidden_field_does_not_count_for_another_metric(world, member_client):
    response = upload_task(member_client, world.team, name="qa", docs=QA, metric="exact_match")
    assert response.status_code == 302 and EvalSuite.objects.get(name="qa").task_config == ""


def test_row_errors_are_listed_under_the_file(world, member_client):
    content = b'{"prompt": "a", "reference": "b"}\n{"prompt": "c"}\n{"prompt": "d", "reference": 5}\n'
    response = upload(member_client, world.team, "broken", content)
    html = response.content.decode()
    assert response.status_code == 400 and '<ul class="field-error row-errors">' in html
    assert "row 2" in html and "row 3" in html


def test_uploading_to_another_team_is_refused(world, member_client):
    response = upload(member_client, world.other_team, "sneaky")
    assert response.status_code == 400 and "team" in errors_of(response)
    assert not EvalSuite.objects.filter(name="sneaky").exists()


def test_a_viewer_sees_the_suites_but_cannot_upload(world, viewer_client):
    make_suite(world.team, world.member, name="alpha qa")
    html = viewer_client.get("/evaluation/suites/").content.decode()
    assert "alpha qa" in html and "Add an eval suite" not in html and "needs the member role" in html
    assert upload(viewer_client, world.team, "viewer qa").status_code == 403
    assert not EvalSuite.objects.filter(name="viewer qa").exists()


def test_the_suite_page_shows_its_facts_first_examples_and_evaluations_newest_first(world, member_client):
    rows = "".join(json.dumps({"prompt": f"question {i}", "reference": f"answer {i}"}) + "\n" for i in range(25))
    suite = make_suite(world.team, world.member, name="long", content=rows.encode(), metric="contains")
    base = Evaluation.objects.create(team=world.team, suite=suite, model="tiny-model", queue="q", status="succeeded",
                                     figures={"contains": 0.25, "examples": 25}, examples_per_s=12.5,
                                     finished_at=timezone.now())
    later = Evaluation.objects.create(team=world.team, suite=suite, run=world.run, model="tiny-model", queue="q",
                                      adapters="off")
    response = member_client.get(f"/evaluation/suites/{suite.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "question 0" in html and "answer 19" in html and "question 20" not in html
    assert "the first 20 of 25" in html and escape(metrics.METRICS["contains"]) in html
    assert [e["id"] for e in response.context["evaluations"]] == [later.id, base.id]
    assert html.index(f'data-evaluation="{later.id}"') < html.index(f'data-evaluation="{base.id}"')
    assert "final, adapters off" in html and "alpha run" in html and "base model <code>tiny-model</code>" in html
    assert "contains <strong>0.25</strong>" in html and "examples/s <strong>12.5</strong>" in html


def test_another_teams_suite_is_a_404(world, member_client, client):
    suite = make_suite(world.other_team, world.outsider, name="beta qa")
    assert member_client.get(f"/evaluation/suites/{suite.id}/").status_code == 404
    assert member_client.get("/evaluation/suites/99999/").status_code == 404
    assert client.get(f"/evaluation/suites/{suite.id}/").status_code == 302  # to the login page
