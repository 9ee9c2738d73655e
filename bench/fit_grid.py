"""The fit planner's calibration grid (issue 21): peak VRAM, tokens/s and start-up of many training configs in one call.

For each config of the grid: peak VRAM (`torch.cuda.max_memory_allocated()`, as the engine's `metrics` events report
it in peak_vram_bytes; the peak counter is reset before each config), tokens/s (non-padding tokens between the
metrics of step `--skip` and the last step, as bench/gpu_throughput.py counts them) and the wall time before the
first step. Each result is one JSON line appended to `--out` as soon as it is measured, carrying what the planner
predicts from: the engine config, the model's config.json, the GPU's name and memory, the backend in effect.

The configs train through the engine's own `runner.run`, on random Llamas built once per size with
training.engine.tiny (sizes 0.1b, 0.5b, 1.1b) and synthetic text (bench/gpu_throughput.py's data). One child process
per backend, one after the other (importing unsloth patches the trainer process-wide: the hf process never imports
it); in each, the configs run one after another, so only a process's first config pays for the imports, measured
apart (`imports_s`). `--budget-s N`: no config starts after N seconds; the unsloth process gets the first
(1 - `--hf-share`) of them, the hf process the rest. The grid is ordered so that an early stop still covers every
size: sizes interleaved, the reference configs of docs/benchmarks.md first. An out-of-memory (or any failure) is
recorded in the config's line ("error", "oom") and the process goes on; a process that dies is started again on the
configs left.

On the lent H200 (carry [".whl"], fetched by ../shared/gpu/fetch-wheels.sh; timeout_s 300: pip, the budget, at most
`--grace-s` 30 more for a last config):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 bench/fit_grid.py --out $OUT/grid.jsonl --budget-s 200 --hf-share 0.3 --steps 6 --skip 2

Here, on the CPU (the tiny model, hf backend, three configs; peak VRAM is null without a GPU):

    .venv/bin/python bench/fit_grid.py --sizes tiny --out /tmp/fit-grid.jsonl

Each process's library chatter goes to fit_grid-<backend>.log beside `--out`; a table of the results ends the output.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))
import gpu_throughput  # noqa: E402  (light: its model and torch imports are inside its functions)

# backend, size, load_in_4bit, max_length, micro-batch, gradient checkpointing, optimizer, packed
GRID = [
    # unsloth: first the references (16-bit packed seq 2048 mb 8; QLoRA seq 1024 mb 8) on each size, then checkpointing
    # off, then micro-batch x sequence from 512 to 65k tokens, each size in turn; the likely out-of-memory edge last.
    ("unsloth", "1.1b", False, 2048, 8, True, "adamw_8bit", True),
    ("unsloth", "0.1b", False, 2048, 8, True, "adamw_8bit", True),
    ("unsloth", "0.5b", False, 2048, 8, True, "adamw_8bit", True),
    ("unsloth", "1.1b", True, 1024, 8, True, "adamw_8bit", True),
    ("unsloth", "0.1b", True, 1024, 8, True, "adamw_8bit", True),
    ("unsloth", "0.5b", True, 1024, 8, True, "adamw_8bit", True),
    ("unsloth", "1.1b", False, 2048, 8, False, "adamw_torch_fused", True),
    ("unsloth", "0.1b", False, 4096, 4, False, "adamw_torch_fused", True),
    ("unsloth", "0.5b", False, 1024, 16, False, "adamw_8bit", True),
    ("unsloth", "1.1b", False, 512, 16, True, "adamw_torch_fused", True),
    ("unsloth", "0.1b", False, 512, 1, True, "adamw_8bit", True),
    ("unsloth", "0.5b", False, 4096, 2, True, "adamw_torch_fused", True),
    ("unsloth", "1.1b", True, 2048, 4, False, "adamw_8bit", True),
    ("unsloth", "0.1b", True, 4096, 8, True, "adamw_torch_fused", True),
    ("unsloth", "0.5b", True, 512, 4, False, "adamw_torch_fused", True),
    ("unsloth", "1.1b", False, 1024, 2, True, "adamw_8bit", True),
    ("unsloth", "0.1b", False, 1024, 16, False, "adamw_8bit", True),
    ("unsloth", "0.5b", False, 2048, 1, False, "adamw_8bit", True),
    ("unsloth", "1.1b", False, 2048, 16, True, "adamw_8bit", True),
    ("unsloth", "0.1b", True, 2048, 2, False, "adamw_8bit", True),
    ("unsloth", "0.5b", True, 2048, 16, True, "adamw_torch_fused", True),
    ("unsloth", "1.1b", True, 512, 1, True, "adamw_torch_fused", True),
    ("unsloth", "1.1b", True, 1024, 8, True, "adamw_8bit", False),  # bench/gpu_throughput.py's qlora case: unpacked
    ("unsloth", "0.1b", False, 2048, 16, True, "adamw_torch_fused", True),
    ("unsloth", "0.5b", False, 512, 8, True, "adamw_8bit", True),
    ("unsloth", "1.1b", False, 1024, 8, False, "adamw_8bit", True),
    ("unsloth", "0.5b", True, 4096, 4, True, "adamw_8bit", True),
    ("unsloth", "0.5b", False, 4096, 8, False, "adamw_torch_fused", True),
    ("unsloth", "0.1b", False, 4096, 16, True, "adamw_8bit", True),
    ("unsloth", "1.1b", False, 2048, 16, False, "adamw_8bit", True),
    # hf: the two references on the 1.1B, then one config of each other size and a few settings
    ("hf", "1.1b", False, 2048, 8, True, "adamw_8bit", True),
    ("hf", "0.1b", False, 1024, 8, True, "adamw_8bit", True),
    ("hf", "1.1b", True, 1024, 8, True, "adamw_8bit", False),
    ("hf", "0.5b", False, 2048, 4, False, "adamw_torch_fused", True),
    ("hf", "0.1b", True, 2048, 4, False, "adamw_torch_fused", True),
    ("hf", "0.5b", True, 1024, 16, True, "adamw_8bit", True),
    ("hf", "1.1b", False, 512, 16, False, "adamw_torch_fused", True),
    # this CPU (--sizes tiny): the tiny model, 16-bit (float32 on a CPU), fused AdamW (8-bit needs CUDA)
    ("hf", "tiny", False, 256, 2, True, "adamw_torch_fused", True),
    ("hf", "tiny", False, 128, 4, False, "adamw_torch_fused", False),
    ("hf", "tiny", False, 512, 1, True, "adamw_torch_fused", True),
]
KEYS = ("backend", "size", "load_in_4bit", "max_length", "per_device_train_batch_size", "gradient_checkpointing",
        "optim", "packing")
BACKENDS = ("unsloth", "hf")  # the order the processes run in
# Rows of gpu_throughput's data, fewer than it writes: enough for 6 steps of 16 x 4096 packed tokens (about 1.25
# tokens a word), and for 6 steps of 16 unpacked rows; tokenizing them is part of every config's start-up.
ROWS = {"short": 2400, "long": 300}
CUDA_BROKEN = ("CUDA error", "illegal memory access", "device-side assert", "CUBLAS_STATUS", "cudaError")


def entry(row: tuple) -> dict:
    return dict(zip(KEYS, row))


def config_name(e: dict) -> str:
    return (f"{e['backend']}-{e['size']}-{'4bit' if e['load_in_4bit'] else '16bit'}-s{e['max_length']}"
            f"-mb{e['per_device_train_batch_size']}-{'gc' if e['gradient_checkpointing'] else 'nogc'}"
            f"-{e['optim'].removeprefix('adamw_').removeprefix('torch_')}-{'packed' if e['packing'] else 'unpacked'}")


GRID_BY_NAME = {config_name(entry(row)): entry(row) for row in GRID}


def select(sizes: list[str], backends: list[str]) -> dict[str, list[str]]:
    """The grid's config names for these sizes, by backend, in the grid's order."""
    return {b: [n for n, e in GRID_BY_NAME.items() if e["backend"] == b and e["size"] in sizes] for b in backends}


def data_files(work: Path) -> dict[str, Path]:
    files = {}
    for kind, rows in ROWS.items():
        _, words, seed = gpu_throughput.DATA[kind]
        files[kind] = work / f"{kind}-{rows}.jsonl"
        if not files[kind].exists():
            gpu_throughput.write_data(files[kind], rows=rows, words=words, seed=seed)
    return files


def engine_config(e: dict, model_dir: Path, data: dict[str, Path], steps: int, output_dir: Path, gpu: bool) -> dict:
    """The engine's config for a grid entry: bench/gpu_throughput.py's settings (LoRA r 16 on all linear layers, one
    metrics point a step) with the entry's; packed configs train on short rows, unpacked ones on rows near 1024."""
    fields = {k: e[k] for k in KEYS if k != "size"}
    return {**gpu_throughput.COMMON, **fields, "model": str(model_dir), "max_steps": steps,
            "train_file": str(data["short" if e["packing"] else "long"]), "output_dir": str(output_dir),
            "dtype": "bfloat16" if gpu else "auto"}  # bfloat16 on a CPU is refused by the engine: float32 there


