"""GPU throughput and memory of the engine's backends, and of a bare Unsloth script with the same config.

Builds a ~1B random Llama (Llama-3.2-1B shapes; `--size 1.1b`: TinyLlama-1.1B shapes) on the box, writes synthetic
data, runs each case in its own process (Unsloth patches the trainer process-wide), and prints tokens/s, peak VRAM,
an MFU estimate and the ratios.

    python bench/gpu_throughput.py --cases lora16_unsloth,lora16_hf,lora16_bare,lora16_hf,lora16_unsloth --steps 20
    python bench/gpu_throughput.py --cases qlora_unsloth,qlora_hf,qlora_hf_before,qlora_unsloth,qlora_hf --steps 40 --skip 10
    python bench/gpu_throughput.py --size 1.1b --cases lora16_unsloth,lora16_hf,qlora_unsloth,qlora_hf --steps 20
    python bench/gpu_throughput.py --probe OUT_DIR --cases lora16_unsloth,lora16_hf --steps 8   (bench/gpu_memory_probe.py)
    python bench/gpu_throughput.py --size 1.1b --cases lora16_hf,lora16_unsloth --gpus 1,2 --steps 30 --skip 10

`--gpus 1,2` runs every case on 1 GPU and again as a data-parallel run of 2 (`+gpus2`: the engine's `devices`, the
same per-GPU micro-batch, so twice the rows a step), and prints tokens/s (the whole job's), the peak of the fullest
GPU and the scaling ratio, 2-GPU tokens/s over 1-GPU tokens/s (issue 23's target: >= 1.8).

A case listed twice runs twice (interleave them: the lent machines drift); the ratios use each case's mean.
A case may carry variants after "+" (`lora16_unsloth+tiled`, `lora16_bare+mb4`): see VARIANTS.

tokens/s counts non-padding tokens between the metrics of step `--skip` and the last step (compile and warm-up
excluded), the same way for the engine (its `metrics` events) and the bare script (a TrainerCallback).
MFU ≈ 6 · N_params · tokens/s / (peak · GPUs), with N the base model's parameters: forward 2N, backward through the frozen
weights 2N, and gradient checkpointing's recomputed forward 2N; attention FLOPs are left out (an underestimate).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training.engine.tiny import SIZES  # noqa: E402  (light: the model building imports come later)

H100_BF16_DENSE = 989e12

COMMON = dict(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules="all-linear", random_state=3407,
              learning_rate=2e-4, warmup_steps=2, optim="adamw_8bit", weight_decay=0.01, lr_scheduler_type="linear",
              logging_steps=1, seed=3407, gradient_accumulation_steps=1, dtype="bfloat16")
CASES = {
    # 16-bit LoRA, packed, seq 2048, micro-batch 8 (the 2026-11-24 reference: Unsloth 12.0k tok/s at 3.3 GiB)
    "lora16_unsloth": dict(runner="engine", backend="unsloth", load_in_4bit=False, packing=True, max_length=2048,
                           per_device_train_batch_size=8, data="short"),
    "lora16_bare": dict(runner="bare", backend="unsloth", load_in_4bit=False, packing=True, max_length=2048,
                        per_device_train_batch_size=8, data="short"),
    "lora16_hf": dict(runner="engine", backend="hf", load_in_4bit=False, packing=True, max_length=2048,
                      per_device_train_batch_size=8, data="short"),
    # QLoRA 4-bit, unpacked, seq 1024 (reference: Unsloth 1.50x faster at 37% of the VRAM)
    "qlora_unsloth": dict(runner="engine", backend="unsloth", load_in_4bit=True, packing=False, max_length=1024,
                          per_device_train_batch_size=8, data="long"),
    "qlora_bare": dict(runner="bare", backend="unsloth", load_in_4bit=True, packing=False, max_length=1024,
                       per_device_train_batch_size=8, data="long"),
    "qlora_hf": dict(runner="engine", backend="hf", load_in_4bit=True, packing=False, max_length=1024,
                     per_device_train_batch_size=8, data="long"),
    # The hf backend as it was before 2026-11-24, for before/after figures: float32 embeddings/lm_head/norms
    # (peft.prepare_model_for_kbit_training) and TRL's bfloat16 adapters.
    "qlora_hf_before": dict(runner="engine-before", backend="hf", load_in_4bit=True, packing=False, max_length=1024,
                            per_device_train_batch_size=8, data="long"),
}
# Variants, to find what moves the peaks and speeds: Unsloth's tiled MLP (the engine's tiled_mlp fields), twice the
# micro-batch (QLoRA at seq 1024 then takes the 16-bit case's 16k tokens a step), a half, quarter or eighth of the
# micro-batch with that much more accumulation (the same tokens per optimizer step and per logged step), no
# gradient checkpointing, (bare script only) PyTorch's checkpointing in place of Unsloth's offloading one, and
# unpacked data of mixed lengths (a batch is padded to its longest row on the hf backend, while Unsloth trains
# padding-free: the same data costs hf the padding) or of rows all cut to max_length (no padding anywhere, and every
# row of a batch the same length: Unsloth's padding-free attention on torch < 2.12 makes one call per run of
# equal-length rows).
VARIANTS = {
    "tiled": {"config": {"tiled_mlp": True}},                               # shards of hidden-size tokens
    "tiled05": {"config": {"tiled_mlp": True, "tiled_mlp_target_gb": 0.5}},  # as few shards as keep an MLP near 0.5 GB
    "tiled03": {"config": {"tiled_mlp": True, "tiled_mlp_target_gb": 0.3}},  # TinyLlama shapes: 8k tokens in 2 shards
    "tiled02": {"config": {"tiled_mlp": True, "tiled_mlp_target_gb": 0.2}},  # ... in 4 shards
    "mb16": {"config": {"per_device_train_batch_size": 16}},
    "mb4": {"config": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}},
    "mb2": {"config": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}},
    "mb1": {"config": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8}},
    "nogc": {"config": {"gradient_checkpointing": False}},
    "fused": {"config": {"optim": "adamw_torch_fused"}},  # AdamW with float32 state in one fused kernel
    "torchgc": {"bare": {"use_gradient_checkpointing": True}},
    "mixed": {"data": "mixed"},
    "full": {"data": "full"},
    # Unsloth's chunked cross-entropy holds one chunk of float32 logits: rows = min(2 GB / (vocab x 8 B), an eighth
    # of the step's rows); UNSLOTH_LOGPROB_CHUNK_GB (read at import) caps the 2 GB. A quarter and a sixteenth of the
    # eighth that 8k-token steps get by default.
    "ce1": {"env": {"UNSLOTH_LOGPROB_CHUNK_GB": "0.0625"}},
    "ce4": {"env": {"UNSLOTH_LOGPROB_CHUNK_GB": "0.015625"}},
    # Unsloth's one-call varlen attention for packed batches, as on torch >= 2.12 (bench/unsloth_varlen.py)
    "varlen": {"env": {"BENCH_UNSLOTH_VARLEN": "1"}},
    # A data-parallel run of N GPUs (issue 23): the engine launches N ranks, each with this case's micro-batch.
    **{f"gpus{n}": {"config": {"devices": n}} for n in range(2, 9)},
}
BEFORE = """
import sys
import peft
from training.engine import backends
get_peft_model = peft.get_peft_model
def old_get_peft_model(model, config, *args, **kwargs):
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return get_peft_model(model, config, *args, **kwargs)
peft.get_peft_model = old_get_peft_model
backends.keep_adapters_float32 = lambda model: 0
from training.engine.__main__ import main
sys.exit(main(["run", sys.argv[1]]))
"""
# The engine's events report max_memory_allocated; this also prints what the allocator reserved (nvidia-smi's view,
# and what Unsloth's notebooks print) once the run has ended.
PEAKS = f"""
import atexit, json, os, sys, torch
sys.path.insert(0, {str(ROOT / "bench")!r})
""" + """
import unsloth_varlen
unsloth_varlen.apply()
_fd1 = os.fdopen(os.dup(1), "w")  # the engine points fd 1 at stderr for library chatter; this keeps the real stdout
atexit.register(lambda: print(json.dumps({"type": "bench_peaks", "allocated": torch.cuda.max_memory_allocated(),
                                          "reserved": torch.cuda.max_memory_reserved()}), file=_fd1, flush=True))
