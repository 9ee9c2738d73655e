"""The engine's config model: every bad value or combination is refused before any model loads, naming the field."""
from pathlib import Path

import pytest

from training.engine.config import SCHEDULER_KWARGS, SCHEDULERS, ConfigError, check_environment, parse_config

BASE = {"model": "/models/tiny", "train_file": "/data/train.jsonl"}
ROOT = Path(__file__).resolve().parents[3]


def errors_of(**overrides):
    with pytest.raises(ConfigError) as exc:
        parse_config({**BASE, **overrides})
    return exc.value.errors


def test_defaults_follow_the_seed():
    config = parse_config(BASE)
    assert config.version == 1
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (16, 32, 0.0, "none")
    assert config.lr_scheduler_type == "linear" and config.optim == "adamw_torch_fused"
    assert config.warmup_steps == 0.03 and config.weight_decay == 0.01


def test_config_round_trips_through_json():
    config = parse_config({**BASE, "loftq_config": {"loftq_bits": 4, "loftq_iter": 2}, "target_modules": ["q_proj"]})
    assert parse_config(config.model_dump(mode="json")) == config


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ({"r": 0}, "r", "0 is below 1: at least 1"),
        ({"lora_alpha": 0}, "lora_alpha", "greater than 0"),
        ({"lora_alpha": -2}, "lora_alpha", "greater than 0"),
        ({"lora_dropout": 1.0}, "lora_dropout", "less than 1"),
        ({"lora_dropout": -0.1}, "lora_dropout", "-0.1 is below 0: at least 0"),
        ({"learning_rate": 0}, "learning_rate", "greater than 0"),
        ({"warmup_steps": 1.0}, "warmup_steps", "[0, 1)"),
        ({"warmup_steps": -3}, "warmup_steps", "-3 is below 0: at least 0"),
        ({"bias": "some"}, "bias", "'none', 'lora_only' or 'all'"),
        ({"optim": "sgd"}, "optim", "adamw_torch_fused"),
        ({"lr_scheduler_type": "step"}, "lr_scheduler_type", "warmup_stable_decay"),
        ({"dtype": "int8"}, "dtype", "'auto', 'bfloat16', 'float16' or 'float32'"),
        ({"target_modules": []}, "target_modules", "attention, mlp, all-linear"),
        ({"colour": "red"}, "colour", "allowed fields"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(overrides, field, words):
    errors = errors_of(**overrides)
    assert field in errors, errors
    assert words in errors[field]


def test_unknown_scheduler_kwargs_list_the_allowed_ones():
    errors = errors_of(lr_scheduler_type="cosine", lr_scheduler_kwargs={"min_lr_rate": 0.1})
    assert errors["lr_scheduler_kwargs"] == "min_lr_rate not accepted by cosine; allowed: num_cycles"
    errors = errors_of(lr_scheduler_type="linear", lr_scheduler_kwargs={"power": 2})
    assert "allowed: none" in errors["lr_scheduler_kwargs"]


def test_every_scheduler_accepts_its_own_kwargs():
    assert set(SCHEDULERS) == set(SCHEDULER_KWARGS) and len(SCHEDULERS) == 11
    examples = {
        "cosine": {"num_cycles": 0.5},
        "cosine_with_restarts": {"num_cycles": 2},
        "polynomial": {"power": 1.0, "lr_end": 1e-7},
        "inverse_sqrt": {"timescale": 10},
        "reduce_lr_on_plateau": {"factor": 0.5, "patience": 2},
        "cosine_with_min_lr": {"min_lr_rate": 0.1},
        "warmup_stable_decay": {"num_decay_steps": 10, "min_lr_ratio": 0.05},
        "exponential_range": {"start_lr": 1e-7},
    }
    for name in SCHEDULERS:
        extra = {"eval_split": 0.1, "eval_steps": 5} if name == "reduce_lr_on_plateau" else {}
        extra |= {"warmup_steps": 0} if name == "exponential_range" else {}
        parse_config({**BASE, "lr_scheduler_type": name, "lr_scheduler_kwargs": examples.get(name, {}), **extra})


def test_cosine_with_min_lr_needs_exactly_one_floor():
    assert "exactly one of min_lr, min_lr_rate" in errors_of(lr_scheduler_type="cosine_with_min_lr")["lr_scheduler_kwargs"]


def test_reduce_on_plateau_without_evaluation_is_refused():
    errors = errors_of(lr_scheduler_type="reduce_lr_on_plateau")
    assert "eval_file or eval_split" in errors["lr_scheduler_type"]


def test_loftq_with_4bit_is_refused():
    errors = errors_of(load_in_4bit=True, loftq_config={"loftq_bits": 4, "loftq_iter": 1})
    assert "load_in_4bit" in errors["loftq_config"]


def test_the_tiled_mlp_is_refused_where_it_cannot_exist_and_its_target_without_it():
    assert "unsloth backend only" in errors_of(tiled_mlp=True, backend="hf")["tiled_mlp"]
    assert "set tiled_mlp to true" in errors_of(tiled_mlp_target_gb=0.5)["tiled_mlp_target_gb"]
    assert "greater than 0" in errors_of(tiled_mlp=True, tiled_mlp_target_gb=0)["tiled_mlp_target_gb"]
    for backend in ("unsloth", "auto"):  # auto may resolve to hf on a CPU worker: a warning then, not a refusal
        parse_config({**BASE, "backend": backend, "tiled_mlp": True, "tiled_mlp_target_gb": 0.5})


def test_the_tiled_mlp_option_unsloth_reads():
    from training.engine.backends import tiled_mlp_option

    assert tiled_mlp_option(parse_config(BASE)) == "0"
    assert tiled_mlp_option(parse_config({**BASE, "tiled_mlp": True})) == "arctic"
    assert tiled_mlp_option(parse_config({**BASE, "tiled_mlp": True, "tiled_mlp_target_gb": 0.5})) == "target:0.5"
    assert tiled_mlp_option(parse_config({**BASE, "tiled_mlp": True, "tiled_mlp_target_gb": 2})) == "target:2"


def test_several_errors_are_reported_together():
    errors = errors_of(r=0, learning_rate=-1)
    assert {"r", "learning_rate"} <= set(errors)


@pytest.mark.parametrize(
    "overrides, cuda, bf16, field, words",
    [
        ({"loftq_config": {"loftq_bits": 4}}, False, False, "loftq_config", "GPU only"),
        ({"optim": "paged_adamw_8bit"}, False, False, "optim", "needs a CUDA GPU"),
        ({"optim": "adamw_8bit"}, False, False, "optim", "allowed on CPU"),
        ({"dtype": "bfloat16"}, True, False, "dtype", "no bfloat16 support"),
        ({"load_in_4bit": True}, False, False, "load_in_4bit", "needs a CUDA GPU"),
    ],
)
def test_hardware_checks_name_the_field(overrides, cuda, bf16, field, words):
    config = parse_config({**BASE, **overrides})
    with pytest.raises(ConfigError) as exc:
        check_environment(config, cuda=cuda, bf16=bf16)
    assert words in exc.value.errors[field]


def test_hardware_checks_pass_on_a_capable_machine():
    config = parse_config({**BASE, "optim": "paged_adamw_8bit", "dtype": "bfloat16", "load_in_4bit": True})
    check_environment(config, cuda=True, bf16=True)


def test_missing_bitsandbytes_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real(name))
    config = parse_config({**BASE, "optim": "adamw_bnb_8bit"})
    with pytest.raises(ConfigError) as exc:
        check_environment(config, cuda=True, bf16=True)
    assert "needs bitsandbytes" in exc.value.errors["optim"]