# ---------------------------------------------------------------------------------------------------------------
# The child process: one backend, its configs one after another through runner.run.

def _imports(backend: str, varlen: bool) -> tuple[dict, bool]:
    """Import the stack in the engine's order (torch, then unsloth before transformers/TRL/PEFT), timing each."""
    times, emulated = {}, False
    start = time.perf_counter()
    import torch  # noqa: F401
    times["torch"] = time.perf_counter() - start
    if backend == "unsloth":
        import unsloth_varlen

        if varlen:
            os.environ[unsloth_varlen.ENV] = "1"
        emulated = unsloth_varlen.apply()
        start = time.perf_counter()
        import unsloth  # noqa: F401
        times["unsloth"] = time.perf_counter() - start
    start = time.perf_counter()
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    times["stack"] = time.perf_counter() - start
    return {k: round(v, 2) for k, v in times.items()}, emulated


def _model_dir(work: Path, size: str) -> tuple[Path, float | None]:
    """The size's random Llama, built the first time (on the GPU where there is one: its random init is faster);
    returns the folder and the seconds a build took (None when it was there already)."""
    import torch

    from training.engine.tiny import build_tiny_model

    final = work / f"llama-{size}"
    if (final / "config.json").exists():
        return final, None
    start = time.perf_counter()
    partial = work / f"llama-{size}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with torch.device("cuda") if torch.cuda.is_available() else contextlib.nullcontext():
            build_tiny_model(partial, arch="llama", size=size)
    except Exception:  # noqa: BLE001  then as tiny.py builds it everywhere else: on the CPU
        if not torch.cuda.is_available():
            raise
        shutil.rmtree(partial, ignore_errors=True)
        build_tiny_model(partial, arch="llama", size=size)
    partial.rename(final)  # a build cut short never passes for a model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return final, round(time.perf_counter() - start, 2)


