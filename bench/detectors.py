"""Prints the live symptom detectors' cost per metric point (guidance.detectors.Watcher), early and late in a long run,
and the pre-flight review's time for one config (guidance.preflight.review).

The worker feeds every point of every run through a Watcher, so the cost must stay flat as the run grows; the run
form reviews the config as the user types, so one review must take at most 5 ms:

    python bench/detectors.py [--steps 100000] [--reviews 2000]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidance.detectors import Watcher  # noqa: E402 - after the path is set
from guidance.preflight import review  # noqa: E402
from training.engine.config import parse_config  # noqa: E402

# A config that trips most rules (so most of them build a note), with every fact the review can use.
REVIEWED = {"model": "m", "train_file": "t", "learning_rate": 0.3, "use_rslora": True, "r": 64, "lora_alpha": 128,
            "lora_dropout": 0.3, "weight_decay": 0.5, "warmup_steps": 80, "lr_scheduler_type": "cosine",
            "packing": True, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "bias": "all",
            "loftq_config": {"loftq_bits": 8}, "target_modules": "attention"}
FACTS = {"model_facts": {"has_bias_params": False}, "dataset_facts": {"rows": 300, "p95_tokens": 1900}}


def review_ms(calls: int) -> tuple[float, float, int]:
    """Median and 95th-percentile milliseconds of one review over `calls` calls, and the notes it returns."""
    config = parse_config(REVIEWED).model_dump(mode="json")
    notes = len(review(config, **FACTS))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        review(config, **FACTS)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--reviews", type=int, default=2000)
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
    med, p95, notes = review_ms(args.reviews)
    print(f"pre-flight review of one config ({notes} notes): median {med:.3f} ms, p95 {p95:.3f} ms over "
          f"{args.reviews} calls (target <= 5 ms)")


if __name__ == "__main__":
    main()
