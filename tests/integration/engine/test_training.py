"""Real tiny training jobs on CPU through the engine: loss falls, outputs are saved, stop and resume work."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, base_config, of_type, run_cli, run_here

pytestmark = pytest.mark.slow


def test_loss_falls_and_every_event_is_well_formed(tiny_llama, data_dir, tmp_path):
    config = base_config(tiny_llama, data_dir, tmp_path / "out", max_steps=40, learning_rate=1e-2,
                         eval_split=0.125, eval_steps=20, save_steps=20,
                         sample_prompts=["What colour is the sky? Say it 2 times."])
    code, events = run_cli(config, tmp_path)
    assert code == 0, events[-1]
    assert events[0]["type"] == "started" and events[-1]["type"] == "finished"
    assert all(e["v"] == 1 for e in events)
    started = events[0]
    assert started["backend"] == "hf" and started["dtype"] == "float32"
    assert started["derived"]["total_steps"] == 40 and started["derived"]["effective_batch"] == 8
    assert started["trainable_params"] > 0 and started["lora_scale"] == 2.0
    assert {"torch", "transformers", "trl", "peft"} <= set(started["versions"])

    metrics = of_type(events, "metrics")
    assert [m["step"] for m in metrics] == list(range(1, 41))
    losses = [m["loss"] for m in metrics]
    # answers-only (the default): the loss is the answers' alone, which fall from about 6.0 to about 5.1 here
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses
    assert all(m["tokens_seen"] > 0 and m["tokens_per_s"] > 0 for m in metrics)
    assert metrics[-1]["tokens_seen"] > metrics[0]["tokens_seen"]

    evals = of_type(events, "eval")
    assert [e["step"] for e in evals] == [20, 40]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert [s["step"] for s in of_type(events, "sample")] == [20, 40]
    assert [c["step"] for c in of_type(events, "checkpoint")] == [20, 40]

    adapter = Path(events[-1]["adapter_path"])
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16


def test_accumulation_changes_the_optimizer_step_count(tiny_llama, data_dir, tmp_path):
    steps = {}
    for accum in (1, 4):
        config = base_config(tiny_llama, data_dir, tmp_path / f"out{accum}", max_steps=None, num_train_epochs=1,
                             per_device_train_batch_size=4, gradient_accumulation_steps=accum)
        events = run_here(config)
        assert events[-1]["type"] == "finished", events[-1]
        steps[accum] = events[-1]["step"]
        assert events[0]["derived"]["total_steps"] == steps[accum]
    assert steps == {1: 16, 4: 4}  # 64 rows / micro-batch 4 = 16 micro-batches


def test_stop_saves_a_checkpoint_and_resume_continues_the_curve(tiny_llama, data_dir, tmp_path):
    config = base_config(tiny_llama, data_dir, tmp_path / "out", max_steps=60, learning_rate=1e-3)
    code, events = run_cli(config, tmp_path, stop_after_step=3)
    assert code == 0
    stopped = events[-1]
    assert stopped["type"] == "stopped" and stopped["reason"] == "stop file"
    step = stopped["step"]
    assert 3 <= step < 60
    checkpoint = Path(stopped["checkpoint"])
    assert checkpoint.name == f"checkpoint-{step}" and (checkpoint / "adapter_model.safetensors").is_file()
    assert of_type(events, "checkpoint")[-1]["step"] == step
    first_losses = {m["step"]: m["loss"] for m in of_type(events, "metrics")}

    (tmp_path / "STOP").unlink()
    code, resumed = run_cli(config, tmp_path, "--resume-from", str(checkpoint))
    assert code == 0, resumed[-1]
    assert resumed[0]["resumed_from_step"] == step
    steps = [m["step"] for m in of_type(resumed, "metrics")]
    assert steps == list(range(step + 1, 61))
    assert resumed[-1]["type"] == "finished" and resumed[-1]["step"] == 60
    # The resumed curve joins the first: its first loss is close to the last loss before the stop.
    assert abs(of_type(resumed, "metrics")[0]["loss"] - first_losses[step]) < 0.5


def test_formats_text_and_prompt_completion_train(tiny_llama, data_dir, tmp_path):
    for fmt in ("text", "prompt_completion"):
        extra = {"completion_only_loss": True} if fmt == "prompt_completion" else {}
        config = base_config(tiny_llama, data_dir, tmp_path / fmt, train_file=str(data_dir / f"{fmt}.jsonl"),
                             max_steps=3, **extra)
        events = run_here(config)
        assert events[-1]["type"] == "finished", events[-1]
        assert events[0]["data_format"] == fmt


def test_merge_to_16bit_writes_a_loadable_model(tiny_llama, data_dir, tmp_path):
    config = base_config(tiny_llama, data_dir, tmp_path / "out", max_steps=2, merge_16bit=True)
    events = run_here(config)
    assert events[-1]["type"] == "finished", events[-1]
    merged = Path(events[-1]["merged_path"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged)
    assert str(model.dtype) == "torch.float16"
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_a_bad_config_fails_before_loading_and_names_the_field(tiny_llama, data_dir, tmp_path):
    config = base_config(tiny_llama, data_dir, tmp_path / "out", r=0, lora_dropout=1.5)
    code, events = run_cli(config, tmp_path)
    assert code == 2 and len(events) == 1
    assert events[0]["type"] == "failed" and set(events[0]["errors"]) == {"r", "lora_dropout"}


def test_a_missing_data_file_and_a_bad_model_fail_cleanly(tiny_llama, data_dir, tmp_path):
    code, events = run_cli(base_config(tiny_llama, data_dir, tmp_path / "a", train_file="/nope/x.jsonl"), tmp_path)
    assert code == 1 and events[-1]["errors"] == {"train_file": "/nope/x.jsonl: no such file"}
    code, events = run_cli(base_config(str(tmp_path / "no-model"), data_dir, tmp_path / "b"), tmp_path)
    assert code == 1 and events[-1]["type"] == "failed" and events[-1]["traceback"]
    assert events[-1]["oom"] is False


def test_unsloth_backend_trains_on_cpu_in_its_own_process(tiny_llama, data_dir, tmp_path):
    config = base_config(tiny_llama, data_dir, tmp_path / "out", backend="unsloth", max_steps=6, r=16,
                         lora_alpha=16, use_rslora=True, tiled_mlp=True)
    code, events = run_cli(config, tmp_path)
    assert code == 0, events[-1]
    started = events[0]
    assert started["backend"] == "unsloth" and "unsloth" in started["versions"]
    assert started["lora_scale"] == pytest.approx(16 / 4)  # alpha / sqrt(r)
    assert [m["step"] for m in of_type(events, "metrics")] == list(range(1, 7))
    assert (Path(events[-1]["adapter_path"]) / "adapter_model.safetensors").is_file()
    # Unsloth's CPU fallback loads without its tiled MLP: the run says so instead of implying the memory saving.
    assert [(w["code"], w["field"]) for w in of_type(events, "warning")] == [("tiled_mlp_not_applied", "tiled_mlp")]


TILED = """
import sys, torch
import unsloth  # noqa: F401  (as the unsloth backend imports it)
from transformers import AutoModelForCausalLM
from unsloth_zoo.tiled_mlp import patch_tiled_mlp
from training.engine.backends import tiled_mlp_applied

