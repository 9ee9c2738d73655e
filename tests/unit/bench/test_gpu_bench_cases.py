"""bench/gpu_throughput.py's case variants: what each one changes in the config file."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.engine.config import parse_config

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "bench" / "gpu_throughput.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
DATA = {kind: f"{kind}.jsonl" for kind in bench.DATA}


def test_a_plain_case_is_the_reference_config(tmp_path):
    runner, cfg_path = bench.case_config("lora16_unsloth", "m", DATA, 20, tmp_path)
    config = json.loads(cfg_path.read_text())
    assert runner == "engine"
    assert (config["per_device_train_batch_size"], config["max_length"], config["packing"]) == (8, 2048, True)
    assert "tiled_mlp" not in config


@pytest.mark.parametrize("case", [c + v for c in ("lora16_unsloth", "qlora_hf")
                                  for v in ("", "+mb16", "+mb4", "+mb1", "+nogc")]
                         + ["lora16_unsloth+tiled", "qlora_unsloth+tiled05"])
def test_every_engine_case_is_a_config_the_engine_accepts(tmp_path, case):
    """A case the engine would reject wastes a GPU call: each is checked here, before any model loads."""
    _, cfg_path = bench.case_config(case, str(tmp_path), DATA, 20, tmp_path)
    parse_config(json.loads(cfg_path.read_text()))


def test_variants_stack(tmp_path):
    runner, cfg_path = bench.case_config("qlora_unsloth+mb4+tiled05", "m", DATA, 20, tmp_path)
    config = json.loads(cfg_path.read_text())
    assert (config["per_device_train_batch_size"], config["gradient_accumulation_steps"]) == (4, 2)
    assert (config["tiled_mlp"], config["tiled_mlp_target_gb"]) == (True, 0.5)
    assert config["train_file"] == "long.jsonl" and config["load_in_4bit"] is True


def test_a_bare_only_variant_is_refused_for_an_engine_case(tmp_path):
    with pytest.raises(SystemExit, match=r"\+torchgc is for the bare script"):
        bench.case_config("lora16_unsloth+torchgc", "m", DATA, 20, tmp_path)
    runner, cfg_path = bench.case_config("lora16_bare+torchgc", "m", DATA, 20, tmp_path)
    assert runner == "bare" and json.loads(cfg_path.read_text())["use_gradient_checkpointing"] is True


@pytest.mark.parametrize("variant", ["mixed", "full"])
def test_a_data_variant_changes_the_data_only(tmp_path, variant):
    _, plain = bench.case_config("qlora_hf", "m", DATA, 20, tmp_path)
    _, other = bench.case_config(f"qlora_hf+{variant}", "m", DATA, 20, tmp_path)
    plain, other = json.loads(plain.read_text()), json.loads(other.read_text())
    assert other["train_file"] == f"{variant}.jsonl" and plain["train_file"] == "long.jsonl"
    assert {k: v for k, v in other.items() if k not in ("train_file", "output_dir")} == \
        {k: v for k, v in plain.items() if k not in ("train_file", "output_dir")}


@pytest.mark.parametrize("variant, env", [("ce1", {"UNSLOTH_LOGPROB_CHUNK_GB": "0.0625"}),
                                          ("ce4", {"UNSLOTH_LOGPROB_CHUNK_GB": "0.015625"})])
def test_an_environment_variant_changes_the_environment_only(tmp_path, variant, env):
    _, plain = bench.case_config("qlora_unsloth+full", "m", DATA, 20, tmp_path)
    _, other = bench.case_config(f"qlora_unsloth+full+{variant}", "m", DATA, 20, tmp_path)
    drop = ("output_dir",)
    assert {k: v for k, v in json.loads(other.read_text()).items() if k not in drop} == \
        {k: v for k, v in json.loads(plain.read_text()).items() if k not in drop}
    assert bench.case_env(f"qlora_unsloth+full+{variant}").items() >= env.items()


def test_ratios_pair_each_unsloth_case_with_the_same_job():
    """The bare script must match every variant; the plain stacks the job (an Unsloth-only environment aside)."""
    names = ["qlora_unsloth+full", "qlora_unsloth+full+ce1", "qlora_hf_before+full", "qlora_hf_before",
             "qlora_bare+full+ce1", "qlora_bare+full", "lora16_unsloth", "lora16_hf", "lora16_hf+mb4"]
    assert bench.comparisons(names) == [
        ("qlora_unsloth+full", "qlora_hf_before+full"), ("qlora_unsloth+full", "qlora_bare+full"),
        ("qlora_unsloth+full+ce1", "qlora_hf_before+full"), ("qlora_unsloth+full+ce1", "qlora_bare+full+ce1"),
        ("lora16_unsloth", "lora16_hf")]


def test_the_peaks_line_reaches_stdout_after_the_engine_moves_fd_1(tmp_path):
    """The engine points fd 1 at stderr for library chatter (training/engine/__main__.py); the bench's peaks line
    must still come out on the stdout the bench reads, once, after everything the run printed."""
    script = bench.PEAKS + "os.dup2(2, 1)\nprint('chatter', flush=True)\nsys.exit(0)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and set(json.loads(lines[0])) == {"type", "allocated", "reserved"}
    assert "chatter" in out.stderr


@pytest.mark.parametrize("size, params", [("1b", 1_235_814_400), ("1.1b", 1_100_048_384)])
def test_the_bench_sizes_have_the_shapes_of_the_models_they_are_named_after(size, params):
    """Llama-3.2-1B and TinyLlama-1.1B: their published parameter counts (built on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**bench.SIZES[size]))
    assert sum(p.numel() for p in model.parameters()) == params


