"""The fit planner where users meet it (issue 21): the run form's preflight answer carries the prediction for the
queue's live GPU workers; a config that fits none is refused at launch with the prediction and the levers, nothing
saved, and a lever applied makes it launch; the run page sets the plan kept at creation beside what the run
measured. A Worker row whose heartbeat reports a small GPU on the form's queue stands in for a GPU box."""
import re
import statistics
from datetime import timedelta
from html import unescape

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.integration.conftest import create_run, wait_terminal
from training.models import MetricPoint, Run, Worker

GiB = 1024 ** 3
PREFLIGHT = "/runs/new/preflight/"
# A tiny config that fits a 2 GiB GPU by far: ~5 MiB.
SMALL = {"backend": "hf", "optim": "adamw_torch", "max_length": "128", "per_device_train_batch_size": "8",
         "gradient_accumulation_steps": "1", "max_steps": "20", "gradient_checkpointing": "false"}
# Packed rows of 1,024 tokens, 32 a micro-batch, on the plain stack: its attention scores alone are ~4 GiB.
TOO_BIG = {**SMALL, "max_length": "1024", "packing": "true", "per_device_train_batch_size": "32",
           "gradient_accumulation_steps": "2"}


def gpu_worker(name: str = "box-t4@test", memory: int = 2 * GiB, queue: str | None = None) -> Worker:
    return Worker.objects.create(name=name, hostname=name.split("@")[0],
                                 queues=[queue or settings.TUNEBOARD_DEFAULT_QUEUE],
                                 gpus=[{"name": "NVIDIA T4", "memory_total": memory, "memory_used": 0,
                                        "utilization": 0}])


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form(dataset, model: str, **fields) -> dict:
    return {"dataset": str(dataset.id), "preset": "", "name": "", "model": model, **fields}


def preflight(client, dataset, model, **fields) -> dict:
    response = client.post(PREFLIGHT, form(dataset, model, **fields))
    assert response.status_code == 200, response.content[:500]
    return response.json()


@pytest.mark.django_db
def test_the_run_forms_preflight_answer_has_the_prediction(tiny_model, team_member):
    _, user, dataset = team_member
    gpu_worker()
    client = client_for(user)
    body = preflight(client, dataset, tiny_model, **SMALL)
    assert body["errors"] == {}
    plan = body["plan"]
    assert plan["text"].startswith("peak ≈ ") and "fits on: box-t4@test (2 GB)" in plan["text"]
    assert "tokens/s on NVIDIA T4" in plan["text"] and plan["text"].endswith("(uncalibrated)")
    assert plan["calibrated"] is False and "no measured run on NVIDIA T4 with the hf backend" in plan["source"]
    assert plan["fits_any"] is True and plan["refusal"] is None and plan["levers"] == []
    assert [p["label"] for p in plan["parts"]] == ["weights", "adapters, their gradients and the optimizer's state",
                                                  "activations", "logits", "allocator and workspaces"]
    assert "for 20 steps" in plan["time"] and [p["label"] for p in plan["time_parts"]][:2] == ["start-up", "training"]
    assert any(w.startswith("box-t4@test (NVIDIA T4, 2.0 GiB): fits, needs ") for w in plan["workers"])
    # The FLOPs the config really does: 4N without checkpointing, 6N with it (the forward recomputed).
    assert ": 4N (no checkpointing" in plan["mfu"] and plan["mfu"].startswith("MFU ≈ ")
    checkpointed = preflight(client, dataset, tiny_model, **{**SMALL, "gradient_checkpointing": "true"})["plan"]
    assert ": 6N (checkpointing recomputes the forward" in checkpointed["mfu"]
    # The typed fields reach the prediction: a micro-batch twice as large, twice the activations.
    def activations(p):
        return next(part["bytes"] for part in p["parts"] if part["label"] == "activations")
    doubled = preflight(client, dataset, tiny_model, **{**SMALL, "per_device_train_batch_size": "16"})["plan"]
    assert activations(doubled) == pytest.approx(2 * activations(plan))
    # No model typed yet, or a model whose shapes nobody knows: no prediction, and it says why.
    assert preflight(client, dataset, "", **SMALL)["plan"] is None
    unknown = preflight(client, dataset, "someone/unseen-model", **SMALL)["plan"]
    assert "no run of this team has trained it yet" in unknown["text"]
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_config_that_fits_no_worker_is_refused_at_launch_with_the_levers_and_a_lever_makes_it_launch(
        tiny_model, team_member):
    _, user, dataset = team_member
    gpu_worker()
    client = client_for(user)
    plan = preflight(client, dataset, tiny_model, **TOO_BIG)["plan"]
    assert plan["fits_any"] is False and "fits no live GPU worker on this queue" in plan["text"]
    assert plan["refusal"].startswith("Fits no live GPU worker on this queue: predicted peak ")
    assert "box-t4@test's 2.0 GiB" in plan["refusal"]
    by_text = {lever["text"].split(":")[0]: lever for lever in plan["levers"]}
    micro = by_text["per_device_train_batch_size 16 × gradient_accumulation_steps 4 (same effective batch 64)"]
    assert micro["fits"] and micro["apply"] == {"per_device_train_batch_size": "16", "gradient_accumulation_steps": "4"}
    assert not by_text["load_in_4bit on (QLoRA)"]["fits"]  # the weights are not what is too large here
    assert " GiB, up to " in micro["text"]

    response = client.post("/runs/new/", form(dataset, tiny_model, name="too big", **TOO_BIG))
    assert response.status_code == 400
    errors = list(response.context["form"].non_field_errors())
    assert len(errors) == 1 and errors[0].startswith("Not started: predicted peak ")
    assert "fits no live GPU worker on this queue (the largest: box-t4@test, 2.0 GiB)" in errors[0]
    lever = "per_device_train_batch_size 16 × gradient_accumulation_steps 4 (same effective batch 64): peak ≈"
    assert lever in errors[0]
    html = response.content.decode()
    assert 'class="form-error" role="alert"' in html and "Not started: predicted peak" in html
    assert not Run.objects.exists()

    applied = {**TOO_BIG, **micro["apply"]}
    assert preflight(client, dataset, tiny_model, **applied)["plan"]["fits_any"] is True
    response = client.post("/runs/new/", form(dataset, tiny_model, name="fits now", **applied))
    run = Run.objects.get(name="fits now")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.id}/"
    assert run.plan["fits_any"] is True and run.plan["gpu"] == "NVIDIA T4"
    assert run.plan["workers"][0]["needs"] <= 2 * GiB


