"""The symptom detectors on the recorded metrics of real tiny training runs, made to misbehave on purpose."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from guidance.detectors import Watcher, detect, series_from_events
from training.engine.tiny import COLOURS, THINGS, build_tiny_model, write_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
INSTABILITY = {"loss_not_finite", "loss_spike", "grad_norm_spike", "early_instability"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("detector-runs")
    build_tiny_model(d / "model", "llama")
    write_dataset(d / "learnable.jsonl", n=64, fmt="text")
    write_dataset(d / "chat.jsonl", n=64, fmt="messages")
    # Memorisable but not learnable: random word strings, different ones for eval.
    words = COLOURS + THINGS + ["what", "colour", "is", "the", "say", "it", "times", "one", "two", "three"]
    for name, seed in (("memorise_train", 1), ("memorise_eval", 2)):
        rng = random.Random(seed)
        rows = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(12, 20)))} for _ in range(8)]
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Short examples with a long one in every eight: unpacked, a batch pads to its longest.
    rng = random.Random(3)
    rows = [{"text": " ".join(rng.choice(words) for _ in range(60 if i % 8 == 0 else 3))} for i in range(256)]
    (d / "padded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def train(workdir: Path, name: str, **overrides) -> list[dict]:
    """Run the engine's CLI on a config and return its events, checked to have finished."""
    config = {
        "model": str(workdir / "model"), "train_file": str(workdir / "learnable.jsonl"), "max_length": 64,
        "backend": "hf", "optim": "adamw_torch", "learning_rate": 2e-3, "max_steps": 20,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "warmup_steps": 2,
        "logging_steps": 1, "gradient_checkpointing": False, "output_dir": str(workdir / f"out-{name}"),
        **overrides,
    }
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "training.engine", "run", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events and events[-1]["type"] == "finished", (events[-1:], proc.stderr[-3000:])
    return events


def watched(events: list[dict]) -> list:
    """Findings as the live Watcher raises them, checked to match a detection over the whole recorded run."""
    watcher, live = Watcher(), []
    for event in events:
        live.extend(watcher.feed(event))
    whole = detect(series_from_events(events))
    assert sorted((f.key, f.step) for f in live) == sorted((f.key, f.step) for f in whole)
    return live


def test_huge_learning_rate_without_warmup_or_clipping_is_unstable(workdir):
    events = train(workdir, "huge-lr", learning_rate=1.0, max_grad_norm=0, warmup_steps=0)
    found = [f for f in watched(events) if f.code in INSTABILITY]
    assert found, "a learning rate of 1.0 with no warmup and no clipping raised no instability finding"
    first = found[0]
    assert first.severity in ("warning", "error") and first.step <= 25
    assert {"learning_rate", "warmup_steps"} <= set(first.parameters)
    assert first.evidence["steps"] == [first.step] and first.evidence["thresholds"]


def test_tiny_learning_rate_gives_flat_loss_and_a_bias_llama_lacks_is_named(workdir):
    # bias="all" on a llama (no bias parameters) rides along: the engine warns, and the finding names bias.
    events = train(workdir, "tiny-lr", learning_rate=1e-12, max_steps=30, bias="all")
    found = watched(events)
    assert [f.code for f in found] == ["bias_no_effect", "flat_loss"]
    assert found[0].parameters == ("bias",) and found[0].step == 0
    f = found[1]
    assert f.step == 22  # warmup 2 + flat_steps 20
    assert abs(f.evidence["relative_drop"]) < f.evidence["thresholds"]["flat_min_drop"]
    assert f.evidence["learning_rate_max"] == pytest.approx(1e-12)
    assert f.parameters[0] == "learning_rate"


def test_tiny_dataset_trained_for_many_epochs_overfits(workdir):
    events = train(workdir, "overfit", train_file=str(workdir / "memorise_train.jsonl"),
                   eval_file=str(workdir / "memorise_eval.jsonl"), eval_steps=5, max_steps=80,
                   per_device_train_batch_size=8, learning_rate=1e-2, r=64, lora_alpha=128,
                   lr_scheduler_type="constant_with_warmup")
    assert max(e["epoch"] for e in events if e["type"] == "metrics") >= 80  # 8 rows, one step per epoch
    f = next(f for f in watched(events) if f.code == "overfitting")
    assert f.severity == "warning"
    assert f.evidence["gap_now"] > f.evidence["gap_at_best"]
    assert f.evidence["train_loss_now"] < f.evidence["best_eval_loss"]
    assert f.evidence["steps"][-1] == f.step and f.step % 5 == 0
    assert {"lora_dropout", "weight_decay", "r"} <= set(f.parameters)


def test_healthy_run_fires_nothing_serious(workdir):
    events = train(workdir, "healthy", train_file=str(workdir / "chat.jsonl"), max_length=128, max_steps=40,
                   learning_rate=5e-3, warmup_steps=4, eval_split=0.25, eval_steps=10)
    losses = [e["loss"] for e in events if e["type"] == "metrics"]
    assert losses[-1] < losses[0] * 0.9  # it did learn
    serious = [f for f in watched(events) if f.severity != "info"]
    assert serious == []


def test_short_examples_padded_to_the_longest_run_far_below_the_packed_estimate(workdir):
    common = dict(train_file=str(workdir / "padded.jsonl"), max_length=128, per_device_train_batch_size=8,
                  max_steps=12)
    unpacked = train(workdir, "padded", packing=False, **common)
    shares = [e["padding_share"] for e in unpacked if e["type"] == "metrics"]
    assert all(0.5 < share < 1 for share in shares), shares
    f = next(f for f in watched(unpacked) if f.code == "throughput_below_packed")
    assert f.evidence["estimate_from"] == "padding" and f.evidence["ratio"] < 0.5
    assert f.parameters == ("packing",)
    packed = train(workdir, "packed", packing=True, **common)
    assert {e["padding_share"] for e in packed if e["type"] == "metrics"} == {0.0}
    assert [f for f in watched(packed) if f.code == "throughput_below_packed"] == []
