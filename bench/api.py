"""The REST API: the runs list endpoint with 10,000 runs, and the metrics export of a 100,000-step run; the run
list page (the runs table) with the same 10,000 runs.

    .venv/bin/python bench/api.py                       # 10,000 runs, 100,000 steps; 50 list requests, 5 exports
    .venv/bin/python bench/api.py --runs 10000 --steps 100000 --requests 50 --exports 5
    .venv/bin/python bench/api.py --pages-only          # the run list page alone (no metrics export)

The team's 10,000 runs (and 2,000 of another team, which the list must leave out) are one run made through
run_create and copies of it bulk-inserted, in the run list's usual mix (70% succeeded, 10% failed, 10% queued on
two queues, 5% running, 5% stopped), one in ten with a finding. The 100,000-step run has a point every step and an
eval every 100. Requests go through Django's test client with a token in the Authorization header (authentication,
the view, its selectors, the serializer, the JSON renderer), warm: `--requests` times GET /api/v1/runs/ (the first
page of 50), the same at page 100, and filtered by status with ordering; `--exports` times the whole metrics body
(JSON and CSV, read to its last byte) and the downsampled JSON (every=100). The run list page is timed the same
way with a logged-in session, on each URL of PAGE_URLS (the first page, a deep page, and filtered and sorted views).

Runs in its own database (tuneboard_bench_api), created and migrated on first use; the runs and points are made once
and reused by later runs of the bench.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import benchdb  # noqa: E402  (bench/ is a folder of scripts; ROOT is on the path)
DB_NAME = "tuneboard_bench_api"
PREFIX = "tuneboard-bench-api"
IDLE_QUEUE = f"{PREFIX}-idle"  # nobody consumes it: nothing trains
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
os.environ.setdefault("TUNEBOARD_CHANNEL_PREFIX", PREFIX)
os.environ.setdefault("TUNEBOARD_VAR_DIR", str(ROOT / "var" / "bench-api"))
os.environ["TUNEBOARD_DEFAULT_QUEUE"] = IDLE_QUEUE
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
os.environ["TUNEBOARD_WEB_LOST_RUN_CHECK"] = "0"

STATUSES = ["succeeded"] * 14 + ["failed"] * 2 + ["queued"] * 2 + ["running", "stopped"]
PAGE_URLS = ("/runs/", "/runs/?page=100", "/runs/?sort=eval_loss", "/runs/?sort=-duration&page=50",
             "/runs/?q=run+12&status=succeeded&sort=eval_loss", "/runs/?tag=baseline&mine=true",
             "/runs/?model=bench/tiny-model&dataset={dataset}&sort=-created")


def team_with_runs(slug: str, count: int):
    """The team, its member and `count` runs (made once: one through run_create, the rest its copies)."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.utils import timezone

    from dashboard.models import Membership, Team
    from guidance.models import Finding
    from training.engine.tiny import write_dataset
    from training.models import Dataset, Run
    from training.runs import services

    team, _ = Team.objects.get_or_create(slug=slug, defaults={"name": slug})
    user = User.objects.filter(username=slug).first() or User.objects.create_user(slug, password=slug)
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": Membership.Role.MEMBER})
    path = Path(settings.VAR_DIR) / "bench" / "data.jsonl"
    if not path.is_file():
        write_dataset(path, n=256, fmt="messages")
    dataset, _ = Dataset.objects.get_or_create(team=team, name="bench data", defaults=dict(
        path=str(path), source="registered", format="messages", rows=256, size_bytes=path.stat().st_size,
        sha256="0" * 64, created_by=user))
    have = Run.objects.filter(team=team).count()
    if have >= count:
        table_columns(team)
        return team, user, dataset
    first = Run.objects.filter(team=team).first() or services.run_create(
        team=team, user=user, dataset=dataset, queue=IDLE_QUEUE, name="bench run 0",
        overrides={"model": "bench/tiny-model", "max_steps": 1000, "max_length": 128})
    have = Run.objects.filter(team=team).count()
    now = timezone.now()
    copies = []
    for i in range(have, count):
        status = STATUSES[i % len(STATUSES)]
        ended = status in ("succeeded", "failed", "stopped")
        copies.append(Run(
            team=team, dataset=dataset, created_by=user, name=f"bench run {i}", config=first.config,
            dataset_sha256=first.dataset_sha256, queue=f"{IDLE_QUEUE}-{i % 2}", status=status, total_steps=1000,
            last_step=1000 if status == "succeeded" else (i * 7) % 1000, preflight=first.preflight, plan=first.plan,
            started_at=None if status == "queued" else now - timedelta(minutes=count - i),
            finished_at=now - timedelta(minutes=count - i - 1) if ended else None))
    created = Run.objects.bulk_create(copies, batch_size=2000)
    Finding.objects.bulk_create([Finding(run=run, code="flat_loss", severity="warning", step=100, title="Flat",
                                         message="flat") for run in created[::10]], batch_size=2000)
    table_columns(team)
    return team, user, dataset


def table_columns(team) -> None:
    """What the runs table filters and sorts on, for runs made before it had them: a best eval loss for the runs
    that trained (spread by id), and the tag "baseline" on one run in ten."""
    from django.db.models import F, Value
    from django.db.models.functions import Mod

    from training.models import Run

    runs = Run.objects.filter(team=team)
    runs.filter(best_eval_loss__isnull=True).exclude(status="queued").update(
        best_eval_loss=Value(1.0) + Mod(F("id"), Value(97)) / Value(100.0), best_eval_step=F("last_step"))
    runs.filter(tags=[]).annotate(tenth=Mod(F("id"), Value(10))).filter(tenth=0).update(tags=["baseline"])


