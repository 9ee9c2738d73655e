"""In a real browser: the New run form's fit planner (issue 21). As the user types, the prediction for the queue's
GPU workers; a config that fits none shows the refusal with each lever and its predicted peak, launching it is
refused at the top of the form, a lever's Apply sets the form's fields and makes it fit, and the fastest fit's
Apply sets micro-batch, accumulation and checkpointing at once; the run it launches keeps the plan."""
import json
import re

import pytest
from django.conf import settings
from django.utils import timezone

from tests.factories import make_dataset, make_member, make_team, make_user
from training.models import Run, Worker
from training.planner import reference
from training.runs import services

from .conftest import log_in, unfold

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MiB = 1024 ** 2


def shapes_only_model() -> str:
    """A model folder with only TinyLlama-1.1B's config.json: the planner reads shapes, never weights."""
    shape = reference.TINYLLAMA_1_1B
    folder = settings.MODELS_DIR / "llama-1.1b-shapes"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads, "tie_word_embeddings": False}))
    return str(folder)


def gpu_boxes() -> None:
    """Two GPU workers on the form's queue, as their heartbeats report them (nvidia-smi's MiB)."""
    for name, gpu, mib in (("box-t4@lab", "NVIDIA T4", 15360), ("box-l4@lab", "NVIDIA L4", 23034)):
        Worker.objects.create(name=name, hostname=name.split("@")[0], queues=[settings.TUNEBOARD_DEFAULT_QUEUE],
                              gpus=[{"name": gpu, "memory_total": mib * MiB, "memory_used": 0, "utilization": 0}])


def beat() -> None:
    """Their heartbeats, fresh: a worker silent for TUNEBOARD_WORKER_SILENT_S does not count."""
    Worker.objects.filter(name__endswith="@lab").update(last_heartbeat_at=timezone.now())


def test_the_form_shows_the_plan_refuses_what_fits_no_gpu_and_applies_a_lever_and_the_fastest_fit(
        web_server, page, tmp_path, screenshot_path):
    team = make_team("Lab")
    user = make_member(team, user=make_user("fitter", password="fitter-password"))
    make_dataset(team, user, rows=64, tmp_dir=tmp_path, name="support chats")
    model = shapes_only_model()
    gpu_boxes()
    log_in(page, web_server, "fitter", "fitter-password")
    page.goto(f"{web_server.url}/runs/new/")
    unfold(page, "name", "backend", "packing", "gradient_checkpointing")
    page.fill("#id_name", "1.1B packed, no checkpointing")
    page.fill("#id_model", model)
    page.select_option("#id_backend", "unsloth")
    page.fill("#id_max_length", "2048")
    page.select_option("#id_packing", "true")
    page.fill("#id_per_device_train_batch_size", "8")
    page.fill("#id_gradient_accumulation_steps", "2")
    page.fill("#id_max_steps", "200")
    page.select_option("#id_gradient_checkpointing", "false")

    # Micro-batch 8 of packed 2,048-token rows with every layer's activations kept: ~20 GiB, fits neither box.
    refusal = page.locator("#plan-refusal")
    refusal.wait_for(state="visible")
    text = page.inner_text("#plan-text")
    # ~20 GiB (what the defaults fitted on docs/benchmarks.md make of it: 19-21), well over the L4's 22.5 GiB usable.
    assert re.match(r"peak ≈ (19|20|21)\.", text) and "fits no live GPU worker on this queue" in text
    assert "(uncalibrated)" in text and page.is_visible("#plan-uncalibrated")
    assert "box-l4@lab's 22.5 GiB" in page.inner_text("#plan-refusal-text")
    levers = page.locator("#plan-levers li")
    texts = levers.all_inner_texts()
    assert any(t.startswith("load_in_4bit on (QLoRA): peak ≈ 18.") and "still too large" in t for t in texts)
    checkpointing = levers.filter(has_text="gradient_checkpointing on")
    assert "fits" in checkpointing.inner_text() and checkpointing.locator("button").count() == 1
    assert levers.filter(has_text="load_in_4bit").locator("button").count() == 0  # it would not fit: no Apply
    page.click("#plan-details summary")
    assert "activations" in page.inner_text("#plan-parts") and ": 4N (no checkpointing" in page.inner_text("#plan-mfu")
    page.locator("#fit-plan").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_path("fit-planner.png")), full_page=False)

    # Launching it anyway: refused at the top of the form with the prediction and the levers, nothing saved.
    beat()
    page.click("button[type=submit].primary")
    page.wait_for_selector("#form-errors [data-fit-refusal]")
    top = page.inner_text("#form-errors")
    assert re.match(r"Not started: predicted peak (19|20|21)\.", top) and "gradient_checkpointing on: peak ≈ 3." in top
    assert not Run.objects.exists()
    refusal.wait_for(state="visible")  # the page came back with the typed fields, and the planner with them

    # The checkpointing lever: one click sets the field, and the config fits both boxes.
    beat()
    page.locator("#plan-levers li", has_text="gradient_checkpointing on").locator("button").click()
    assert page.input_value("#id_gradient_checkpointing") == "true"
    refusal.wait_for(state="hidden")
    assert not page.is_visible("#form-errors")  # the launch's refusal no longer holds
    text = page.inner_text("#plan-text")
    assert text.startswith("peak ≈ 3.") and "fits on: box-l4@lab (24 GB), box-t4@lab (16 GB)" in text
    assert "tokens/s on NVIDIA L4" in text and ": 6N (checkpointing recomputes" in page.text_content("#plan-mfu")

    # The fastest fit on that GPU at the same effective batch: half the micro-batch without checkpointing.
    fastest = page.locator("#plan-fastest")
    fastest.wait_for(state="visible")
    assert fastest.inner_text().startswith(
        "Fastest on NVIDIA L4: micro-batch 4 × accumulation 4, checkpointing off: ≈ ")
    assert "tokens/s (1." in fastest.inner_text() and re.search(r"×\), peak ≈ 1[01]\.", fastest.inner_text())
    beat()
    page.click("#plan-fastest-apply")
    assert page.input_value("#id_per_device_train_batch_size") == "4"
    assert page.input_value("#id_gradient_accumulation_steps") == "4"
    assert page.input_value("#id_gradient_checkpointing") == "false"
    fastest.wait_for(state="hidden")  # it is the fastest now
    assert re.match(r"peak ≈ 1[01]\.", page.inner_text("#plan-text"))

    beat()
    page.click("button[type=submit].primary")
    page.wait_for_url(f"{web_server.url}/runs/*/")
    run = Run.objects.get(name="1.1B packed, no checkpointing")
    services.run_stop(run=run, user=user)  # a folder of shapes alone: no worker must try to train it
    assert run.config["per_device_train_batch_size"] == 4 and run.config["gradient_checkpointing"] is False
    assert run.plan["fits_any"] is True and run.plan["gpu"] == "NVIDIA L4"
    assert "Predicted against measured" in page.inner_text("#plan-check")
    assert page.locator("#plan-check tr[data-check='Peak VRAM'] td").all_inner_texts()[1:] == ["—", "—"]
    assert page.js_errors == []