ids = torch.randint(0, 200, (2, 64), generator=torch.Generator().manual_seed(0))
for tiled in (False, True):
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
    if tiled:
        patch_tiled_mlp(model, "arctic")  # what from_pretrained does on a GPU with UNSLOTH_TILED_MLP=arctic
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grad = model.model.layers[0].mlp.up_proj.weight.grad.abs().sum().item()
    print(tiled_mlp_applied(model), round(loss.item(), 5), round(grad, 4))
"""


def test_the_engine_sees_whether_unsloth_tiled_the_mlp(tiny_llama):
    """tiled_mlp_applied recognises Unsloth's own patch (which shards the 128 tokens into hidden-size pieces),
    and the tiled model computes the same loss and gradients."""
    out = subprocess.run([sys.executable, "-c", TILED, tiny_llama], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    plain, tiled = [line.split() for line in out.stdout.splitlines()[-2:]]
    assert (plain[0], tiled[0]) == ("False", "True")
    assert plain[1:] == tiled[1:]


def test_unsloth_backend_bias_on_a_biased_model(tiny_qwen, data_dir, tmp_path):
    config = base_config(tiny_qwen, data_dir, tmp_path / "out", backend="unsloth", max_steps=2, bias="lora_only")
    code, events = run_cli(config, tmp_path)
    assert code == 0, events[-1]
    started = events[0]
    # Unsloth 2026.10.9 does make the q/k/v biases trainable (2 layers x (64 + 32 + 32)), so no warning.
    assert started["trainable_bias_params"] == 2 * (64 + 32 + 32)
    assert "bias_no_effect" not in [w["code"] for w in of_type(events, "warning")]


def test_the_range_tests_exponential_ramp_trains_from_start_lr_up_to_the_rate(tiny_llama, data_dir, tmp_path):
    """learning_rate 1: "LR increases smoothly from very small to large": the same factor every step."""
    config = base_config(tiny_llama, data_dir, tmp_path / "out", max_steps=9, learning_rate=1e-2, warmup_steps=0,
                         lr_scheduler_type="exponential_range", lr_scheduler_kwargs={"start_lr": 1e-6})
    events = run_here(config)
    assert events[-1]["type"] == "finished", events[-1]
    rates = [m["learning_rate"] for m in of_type(events, "metrics")]
    assert len(rates) == 9 and rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-2)
    assert [b / a for a, b in zip(rates, rates[1:])] == pytest.approx([10 ** 0.5] * 8)


def test_early_stopping_stops_when_eval_loss_stops_improving_and_keeps_the_best_checkpoint(tiny_llama, data_dir,
                                                                                         tmp_path):
    """A learning rate far too high for the tiny model: eval loss stalls within a few evals (its falls shrink below
    the threshold), patience runs out well before max_steps, and the adapter saved is the best eval's checkpoint,
    which the finished event names."""
    from safetensors.torch import load_file

    config = base_config(tiny_llama, data_dir, tmp_path / "out", max_steps=20, learning_rate=1.0, eval_split=0.25,
                         eval_steps=2, early_stopping_patience=2, early_stopping_threshold=0.02)
    events = run_here(config)
    finished = events[-1]
    evals = of_type(events, "eval")
    best = min(evals, key=lambda e: (e["eval_loss"], e["step"]))
    assert finished["type"] == "finished" and finished["stopped_early"] is True
    assert finished["step"] < 20 and finished["step"] == evals[-1]["step"]
    assert (finished["best_step"], finished["best_eval_loss"]) == (best["step"], best["eval_loss"])
    # the last two evals each fell by no more than the threshold from the best before them: patience 2 ran out
    for before, after in ((evals[-3], evals[-2]), (evals[-2], evals[-1])):
        assert min(e["eval_loss"] for e in evals if e["step"] <= before["step"]) - after["eval_loss"] <= 0.02
    # Checkpoints at each new best only, and the adapter is the best one's weights.
    saved = [c["step"] for c in of_type(events, "checkpoint")]
    assert saved and saved[-1] == best["step"] and all(step <= best["step"] for step in saved)
    adapter = load_file(Path(finished["adapter_path"]) / "adapter_model.safetensors")
    kept = load_file(Path(tmp_path / "out" / "checkpoints" / f"checkpoint-{best['step']}" /
                          "adapter_model.safetensors"))
    assert adapter.keys() == kept.keys() and all((adapter[k] == kept[k]).all() for k in adapter)