def long_run(team, user, dataset, steps: int):
    """The team's run with a point every step up to `steps` and an eval every 100 (made once)."""
    from django.utils import timezone

    from training.models import MetricPoint, Run

    name = f"bench {steps} steps"
    run = Run.objects.filter(team=team, name=name).first()
    if run is not None and run.last_step == steps:
        return run
    template = Run.objects.filter(team=team).order_by("id").first()
    run = run or Run.objects.create(team=team, dataset=dataset, created_by=user, name=name, config=template.config,
                                    dataset_sha256=template.dataset_sha256, queue=IDLE_QUEUE,
                                    status=Run.Status.SUCCEEDED, total_steps=steps)
    MetricPoint.objects.filter(run=run).delete()
    start = timezone.now() - timedelta(seconds=steps)
    for lo in range(1, steps + 1, 10_000):
        MetricPoint.objects.bulk_create([MetricPoint(
            run=run, step=s, epoch=s / steps, tokens_seen=s * 2048, loss=2.0 / s ** 0.1, grad_norm=0.8,
            learning_rate=2e-4 * (1 - s / steps), tokens_per_s=5200.0, peak_vram_bytes=7 * 10**9,
            eval_loss=2.1 / s ** 0.1 if s % 100 == 0 else None, time=start + timedelta(seconds=s))
            for s in range(lo, min(lo + 10_000, steps + 1))])
    Run.objects.filter(id=run.id).update(last_step=steps)
    run.refresh_from_db()
    return run


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def summary(samples: list[float]) -> str:
    return (f"p50 {statistics.median(samples):.1f} ms, p95 {pct(samples, 0.95):.1f} ms, max {max(samples):.1f} ms "
            f"(n={len(samples)})")


def timed(client, url: str, times: int, headers: dict) -> dict:
    """`times` warm requests (after one warm-up), each read to its last byte."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    samples, size = [], 0
    for i in range(times + 1):
        started = time.perf_counter()
        response = client.get(url, **headers)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}: {body[:500]!r}")
        if i:
            samples.append(elapsed)
        size = len(body)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, **headers)
        if response.streaming:
            b"".join(response.streaming_content)
    return {"url": url, "ms": samples, "bytes": size, "queries": len(queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50, help="timed list requests each (after one warm-up)")
    parser.add_argument("--exports", type=int, default=5, help="timed metrics exports each (after one warm-up)")
    parser.add_argument("--pages-only", action="store_true", help="time the run list page only")
    args = parser.parse_args()

    from bench import baseline  # bench/ is a folder of scripts; ROOT is on the path

    machine = baseline.measure()
    print(baseline.line(machine), flush=True)
    benchdb.ensure_database(DB_NAME)
    import django

    django.setup()
    import logging

    from django.conf import settings
    from django.test import Client

    from dashboard.tokens.services import token_create
    from training.models import Run

    logging.getLogger("axes").setLevel(logging.WARNING)
    started = time.perf_counter()
    team, user, dataset = team_with_runs("bench-api", args.runs - 1)  # and the long run: --runs in all
    team_with_runs("bench-api-other", args.runs // 5)
    run = long_run(team, user, dataset, args.steps)
    benchdb.purge_queue(IDLE_QUEUE)
    from django.db import connection

    with connection.cursor() as cursor:  # what autovacuum keeps on a live table (statistics, visibility map)
        for table in ("training_run", "training_metricpoint", "guidance_finding"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    print(f"data ready in {time.perf_counter() - started:.1f} s: {Run.objects.filter(team=team).count()} runs of the "
          f"team, {Run.objects.exclude(team=team).count()} of another; run #{run.id} with {run.last_step} points",
          flush=True)

    settings.ALLOWED_HOSTS = ["*"]
    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=user, name='bench')[1]}"}
    lists, exports = [], []
    if not args.pages_only:
        lists = [timed(client, url, args.requests, headers) for url in (
            "/api/v1/runs/", "/api/v1/runs/?page=100", "/api/v1/runs/?status=succeeded&ordering=-finished_at")]
        exports = [timed(client, url, args.exports, headers) for url in (
            f"/api/v1/runs/{run.id}/metrics/", f"/api/v1/runs/{run.id}/metrics/?format=csv",
            f"/api/v1/runs/{run.id}/metrics/?every=100")]
    browser = Client()
    browser.force_login(user)
    pages = [timed(browser, url.format(dataset=dataset.id), args.requests, {}) for url in PAGE_URLS]

    print(f"\n{baseline.line(machine)}")
    print(f"run list page, {Run.objects.filter(team=team).count()} runs of the user's team, session login, Django "
          "test client, warm (target p95 <= 150 ms):")
    for result in pages:
        print(f"  GET {result['url']}: {summary(result['ms'])}; {result['queries']} queries, "
              f"{result['bytes'] / 1024:.0f} KiB")
    if args.pages_only:
        return
    print(f"runs list, {Run.objects.filter(team=team).count()} runs of the caller's team (and "
          f"{Run.objects.exclude(team=team).count()} of another), token auth, Django test client, warm "
          f"(target p95 <= 150 ms):")
    for result in lists:
        print(f"  GET {result['url']}: {summary(result['ms'])}; {result['queries']} queries, "
              f"{result['bytes'] / 1024:.0f} KiB")
    print(f"metrics export of run #{run.id}, {run.last_step:,} points (target <= 1 s):")
    for result in exports:
        print(f"  GET {result['url']}: {summary(result['ms'])}; {result['queries']} queries, "
              f"{result['bytes'] / 1024 / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
