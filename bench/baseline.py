"""A small machine baseline that the benches print with their figures, so figures from two machines can be set
side by side: a PostgreSQL commit's round trip, a Redis round trip and a fixed pure-Python CPU loop.

    .venv/bin/python bench/baseline.py      # alone

A commit waits for the WAL flush (the disk's fsync), which is what every recorded batch of points waits for; a
PING is the channel layer's floor per command; the loop is single-core interpreter speed (Python's own, no I/O).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
TIMES = 200


def postgres_commit_ms(url: str = POSTGRES_URL, times: int = TIMES) -> float:
    """Median of `times` one-row INSERT + COMMIT into an ordinary (logged) table: a temporary or unlogged table
    would skip the WAL flush that a real commit waits for."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_baseline_commit (id bigserial PRIMARY KEY, v double precision)")
        conn.commit()
        samples = []
        try:
            for i in range(times):
                start = time.perf_counter()
                conn.execute("INSERT INTO bench_baseline_commit (v) VALUES (%s)", [float(i)])
                conn.commit()
                samples.append((time.perf_counter() - start) * 1000)
        finally:
            conn.execute("DROP TABLE bench_baseline_commit")
            conn.commit()
    return statistics.median(samples)


def redis_ping_ms(url: str = REDIS_URL, times: int = TIMES) -> float:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
        samples = []
        for _ in range(times):
            start = time.perf_counter()
            client.ping()
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        client.close()
    return statistics.median(samples)


def cpu_loop_ms(repeats: int = 5) -> float:
    """Median time of a fixed pure-Python loop (2 million additions and multiplications on ints)."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i * i % 7
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure(postgres_url: str = POSTGRES_URL, redis_url: str = REDIS_URL) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
            "postgres_commit_ms": postgres_commit_ms(postgres_url), "redis_ping_ms": redis_ping_ms(redis_url),
            "cpu_loop_ms": cpu_loop_ms()}


def line(baseline: dict[str, Any]) -> str:
    return (f"machine baseline: {baseline['cpus']} CPUs, load average {baseline['load_average_1m']:.2f}; "
            f"PostgreSQL INSERT+COMMIT {baseline['postgres_commit_ms']:.2f} ms, Redis PING "
            f"{baseline['redis_ping_ms']:.3f} ms (medians of {TIMES}); pure-Python loop "
            f"{baseline['cpu_loop_ms']:.0f} ms (median of 5)")


def line_here() -> str:
    """The baseline line, or its CPU loop alone where no PostgreSQL/Redis runs (the lent GPU box)."""
    try:
        return line(measure())
    except Exception as exc:  # noqa: BLE001
        return f"baseline: cpu loop {cpu_loop_ms():.0f} ms (no PostgreSQL/Redis here: {type(exc).__name__})"


if __name__ == "__main__":
    print(line(measure()))