def _measure(events: list[dict], began: float, skip: int) -> dict:
    """Tokens/s, peak and start-up from one run's events, as bench/gpu_throughput.py reads them."""
    started = next((e for e in events if e["type"] == "started"), None)
    metrics = [e for e in events if e["type"] == "metrics"]
    terminal = events[-1] if events and events[-1]["type"] in ("finished", "stopped", "failed") else None
    found: dict = {
        "backend_used": started["backend"] if started else None, "dtype": started["dtype"] if started else None,
        "load_s": started["load_s"] if started else None,
        "before_first_step_s": round(started["time"] - began, 2) if started else None,
        "first_step_s": round(metrics[0]["time"] - started["time"], 2) if started and metrics else None,
        "steps": len(metrics), "derived": started["derived"] if started else None,
        "trainable_params": started["trainable_params"] if started else None,
        "total_params": started["total_params"] if started else None,
        "versions": started["versions"] if started else None,
        "warnings": [e["code"] for e in events if e["type"] == "warning"],
        "peak_vram_bytes": max((m["peak_vram_bytes"] for m in metrics if m["peak_vram_bytes"] is not None),
                               default=None),
        "padding_share": metrics[-1]["padding_share"] if metrics else None,
        "tokens_per_s": None, "step_s": [], "error": None, "oom": False,
        # the rest of what the engine reports at the start (row counts, parameter counts, and whatever it adds for
        # the planner) and its log events, as they are
        "started": {k: v for k, v in started.items() if k not in ("v", "type", "config", "derived", "versions")}
        if started else None,
        "logs": [{k: v for k, v in e.items() if k not in ("v", "type")} for e in events if e["type"] == "log"],
    }
    if len(metrics) > skip + 1:
        times, tokens = [m["time"] for m in metrics], [m["tokens_seen"] for m in metrics]
        found["tokens_per_s"] = round(gpu_throughput.rate(times, tokens, skip), 1)
        found["tokens_measured"] = tokens[-1] - tokens[skip]
        found["step_s"] = [round(b - a, 3) for a, b in zip(times[skip:], times[skip + 1:])]
    if terminal is None or terminal["type"] != "finished":
        found["error"] = (f"{terminal['error_class']}: {terminal['message'][:1000]}" if terminal and
                          terminal["type"] == "failed" else f"no finished event (last: {terminal})")
        found["oom"] = bool(terminal and terminal.get("oom"))
        if terminal and terminal.get("traceback") and not found["oom"]:
            found["traceback_tail"] = terminal["traceback"][-2000:]
    elif found["tokens_per_s"] is None:
        found["error"] = f"only {len(metrics)} metrics points: no tokens/s with --skip {skip}"
    return found


