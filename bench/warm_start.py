"""Warm workers (issue 21): a run's start to its first step, cold (`python -m training.engine run` in a new process,
as every run started before) against warm (a request to a `python -m training.engine warm` process that served the
same base before: libraries imported, base model kept), the same config, interleaved, with each run's losses.

    .venv/bin/python bench/warm_start.py                                  # the tiny model on this CPU, hf backend
    python3 bench/warm_start.py --size 1.1b --steps 30 --rounds 3         # the lent GPU (the issue's 30-step run)

Start to first step: from the moment the run is handed over (the cold process spawned; the warm request written) to
its first `metrics` event on stdout (the end of step 1), as the worker sees it; the engine's own figure (its
first-step log event) beside it. The warm process first serves one priming run (it loads the base; reported as
"warm, base loaded"), then rounds of cold, warm (base kept). The losses of every run must be those of the first cold
run, step for step: the bench prints the largest difference of cold runs among themselves and of warm runs against
the first cold one.

--size tiny: the tiny random Llama, 64 chat rows, max_length 128, micro-batch 8, hf backend (auto resolves to hf
without a GPU). --size 1b / 1.1b: a random Llama of that size built here, the issue's config: 16-bit LoRA r 16 on all
linear layers, packed to 2048 tokens, micro-batch 8, adamw_8bit, bfloat16, backend auto (Unsloth where it is
installed and a GPU is there), 6,000 short text rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def engine_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# With BENCH_UNSLOTH_VARLEN=1 (a bench's --varlen) the engine's processes start through this launcher, which makes the
# lent box's torch 2.11 take Unsloth's torch >= 2.12 attention path for packed batches (bench/unsloth_varlen.py), as
# the product's own image (Dockerfile.gpu, torch 2.13) runs it; without it they start as the worker starts them.
VARLEN_LAUNCH = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import unsloth_varlen; "
                 "unsloth_varlen.apply(); from training.engine.__main__ import main; sys.exit(main(sys.argv[1:]))")


def engine_command(*argv: str) -> list[str]:
    if os.environ.get("BENCH_UNSLOTH_VARLEN") == "1":
        return [sys.executable, "-c", VARLEN_LAUNCH, *argv]
    return [sys.executable, "-m", "training.engine", *argv]


def base_config(args, work: Path) -> dict:
    from training.engine.tiny import build_tiny_model, write_dataset

    model = build_tiny_model(work / f"model-{args.size}", size=args.size)
    if args.size == "tiny":
        data = write_dataset(work / "data.jsonl", n=64)
        shape = dict(max_length=128, per_device_train_batch_size=8, optim="adamw_torch", packing=False)
    else:
        from bench.gpu_throughput import DATA, write_data

        rows, words, seed = DATA["short"]
        data = work / "data.jsonl"
        write_data(data, rows, words, seed)
        shape = dict(max_length=2048, per_device_train_batch_size=8, optim="adamw_8bit", packing=True,
                     dtype="bfloat16")
    return {"model": str(model), "train_file": str(data), "backend": args.backend, "max_steps": args.steps,
            "r": 16, "lora_alpha": 16, "target_modules": "all-linear", "learning_rate": 2e-4, "warmup_steps": 2,
            "gradient_accumulation_steps": 1, "logging_steps": 1, "seed": 3407, "random_state": 3407, **shape}


class Stream:
    """A process's stdout as engine events, each with the time it was read."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def next(self) -> tuple[dict, float]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"the engine process ended early (code {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line), time.perf_counter()


def follow(stream: Stream, handed: float, on_step=None) -> dict:
    """Read one run's events to its terminal one: start to first step, the engine's figures, the losses.
    `on_step(step)` is called with each metrics point's step (a bench's progress line)."""
    first_step_s, note, started, losses, points = None, {}, {}, [], []
    while True:
        event, at = stream.next()
        kind = event["type"]
        if kind == "started":
            started = event
        elif kind == "log" and "first_step_s" in event:
            note = event
        elif kind == "metrics":
            if first_step_s is None:
                first_step_s = at - handed
            losses.append(event["loss"])
            points.append((event["time"], event["tokens_seen"]))  # the engine's clock
            if on_step is not None:
                on_step(event.get("step", len(losses)))
        elif kind in ("finished", "stopped", "failed"):
            if kind != "finished":
                raise SystemExit(f"the run ended {kind}: {event.get('message')}")
            return {"first_step_s": first_step_s, "total_s": at - handed, "losses": losses, "points": points,
                    "engine_first_step_s": note.get("first_step_s"), "phases": note.get("phases") or {},
                    "start_s": started.get("start_s"), "backend": started.get("backend"),
                    "device": started.get("device")}


