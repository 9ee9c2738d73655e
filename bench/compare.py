"""Prints the server time of the Compare page's data request for 20 runs × 100,000 steps × 6 metrics.

Creates (or, with --fresh, recreates) a separate database, tuneboard_bench, migrates it, bulk-loads the points with
COPY, then times the request through Django's request handling: the first request for finished runs (which packs
each run's columns into one row, SeriesPack), then cold (a new database connection) and warm:

    python bench/compare.py [--runs 20] [--steps 100000] [--fresh] [--repeat 5] [--browser]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOST = "postgres://postgres@127.0.0.1:5432"
DB = "tuneboard_bench"


def ensure_database(fresh: bool) -> None:
    with psycopg.connect(f"{HOST}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone()
        if exists and fresh:
            conn.execute(f"DROP DATABASE {DB} WITH (FORCE)")
            exists = None
        if not exists:
            conn.execute(f"CREATE DATABASE {DB}")


def load(runs: int, steps: int) -> list[int]:
    """The bench team's runs, loaded once: 6 metrics per step, an eval every 50 steps, a spike per run."""
    from django.contrib.auth.models import User
    from django.db import connection, transaction

    from dashboard.models import Membership, Team
    from training.models import Dataset, MetricPoint, Run

    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    user = User.objects.filter(username="bench").first() or User.objects.create_user("bench", password="bench")
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": "member"})
    existing = list(Run.objects.filter(team=team, total_steps=steps).order_by("id").values_list("id", flat=True))
    if len(existing) >= runs:
        return existing[:runs]
    dataset, _ = Dataset.objects.get_or_create(team=team, name="bench data", defaults=dict(
        path="/dev/null", source="registered", format="messages", rows=100_000, size_bytes=0, sha256="0" * 64))
    started = datetime(2026, 11, 24, tzinfo=timezone.utc)
    rng = np.random.default_rng(0)
    ids = []
    t_load = time.perf_counter()
    for index in range(runs):
        lr = [1e-4, 2e-4, 5e-4, 1e-3][index % 4]
        r = [8, 16, 32, 64, 128][index % 5]
        config = {"model": "bench", "train_file": "/dev/null", "output_dir": "run", "r": r, "lora_alpha": r,
                  "learning_rate": lr, "max_steps": steps, "per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": 2}
        with transaction.atomic():
            run = Run.objects.create(team=team, dataset=dataset, created_by=user, name=f"bench {index}",
                                     config=config, dataset_sha256="0" * 64, queue="bench", status="succeeded",
                                     total_steps=steps, last_step=steps, started_at=started, finished_at=started)
            step = np.arange(1, steps + 1)
            loss = 2.5 * np.exp(-step / (steps / 5)) + 0.5 + rng.normal(0, 0.05, steps)
            loss[rng.integers(steps)] = 40.0  # a one-step spike the downsampling must keep
            eval_loss = np.where(step % 50 == 0, loss + 0.1, np.nan)
            frame = pd.DataFrame({
                "run_id": run.id, "step": step, "epoch": step / steps, "tokens_seen": step * 4096, "loss": loss,
                "eval_loss": eval_loss, "grad_norm": 1 + loss / 3, "learning_rate": lr * np.minimum(1, step / 100),
                "tokens_per_s": 16000 + 500 * np.sin(step / 300), "peak_vram_bytes": 4_000_000_000 + step,
                "time": pd.Timestamp(started) + pd.to_timedelta(step * 0.25, unit="s"),
            })
            text = frame.to_csv(sep="\t", header=False, index=False, na_rep="\\N", float_format="%.7g")
            with connection.cursor() as cursor, cursor.cursor.copy(
                    f"COPY {MetricPoint._meta.db_table} ({', '.join(frame.columns)}) FROM STDIN") as copy:
                copy.write(text)
        ids.append(run.id)
        print(f"  loaded run {run.id} ({index + 1}/{runs})", flush=True)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {MetricPoint._meta.db_table}")
    print(f"loaded {runs} × {steps:,} points in {time.perf_counter() - t_load:.1f} s")
    return ids


def timed(client, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{url}: HTTP {response.status_code}: {response.content[:500]!r}")
    return elapsed * 1000, len(response.content)


def browser_time(ids: list[int]) -> None:
    """Headless Chromium (Debian's) against daphne on the bench database: the page until all six charts are drawn."""
    import socket
    import subprocess

    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"],
        cwd=ROOT, env={**os.environ, "DEBUG": "1", "TUNEBOARD_CHANNEL_PREFIX": "bench-compare"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("daphne did not start") from None
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"{url}/accounts/login/")
            page.fill("#id_username", "bench")
            page.fill("#id_password", "bench")
            page.click("form[action='/accounts/login/'] button[type=submit]")
            page.wait_for_url(f"{url}/runs/")
            for attempt in ("first", "second"):
                started = time.perf_counter()
                page.goto(f"{url}/compare/?runs={','.join(map(str, ids))}")
                page.wait_for_function("() => [...document.querySelectorAll('.chart[data-metric]')]"
                                       ".every((chart) => chart.dataset.loaded !== '0')", timeout=120_000)
                print(f"  in Chromium, the page until its 6 charts are drawn ({attempt} load): "
                      f"{time.perf_counter() - started:.2f} s")
            browser.close()
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the bench database first")
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    args = parser.parse_args()

    from bench import baseline  # noqa: E402 - bench/ is a folder of scripts; ROOT is on the path

    print(baseline.line(baseline.measure(postgres_url=f"{HOST}/postgres")), flush=True)
    ensure_database(args.fresh)
    os.environ["DATABASE_URL"] = f"{HOST}/{DB}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0)
    ids = load(args.runs, args.steps)
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    runs = ",".join(map(str, ids))
    requests = {
        "one metric (train loss), step, smooth 0.6": f"/compare/data/?runs={runs}&metric=loss&x=step&smooth=0.6",
        "one metric, zoomed to steps 40k-60k": f"/compare/data/?runs={runs}&metric=loss&smooth=0.6&x0=40000&x1=60000",
        "one metric, x = wall time": f"/compare/data/?runs={runs}&metric=loss&x=time&smooth=0.6",
        "all 6 metrics, step, smooth 0.6": f"/compare/data/?runs={runs}&x=step&smooth=0.6",
    }
    print(f"{args.runs} runs × {args.steps:,} steps; server time of GET /compare/data/ (Django test client, "
          f"request handling + PostgreSQL + numpy + JSON):")
    from training.models import SeriesPack

    SeriesPack.objects.filter(run_id__in=ids).delete()
    connection.close()
    for label, url in requests.items():
        if "zoomed" in label:
            continue  # the same columns as the first
        first, size = timed(client, url)
        print(f"  {label}, first request after the runs finished (builds their series packs): {first:.0f} ms")
    for label, url in requests.items():
        connection.close()  # cold: a new connection
        cold, size = timed(client, url)
        warm = [timed(client, url)[0] for _ in range(args.repeat)]
        print(f"  {label}: cold {cold:.0f} ms, warm median {statistics.median(warm):.0f} ms "
              f"(min {min(warm):.0f}), payload {size / 1024:.0f} KiB")
    page = f"/compare/?runs={runs}"
    connection.close()
    cold, size = timed(client, page)
    warm = [timed(client, page)[0] for _ in range(args.repeat)]
    print(f"  the page itself (table, outcomes, guidance; charts load after): cold {cold:.0f} ms, "
          f"warm median {statistics.median(warm):.0f} ms, {size / 1024:.0f} KiB")
    if args.browser:
        connection.close()
        browser_time(ids)


if __name__ == "__main__":
    main()
