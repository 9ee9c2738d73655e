"""Bad input to every write endpoint (and to the lists' parameters) is a 400 in the one shape, {"errors": {field:
[message, ...]}}, naming the field and what is allowed, never a 500; the run form's field errors and the fit
planner's refusal come back on the same keys; bodies over the limit are a 413 naming it; nothing is saved."""
import json

import pytest
from django.conf import settings
from django.test import override_settings

from tests.factories import idle_queue

from training.models import Dataset, Run, Sweep, Worker

from .conftest import upload

pytestmark = pytest.mark.django_db
GiB = 1024 ** 3


def errors_of(response) -> dict[str, list[str]]:
    assert response.status_code == 400, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"errors"} and body["errors"], body
    assert all(isinstance(v, list) and v and all(isinstance(m, str) for m in v) for v in body["errors"].values())
    return body["errors"]


def test_run_create_refuses_bad_fields_by_name(api_world, tiny_model):
    a = api_world.a
    client = api_world.client(a.member)
    ok = {"dataset": a.dataset.id, "overrides": {"model": tiny_model, "backend": "hf", "max_steps": 5}}
    cases = [
        ({}, {"dataset": "required"}),
        ({"dataset": "first"}, {"dataset": "valid integer"}),
        ({**ok, "overrides": [1, 2]}, {"overrides": "dictionary"}),
        ({**ok, "overrides": {**ok["overrides"], "learning_rate": "fast"}}, {"learning_rate": "valid number"}),
        ({**ok, "overrides": {**ok["overrides"], "r": 0}}, {"r": "0 is below 1: at least 1"}),
        ({**ok, "overrides": {**ok["overrides"], "lora_rank": 8}}, {"lora_rank": "unknown field; allowed fields:"}),
        ({**ok, "overrides": {**ok["overrides"], "train_file": "/etc/passwd"}}, {"train_file": "pick another dataset"}),
        ({**ok, "overrides": {**ok["overrides"], "model": "/etc"}}, {"model": "TUNEBOARD_MODEL_ROOTS"}),
        ({**ok, "queue": "no spaces please"}, {"queue": "letters, digits"}),
        ({**ok, "eval_checkpoints": True}, {"eval_checkpoints": "choose the suites"}),
        ({**ok, "eval_suites": [10**9]}, {"eval_suites": "no such eval suite"}),
        ({**ok, "base_kind": "weights"}, {"base_kind": "not a valid choice"}),
        ({**ok, "name": "x" * 201}, {"name": "200 characters"}),
        ({**ok, "preset": "default"}, {"preset": "valid integer"}),
        ({**ok, "trackers": ["wandb"]}, {"trackers": "no tracker 'wandb'; choose from tensorboard, mlflow"}),
        ({**ok, "trackers": ["mlflow"]}, {"trackers": "has no MLflow server yet"}),
    ]
    for body, expected in cases:
        errors = errors_of(client.post("/api/v1/runs/", body))
        for key, text in expected.items():
            assert key in errors and any(text in m for m in errors[key]), (body, errors)
    assert Run.objects.filter(team=a.team).count() == 1
    created = client.post("/api/v1/runs/", {**ok, "queue": idle_queue(), "trackers": ["tensorboard"]})
    assert created.status_code == 201 and Run.objects.get(id=created.json()["id"]).trackers == ["tensorboard"]


def test_a_config_that_fits_no_gpu_worker_is_refused_on_fit_as_the_form_refuses_it(api_world, tiny_model):
    a = api_world.a
    Worker.objects.create(name="box-t4@api-test", hostname="box-t4", queues=["api-fit-test"],
                          gpus=[{"name": "NVIDIA T4", "memory_total": 2 * GiB, "memory_used": 0, "utilization": 0}])
    too_big = {"model": tiny_model, "backend": "hf", "optim": "adamw_torch", "max_length": 1024, "packing": True,
               "per_device_train_batch_size": 32, "gradient_accumulation_steps": 2, "max_steps": 20,
               "gradient_checkpointing": False}
    client = api_world.client(a.member)
    errors = errors_of(client.post("/api/v1/runs/", {"dataset": a.dataset.id, "overrides": too_big,
                                                     "queue": "api-fit-test"}))
    assert list(errors) == ["fit"]
    assert "fits no live GPU worker on this queue (the largest: box-t4@api-test, 2.0 GiB)" in errors["fit"][0]
    assert "per_device_train_batch_size 16 × gradient_accumulation_steps 4" in errors["fit"][0]
    assert Run.objects.filter(team=a.team).count() == 1


