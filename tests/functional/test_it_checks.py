"""The seed's checks as buttons with results: the base drift check on a run's page (bias) and the LoftQ check page
(loftq_config); bad input names the field and creates nothing."""
import io
import json
from html import unescape

import pytest

from tests.factories import idle_queue
from training.evaluation import services as evals
from training.models import EvalExample, EvalSuite, Evaluation, LoftqCheck, Run, Worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def suite(world, settings, tmp_path):
    settings.SUITES_DIR = tmp_path / "suites"
    rows = [{"prompt": f"q{i}", "reference": "red red"} for i in range(3)]
    return evals.suite_create_from_upload(team=world.team, user=world.member, name="colours", metric="rouge_l",
                                          filename="s.jsonl",
                                          file=io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode()))


def succeeded(run: Run, bias: str = "none") -> Run:
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, adapter_path="/adapters/x",
                                         config={**run.config, "bias": bias}, queue=idle_queue())
    run.refresh_from_db()
    return run


def outputs(evaluation: Evaluation, texts: list[str]) -> None:
    EvalExample.objects.bulk_create([EvalExample(evaluation=evaluation, index=i, prompt=f"q{i}", reference="red red",
                                                 output=t, score=0.0) for i, t in enumerate(texts)])
    Evaluation.objects.filter(id=evaluation.id).update(status=Evaluation.Status.SUCCEEDED)


def test_the_drift_check_is_queued_from_the_run_page_and_its_verdict_shown(world, member_client, suite):
    run = succeeded(world.run, bias="all")
    page = member_client.get(f"/runs/{run.id}/").content.decode()
    assert 'id="drift-form"' in page and f'<option value="{suite.id}">colours (3 rows)</option>' in page
    response = member_client.post(f"/runs/{run.id}/drift-check/", {"suite": suite.id})
    assert response.status_code == 302
    made = {(e.run_id, e.adapters) for e in Evaluation.objects.all()}
    assert made == {(None, "on"), (run.id, "on"), (run.id, "off")}
    assert "waiting for the base model" in member_client.get(f"/runs/{run.id}/").content.decode()
    base = Evaluation.objects.get(run__isnull=True)
    disabled = Evaluation.objects.get(run=run, adapters="off")
    outputs(base, ["red red", "blue", "red"])
    outputs(disabled, ["red red", "green", "red"])
    html = unescape(member_client.get(f"/runs/{run.id}/").content.decode())
    assert "1 of 3 outputs differ from the base model" in html and 'bias "all" trained the base model' in html


def test_a_drift_check_on_another_teams_suite_creates_nothing(world, member_client, suite):
    run = succeeded(world.run)
    theirs = EvalSuite.objects.create(team=world.other_team, name="x", path=suite.path, format=suite.format,
                                      rows=3, sha256=suite.sha256, metric="rouge_l")
    response = member_client.post(f"/runs/{run.id}/drift-check/", {"suite": theirs.id}, follow=True)
    assert "no such eval suite in this run" in response.content.decode() and not Evaluation.objects.exists()


def test_the_loftq_check_page_refuses_without_a_gpu_worker_and_queues_with_one(world, member_client):
    data = {"dataset": world.dataset.id, "model": "tiny-model", "r": 8, "lora_alpha": 16,
            "target_modules": "all-linear", "loftq_bits": 4, "loftq_iter": 2, "queue": idle_queue()}
    page = member_client.get("/evaluation/loftq/")
    assert page.status_code == 200 and 'id="loftq-form"' in page.content.decode()
    refused = member_client.post("/evaluation/loftq/", data)
    assert refused.status_code == 400 and "needs a CUDA GPU" in refused.content.decode()
    assert not LoftqCheck.objects.exists()
    Worker.objects.create(name="gpu@box", hostname="box", queues=[idle_queue()], gpus=[{"name": "NVIDIA H200"}])
    assert member_client.post("/evaluation/loftq/", data).status_code == 302
    check = LoftqCheck.objects.get()
    assert check.spec["loftq"] == [[4, 2]] and check.queue == idle_queue()
    LoftqCheck.objects.filter(id=check.id).update(status="succeeded", results=[
        {"init": "standard", "logits_mse": 0.28, "cosine": 0.82, "seconds": 1.0},
        {"init": "loftq(4,2)", "logits_mse": 0.26, "cosine": 0.84, "seconds": 30.0}])
    html = member_client.get("/evaluation/loftq/").content.decode()
    assert "loftq(4,2)" in html and "-7.1%" in html


def test_a_bad_loftq_config_names_the_field(world, member_client):
    Worker.objects.create(name="gpu@box", hostname="box", queues=[idle_queue()], gpus=[{"name": "NVIDIA H200"}])
    response = member_client.post("/evaluation/loftq/", {
        "dataset": world.dataset.id, "model": "tiny-model", "r": 0, "lora_alpha": 16, "target_modules": "all-linear",
        "loftq_bits": 4, "loftq_iter": 1, "queue": idle_queue()})
    assert response.status_code == 400 and not LoftqCheck.objects.exists()
    assert "r" in response.context["form"].errors