def worker(args) -> int:
    """Run the named configs of one backend in this process; append each one's line to args.out."""
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false")  # as a real run's process (training/runs/process.py)
    from training.engine import backends
    from training.engine.config import parse_config

    process_began = time.perf_counter()
    work, names = Path(args.work), args.names.split(",")
    data = data_files(work)
    # Before torch is imported, as the engine's run does (the unsloth backend's allocator settings).
    backends.prepare_process(parse_config(engine_config(GRID_BY_NAME[names[0]], work, data, 1, work, True)))
    imports_s, varlen = _imports(args.worker, not args.no_varlen)
    import torch

    from training.engine.events import EventSink
    from training.engine.runner import run

    gpu = torch.cuda.is_available()
    device = {"gpu": torch.cuda.get_device_name(0) if gpu else "cpu",
              "gpu_total_memory_bytes": torch.cuda.get_device_properties(0).total_memory if gpu else None}
    with open(args.out, "a") as out:
        for position, name in enumerate(names):
            if time.time() >= args.deadline:
                print(f"fit_grid: {args.worker} budget spent; {len(names) - position} configs not started",
                      file=sys.stderr)
                break
            e = GRID_BY_NAME[name]
            since_start = round(time.perf_counter() - process_began, 2)
            try:
                model_dir, build_s = _model_dir(work, e["size"])
            except Exception as exc:  # noqa: BLE001  recorded like a run's failure; other sizes may still build
                out.write(json.dumps({"name": name, "grid": e, **device, "error": f"building the {e['size']} "
                                      f"model: {type(exc).__name__}: {exc}", "oom": False, "peak_vram_bytes": None,
                                      "tokens_per_s": None}) + "\n")
                out.flush()
                continue
            run_dir = work / "runs" / name
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            cfg = engine_config(e, model_dir, data, args.steps, run_dir, gpu)
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            allocated_before = torch.cuda.memory_allocated() if gpu else None
            events: list[dict] = []
            began = time.time()
            with open(run_dir / "events.jsonl", "w") as stream:
                try:
                    run(parse_config(cfg), EventSink(stream, callback=events.append))
                except Exception as exc:  # noqa: BLE001  runner.run reports its own failures; this is the rest
                    events.append({"type": "failed", "error_class": type(exc).__name__, "message": str(exc),
                                   "oom": "out of memory" in str(exc).lower(), "traceback": ""})
            line = {"name": name, "grid": e, **device, **_measure(events, began, args.skip),
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved() if gpu else None,
                    "allocated_before_bytes": allocated_before, "config": parse_config(cfg).model_dump(mode="json"),
                    "model_config": json.loads((model_dir / "config.json").read_text()),
                    "skip": args.skip, "imports_s": imports_s, "position_in_process": position,
                    "since_process_start_s": since_start,
                    "model_build_s": build_s, "unsloth_varlen_emulated": varlen,
                    "unsloth_imported": "unsloth" in sys.modules, "wall_s": round(time.time() - began, 2),
                    "time": began}
            out.write(json.dumps(line, default=str) + "\n")
            out.flush()
            del events
            if "bitsandbytes.optim" in sys.modules:
                # transformers' Trainer registers each embedding with bitsandbytes' process-wide optimizer manager
                # for adamw_8bit, which keeps the module (and matches later parameters by id()): forget them, as a
                # fresh process would not have them
                sys.modules["bitsandbytes.optim"].GlobalOptimManager.get_instance().initialize()
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
            if line["error"] and not line["oom"] and any(s in line["error"] for s in CUDA_BROKEN):
                return 3  # this process's CUDA context is gone: the parent starts a fresh one on the rest
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The parent: no torch here; starts one child per backend and prints what comes back.