def test_the_body_itself_bad_json_other_types_and_too_large(api_world):
    a = api_world.a
    client = api_world.client(a.member)
    headers = client.headers
    raw = client.client.post("/api/v1/runs/", "{not json", content_type="application/json", **headers)
    assert "not valid JSON" in errors_of(raw)["__all__"][0]
    listed = client.client.post("/api/v1/runs/", "[1, 2]", content_type="application/json", **headers)
    assert errors_of(listed)["__all__"]
    text = client.client.post("/api/v1/runs/", "dataset=1", content_type="text/plain", **headers)
    assert text.status_code == 415 and "text/plain" in text.json()["detail"]
    big = json.dumps({"dataset": a.dataset.id, "name": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)})
    too_large = client.client.post("/api/v1/runs/", big, content_type="application/json", **headers)
    assert too_large.status_code == 413
    assert f"takes at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes" in too_large.json()["detail"]
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in too_large.json()["detail"]
    with override_settings(TUNEBOARD_DATASET_MAX_BYTES=1000):
        huge = client.upload("/api/v1/datasets/", {"name": "huge",
                                                   "file": upload("data.jsonl", b'{"text": "a"}\n' * 10**5)})
        assert huge.status_code == 413 and "TUNEBOARD_DATASET_MAX_BYTES" in huge.json()["detail"]
    assert Run.objects.filter(team=a.team).count() == 1 and Dataset.objects.filter(team=a.team).count() == 1


def test_dataset_upload_and_register_refuse_as_the_page_does(api_world, settings, tmp_path):
    a = api_world.a
    client = api_world.client(a.member)
    rows = b'{"text": "fine"}\n{"text": ""}\n{"txt": "wrong column"}\n'
    errors = errors_of(client.upload("/api/v1/datasets/", {"name": "broken", "file": upload("data.jsonl", rows)}))
    assert any("row 2" in m for m in errors["file"]) or any("line 2" in m for m in errors["file"]), errors
    errors = errors_of(client.upload("/api/v1/datasets/", {"name": "no file"}))
    assert "file" in errors
    errors = errors_of(client.upload("/api/v1/datasets/", {"name": a.dataset.name,
                                                           "file": upload("data.jsonl", b'{"text": "a"}\n')}))
    assert "already has a dataset called" in errors["name"][0]
    qa = b'{"question": "q?", "answer": "a"}\n' * 3
    errors = errors_of(client.upload("/api/v1/datasets/", {"name": "qa", "file": upload("data.jsonl", qa)}))
    assert "match no single format" in " ".join(errors.get("format", []) + errors.get("file", []))
    mapped = client.upload("/api/v1/datasets/", {"name": "qa", "file": upload("data.jsonl", qa),
                                                 "format": "prompt_completion",
                                                 "column_prompt": "question", "column_completion": "answer"})
    assert mapped.status_code == 201 and mapped.json()["format"] == "prompt_completion"
    errors = errors_of(client.upload("/api/v1/datasets/", {"name": "n", "file": upload("data.csv", b"a,b\n"),
                                                           "format": "yaml"}))
    assert "format" in errors
    errors = errors_of(client.upload("/api/v1/datasets/", {"team": "alpha", "name": "n",
                                                           "file": upload("data.jsonl", b'{"text": "a"}\n')}))
    assert "no such team of yours: 'alpha'" in errors["team"][0]
    admin = api_world.client(a.admin)
    settings.TUNEBOARD_DATASET_ROOTS = [str(tmp_path / "root")]
    for body, key, text in [
        ({"team": a.team.id, "name": "r"}, "path", "required"),
        ({"team": a.team.id, "name": "r", "path": "relative.jsonl"}, "path", "absolute path"),
        ({"team": a.team.id, "name": "r", "path": "/etc/passwd"}, "path", "TUNEBOARD_DATASET_ROOTS"),
        ({"team": a.team.id, "name": "", "path": "/x.jsonl"}, "name", "required"),
    ]:
        errors = errors_of(admin.post("/api/v1/datasets/register/", body))
        assert any(text in m for m in errors[key]), errors
    assert Dataset.objects.filter(team=a.team).count() == 2  # the one before and the mapped upload