"""
ENGINE = PEAKS + """
from training.engine.__main__ import main
sys.exit(main(["run", sys.argv[1]]))
"""


# Synthetic data sets: rows, words a row, seed (the tiny tokenizer makes about 1.2-1.3 tokens of a word).
DATA = {
    "short": (6000, (100, 400), 0),   # many examples per 2048-token block
    "long": (1200, (700, 1000), 1),   # near max_length 1024: padding stays small; 65% of rows are cut at 1024
    "mixed": (2400, (50, 1000), 2),   # lengths spread evenly up to max_length
    "full": (1200, (1000, 1400), 3),  # every row longer than 1024 tokens: all cut to exactly max_length
}


def write_data(path: Path, rows: int, words: tuple[int, int], seed: int = 0) -> None:
    from training.engine.tiny import COLOURS, THINGS

    rng = random.Random(seed)
    vocab = COLOURS + THINGS + ["the", "is", "and", "what", "colour", "say", "times", "of", "a", "sky"]
    with path.open("w") as fh:
        for _ in range(rows):
            fh.write(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(rng.randint(*words)))}) + "\n")


def rate(times: list[float], tokens: list[int], skip: int) -> float:
    return (tokens[-1] - tokens[skip]) / (times[-1] - times[skip])


def case_env(name: str) -> dict:
    """The process environment a case runs in: this one, plus its variants' `env`."""
    env = dict(os.environ)
    for variant in name.split("+")[1:]:
        env.update(VARIANTS[variant].get("env", {}))
    return env