@pytest.fixture
def clean_alloc_env(monkeypatch):
    from training.engine import backends

    for name in (backends.ALLOC_CONF, "PYTORCH_CUDA_ALLOC_CONF", "WSL_DISTRO_NAME", "WSL_INTEROP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backends.sys, "platform", "linux")
    monkeypatch.setattr(backends.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(backends.platform, "release", lambda: "6.8.0")
    return backends


def test_the_unsloth_backend_gets_expandable_segments_before_torch_starts(clean_alloc_env):
    backends = clean_alloc_env
    backends.prepare_process(parse_config({**BASE, "backend": "unsloth"}))
    assert backends.os.environ[backends.ALLOC_CONF] == "expandable_segments:True"


@pytest.mark.parametrize("case", ["hf backend", "worker's own setting", "legacy variable", "aarch64", "wsl"])
def test_expandable_segments_are_left_alone_where_unsloth_would(clean_alloc_env, monkeypatch, case):
    backends = clean_alloc_env
    backend = "hf" if case == "hf backend" else "unsloth"
    if case == "worker's own setting":
        monkeypatch.setenv(backends.ALLOC_CONF, "max_split_size_mb:128")
    if case == "legacy variable":
        monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    if case == "aarch64":  # Tegra boards fail with expandable segments; Unsloth decides there
        monkeypatch.setattr(backends.platform, "machine", lambda: "aarch64")
    if case == "wsl":
        monkeypatch.setenv("WSL_DISTRO_NAME", "Ubuntu")
    before = backends.os.environ.get(backends.ALLOC_CONF)
    backends.prepare_process(parse_config({**BASE, "backend": backend}))
    assert backends.os.environ.get(backends.ALLOC_CONF) == before


def test_the_runner_prepares_the_process_before_anything_imports_torch(tmp_path):
    """The allocator reads its configuration once: prepare_process must come before torch is first imported."""
    import json
    import subprocess
    import sys

    script = """
import json, os, sys
from training.engine import backends, runner
from training.engine.config import parse_config
from training.engine.events import EventSink
seen = {}
def prepare_process(config):
    seen["torch_imported"] = "torch" in sys.modules
    raise RuntimeError("stop here")
backends.prepare_process = prepare_process
runner.run(parse_config(json.loads(sys.argv[1])), EventSink(open(os.devnull, "w")))
print(json.dumps(seen))
"""
    config = {**BASE, "backend": "unsloth", "output_dir": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script, json.dumps(config)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert json.loads(out.stdout.splitlines()[-1]) == {"torch_imported": False}


def test_the_range_tests_exponential_ramp_is_checked():
    from training.engine.config import ConfigError, parse_config

    ok = parse_config({**BASE, "lr_scheduler_type": "exponential_range", "learning_rate": 1e-2, "warmup_steps": 0})
    assert ok.lr_scheduler_kwargs == {}
    for kwargs, warmup, field in (({"start_lr": 0.1}, 0, "lr_scheduler_kwargs"), ({"start_lr": 0}, 0,
                                  "lr_scheduler_kwargs"), ({}, 10, "warmup_steps"), ({"end": 1}, 0,
                                                                                    "lr_scheduler_kwargs")):
        with pytest.raises(ConfigError) as exc:
            parse_config({**BASE, "lr_scheduler_type": "exponential_range", "learning_rate": 1e-2,
                          "lr_scheduler_kwargs": kwargs, "warmup_steps": warmup})
        assert field in exc.value.errors


def test_the_exponential_ramp_multiplies_by_the_same_factor_each_step_and_ends_at_the_rate():
    from training.engine.runner import exponential_range_factor

    factors = [exponential_range_factor(s, 5, 1e-6, 1e-2) * 1e-2 for s in range(5)]
    assert factors[0] == pytest.approx(1e-6) and factors[-1] == pytest.approx(1e-2)
    ratios = [b / a for a, b in zip(factors, factors[1:])]
    assert ratios == pytest.approx([10.0] * 4)


def test_early_stopping_needs_evals_and_checkpoints_on_eval_steps():
    from training.engine.config import ConfigError, parse_config

    base = {"model": "m", "train_file": "t.jsonl"}
    with pytest.raises(ConfigError) as refused:
        parse_config({**base, "early_stopping_patience": 3})
    assert "needs evals" in refused.value.errors["early_stopping_patience"]
    with pytest.raises(ConfigError) as refused:
        parse_config({**base, "eval_split": 0.1, "eval_steps": 20, "save_steps": 50, "early_stopping_patience": 3})
    assert refused.value.errors["save_steps"].startswith("with early stopping the best eval's checkpoint")
    assert "multiple of eval_steps (20), e.g. 40" in refused.value.errors["save_steps"]
    with pytest.raises(ConfigError) as refused:
        parse_config({**base, "early_stopping_threshold": 0.01})
    assert "set early_stopping_patience too" in refused.value.errors["early_stopping_threshold"]
    for save_steps in (None, 40):
        config = parse_config({**base, "eval_split": 0.1, "eval_steps": 20, "save_steps": save_steps,
                               "early_stopping_patience": 3, "early_stopping_threshold": 0.01})
        assert config.early_stopping_patience == 3


def test_early_stopping_asks_transformers_to_restore_the_best_eval():
    from training.engine.config import parse_config
    from training.engine.runner import sft_config

    config = parse_config({"model": "m", "train_file": "t.jsonl", "eval_split": 0.1, "eval_steps": 20,
                           "early_stopping_patience": 3, "output_dir": "/tmp/x"})
    args = sft_config(config, "messages", None, True)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.greater_is_better is False and args.save_strategy == "best"
    aligned = sft_config(config.model_copy(update={"save_steps": 40}), "messages", None, True)
    assert aligned.save_strategy == "steps" and aligned.save_steps == 40
