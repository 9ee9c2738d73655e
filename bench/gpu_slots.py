"""GPU slots with warm spares (issue 21): a sweep's members trained at once on one GPU, each in its own process, against
one member trained alone in a cold process, in one call.

    python3 bench/gpu_slots.py --size 1.1b --members 8 --steps 60 --mps --varlen   # the lent GPU: target <= 2.9x one
                                                                        # cold member, on torch >= 2.12's attention path
    python3 bench/gpu_slots.py --size 0.1b --members 8 --steps 60       # target: total tokens/s >= 2x one run alone
    python3 bench/gpu_slots.py --size 0.1b --members 8 --steps 60 --mps # the same with the processes under MPS
    .venv/bin/python bench/gpu_slots.py --size tiny --members 2 --steps 10   # this CPU: the bench itself works

What it does, in order (first, unless --no-prime, one cold member not counted: it fills the on-disk compile caches,
Triton's and Inductor's, that a worker which trained before has; on the lent H200 the very first 0.1B run took 69.7
s, the next alike 34.8 s; then one round; `--rounds 2`, the default, ends with the member alone once more, so that the
sweep sits between two readings of one member alone and the ratio is over their mean):
1. One member alone, cold: `python -m training.engine run` in a new process (what every run did before warm workers),
   from the process's spawn to its `finished` event.
2. The worker's start: one `python -m training.engine warm` process for each slot (`--members` slots), as a worker
   with TUNEBOARD_WORKER_SLOTS=N and warm workers on starts them when it is ready (training/runs/warm.py's
   prestart); the bench waits until each has imported its libraries (the worker's idle time, printed, not counted).
3. The sweep: every member is handed to its own process at the same moment (the members of a sweep phase are
   queued together and a worker with N slots admits N of them when their predicted peaks fit); the clock runs from
   that moment to the last member's `finished`.

The members are one learning-rate sweep: the same base, data and config but the learning rate (geometric between
5e-5 and 1e-3), as a seed procedure's phase queues them. Printed: the sweep's wall time against the cold member's
(the ratio, target <= 2.9 for 8 members of the 1.1B model), each member's start to first step, and the total
training throughput: all members' tokens between their metrics of step `--skip` and their last step over the time
from the earliest of those first points to the latest last one, against one run's (the cold member's) tokens/s
counted the same way (target >= 2x for the 0.1B model).

Model and data as bench/warm_start.py builds them (--size 0.1b, 0.5b, 1b, 1.1b: a random Llama of that size, 16-bit
LoRA r 16 on all linear layers, packed to 2048, micro-batch 8, adamw_8bit; tiny: the tiny Llama on the CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.warm_start import base_config, cold_run, follow, spawn_warm  # noqa: E402
from training.planner.slots import slot_threads  # noqa: E402


def learning_rates(n: int) -> list[float]:
    if n == 1:
        return [2e-4]
    return [5e-5 * (1e-3 / 5e-5) ** (i / (n - 1)) for i in range(n)]


def window_rate(points: list[tuple[float, int]], skip: int) -> tuple[float, float, int]:
    """(start time, end time, tokens) of a run's metrics from point `skip` to its last."""
    skip = min(skip, len(points) - 2)
    return points[skip][0], points[-1][0], points[-1][1] - points[skip][1]