def test_the_full_data_is_cut_to_max_length_in_every_row_and_the_long_data_only_in_some(tmp_path):
    """What the +full variant measures (2026-11-25 in docs/benchmarks.md) rests on this: with the tiny model's
    tokenizer every `full` row is longer than 1,024 tokens (all cut to the same length), while `long` rows are not."""
    from training.engine.tiny import _train_tokenizer

    tokenizer = _train_tokenizer(vocab_size=512)  # the tokenizer build_tiny_model saves with every size

    def lengths(kind):
        rows, words, seed = bench.DATA[kind]
        bench.write_data(tmp_path / kind, rows=rows, words=words, seed=seed)
        texts = [json.loads(line)["text"] for line in (tmp_path / kind).read_text().splitlines()]
        return [len(ids) for ids in tokenizer(texts)["input_ids"]]

    assert min(lengths("full")) > 1024
    long = lengths("long")
    assert 0.3 < sum(n > 1024 for n in long) / len(long) < 0.9 and min(long) < 1024


def test_the_varlen_emulation_passes_unsloths_torch_2_12_checks_only_when_asked(monkeypatch):
    """bench/unsloth_varlen.py: on a torch 2.11-like varlen module it adds enable_gqa and says no to cuDNN (as torch
    2.13 does); it leaves a torch that has enable_gqa alone, and does nothing unless the case asks."""
    import inspect

    import torch.nn.attention.varlen as varlen

    spec = importlib.util.spec_from_file_location("unsloth_varlen", ROOT / "bench" / "unsloth_varlen.py")
    emulation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emulation)

    def torch_2_11_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None,
                               window_size=(-1, -1)):
        return None

    monkeypatch.setattr(varlen, "varlen_attn", torch_2_11_varlen_attn)
    monkeypatch.delenv(emulation.ENV, raising=False)
    assert emulation.apply() is False and varlen.varlen_attn is torch_2_11_varlen_attn
    monkeypatch.setenv(emulation.ENV, "1")
    monkeypatch.setattr(varlen, "_can_use_cudnn", None, raising=False)
    assert emulation.apply() is True
    assert {"window_size", "enable_gqa"} <= set(inspect.signature(varlen.varlen_attn).parameters)
    assert varlen._can_use_cudnn(None, None, None, 1024, [-1, 0], True) is False
    with pytest.raises(RuntimeError, match="lean flash path only"):
        varlen.varlen_attn(None, None, None, None, None, 1, 1, enable_gqa=True)
    assert emulation.apply() is False  # now it has enable_gqa: nothing more to do


def test_gpus_runs_each_case_on_each_gpu_count_as_the_engines_devices(tmp_path):
    names = bench.with_gpus(["lora16_unsloth", "qlora_hf+mb4"], [1, 2])
    assert names == ["lora16_unsloth", "lora16_unsloth+gpus2", "qlora_hf+mb4", "qlora_hf+mb4+gpus2"]
    _, one = bench.case_config("lora16_unsloth", str(tmp_path), DATA, 20, tmp_path)
    _, two = bench.case_config("lora16_unsloth+gpus2", str(tmp_path), DATA, 20, tmp_path)
    one, two = json.loads(one.read_text()), json.loads(two.read_text())
    assert "devices" not in one and parse_config(two).devices == 2
    assert {k: v for k, v in two.items() if k not in ("devices", "output_dir")} == \
        {k: v for k, v in one.items() if k != "output_dir"}  # the same per-GPU micro-batch


def test_gpus_is_refused_where_the_ranks_would_not_get_the_cases_process(tmp_path):
    for case in ("lora16_bare+gpus2", "lora16_unsloth+varlen+gpus2", "qlora_hf_before+gpus2"):
        with pytest.raises(SystemExit, match="for the engine's cases, without"):
            bench.case_config(case, "m", DATA, 20, tmp_path)


def test_the_scaling_ratio_pairs_each_n_gpu_case_with_its_one_gpu_case():
    by = {"lora16_hf": {"tokens_per_s": 1000.0}, "lora16_hf+gpus2": {"tokens_per_s": 1900.0},
          "qlora_hf+mb4+gpus2": {"tokens_per_s": 50.0}}
    assert bench.scaling(by) == [("lora16_hf", "lora16_hf+gpus2", 2, 1.9)]