def test_dataset_statistics_refuse_bad_fields(api_world):
    a = api_world.a
    client = api_world.client(a.member)
    path = f"/api/v1/datasets/{a.dataset.id}/profile/"
    assert "model" in errors_of(client.post(path, {}))
    assert "max_length" in errors_of(client.post(path, {"model": "tiny-model", "max_length": 4}))
    assert "eval_ratio" in errors_of(client.post(path, {"model": "tiny-model", "eval_ratio": "half"}))
    assert "eval_dataset" in errors_of(client.post(path, {"model": "tiny-model",
                                                          "eval_dataset": api_world.b.dataset.id}))
    assert "model" in errors_of(client.post(path, {"model": "/etc"}))
    assert "profile" not in Dataset.objects.get(id=a.dataset.id).stats


def test_resume_and_stop_refuse_what_the_page_refuses(api_world):
    a = api_world.a
    client = api_world.client(a.member)
    errors = errors_of(client.post(f"/api/v1/runs/{a.run.id}/resume/"))
    assert "only a stopped, lost or failed run can be resumed; this one is queued" in errors["run"][0]
    errors = errors_of(client.post(f"/api/v1/runs/{a.run.id}/resume/", {"queue": "bad queue"}))
    assert "queue" in errors
    client.post(f"/api/v1/runs/{a.run.id}/stop/")
    errors = errors_of(client.post(f"/api/v1/runs/{a.run.id}/resume/"))
    assert "saved no checkpoint to resume from" in errors["run"][0]
    again = client.post(f"/api/v1/runs/{a.run.id}/stop/")
    assert again.status_code == 200 and again.json()["status"] == "stopped"


def test_sweep_create_refuses_as_the_sweep_form_does(api_world, tiny_model):
    a = api_world.a
    client = api_world.client(a.member)
    base = {"template": "r", "dataset": a.dataset.id, "overrides": {"model": tiny_model, "backend": "hf"}}
    cases = [
        ({"dataset": a.dataset.id}, "template", "required"),
        ({**base, "template": "momentum"}, "template", "no procedure for 'momentum'; allowed:"),
        ({"template": "r"}, "dataset", "choose the dataset"),
        ({**base, "params": {"values": []}}, "values", "at least one value"),
        ({**base, "params": {"speed": 1}}, "speed", "not a parameter of a sweep"),
        ({**base, "params": "r=8"}, "params", "dictionary"),
        ({**base, "overrides": {**base["overrides"], "lora_alpha": "big"}}, "lora_alpha", "valid number"),
        ({**base, "queue": "a b"}, "queue", "letters, digits"),
        ({**base, "confirm_top": 9}, "confirm_top", "0 (none) to 5"),
        ({**base, "eval_figure": "accuracy"}, "eval_figure", "choose the suite too"),
        ({**base, "base_run": a.run.id}, "base_run", "a sweep starts from a succeeded run"),
        ({**base, "template": "search", "overrides": {**base["overrides"], "eval_split": 0.1, "eval_steps": 5,
                                                            "max_steps": 20},
          "params": {"space": {"learning_rate": {"low": 1}}}},
         "space.learning_rate", "low and high must both be numbers"),
    ]
    for body, key, text in cases:
        errors = errors_of(client.post("/api/v1/sweeps/", body))
        matching = [k for k in errors if k == key or k.startswith(key + ".")]
        assert matching and any(text in m for k in matching for m in errors[k]), (body, errors)
    assert Sweep.objects.count() == 0 and Run.objects.filter(team=a.team).count() == 1


