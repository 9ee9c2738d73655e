"""Prints rows/s and peak RSS of accepting and profiling a JSONL dataset generated on the fly (1 GB by default).

The file is written in a temporary folder, then read by the same code the upload service and the statistics task
run: the row-by-row check writing the engine's JSONL (training.datasets.files.check_and_normalise), the checksum, and the
statistics with the tiny model's real tokenizer (training.datasets.stats.profile). Memory must stay bounded: the
file is never read whole; what grows with the rows is three int64 arrays (lengths, loss tokens, row hashes).

    python bench/dataset_profile.py [--size-mb 1024] [--format prompt_completion|messages|text] [--keep DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.datasets import files  # noqa: E402
from training.datasets import stats as token_stats
from training.engine.tiny import COLOURS, THINGS, build_tiny_model  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row(rng: random.Random, fmt: str, i: int) -> dict:
    words = " ".join(rng.choice(THINGS) for _ in range(rng.randint(20, 160)))
    answer = " ".join(rng.choice(COLOURS) for _ in range(rng.randint(2, 40)))
    prompt = f"Row {i}: name the colour of each of these things: {words}"
    if fmt == "text":
        return {"text": f"{prompt}\n{answer}"}
    if fmt == "messages":
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    return {"prompt": prompt, "completion": " " + answer}


def generate(path: Path, size: int, fmt: str) -> int:
    rng = random.Random(0)
    written = rows = 0
    with path.open("wb") as fh:
        while written < size:
            line = json.dumps(row(rng, fmt, rows)).encode() + b"\n"
            fh.write(line)
            written += len(line)
            rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--format", default="prompt_completion", choices=["prompt_completion", "messages", "text"])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--keep", type=Path, help="write the files here instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        source, normalised = folder / "bench.jsonl", folder / "normalised.jsonl"
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(folder / "tiny-model"))
        started = time.perf_counter()
        rows = generate(source, args.size_mb * 1024 * 1024, args.format)
        size = source.stat().st_size
        print(f"generated {size / 2**30:.2f} GiB, {rows:,} {args.format} rows in {time.perf_counter() - started:.1f} s"
              f"; peak RSS {peak_rss_mib():.0f} MiB")

        started = time.perf_counter()
        with source.open("rb") as fh, normalised.open("wb") as out:
            checked = files.check_and_normalise(fh, "jsonl", out)
        digest = hashlib.sha256()
        with normalised.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        took = time.perf_counter() - started
        print(f"accept (check every row, write the engine's JSONL, sha256): {checked.rows:,} rows in {took:.1f} s = "
              f"{checked.rows / took:,.0f} rows/s, {size / took / 2**20:.0f} MiB/s; peak RSS {peak_rss_mib():.0f} MiB")

        started = time.perf_counter()
        with normalised.open("rb") as fh:
            stats = token_stats.profile((json.loads(line) for line in fh), token_stats.tokenizer_encoder(tokenizer),
                                          total_rows=checked.rows, max_length=args.max_length, eval_ratio=0.05)
        took = time.perf_counter() - started
        print(f"profile (tiny tokenizer, max_length {args.max_length}): {checked.rows:,} rows in {took:.1f} s = "
              f"{checked.rows / took:,.0f} rows/s; peak RSS {peak_rss_mib():.0f} MiB")
        print(f"  p50/p95/max {stats['p50']}/{stats['p95']}/{stats['max']} tokens, {stats['tokens']:,} tokens, "
              f"truncated {stats['truncated_share']:.1%}, duplicates {stats['duplicate_rows']}")


if __name__ == "__main__":
    main()
