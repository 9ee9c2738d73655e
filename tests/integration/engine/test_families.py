"""The families suite: tiny random Llamas carrying the real chat templates and tokenizers of ten model families
(tests/families.py) trained a few steps through the engine with answers-only and full loss; the engine's `check` and
the dataset statistics read the same rows with the same code."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from tests.families import FAMILIES, family_tokenizer
from training.datasets.stats import profile, tokenizer_encoder

from .conftest import ROOT, run_here

# a family loads a 128k-262k vocabulary: the ten together take more than the suite's
# 600 s default on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROWS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What colour is the sky?"},
     {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."},
     {"role": "user", "content": "Another one?"}, {"role": "assistant", "content": "A plum."}],
] * 2


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    """A tiny random Llama per family, its embeddings sized to the family's vocabulary, saved with its tokenizer."""
    built = {}

    def build(name: str) -> str:
        if name not in built:
            import torch
            from transformers import AutoModelForCausalLM, LlamaConfig

            tokenizer = family_tokenizer(name)
            out = tmp_path_factory.mktemp(name)
            config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).save_pretrained(out)
            tokenizer.save_pretrained(out)
            built[name] = str(out)
        return built[name]

    return build


def _config(model: str, train_file, out_dir, **overrides) -> dict:
    return {"model": model, "train_file": str(train_file), "max_length": 256, "backend": "hf", "optim": "adamw_torch",
            "learning_rate": 1e-3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2,
            "warmup_steps": 0, "logging_steps": 1, "r": 4, "lora_alpha": 8, "output_dir": str(out_dir), **overrides}


def _check(config_file) -> dict:
    from training.engine.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["check", str(config_file)])
    return json.loads(out.getvalue().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_checks_profiles_and_trains_on_answers_and_on_every_token(name, family_model, tmp_path):
    model = family_model(name)
    tokenizer = family_tokenizer(name)
    train_file = tmp_path / "chats.jsonl"
    train_file.write_text("".join(json.dumps({"messages": row}) + "\n" for row in ROWS))

    # dataset statistics: the share that trains is the answers' (the engine's own encoder)
    stats = profile([{"messages": r} for r in ROWS], tokenizer_encoder(tokenizer), total_rows=len(ROWS),
                    max_length=256)
    full = profile([{"messages": r} for r in ROWS], tokenizer_encoder(tokenizer, completion_only_loss=False),
                   total_rows=len(ROWS), max_length=256)
    assert 0 < stats["completion_share"] < 0.5 and full["completion_share"] == 1.0
    assert stats["template"]["refused"] == []
    joined = [c for c in stats["template"]["changed"] if "joined to the first user turn" in c["reason"]]
    assert (joined[0]["first_rows"] if joined else []) == ([1, 3] if name in ("gemma-2", "mistral-nemo") else [])

    # check: the same rows against the model's template, ok here
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(_config(model, train_file, tmp_path / "out")))
    verdict = _check(cfg)  # the engine's command in this process (its own process: the refusal test below)
    assert verdict["ok"] and verdict["rows"] == len(ROWS), verdict

    # a few steps each way; answers-only trains fewer tokens per step than full loss on the same rows
    for answers_only in (True, False):
        config = _config(model, train_file, tmp_path / f"out-{answers_only}", completion_only_loss=answers_only)
        events = run_here(config)
        assert events[-1]["type"] == "finished", events[-1]
        assert [e["step"] for e in events if e["type"] == "metrics"] == [1, 2]
        codes = {e["code"] for e in events if e["type"] == "warning"}
        assert ("template_changed_rows" in codes) == (name in ("gemma-2", "mistral-nemo"))


def test_check_refuses_answers_the_template_rewrites_before_a_model_loads(family_model, tmp_path):
    model = family_model("r1-distill-llama")
    train_file = tmp_path / "reasoning.jsonl"
    row = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>add</think>4"}]
    train_file.write_text(json.dumps({"messages": row}) + "\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(_config(model, train_file, tmp_path / "out")))
    checked = subprocess.run([sys.executable, "-m", "training.engine", "check", str(cfg)], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    verdict = json.loads(checked.stdout)
    assert not verdict["ok"] and "rewrites assistant turn 2" in verdict["errors"]["completion_only_loss"]
    events = run_here(_config(model, train_file, tmp_path / "out"))
    assert events[-1]["type"] == "failed" and "completion_only_loss" in events[-1]["errors"]
    assert not any(e["type"] == "started" for e in events)  # refused before the model loaded
