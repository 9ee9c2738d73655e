"""Bad input to the OpenAI-compatible endpoints, without a worker: each is OpenAI's error shape with the parameter
named, changes nothing and is never a 500; another team's objects are 404s; no token is a 401."""
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from dashboard.tokens.services import token_create
from tests.factories import make_member, make_run, make_team
from training.models import Dataset, Run

# Transactional: the chat is an async view, whose database calls (database_sync_to_async) close the connection a
# test transaction would hold.
pytestmark = pytest.mark.django_db(transaction=True)


def headers(user) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=user, name='t')[1]}"}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def post(client, path, body, auth):
    return client.post(path, json.dumps(body), content_type="application/json", **auth)


def test_bad_jobs_files_and_pages_are_named_400s_and_change_nothing(team_member):
    team, user, dataset = team_member
    client, auth = Client(), headers(user)
    runs, datasets = Run.objects.count(), Dataset.objects.count()
    file_id = f"file-{dataset.id}"
    for body, param in (({"model": "m", "training_file": file_id, "hyperparameters": {"batch_size": 0}},
                         "hyperparameters.batch_size"),
                        ({"model": "tiny-model", "training_file": file_id, "tuneboard": {"queue": "no spaces!"}},
                         "tuneboard.queue"),
                        ({"model": "tiny-model", "training_file": file_id, "tuneboard": {"no_such_field": 1}},
                         "tuneboard.no_such_field"),
                        ({"model": "tiny-model", "training_file": "file-999999"}, "training_file")):
        status = 404 if param == "training_file" else 400
        assert error_of(post(client, "/v1/fine_tuning/jobs", body, auth), status)["param"] == param
    response = client.post("/v1/fine_tuning/jobs", "{not json", content_type="application/json", **auth)
    assert error_of(response, 400)["param"] is None
    upload = client.post("/v1/files", {"purpose": "batch", "file": SimpleUploadedFile("a.jsonl", b"{}\n")}, **auth)
    assert error_of(upload, 400)["param"] == "purpose"
    upload = client.post("/v1/files", {"purpose": "fine-tune", "file": SimpleUploadedFile("a.jsonl", b"nope\n")},
                         **auth)
    assert error_of(upload, 400)["param"] == "file"
    assert error_of(client.get("/v1/fine_tuning/jobs", {"limit": "0"}, **auth), 400)["param"] == "limit"
    assert error_of(client.get("/v1/fine_tuning/jobs", {"after": "x"}, **auth), 400)["param"] == "after"
    assert error_of(client.get("/v1/files", {"limit": "many"}, **auth), 400)["param"] == "limit"
    assert error_of(client.delete("/v1/fine_tuning/jobs", **auth), 405)
    assert error_of(client.get("/v1/chat/completions", **auth), 405)
    assert error_of(post(client, "/v1/chat/completions", {"model": "run-1", "messages": "hi"}, auth),
                    400)["param"] == "messages"
    assert (Run.objects.count(), Dataset.objects.count()) == (runs, datasets)


def test_another_teams_run_and_file_are_404s_and_no_token_a_401(team_member):
    team, user, dataset = team_member
    run = make_run(team, user, dataset)
    stranger = headers(make_member(make_team("Elsewhere")))
    client = Client()
    for path in (f"/v1/fine_tuning/jobs/ftjob-{run.id}", f"/v1/fine_tuning/jobs/ftjob-{run.id}/events",
                 f"/v1/fine_tuning/jobs/ftjob-{run.id}/checkpoints", f"/v1/files/file-{dataset.id}",
                 f"/v1/models/run-{run.id}"):
        assert error_of(client.get(path, **stranger), 404)
    assert error_of(client.post(f"/v1/fine_tuning/jobs/ftjob-{run.id}/cancel", **stranger), 404)
    chat = post(client, "/v1/chat/completions", {"model": f"run-{run.id}", "messages": [
        {"role": "user", "content": "hi"}]}, stranger)
    assert error_of(chat, 404)["code"] == "model_not_found"
    assert client.get("/v1/fine_tuning/jobs", **stranger).json()["data"] == []
    # The team's own member sees the queued run as a queued job, and a run that has not succeeded is no model yet.
    own = headers(user)
    job = client.get(f"/v1/fine_tuning/jobs/ftjob-{run.id}", **own).json()
    assert (job["status"], job["fine_tuned_model"], job["training_file"]) == ("queued", None, f"file-{dataset.id}")
    chat = post(client, "/v1/chat/completions", {"model": f"run-{run.id}", "messages": [
        {"role": "user", "content": "hi"}]}, own)
    assert error_of(chat, 400)["param"] == "model"
    assert error_of(client.get("/v1/models"), 401)["code"] == "missing_api_key"
    assert error_of(client.get("/v1/models", HTTP_AUTHORIZATION="Bearer tb_nope"), 401)["code"] == "invalid_api_key"
