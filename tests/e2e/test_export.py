"""In a real browser: on a succeeded run's page, Export GGUF (the 16-bit merged model and Q8_0, no LoRA) shows the
export's progress, then its files with their sizes and sha256, each a download that arrives whole. Takes
docs/export.png. (The run's adapter is a random LoRA saved where a run saves it: the training is not what this
tests; tests/integration/export/ trains and checks the files with llama.cpp.)"""
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from tests.factories import make_dataset, make_member, make_run, make_team, make_user
from tests.families import save_llama3_tokenizer
from training.engine.gguf_export import sha256_of
from training.engine.tiny import build_tiny_arch
from training.models import Export, Run

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


def succeeded_run(team, user, dataset, tmp_path) -> Run:
    """A run of the session worker's queue, succeeded with a LoRA adapter (random, non-zero) on a tiny Llama 3."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = build_tiny_arch(settings.MODELS_DIR / "e2e-llama3", "llama",
                            tokenizer_from=save_llama3_tokenizer(tmp_path / "tokenizer"))
    run = make_run(team, user, dataset)  # on a queue no worker takes: it never trains
    adapter = Path(run.artifact_dir) / "adapter"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                                LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(model).save_pretrained(adapter)
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, adapter_path=str(adapter),
                                         config={**run.config, "model": str(model)},
                                         queue=settings.TUNEBOARD_DEFAULT_QUEUE, finished_at=timezone.now())
    run.refresh_from_db()
    return run


def test_export_from_the_run_page_shows_progress_then_files_with_checksums(
        web_server, celery_worker, page, screenshot_path, tmp_path):
    team = make_team("Export team")
    user = make_member(team, user=make_user("exporter", password="exporter-password"))
    dataset = make_dataset(team, user, rows=16, tmp_dir=tmp_path, name="colours")
    run = succeeded_run(team, user, dataset, tmp_path)
    log_in(page, web_server, "exporter", "exporter-password")
    page.goto(f"{web_server.url}/runs/{run.id}/")
    section = page.locator("#export")
    assert "No export yet." in section.inner_text()
    page.uncheck("#export-form input[name=quantizations][value=q4_k_m]")
    page.uncheck("#export-form input[name=lora_gguf]")
    page.click("#export-form button[type=submit]")
    page.wait_for_url(re.compile(rf"/runs/{run.id}/#export$"))
    export = Export.objects.get(run=run)
    assert export.quantizations == ["q8_0"] and not export.lora_gguf
    assert "queued on" in page.inner_text(".messages, body")
    item = page.locator(f'#export .export[data-export="{export.id}"]')
    item.locator("progress").wait_for(state="attached", timeout=30_000)  # under way: its bar and stage
    page.wait_for_selector(f'#export .export[data-export="{export.id}"][data-status="succeeded"]', timeout=300_000)
    export.refresh_from_db()
    rows = item.locator(".export-files tbody tr")
    assert rows.count() == 3 == len(export.files)
    text = item.inner_text()
    for f in export.files:
        assert f["name"] in text and f["sha256"] in text
    with page.expect_download() as download_info:
        item.locator(f"a:text('run-{run.id}-Q8_0.gguf')").click()
    saved = tmp_path / "downloaded.gguf"
    download_info.value.save_as(saved)
    q8 = next(f for f in export.files if f["name"].endswith("Q8_0.gguf"))
    assert saved.stat().st_size == q8["size"] and sha256_of(saved) == q8["sha256"]
    assert not page.js_errors
    section.screenshot(path=str(screenshot_path("export.png")))
