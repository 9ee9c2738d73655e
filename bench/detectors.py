"""Prints the live symptom detectors' cost per metric point (guidance.detectors.Watcher), early and late in a long run.

The worker feeds every point of every run through a Watcher, so the cost must stay flat as the run grows:

    python bench/detectors.py [--steps 100000]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidance.detectors import Watcher  # noqa: E402 - after the path is set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(0)
    watcher = Watcher()
    watcher.feed({"type": "started", "config": {"packing": True},
                  "derived": {"total_steps": args.steps, "warmup_steps": 100}})
    block = max(args.steps // 10, 1)
    times = []
    for start in range(1, args.steps + 1, block):
        events = [{"type": "metrics", "step": s, "loss": 0.5 + 2.0 * 0.9995 ** s + rng.gauss(0, 0.05),
                   "grad_norm": 1 + rng.random(), "learning_rate": 2e-4 * (1 - s / args.steps), "tokens_per_s": 9e3}
                  for s in range(start, min(start + block, args.steps + 1))]
        t0 = time.perf_counter()
        for event in events:
            watcher.feed(event)
        times.append((start, (time.perf_counter() - t0) / len(events) * 1e3))
    for start, ms in times:
        print(f"steps {start:>7}-{start + block - 1:<7} {ms:.3f} ms/point")
    print(f"findings: {[f'{f.code}@{f.step}' for f in watcher.findings] or 'none'}")


if __name__ == "__main__":
    main()