@contextlib.contextmanager
def mps_daemon(work: Path):
    """CUDA's Multi-Process Service for this bench's processes alone: a control daemon with its own pipe and log
    folders (the card's settings, its compute mode included, stay as they are), told to quit on the way out.
    Without it the GPU time-slices between processes, so slots only fill each other's idle gaps; with it their
    kernels run side by side.

    The daemon runs in the foreground (-f) as this process's child in a session of its own: on the lent H200 a
    `quit` to a daemon started with -d hung past 60 s and left its server holding the GPU for the next bench; here
    one that does not quit in 30 s has its process group killed (a stale server changes what the next call reads)."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        raise SystemExit("--mps: nvidia-cuda-mps-control is not on PATH here")
    pipes, logs = work / "mps-pipe", work / "mps-log"
    pipes.mkdir()
    logs.mkdir()
    os.environ.update(CUDA_MPS_PIPE_DIRECTORY=str(pipes), CUDA_MPS_LOG_DIRECTORY=str(logs))
    daemon = subprocess.Popen([control, "-f"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(100):
        if (pipes / "control").exists() or daemon.poll() is not None:
            break
        time.sleep(0.1)
    if daemon.poll() is not None:
        raise SystemExit(f"--mps: the MPS control daemon exited with {daemon.returncode}; see {logs}")
    print(f"MPS control daemon started (pipes in {pipes})", flush=True)
    try:
        yield
    finally:
        try:
            subprocess.run([control], input="quit\n", text=True, timeout=30)
            daemon.wait(timeout=30)
            print("MPS control daemon quit", flush=True)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
            print("MPS control daemon did not quit in 30 s: its process group killed", flush=True)
        for name in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
            os.environ.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="training.engine.tiny size: tiny, 0.1b, 0.5b, 1b, 1.1b")
    parser.add_argument("--backend", default="auto", choices=["auto", "unsloth", "hf"])
    parser.add_argument("--members", type=int, default=8, help="members trained at once (the worker's slots)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=5, help="metrics points left out of the throughput (warm-up)")
    parser.add_argument("--rounds", type=int, default=2, choices=[1, 2],
                        help="2: one member alone before and after the sweep (the ratio over their mean)")
    parser.add_argument("--no-prime", action="store_true", help="skip the uncounted first cold run")
    parser.add_argument("--mps", action="store_true",
                        help="run every process (the alone ones too) under a private MPS control daemon")
    parser.add_argument("--varlen", action="store_true",
                        help="every process takes Unsloth's torch >= 2.12 packed attention (bench/unsloth_varlen.py)")
    parser.add_argument("--progress", type=float, default=30.0, help="seconds between the sweep's progress lines")
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()
    if args.varlen:
        os.environ["BENCH_UNSLOTH_VARLEN"] = "1"
    work = Path(tempfile.mkdtemp(prefix="bench-slots-"))
    with mps_daemon(work) if args.mps else contextlib.nullcontext():
        measure(args, work)


def measure(args, work: Path) -> None:
    from bench import baseline

    print(baseline.line_here(), flush=True)
    config = base_config(args, work)

    def member_file(name: str, lr: float) -> Path:
        path = work / f"{name}.json"
        path.write_text(json.dumps({**config, "learning_rate": lr, "output_dir": str(work / name)}))
        return path

    lrs = learning_rates(args.members)

    def one_alone(name: str) -> dict:
        run = cold_run(member_file(name, lrs[0]))
        print(f"one member alone, cold: {run['total_s']:.1f} s (start to first step {run['first_step_s']:.1f} s), "
              f"backend {run['backend']}, device {run['device']}", flush=True)
        return run

    if not args.no_prime:
        primed = cold_run(member_file("prime", lrs[0]))
        print(f"priming run (not counted): {primed['total_s']:.1f} s", flush=True)
    alones = [one_alone("alone-1")]
    alone = alones[0]

    booted = time.perf_counter()
    # As the worker with N slots starts them: each with one slot's share of the cores (training/runs/process.py).
    threads = slot_threads(args.members, len(os.sched_getaffinity(0)))
    shared = threads is not None and "OMP_NUM_THREADS" not in os.environ
    if shared:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    spares = [spawn_warm(args.backend) for _ in range(args.members)]
    if shared:
        del os.environ["OMP_NUM_THREADS"]
    for _, stream in spares:
        ready, _ = stream.next()
        if ready["type"] != "warm-ready":
            raise SystemExit(f"expected warm-ready from a spare, got {ready['type']}")
    print(f"{args.members} spares ready {time.perf_counter() - booted:.1f} s after the worker's start "
          f"(idle time before the sweep: not counted)", flush=True)

    results: list[dict | None] = [None] * args.members
    failures: list[str] = []
    steps = [0] * args.members
    done = threading.Event()

    def report() -> None:  # so that a call cut short by its limit still says how far the sweep got
        while not done.wait(args.progress):
            print(f"  sweep at {time.perf_counter() - handed:.0f} s: members' steps {steps}", flush=True)

    def serve(i: int, handed: float) -> None:
        proc, stream = spares[i]
        try:
            results[i] = follow(stream, handed, on_step=lambda step: steps.__setitem__(i, step))
        except SystemExit as exc:
            failures.append(f"member {i}: {exc}")

    paths = [member_file(f"member-{i}", lr) for i, lr in enumerate(lrs)]
    handed = time.perf_counter()
    threads = []
    for i, ((proc, stream), path) in enumerate(zip(spares, paths)):
        proc.stdin.write(json.dumps({"config": str(path), "sent": time.time()}) + "\n")
        proc.stdin.flush()
        threads.append(threading.Thread(target=serve, args=(i, handed)))
        threads[-1].start()
    threading.Thread(target=report, daemon=True).start()
    for thread in threads:
        thread.join()
    done.set()
    for proc, _ in spares:
        proc.stdin.close()
    for proc, _ in spares:
        proc.wait(timeout=120)
    if failures:
        raise SystemExit("; ".join(failures))
    sweep_s = max(r["total_s"] for r in results)
    if args.rounds == 2:
        alones.append(one_alone("alone-2"))
    alone_s = sum(r["total_s"] for r in alones) / len(alones)
    rates = []
    for run in alones:
        a0, a1, a_tokens = window_rate(run["points"], args.skip)
        rates.append(a_tokens / (a1 - a0))
    alone_rate = sum(rates) / len(rates)
    windows = [window_rate(r["points"], args.skip) for r in results]
    total_rate = sum(w[2] for w in windows) / (max(w[1] for w in windows) - min(w[0] for w in windows))
    print(f"\nmodel {args.size}, {args.members} members x {args.steps} steps, backend {alone['backend']}, "
          f"{alone['device']}{', under MPS' if args.mps else ''}{', varlen attention' if args.varlen else ''}")
    for i, (lr, r) in enumerate(zip(lrs, results)):
        print(f"  member {i} lr {lr:.2g}: start to first step {r['first_step_s']:6.2f} s, finished at "
              f"{r['total_s']:6.1f} s, final loss {r['losses'][-1]:.4f}")
    readings = " / ".join(f"{r['total_s']:.1f}" for r in alones)
    print(f"sweep of {args.members} in slots (spares ready): {sweep_s:.1f} s = {sweep_s / alone_s:.2f}x one "
          f"cold member alone ({readings} s, before and after the sweep: mean {alone_s:.1f} s); one after "
          f"another, cold: about {args.members * alone_s:.0f} s")
    print(f"training throughput: {args.members} at once {total_rate:,.0f} tokens/s in total against one alone "
          f"{' / '.join(f'{r:,.0f}' for r in rates)} tokens/s (mean {alone_rate:,.0f}): "
          f"{total_rate / alone_rate:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "size": args.size, "mps": args.mps, "varlen": args.varlen, "members": args.members, "steps": args.steps,
            "device": alone["device"],
            "backend": alone["backend"], "alone_s": [r["total_s"] for r in alones],
            "alone_first_step_s": [r["first_step_s"] for r in alones], "alone_tokens_per_s": rates,
            "sweep_s": sweep_s, "ratio": sweep_s / alone_s,
            "total_tokens_per_s": total_rate, "throughput_ratio": total_rate / alone_rate,
            "members_first_step_s": [r["first_step_s"] for r in results],
            "members_total_s": [r["total_s"] for r in results], "learning_rates": lrs}, indent=1))


if __name__ == "__main__":
    main()