@pytest.mark.django_db
def test_a_worker_that_went_silent_does_not_count(tiny_model, team_member):
    _, user, dataset = team_member
    worker = gpu_worker(memory=80 * GiB)
    Worker.objects.filter(id=worker.id).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=settings.TUNEBOARD_WORKER_SILENT_S + 5))
    gpu_worker(name="small@test")
    plan = preflight(client_for(user), dataset, tiny_model, **TOO_BIG)["plan"]
    assert plan["fits_any"] is False and "small@test's 2.0 GiB" in plan["refusal"]


def check_rows(html_page: str) -> dict[str, list[str]]:
    """The "Predicted against measured" table's rows: {what: [predicted, measured, error]}."""
    section = html_page[html_page.index('id="plan-check"'):]
    section = section[:section.index("</section>")]
    rows = {}
    for what, cells in re.findall(r'<tr data-check="([^"]+)">(.*?)</tr>', section, flags=re.DOTALL):
        tds = [unescape(re.sub(r"<[^>]+>", "", td)).strip() for td in re.findall(r"<td>(.*?)</td>", cells, re.DOTALL)]
        rows[what] = [" ".join(td.split()) for td in tds]
    return rows


def page_queries(client, run) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as queries:
        page = client.get(f"/runs/{run.id}/")
    assert page.status_code == 200
    return page.content.decode(), len(queries)


@pytest.mark.django_db
def test_the_run_page_shows_predicted_against_measured_with_the_relative_errors(tiny_model, team_member):
    user = team_member[1]
    gpu_worker(memory=16 * GiB)
    run = create_run(team_member, tiny_model, max_steps=10)
    plan = run.plan
    assert plan["gpu"] == "NVIDIA T4" and plan["seconds"]
    # What a GPU worker writes as the run trains: its device, a point per step, its start and end.
    start = timezone.now() - timedelta(seconds=60)
    rates = [1000.0, 2000.0] + [plan["tokens_per_s"] * f for f in (0.8, 0.9, 1.0, 1.1, 0.85, 0.95, 1.05, 0.9)]
    peaks = [int(plan["peak_bytes"] * f) for f in (0.5, 0.9, 1.1, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2)]
    MetricPoint.objects.bulk_create([
        MetricPoint(run=run, step=step, loss=2.0, tokens_per_s=rate, peak_vram_bytes=peak,
                    time=start + timedelta(seconds=step)) for step, (rate, peak) in enumerate(zip(rates, peaks), 1)])
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, started_at=start, finished_at=timezone.now(),
                                         started={"device": "NVIDIA T4", "backend": "hf"}, last_step=10)
    client = client_for(user)
    html, queries = page_queries(client, run)
    assert "Predicted against measured" in html and "uncalibrated" in html
    rows = check_rows(html)
    assert list(rows) == ["Peak VRAM", "Tokens/s", "Time to finish"]
    # Peak: the highest point (1.2 x the prediction): predicted 17% low. Tokens/s: the median after the first 2
    # steps (0.925 x): predicted 8% high. Time: start to end, 60 s.
    peak_error = plan["peak_bytes"] / int(plan["peak_bytes"] * 1.2) - 1
    assert rows["Peak VRAM"][2].startswith(f"{abs(peak_error):.0%} low")
    median = statistics.median(rates[2:])
    assert rows["Tokens/s"][2].startswith(f"{plan['tokens_per_s'] / median - 1:.0%} high")
    assert rows["Time to finish"][1] == "60 s"
    time_error = plan["seconds"] / 60 - 1
    assert rows["Time to finish"][2].startswith(f"{abs(time_error):.0%} {'high' if time_error > 0 else 'low'}")
    # What it measured costs the page one aggregate query; a run without a plan (created before the planner) none,
    # and shows no comparison.
    Run.objects.filter(id=run.id).update(plan={})
    html, without = page_queries(client, run)
    assert queries == without + 1
    assert 'id="plan-check"' not in html and "Predicted against measured" not in html


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.django_db(transaction=True)
def test_a_trained_cpu_run_shows_what_it_measured_and_says_the_devices_differ(celery_worker, tiny_model,
                                                                               team_member):
    user = team_member[1]
    gpu_worker(name="box-t4-idle@test", memory=16 * GiB)  # the plan is for its T4; the CPU worker trains it
    run = wait_terminal(create_run(team_member, tiny_model, max_steps=12))
    assert run.status == Run.Status.SUCCEEDED, run.error
    html = client_for(user).get(f"/runs/{run.id}/").content.decode()
    rows = check_rows(html)
    assert rows["Peak VRAM"][1:] == ["—", "—"] and "A CPU run reports no VRAM." in html
    # Its tokens/s and time are shown, not compared: the plan was for the T4.
    assert "Predicted for NVIDIA T4; it trained on cpu" in html
    assert rows["Tokens/s"][1] != "—" and rows["Tokens/s"][2] == "—"
    assert rows["Time to finish"][1] != "—" and rows["Time to finish"][2] == "—"