def cold_run(config_path: Path) -> dict:
    handed = time.perf_counter()
    proc = subprocess.Popen(engine_command("run", str(config_path)), cwd=ROOT,
                            env=engine_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    result = follow(Stream(proc), handed)
    proc.wait(timeout=120)
    return result


def spawn_warm(backend: str) -> tuple[subprocess.Popen, Stream]:
    """A `python -m training.engine warm` process and its event stream (requests go to its stdin)."""
    proc = subprocess.Popen(engine_command("warm", "--backend", backend), cwd=ROOT,
                            env=engine_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, bufsize=1)
    return proc, Stream(proc)


def warm_run(proc: subprocess.Popen, stream: Stream, config_path: Path) -> dict:
    handed = time.perf_counter()
    proc.stdin.write(json.dumps({"config": str(config_path), "sent": time.time()}) + "\n")
    proc.stdin.flush()
    result = follow(stream, handed)
    ready, _ = stream.next()
    if ready["type"] != "warm-ready":
        raise SystemExit(f"expected warm-ready after the run, got {ready['type']}")
    result["release_s"], result["ready_note"] = ready.get("release_s"), ready.get("note")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="training.engine.tiny size: tiny, 1b, 1.1b")
    parser.add_argument("--backend", default="auto", choices=["auto", "unsloth", "hf"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="cold, warm pairs after the warm process's priming run")
    args = parser.parse_args()

    from bench import baseline

    print(baseline.line_here(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    config = base_config(args, work)

    def config_file(name: str) -> Path:
        path = work / f"{name}.json"
        path.write_text(json.dumps({**config, "output_dir": str(work / name)}))
        return path

    imports = time.perf_counter()
    warm, stream = spawn_warm(args.backend)
    ready, _ = stream.next()
    print(f"warm process ready {time.perf_counter() - imports:.1f} s after its start (imports {ready['import_s']} s,"
          f" backend {ready['backend']})", flush=True)
    results = [("warm, base loaded", warm_run(warm, stream, config_file("warm-0")))]
    for i in range(1, args.rounds + 1):
        results.append(("cold", cold_run(config_file(f"cold-{i}"))))
        results.append(("warm, base kept", warm_run(warm, stream, config_file(f"warm-{i}"))))
    warm.stdin.close()
    warm.wait(timeout=120)

    reference = next(r for label, r in results if label == "cold")["losses"]
    first = results[0][1]
    print(f"model {args.size}, {args.steps} steps, backend {first['backend']}, device {first['device']}")
    for label, r in results:
        diff = max(abs(a - b) for a, b in zip(r["losses"], reference))
        extra = f", release {r['release_s']} s" if "release_s" in r else ""
        print(f"  {label:18} start to first step {r['first_step_s']:6.2f} s (engine {r['engine_first_step_s']:.2f} s), "
              f"run {r['total_s']:6.2f} s{extra}; losses vs first cold: max |diff| {diff:.3g}"
              f"{'  NOTE ' + r['ready_note'] if r.get('ready_note') else ''}", flush=True)
        print(f"  {'':18} in the engine: {r['start_s']} s to its started event (cold: the process's start "
              f"included); then " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()), flush=True)
    cold = [r["first_step_s"] for label, r in results if label == "cold"]
    kept = [r["first_step_s"] for label, r in results if label == "warm, base kept"]
    cold_spread = max(max(abs(a - b) for a, b in zip(r["losses"], reference))
                      for label, r in results if label == "cold")
    warm_diff = max(max(abs(a - b) for a, b in zip(r["losses"], reference))
                    for label, r in results if label.startswith("warm"))
    print(f"start to first step: cold median {statistics.median(cold):.2f} s, warm (base kept) median "
          f"{statistics.median(kept):.2f} s: {statistics.median(cold) / statistics.median(kept):.1f}x sooner; target "
          f"warm <= 5 s")
    print(f"losses: cold runs among themselves max |diff| {cold_spread:.3g}; warm runs against the first cold "
          f"{warm_diff:.3g} ({'equal' if warm_diff == 0 else 'differ'})")


if __name__ == "__main__":
    main()