def test_list_parameters_are_checked(api_world):
    client = api_world.client(api_world.a.viewer)
    assert "status" in errors_of(client.get("/api/v1/runs/", status="finished"))
    assert "team" in errors_of(client.get("/api/v1/runs/", team="alpha"))
    errors = errors_of(client.get("/api/v1/runs/", ordering="-speed"))
    assert "cannot order by -speed; allowed: id, created_at, name" in errors["ordering"][0]
    assert "page" in errors_of(client.get("/api/v1/runs/", page="two"))
    assert "past the last page (1)" in errors_of(client.get("/api/v1/runs/", page=3))["page"][0]
    assert "page_size" in errors_of(client.get("/api/v1/runs/", page_size=1000))
    run = api_world.a.run.id
    assert "every" in errors_of(client.get(f"/api/v1/runs/{run}/metrics/", every=0))
    assert "format" in errors_of(client.get(f"/api/v1/runs/{run}/metrics/", format="xml"))
    assert "before" in errors_of(client.get(f"/api/v1/runs/{run}/metrics/", after=10, before=5))
    assert "after" in errors_of(client.get(f"/api/v1/runs/{run}/events/", after="-1"))
    assert "runs" in errors_of(client.get("/api/v1/compare/", runs=str(run)))
    assert "x" in errors_of(client.get("/api/v1/compare/", runs=f"{run},{run + 1}", x="loss"))
    assert "format" in errors_of(client.get("/api/v1/compare/export/", runs=f"{run},{run + 1}", format="xls"))
    assert "sweep" in errors_of(client.get("/api/v1/compare/", sweep="latest"))


def test_unknown_paths_and_methods_are_json(api_world):
    client = api_world.client(api_world.a.member)
    missing = client.get("/api/v1/models/")
    assert missing.status_code == 404 and "no such endpoint: /api/v1/models/" in missing.json()["detail"]
    no_slash = client.post("/api/v1/runs", {})
    assert no_slash.status_code == 404 and "did you mean /api/v1/runs/" in no_slash.json()["detail"]
    assert client.get("/api/v1/runs/abc/").status_code == 404
    wrong_method = client.client.delete(f"/api/v1/runs/{api_world.a.run.id}/", **client.headers)
    assert wrong_method.status_code == 405 and "DELETE" in wrong_method.json()["detail"]


@pytest.mark.parametrize("body", ["[1, 2]", "null", '"a string"', "42", "true"])
def test_a_body_that_is_not_an_object_is_a_400_on_every_write_endpoint(api_world, body):
    a = api_world.a
    client = api_world.client(a.admin)
    for path in ("/api/v1/runs/", f"/api/v1/runs/{a.run.id}/resume/", "/api/v1/sweeps/",
                 f"/api/v1/sweeps/{10**9}/resume/", "/api/v1/datasets/", "/api/v1/datasets/register/",
                 f"/api/v1/datasets/{a.dataset.id}/profile/"):
        response = client.client.post(path, body, content_type="application/json", **client.headers)
        if "/sweeps/1000000000/" in path:
            assert response.status_code == 404, path
            continue
        errors = errors_of(response)
        assert "__all__" in errors or "team" in errors or "file" in errors, (path, errors)


def test_ids_past_any_integer_column_are_missing_objects_not_errors(api_world):
    client = api_world.client(api_world.a.member)
    huge = 10**30
    assert client.get(f"/api/v1/runs/{huge}/").status_code == 404
    assert client.get(f"/api/v1/datasets/{huge}/").status_code == 404
    assert client.post(f"/api/v1/sweeps/{huge}/stop/").status_code == 404
    assert "dataset" in errors_of(client.post("/api/v1/runs/", {"dataset": huge}))
    errors = errors_of(client.post("/api/v1/runs/", {"dataset": api_world.a.dataset.id, "preset": huge,
                                                     "overrides": {"model": "tiny-model"}}))
    assert "preset" in errors
    assert "team" in errors_of(client.upload("/api/v1/datasets/", {"team": huge, "name": "x",
                                                                    "file": upload("d.jsonl", b'{"text": "a"}\n')}))
    assert client.get("/api/v1/runs/", team=huge).json()["count"] == 0
    assert client.get("/api/v1/compare/", runs=f"{huge},{huge + 1}").status_code == 404  # like missing runs
