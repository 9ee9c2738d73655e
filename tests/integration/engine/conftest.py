"""Fixtures for engine tests: tiny models built once per session, learnable data, and a CLI runner."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.engine.tiny import write_dataset

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tiny_llama(tiny_model):
    """The session's tiny Llama (tests/conftest.py), under the name that says which architecture a test wants."""
    return tiny_model


@pytest.fixture(scope="session")
def tiny_qwen(tiny_qwen_model):
    """The session's tiny Qwen2 (tests/conftest.py), built once for these tests and the evaluation tests."""
    return tiny_qwen_model


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for fmt in ("text", "prompt_completion", "messages"):
        write_dataset(d / f"{fmt}.jsonl", n=64, fmt=fmt)
    return d


def base_config(model, data_dir, out_dir, **overrides):
    config = {
        "model": model, "train_file": str(Path(data_dir) / "messages.jsonl"), "max_length": 128, "backend": "hf",
        "optim": "adamw_torch", "learning_rate": 5e-3, "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1, "max_steps": 8, "warmup_steps": 0, "logging_steps": 1,
        "output_dir": str(out_dir),
    }
    config.update(overrides)
    return config


def run_cli(config: dict, tmp_path, *extra_args, stop_after_step=None, timeout=240):
    """Run `python -m training.engine run` in a subprocess; return (exit code, events). Optionally create the stop
    file once a metrics event at `stop_after_step` or later has been read."""
    cfg = tmp_path / f"config-{os.getpid()}-{len(list(tmp_path.iterdir()))}.json"
    cfg.write_text(json.dumps(config))
    stop_file = tmp_path / "STOP"
    args = [sys.executable, "-m", "training.engine", "run", str(cfg), "--stop-file", str(stop_file), *extra_args]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    events = []
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if stop_after_step and event["type"] == "metrics" and event["step"] >= stop_after_step:
            stop_file.touch()
    stderr = proc.stderr.read()
    code = proc.wait(timeout=timeout)
    if not events or events[-1]["type"] not in ("finished", "stopped", "failed"):
        raise AssertionError(f"no terminal event; stderr:\n{stderr[-3000:]}")
    return code, events


def run_here(config: dict) -> list[dict]:
    """The engine's run in this test process, its events as the CLI would print them. For the tests of what a run
    does (the hf backend): the libraries are imported once per test process, where `run_cli` spends a process and
    its imports (seconds of CPU) on each run. The CLI itself (exit codes, the stop file, the unsloth backend's own
    process) keeps `run_cli`."""
    import io

    from training.engine.config import parse_config
    from training.engine.events import EventSink
    from training.engine.runner import run

    out = io.StringIO()
    run(parse_config(config), EventSink(out))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def of_type(events, type_):
    return [e for e in events if e["type"] == type_]