def case_config(name: str, model: str, data: dict, steps: int, work: Path) -> tuple[str, Path]:
    """The case's runner and its config file (the engine's TrainConfig; the bare script reads the same keys)."""
    base, *variants = name.split("+")
    case = dict(CASES[base])
    runner, data_kind = case.pop("runner"), case.pop("data")
    for variant in variants:
        if "bare" in VARIANTS[variant] and runner != "bare":
            raise SystemExit(f"variant +{variant} is for the bare script's cases only")
        if variant.startswith("gpus") and (runner != "engine" or "varlen" in variants):
            # The ranks are processes the engine launches: the bench's own process (the bare script, the
            # before-recipe, the varlen emulation) does not reach them.
            raise SystemExit(f"variant +{variant} is for the engine's cases, without +varlen")
        case.update(VARIANTS[variant].get("config", {}) | VARIANTS[variant].get("bare", {}))
        data_kind = VARIANTS[variant].get("data", data_kind)
    config = {**COMMON, **case, "model": model, "train_file": str(data[data_kind]), "max_steps": steps,
              "output_dir": str(work / name)}
    cfg_path = work / f"{name}.json"
    cfg_path.write_text(json.dumps(config))
    return runner, cfg_path


def probe_case(name: str, model: str, data: dict, steps: int, work: Path, out_dir: Path) -> dict:
    """bench/gpu_memory_probe.py on an engine case: where its memory goes, what it trains with."""
    runner, cfg_path = case_config(name, model, data, steps, work)
    if runner != "engine":
        return {"case": name, "error": "only engine cases are probed"}
    stem = out_dir / f"probe-{name.replace('+', '-')}"  # the device tool returns files named without "+"
    out = stem.with_suffix(".json")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_memory_probe.py"), str(cfg_path), str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=case_env(name))
    stem.with_suffix(".log").write_text(proc.stdout[-100000:] + "\n--- stderr ---\n" + proc.stderr[-100000:])
    if not out.exists():
        return {"case": name, "error": proc.stderr[-3000:]}
    return {"case": name, **json.loads(out.read_text())}