def _done(out: Path) -> list[dict]:
    if not out.exists():
        return []
    lines = []
    for text in out.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:  # the line a child is writing right now: read on the next look
            pass
    return lines


def _gib(n) -> str:
    return f"{n / 2**30:.2f}" if n is not None else "-"


def _progress(line: dict) -> str:
    tps = f"{line['tokens_per_s']:.0f} tok/s" if line.get("tokens_per_s") is not None else "-"
    return (f"  {line['name']}: peak {_gib(line.get('peak_vram_bytes'))} GiB, {tps}, "
            f"{line.get('before_first_step_s')} s before step 1" + (f", ERROR {line['error'][:160]}"
                                                                      if line.get("error") else ""))


def run_backend(args, backend: str, names: list[str], deadline: float, out: Path) -> None:
    """One child process on `names`. A child that dies leaves an error line for the config it was in, and a fresh
    one takes the rest while the budget lasts (twice at most: a child that cannot start would fail every time)."""
    log = out.parent / f"fit_grid-{backend}.log"
    remaining = list(names)
    for _attempt in range(3):
        if not remaining or time.time() >= deadline:
            return
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", backend, "--names", ",".join(remaining),
               "--deadline", str(deadline), "--out", str(out), "--work", args.work, "--steps", str(args.steps),
               "--skip", str(args.skip)] + (["--no-varlen"] if args.no_varlen else [])
        seen = len(_done(out))
        with log.open("a") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
            while proc.poll() is None:
                if time.time() > deadline + args.grace_s:
                    proc.kill()  # its last config ran past the budget's grace: the lines it wrote stay
                    proc.wait()
                    break
                time.sleep(1)
                seen = _print_new(out, seen)
        _print_new(out, seen)
        done = {line["name"] for line in _done(out)}
        left = [n for n in remaining if n not in done]
        if proc.returncode == 0 or not left:
            return
        if proc.returncode != 3:  # 3: it wrote its config's line and stopped with a broken CUDA context
            why = (f"the {backend} process was killed {args.grace_s:.0f} s past the budget during this config"
                   if proc.returncode < 0 else
                   f"the {backend} process died (exit status {proc.returncode}) during this config")
            tail = log.read_text(errors="replace")[-1500:]
            with out.open("a") as fh:
                fh.write(json.dumps({"name": left[0], "grid": GRID_BY_NAME[left[0]], "error": f"{why}; see {log}",
                                     "log_tail": tail, "oom": False, "peak_vram_bytes": None,
                                     "tokens_per_s": None}) + "\n")
            print(f"  {left[0]}: {why}", flush=True)
            left = left[1:]
        if proc.returncode < 0:
            return
        remaining = left


def _print_new(out: Path, seen: int) -> int:
    lines = _done(out)
    for line in lines[seen:]:
        print(_progress(line), flush=True)
    return len(lines)


