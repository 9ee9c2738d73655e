"""A run exported for llama.cpp and Ollama on the real worker, checked with llama.cpp itself (llama-cpp-python): one
tiny run trains once; its export's 16-bit GGUF continues three prompts greedily as the merged model does under
transformers, its quantizations load and generate, its GGUF LoRA on the base's GGUF answers as the adapter does under
PEFT; its Modelfiles pass the checker and their TEMPLATE prompts as the model's own template; the files download
(page, API, CLI) with the sizes and sha256 listed, and not for another team.

The tiny model has Llama 3's real vocabulary (llama.cpp's ggml-vocab-llama-bpe.gguf, tests/families.py) with Llama
3's own pre-tokenizer restored, so llama.cpp's converter recognises it as it recognises a real Llama 3."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from dashboard.tokens.services import token_create
from tests import gotemplate
from tests.factories import make_member, make_team
from tests.families import save_llama3_tokenizer
from tests.functional.conftest import client_for
from tests.integration.cli.test_cli import logged_in, tuneboard
from tests.integration.conftest import wait_for, wait_terminal
from training.datasets import services as dataset_services
from training.engine import chat, modelfile_check
from training.engine.gguf_export import sha256_of
from training.engine.tiny import build_tiny_arch, synthetic_pairs
from training.export import services
from training.models import Export, Run
from training.runs import services as runs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SYSTEM = "Answer with the colour only."
PROMPTS = ["What colour is the sky?", "Say it 3 times: the leaf is", "The quick brown fox"]
FIRST = 4  # greedy tokens compared


@pytest.fixture(scope="module")
def llama3_model(isolated_session) -> str:
    tokenizer = save_llama3_tokenizer(settings.MODELS_DIR / "llama3-tokenizer")
    return str(build_tiny_arch(settings.MODELS_DIR / "tiny-llama3", "llama", tokenizer_from=tokenizer))


def upload_dataset(team, user, tmp_path):
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p},
                          {"role": "assistant", "content": a}]} for p, a in synthetic_pairs(32)]
    path = tmp_path / "colours.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dataset_services.dataset_create_from_upload(team=team, user=user, name="colours",
                                                       file=path.open("rb"))


def wait_export(export: Export, timeout: float = 400) -> Export:
    seen = set()

    def ended():
        export.refresh_from_db()
        seen.add(export.progress.get("stage"))
        return export.is_terminal

    wait_for(ended, timeout=timeout, what=f"export {export.id} to end", interval=0.3)
    export.seen_stages = seen
    return export


def greedy_llama(path: Path, ids: list[int], *, lora: Path | None = None) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=256, n_threads=1, verbose=False,
                seed=0)
    out = []
    for prompt in ids:
        tokens = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            tokens.append(token)
            if len(tokens) == FIRST:
                break
        out.append(tokens)
    llm.close()
    return out


def greedy_hf(model, ids: list[list[int]]) -> list[list[int]]:
    import torch

    with torch.no_grad():
        return [model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                               max_new_tokens=FIRST, do_sample=False, pad_token_id=0)[0][len(p):].tolist()
                for p in ids]


@pytest.mark.timeout(900)
def test_a_run_exported_to_gguf_runs_in_llama_cpp_as_it_does_in_transformers(celery_worker, llama3_model, tmp_path,
                                                                              server):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    team = make_team("Gguf")
    user = make_member(team)
    dataset = upload_dataset(team, user, tmp_path)
    run = runs.run_create(team=team, user=user, dataset=dataset, overrides={
        "model": llama3_model, "backend": "hf", "optim": "adamw_torch", "max_length": 96,
        "per_device_train_batch_size": 4, "max_steps": 4, "warmup_steps": 0, "logging_steps": 1,
        "learning_rate": 5e-3})
    run = wait_terminal(run, timeout=300)
    assert run.status == Run.Status.SUCCEEDED, run.error

    export = services.export_create(run=run, user=user, quantizations=["q8_0", "q4_k_m"])
    export = wait_export(export)
    assert export.status == Export.Status.SUCCEEDED, export.error
    assert {"merge", "convert", "quantize", "modelfile"} <= export.seen_stages
    assert export.worker_name == celery_worker.name and export.seconds > 0
    name = f"run-{run.id}"
    assert [f["name"] for f in export.files] == [
        f"{name}-f16.gguf", f"{name}-Q8_0.gguf", f"{name}-Q4_K_M.gguf", f"{name}-base-f16.gguf",
        f"{name}-lora-f16.gguf", "Modelfile", "Modelfile.adapter"]
    folder = services.export_folder(export)
    for f in export.files:
        assert (folder / f["name"]).stat().st_size == f["size"] and sha256_of(folder / f["name"]) == f["sha256"]
    sizes = {f["name"]: f["size"] for f in export.files}
    assert sizes[f"{name}-f16.gguf"] > sizes[f"{name}-Q8_0.gguf"] > sizes[f"{name}-Q4_K_M.gguf"]

    # llama.cpp against transformers, token ids from the model's own tokenizer (llama.cpp's tokenizer agrees)
    tokenizer = AutoTokenizer.from_pretrained(run.adapter_path)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    base = AutoModelForCausalLM.from_pretrained(llama3_model, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, run.adapter_path).eval()
    peft_tokens = greedy_hf(adapted, ids)
    merged_tokens = greedy_hf(adapted.merge_and_unload().eval(), ids)
    assert greedy_llama(folder / f"{name}-f16.gguf", ids) == merged_tokens
    for quantized in ("Q8_0", "Q4_K_M"):
        tokens = greedy_llama(folder / f"{name}-{quantized}.gguf", ids)
        assert all(len(t) == FIRST for t in tokens), quantized
    assert greedy_llama(folder / f"{name}-base-f16.gguf", ids, lora=folder / f"{name}-lora-f16.gguf") == peft_tokens

    # the Modelfiles: Ollama's syntax, the files beside them, the dataset's system prompt, the model's own prompt
    merged_file = modelfile_check.check((folder / "Modelfile").read_text())
    adapter_file = modelfile_check.check((folder / "Modelfile.adapter").read_text())
    assert [(c.name, c.args) for c in merged_file if c.name in ("FROM", "SYSTEM")] == [
        ("FROM", f"./{name}-f16.gguf"), ("SYSTEM", SYSTEM)]
    assert [(c.name, c.args) for c in adapter_file if c.name in ("FROM", "ADAPTER")] == [
        ("FROM", f"./{name}-base-f16.gguf"), ("ADAPTER", f"./{name}-lora-f16.gguf")]
    assert ("PARAMETER", "stop <|eot_id|>") in [(c.name, c.args) for c in merged_file]
    template = next(c.args for c in merged_file if c.name == "TEMPLATE")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPTS[0]}]
    rendered = gotemplate.render(template, {"System": SYSTEM, "Messages": [
        {"Role": m["role"], "Content": m["content"]} for m in messages]})
    assert tokenizer.bos_token + rendered == chat.render(tokenizer, messages, add_generation_prompt=True)

    # downloads: the page and the API for the team, a 404 for another team
    page = client_for(user).get(f"/runs/{run.id}/").content.decode()
    assert all(f["sha256"] in page for f in export.files)
    response = client_for(user).get(f"/exports/{export.id}/files/Modelfile")
    assert b"".join(response.streaming_content) == (folder / "Modelfile").read_bytes()
    outsider = make_member(make_team("Elsewhere"))
    assert client_for(outsider).get(f"/exports/{export.id}/files/Modelfile").status_code == 404
    token = token_create(user=outsider, name="o")[1]
    assert Client().get(f"/api/v1/exports/{export.id}/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 404

    # the CLI: a 16-bit + Q4_0 export of the merged model alone, followed to its end, downloaded and checked
    home = tmp_path / "home"
    logged_in(server, token_create(user=user, name="cli")[1], home)
    downloads = tmp_path / "downloads"
    result = tuneboard("runs", "gguf", str(run.id), "--quant", "q4_0", "--no-lora", "--download", str(downloads),
                       home=home, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    cli_export = Export.objects.exclude(id=export.id).get(run=run)
    assert cli_export.quantizations == ["q4_0"] and not cli_export.lora_gguf
    assert sorted(p.name for p in downloads.iterdir()) == sorted(f["name"] for f in cli_export.files) == sorted(
        [f"{name}-f16.gguf", f"{name}-Q4_0.gguf", "Modelfile"])
    assert f"ollama create run-{run.id} -f Modelfile" in result.stdout
    assert len(greedy_llama(downloads / f"{name}-Q4_0.gguf", ids[:1])[0]) == FIRST