def run_case(name: str, model: str, data: dict, steps: int, skip: int, work: Path) -> dict:
    runner, cfg_path = case_config(name, model, data, steps, work)
    started = time.time()
    if runner == "bare":
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare_unsloth.py"), str(cfg_path)], cwd=ROOT,
                             capture_output=True, text=True, env=case_env(name))
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            return {"case": name, "error": out.stderr[-2000:]}
        result = json.loads(lines[-1])
        times, tokens, peak = result["times"], result["tokens"], result["peak_vram_bytes"]
        reserved, warnings, padding = result["peak_reserved_bytes"], [], None
    else:
        script = ENGINE if runner == "engine" else PEAKS + BEFORE
        out = subprocess.run([sys.executable, "-c", script, str(cfg_path)], cwd=ROOT, capture_output=True,
                             text=True, env=case_env(name))
        events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        peaks = [e for e in events if e["type"] == "bench_peaks"]
        events = [e for e in events if e["type"] != "bench_peaks"]
        # Several GPUs: that process only launched the ranks; each GPU's peak is in the metrics.
        devices = json.loads(cfg_path.read_text()).get("devices", 1)
        reserved = peaks[0]["reserved"] if peaks and devices == 1 else None
        metrics = [e for e in events if e["type"] == "metrics"]
        if not events or events[-1]["type"] != "finished":
            return {"case": name, "error": (events[-1] if events else out.stderr[-2000:])}
        times, tokens = [m["time"] for m in metrics], [m["tokens_seen"] for m in metrics]
        peak = max(m["peak_vram_bytes"] for m in metrics)
        warnings = [e["code"] for e in events if e["type"] == "warning"]  # a setting that did not take effect
        padding = metrics[-1].get("padding_share")  # of the batches' token slots (hf pads, Unsloth does not)
    step_s = [b - a for a, b in zip(times[skip:], times[skip + 1:])]
    step_tokens = [b - a for a, b in zip(tokens[skip:], tokens[skip + 1:])]
    per_step = sorted(t / s for t, s in zip(step_tokens, step_s))
    per_gpu = metrics[-1].get("peak_vram_bytes_per_gpu") if runner != "bare" else None
    return {"case": name, "devices": json.loads(cfg_path.read_text()).get("devices", 1),
            "tokens_per_s": rate(times, tokens, skip), "peak_vram_gib": peak / 2**30,
            "peak_vram_gib_per_gpu": [round(p / 2**30, 2) for p in per_gpu] if per_gpu else None,
            "peak_reserved_gib": reserved / 2**30 if reserved is not None else None,
            "median_step_tokens_per_s": per_step[len(per_step) // 2],
            "step_s": [round(s, 3) for s in step_s], "wall_s": time.time() - started, "steps": len(times),
            "warnings": warnings, "padding_share": padding,
            "losses": [m.get("loss") for m in metrics] if runner != "bare" else None}


def comparisons(names: list[str]) -> list[tuple[str, str]]:
    """(engine unsloth case, case it is measured against): the bare script with the same variants, and the hf backend
    and the upcasting recipe on the same job (the same variants, leaving out those that only set Unsloth's
    environment)."""
    def job(name: str) -> tuple[str, str, tuple[str, ...]]:
        base, *variants = name.split("+")
        prefix, kind = base.split("_", 1)
        return prefix, kind, tuple(v for v in variants if set(VARIANTS[v]) != {"env"})

    pairs = []
    for u in names:
        prefix, kind, variants = job(u)
        if kind == "unsloth":
            pairs += [(u, o) for o in names if (job(o)[1] == "bare" and o.split("+")[1:] == u.split("+")[1:])
                      or (job(o)[1] in ("hf", "hf_before") and job(o)[::2] == (prefix, variants))]
    return pairs


def with_gpus(names: list[str], gpus: list[int]) -> list[str]:
    """Each case on each GPU count, one after another (1: the case itself; N: the case +gpusN)."""
    return [name if n == 1 else f"{name}+gpus{n}" for name in names for n in gpus]


def scaling(by: dict[str, dict]) -> list[tuple[str, str, int, float]]:
    """(1-GPU case, N-GPU case, N, tokens/s ratio) for each +gpusN case whose 1-GPU case ran too."""
    found = []
    for name in by:
        parts = name.split("+")
        gpus = [p for p in parts[1:] if p.startswith("gpus")]
        if not gpus:
            continue
        base = "+".join(p for p in parts if p not in gpus)
        if base in by:
            found.append((base, name, int(gpus[0][4:]), by[name]["tokens_per_s"] / by[base]["tokens_per_s"]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=5, help="metrics points left out at the start (warm-up)")
    parser.add_argument("--size", default="1b", choices=[size for size in SIZES if size != "tiny"],
                        help="the random Llama's shapes: Llama-3.2-1B (1b) or TinyLlama-1.1B (1.1b)")
    parser.add_argument("--work", default="/tmp/tuneboard-bench")
    parser.add_argument("--out", help="write the results as JSON here too")
    parser.add_argument("--gpus", help="GPU counts to run each case on, e.g. 1,2: prints the scaling ratio")
    parser.add_argument("--probe", help="instead of timing, run bench/gpu_memory_probe.py on each engine case and "
                                        "write its findings into this folder")
    args = parser.parse_args()

    import torch
    from training.engine.tiny import build_tiny_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / f"llama-{args.size}"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, arch="llama", size=args.size)
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).parameters())
    data = {kind: work / f"{kind}.jsonl" for kind in DATA}
    for kind, (rows, words, seed) in DATA.items():
        if not data[kind].exists():
            write_data(data[kind], rows=rows, words=words, seed=seed)
    device = torch.cuda.get_device_name(0)
    summary = {"device": device, "size": args.size, "n_params": n_params}
    if args.probe:
        out_dir = Path(args.probe)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in args.cases.split(","):
            found = probe_case(name, str(model_dir), data, args.steps, work, out_dir)
            print(json.dumps(found, default=str), flush=True)
        return
    results = []
    names = args.cases.split(",")
    if args.gpus:
        names = with_gpus(names, [int(n) for n in args.gpus.split(",")])
        summary["gpus_visible"] = torch.cuda.device_count()
    for name in names:
        result = run_case(name, str(model_dir), data, args.steps, args.skip, work)
        if "tokens_per_s" in result:
            result["mfu"] = 6 * n_params * result["tokens_per_s"] / (H100_BF16_DENSE * result["devices"])
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:  # after every case: a call cut short keeps what it measured
            Path(args.out).write_text(json.dumps(dict(summary, results=results)))
    by: dict[str, dict] = {}  # a case run more than once (interleaved repeats): the mean of its runs
    for name in dict.fromkeys(r["case"] for r in results if "tokens_per_s" in r):
        runs = [r for r in results if r["case"] == name and "tokens_per_s" in r]
        by[name] = {k: sum(r[k] for r in runs) / len(runs) for k in ("tokens_per_s", "peak_vram_gib")}
        reserved = [r["peak_reserved_gib"] for r in runs if r.get("peak_reserved_gib") is not None]
        by[name]["peak_reserved_gib"] = sum(reserved) / len(reserved) if reserved else None
    print(f"\n{device}, model {args.size} ({n_params / 1e9:.2f}B params), {args.steps} steps, "
          f"first {args.skip} left out")
    print(f"{'case':24} {'tokens/s':>10} {'median step':>12} {'peak GiB':>9} {'reserved':>9} {'MFU':>6}  warnings")
    for r in results:
        if "tokens_per_s" in r:
            reserved = f"{r['peak_reserved_gib']:9.2f}" if r["peak_reserved_gib"] is not None else f"{'-':>9}"
            print(f"{r['case']:24} {r['tokens_per_s']:10.0f} {r['median_step_tokens_per_s']:12.0f} "
                  f"{r['peak_vram_gib']:9.2f} {reserved} {r['mfu']:6.1%}  {' '.join(r['warnings']) or '-'}")
        else:
            print(f"{r['case']:24} ERROR {str(r['error'])[:300]}")
    for base, name, n, ratio in scaling(by):
        print(f"{base}: 1 GPU {by[base]['tokens_per_s']:.0f} tokens/s, {n} GPUs {by[name]['tokens_per_s']:.0f} "
              f"tokens/s: {ratio:.2f}x ({ratio / n:.0%} of linear; target for 2: >= 1.8x)")
    for u, o in comparisons([n for n in by if not any(p.startswith("gpus") for p in n.split("+")[1:])]):
        a, b = by[u], by[o]
        if o.split("+")[0].endswith("_bare"):
            print(f"{u} / {o}: engine/bare = {a['tokens_per_s'] / b['tokens_per_s']:.3f}")
            continue
        reserved = (f", reserved {a['peak_reserved_gib'] / b['peak_reserved_gib']:.0%}"
                    if a["peak_reserved_gib"] and b["peak_reserved_gib"] else "")
        print(f"{u} / {o}: speed {a['tokens_per_s'] / b['tokens_per_s']:.2f}x, "
              f"VRAM {a['peak_vram_gib'] / b['peak_vram_gib']:.0%}{reserved}")
    if args.out:
        summary["scaling"] = [{"case": base, "with": name, "gpus": n, "ratio": ratio}
                              for base, name, n, ratio in scaling(by)]
        Path(args.out).write_text(json.dumps(dict(summary, results=results), indent=1))


if __name__ == "__main__":
    main()