def table(lines: list[dict]) -> str:
    head = (f"{'backend':8} {'size':5} {'bits':>4} {'seq':>5} {'mb':>3} {'gc':>4} {'optim':>6} {'packed':>6} "
            f"{'peak GiB':>8} {'resv GiB':>8} {'left GiB':>8} {'tokens/s':>9} {'start s':>7} {'step1 s':>7}  error")
    rows = [head]
    for line in lines:
        g = line["grid"]
        tps = f"{line['tokens_per_s']:9.0f}" if line.get("tokens_per_s") is not None else f"{'-':>9}"
        rows.append(
            f"{g['backend']:8} {g['size']:5} {4 if g['load_in_4bit'] else 16:4} {g['max_length']:5} "
            f"{g['per_device_train_batch_size']:3} {'on' if g['gradient_checkpointing'] else 'off':>4} "
            f"{'8bit' if g['optim'] == 'adamw_8bit' else 'fused':>6} {'yes' if g['packing'] else 'no':>6} "
            f"{_gib(line.get('peak_vram_bytes')):>8} {_gib(line.get('peak_reserved_bytes')):>8} "
            f"{_gib(line.get('allocated_before_bytes')):>8} {tps} "
            f"{line.get('before_first_step_s') if line.get('before_first_step_s') is not None else '-':>7} "
            f"{line.get('first_step_s') if line.get('first_step_s') is not None else '-':>7}  "
            f"{('OOM ' if line.get('oom') else '') + (line.get('error') or '')[:100] or '-'}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON lines file, one config a line (written afresh)")
    parser.add_argument("--sizes", default="0.1b,0.5b,1.1b", help="comma-separated; 'tiny' for this CPU")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--budget-s", type=float, default=200, help="no config starts after this many seconds")
    parser.add_argument("--hf-share", type=float, default=0.3, help="the hf process's share of the budget (last)")
    parser.add_argument("--grace-s", type=float, default=30, help="a process still running this long after the "
                                                                  "budget is killed")
    parser.add_argument("--only", help="comma-separated config names of the grid (as its lines name them): just these")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip", type=int, default=2, help="metrics points left out at the start (warm-up)")
    parser.add_argument("--work", default="/tmp/tuneboard-fit-grid", help="models, data and run folders")
    parser.add_argument("--no-varlen", action="store_true",
                        help="leave Unsloth on torch 2.11's per-segment attention (bench/unsloth_varlen.py is "
                             "applied by default: the one-call varlen attention of torch >= 2.12, the project's pin)")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.skip < 0 or args.steps < args.skip + 2:
        parser.error("--steps must be at least --skip + 2 (two metrics points to measure between)")
    if not 0 <= args.hf_share < 1:
        parser.error("--hf-share: the hf process's share of the budget, from 0 to below 1")
    if args.worker:
        return worker(args)

    began = time.time()
    out = Path(args.out)
    sizes, wanted = args.sizes.split(","), args.backends.split(",")
    unknown = [s for s in sizes if s not in {e["size"] for e in GRID_BY_NAME.values()}]
    if unknown or not set(wanted) <= set(BACKENDS):
        parser.error(f"--sizes: one of tiny, 0.1b, 0.5b, 1.1b; --backends: unsloth, hf (got {args.sizes}, "
                     f"{args.backends})")
    only = args.only.split(",") if args.only else None
    if only and set(only) - set(GRID_BY_NAME):
        parser.error(f"--only: not in the grid: {', '.join(sorted(set(only) - set(GRID_BY_NAME)))}")
    plan = {b: [n for n in names if not only or n in only]
            for b, names in select(sizes, [b for b in BACKENDS if b in wanted]).items()}
    plan = {b: names for b, names in plan.items() if names}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_files(work)
    print(f"fit_grid: {sum(map(len, plan.values()))} configs ({', '.join(f'{b} {len(n)}' for b, n in plan.items())}),"
          f" budget {args.budget_s:.0f} s, {args.steps} steps, first {args.skip} left out; lines -> {out}", flush=True)
    for i, (backend, names) in enumerate(plan.items()):
        share = 1.0 if i == len(plan) - 1 else 1.0 - args.hf_share
        deadline = began + args.budget_s * share
        print(f"{backend}: configs start until {deadline - began:.0f} s", flush=True)
        run_backend(args, backend, names, deadline, out)
    lines = _done(out)
    gpu = next((f"{line['gpu']} ({_gib(line['gpu_total_memory_bytes'])} GiB)" for line in lines if line.get("gpu")),
               "no config ran")
    measured = sum(1 for line in lines if line.get("tokens_per_s") is not None)
    print(f"\n{gpu}: {measured} of {len(lines)} configs measured ({sum(map(len, plan.values()))} in the grid), "
          f"{time.time() - began:.0f} s; tokens/s from step {args.skip + 1} to {args.steps}; start s: the config's "
          f"start to the trainer's (model load, data, trainer), step1 s: then to the first step's end")
    imports = {line["grid"]["backend"]: line["imports_s"] for line in lines if line.get("imports_s")}
    for backend, times in imports.items():
        print(f"{backend} process imports (once, before its first config): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    print(table(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
