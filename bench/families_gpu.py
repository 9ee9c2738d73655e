"""Seven architectures through the engine (issue 33): Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 (text) and
Phi-3 built here with random weights at one set of widths, each trained a few steps in its own engine process, per
precision (16-bit, and 4-bit with load_in_4bit), with target_modules "all-linear". Prints per architecture and
precision the trainable parameters, the adapted layers by name and count, the first and last loss, the engine's
warnings, or the failure's message; writes it all as JSON to --out.

    python3 bench/families_gpu.py --out families.json                      # the lent GPU: unsloth, 16- and 4-bit
    .venv/bin/python bench/families_gpu.py --backend hf --precisions 16bit --size tiny --steps 2   # this CPU

--size small: hidden 512, 4 layers, MLP 1408, 8 heads of 64 (4 KV heads), vocabulary 32,000 (the tokenizer is the
project's tiny one; the vocabulary is padded to 32,000 rows). --size tiny: hidden 64, 2 layers. Every run gets a
process of its own (Unsloth patches a process for good), started in a folder of its own (Unsloth writes its compiled
layers under the working folder), --jobs of them at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRECISIONS = {"16bit": False, "4bit": True}


def engine_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def build_models(archs: list[str], size: str, work: Path) -> dict[str, Path]:
    from training.engine.tiny import build_tiny_arch

    models: dict[str, Path] = {}
    for arch in archs:
        # The tokenizer is trained once, with the first model, and saved with every other one.
        tokenizer_from = next(iter(models.values()), None)
        models[arch] = build_tiny_arch(work / f"model-{arch}", arch, tokenizer_from=tokenizer_from, size=size)
    return models


def config_for(model: Path, data: Path, out: Path, args, load_in_4bit: bool) -> dict:
    return {"model": str(model), "train_file": str(data), "backend": args.backend, "load_in_4bit": load_in_4bit,
            "target_modules": args.target_modules, "r": args.r, "lora_alpha": args.r, "max_steps": args.steps,
            "max_length": args.max_length, "per_device_train_batch_size": args.batch,
            "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "warmup_steps": 0, "logging_steps": 1,
            "optim": "adamw_torch", "output_dir": str(out), "seed": 3407}


def train(name: str, config: dict, run_dir: Path, timeout: int) -> dict:
    """One engine process: what its events say, in one record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    path.write_text(json.dumps(config))
    began = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "training.engine", "run", str(path)], cwd=run_dir,
                              env=engine_env(), capture_output=True, text=True, timeout=timeout)
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = f"timed out after {timeout} s"
    events = []
    for line in stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    started = next((e for e in events if e["type"] == "started"), {})
    losses = [e["loss"] for e in events if e["type"] == "metrics"]
    end = next((e for e in events if e["type"] in ("finished", "failed", "stopped")), None)
    record = {"name": name, "backend": started.get("backend"), "dtype": started.get("dtype"),
              "device": started.get("device"), "trainable_params": started.get("trainable_params"),
              "adapters": started.get("adapters"), "steps": len(losses),
              "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
              "warnings": [{"code": e["code"], "message": e["message"]} for e in events if e["type"] == "warning"],
              "outcome": end["type"] if end else "no terminal event", "wall_s": round(time.perf_counter() - began, 1),
              "versions": {k: v for k, v in (started.get("versions") or {}).items()
                           if k in ("torch", "transformers", "peft", "trl", "unsloth")}}
    if end is None or end["type"] == "failed":
        record["error_class"] = (end or {}).get("error_class")
        record["message"] = (end or {}).get("message") or stderr[-2000:]
    return record


def line(r: dict) -> str:
    if r["outcome"] != "finished":
        return f"{r['name']:<16} FAILED {r.get('error_class') or ''}: {str(r.get('message'))[:600]}"
    modules = ", ".join(f"{k} x{v}" for k, v in ((r["adapters"] or {}).get("modules") or {}).items())
    return (f"{r['name']:<16} trainable {r['trainable_params']:>10,}  loss {r['first_loss']:.3f} -> "
            f"{r['last_loss']:.3f} ({r['steps']} steps, {r['wall_s']} s)  adapters: {modules}"
            + (f"  warnings: {', '.join(w['code'] for w in r['warnings'])}" if r["warnings"] else ""))


def main(argv: list[str] | None = None) -> int:
    from training.engine.tiny import ARCH_WIDTHS, ARCHITECTURES, write_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated, of: "
                                                                           + ", ".join(ARCHITECTURES))
    parser.add_argument("--precisions", default="16bit,4bit", help="comma-separated, of: 16bit, 4bit")
    parser.add_argument("--backend", choices=["unsloth", "hf", "auto"], default="unsloth")
    parser.add_argument("--size", choices=list(ARCH_WIDTHS), default="small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--target-modules", default="all-linear")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=1, help="engine processes at a time")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one run may take")
    parser.add_argument("--work", help="folder for models and runs (default: a temporary one)")
    parser.add_argument("--out", help="write the records as JSON here")
    args = parser.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    precisions = [p for p in args.precisions.split(",") if p]
    bad = [a for a in archs if a not in ARCHITECTURES] + [p for p in precisions if p not in PRECISIONS]
    if bad:
        parser.error(f"unknown: {', '.join(bad)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="tuneboard-families-"))
    began = time.perf_counter()
    models = build_models(archs, args.size, work)
    data = write_dataset(work / "data.jsonl", n=max(64, args.steps * args.batch))
    print(f"built {len(models)} models ({args.size}) in {time.perf_counter() - began:.0f} s under {work}", flush=True)
    cases = [(f"{arch}/{p}", config_for(models[arch], data, work / "runs" / f"{arch}-{p}" / "out", args,
                                        PRECISIONS[p]), work / "runs" / f"{arch}-{p}")
             for arch in archs for p in precisions]
    records = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for record in pool.map(lambda case: train(*case, args.timeout), cases):
            print(line(record), flush=True)
            records.append(record)
    summary = {"size": args.size, "widths": ARCH_WIDTHS[args.size], "backend": args.backend, "steps": args.steps,
               "r": args.r, "target_modules": args.target_modules, "runs": records,
               "failed": [r["name"] for r in records if r["outcome"] != "finished"]}
    print(f"{len(records) - len(summary['failed'])} of {len(records)} trained; failed: "
          f"{', '.join(summary['failed']) or 'none'}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
