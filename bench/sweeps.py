"""Sweeps: the sweep page's server time with 100 members, and the time from a member's end to the next member queued.

    .venv/bin/python bench/sweeps.py                  # page: 100 members, 50 requests; advance: 20 sweeps
    .venv/bin/python bench/sweeps.py --members 100 --requests 50 --advances 20

Page: one sweep of `--members` members (a weight_decay phase over that many values: the page's cost is per member,
not per phase), created through sweep_create, its members in a page's usual mix of succeeded, running and queued
runs with 200 metric points each (an eval every 20 steps) and a few findings. A logged-in team member GETs
reverse("sweep_detail") through Django's test client (request handling, the view, its selectors, the template),
warm, `--requests` times; the share of that time spent in training.sweeps.selectors.sweep_state is measured in the
same requests. Where the page does not exist yet, sweep_state alone is timed and the output says so.

Advance: a weight_decay sweep (coarse -> refine) whose coarse members already ended with eval points but the last,
which is moved to succeeded through training.runs.services.run_transition (it queues the sweep's advance on the cpu
queue on commit); a real `celery worker` (solo pool) consumes that queue; the clock stops when the refine phase's
first Run row exists with its Celery message sent (Run.celery_task_id set). The members' gpu queue is one nobody
consumes, so nothing trains. Each sweep is new; the first is a warm-up and not counted.

Runs in its own database (tuneboard_bench_sweeps), queues and channel prefix, created and migrated on first use.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import benchdb  # noqa: E402  (bench/ is a folder of scripts; ROOT is on the path)
DB_NAME = "tuneboard_bench_sweeps"
PREFIX = "tuneboard-bench-sweeps"
IDLE_QUEUE = f"{PREFIX}-idle"  # the members' queue: nobody consumes it, so nothing trains
CPU_QUEUE = f"{PREFIX}-cpu"  # where a member's end queues the sweep's advance; the bench's worker consumes it
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
os.environ.setdefault("TUNEBOARD_CHANNEL_PREFIX", PREFIX)
os.environ.setdefault("TUNEBOARD_VAR_DIR", str(ROOT / "var" / "bench-sweeps"))
os.environ["TUNEBOARD_DEFAULT_QUEUE"] = IDLE_QUEUE
os.environ["TUNEBOARD_CPU_QUEUE"] = CPU_QUEUE
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

STEPS, EVAL_EVERY = 200, 20  # each member's curve on the page bench
ADVANCE_STEPS = 60  # each member's curve on the advance bench (evals at 20, 40, 60)


def setup_team():
    """The bench team, its member and a small dataset (the rows only matter to the rank templates)."""
    from django.conf import settings
    from django.contrib.auth.models import User

    from dashboard.models import Membership, Team
    from training.engine.tiny import write_dataset
    from training.models import Dataset

    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    user = User.objects.filter(username="bench").first() or User.objects.create_user("bench", password="bench")
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": Membership.Role.MEMBER})
    path = Path(settings.VAR_DIR) / "bench" / "data.jsonl"
    if not path.is_file():
        write_dataset(path, n=256, fmt="messages")
    dataset, _ = Dataset.objects.get_or_create(team=team, name="bench data", defaults=dict(
        path=str(path), source="registered", format="messages", rows=256, size_bytes=path.stat().st_size,
        sha256="0" * 64, created_by=user))
    return team, user, dataset


def base_overrides(max_steps: int) -> dict:
    return {"model": "bench/tiny-model", "max_steps": max_steps, "eval_split": 0.1, "eval_steps": EVAL_EVERY,
            "logging_steps": 1, "max_length": 128}


def write_points(run, *, steps: int, final_eval: float) -> None:
    """A finished member's curve: a loss every step, an eval every EVAL_EVERY steps ending at final_eval."""
    from django.utils import timezone

    from training.models import MetricPoint

    start = timezone.now() - timedelta(seconds=steps)
    MetricPoint.objects.bulk_create([MetricPoint(
        run=run, step=s, epoch=s / steps, tokens_seen=s * 1024, loss=2.0 / s ** 0.3, grad_norm=1.0,
        learning_rate=2e-4, tokens_per_s=5000.0, peak_vram_bytes=10**9, time=start + timedelta(seconds=s),
        eval_loss=final_eval + (steps - s) / steps if s % EVAL_EVERY == 0 else None) for s in range(1, steps + 1)])


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def summary(samples: list[float]) -> str:
    return (f"p50 {statistics.median(samples):.1f} ms, p95 {pct(samples, 0.95):.1f} ms, max {max(samples):.1f} ms "
            f"(n={len(samples)})")


# The page ----------------------------------------------------------------------------------------------------------

def page_sweep(team, user, dataset, members: int):
    """A sweep of `members` members: 60% succeeded (with their results), 20% running, 20% queued; every started one
    has its curve, one in ten a finding."""
    from django.utils import timezone

    from guidance.models import Finding
    from training.models import Run, SweepMember
    from training.sweeps import services

    values = [round(i * 1e-3, 4) for i in range(members)]
    started = time.perf_counter()
    sweep = services.sweep_create(team=team, user=user, template="weight_decay", dataset=dataset, queue=IDLE_QUEUE,
                                  overrides=base_overrides(STEPS), params={"values": values},
                                  name=f"bench page, {members} members")
    created_s = time.perf_counter() - started
    now = timezone.now()
    for i, member in enumerate(SweepMember.objects.filter(sweep=sweep).select_related("run").order_by("index")):
        run = member.run
        kind = i % 5
        if kind == 4:
            continue  # queued
        done = kind < 3
        steps = STEPS if done else STEPS // 2
        write_points(run, steps=steps, final_eval=1.0 + i / 1000)
        Run.objects.filter(id=run.id).update(
            status=Run.Status.SUCCEEDED if done else Run.Status.RUNNING, last_step=steps, started_at=now,
            finished_at=now if done else None)
        if done:
            member.result = {"final_eval_loss": 1.0 + i / 1000, "status": "succeeded"}
            member.save(update_fields=["result"])
        if i % 10 == 0:
            Finding.objects.create(run=run, code="flat_loss", severity="warning", step=steps // 2,
                                   title="Flat loss", message="bench")
    return sweep, created_s


def time_page(sweep, user, requests: int) -> dict:
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import NoReverseMatch, reverse

    from training.sweeps import selectors

    original = selectors.sweep_state
    spent: list[float] = []

    def timed_state(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append((time.perf_counter() - started) * 1000)

    # Every module that imported sweep_state by name (the view, the services) calls the timed one.
    holders = [m for m in list(sys.modules.values())
               if m is not None and getattr(m, "__name__", "").startswith(("training", "dashboard"))
               and getattr(m, "sweep_state", None) is original]
    for module in holders:
        module.sweep_state = timed_state
    try:
        try:
            url = reverse("sweep_detail", args=[sweep.id])
        except NoReverseMatch:
            url = None
        if url is None:
            for _ in range(requests + 1):
                timed_state(sweep)
            with CaptureQueriesContext(connection) as queries:
                original(sweep)
            return {"page": False, "state_ms": spent[1:], "queries": len(queries)}
        settings.ALLOWED_HOSTS = ["*"]
        client = Client()
        client.force_login(user)
        totals, shares, size = [], [], 0
        for i in range(requests + 1):
            spent.clear()
            started = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}: {response.content[:500]!r}")
            if i == 0:
                continue  # the first request loads the templates
            totals.append(elapsed)
            shares.append(sum(spent))
            size = len(response.content)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        return {"page": True, "url": url, "total_ms": totals, "state_ms": shares, "bytes": size,
                "queries": len(queries)}
    finally:
        for module in holders:
            module.sweep_state = original


def retire(sweep) -> None:
    """The page's sweep ends here, without advancing: its running members must not be found lost later."""
    from training.models import Run, Sweep

    Run.objects.filter(sweep=sweep).exclude(status__in=list(Run.TERMINAL)).update(status=Run.Status.STOPPED)
    Sweep.objects.filter(id=sweep.id).update(status=Sweep.Status.STOPPED)


# The advance -------------------------------------------------------------------------------------------------------

def start_worker(log: Path) -> subprocess.Popen:
    """A real `celery worker` on the cpu queue, as tests/workers.py starts one, returned once it heartbeats."""
    from training.models import Worker

    name = f"{PREFIX}@{os.uname().nodename}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "-Q", CPU_QUEUE, "-n", name, "--pool", "solo",
         "-c", "1", "--without-gossip", "--without-mingle", "-l", "info"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not Worker.objects.filter(name=name, pid=process.pid).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"the worker did not start; see {log}")
        time.sleep(0.2)
    return process


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def one_advance(team, user, dataset, index: int) -> dict:
    """A coarse phase of 3 members, two ended; the third's end through run_transition; the clock stops when the
    refine phase's first run is queued."""
    from django.db import connection
    from django.utils import timezone

    from training.models import Run, SweepMember
    from training.runs import services as runs
    from training.sweeps import services

    sweep = services.sweep_create(team=team, user=user, template="weight_decay", dataset=dataset, queue=IDLE_QUEUE,
                                  overrides=base_overrides(ADVANCE_STEPS), params={"values": [0.0, 0.01, 0.1]},
                                  name=f"bench advance {index}")
    members = list(SweepMember.objects.filter(sweep=sweep).select_related("run").order_by("index"))
    now = timezone.now()
    for member, final in zip(members, (1.05, 1.00, 1.10)):  # 0.01 wins: refine is 0.005, 0.01 (reused), 0.02
        write_points(member.run, steps=ADVANCE_STEPS, final_eval=final)
    for member in members[:-1]:
        Run.objects.filter(id=member.run_id).update(status=Run.Status.SUCCEEDED, last_step=ADVANCE_STEPS,
                                                     started_at=now, finished_at=now)
    last = members[-1].run
    Run.objects.filter(id=last.id).update(status=Run.Status.RUNNING, last_step=ADVANCE_STEPS, started_at=now)
    last.refresh_from_db()
    first_new = max(m.run_id for m in members)
    with connection.cursor() as cursor:
        started = time.perf_counter()
        if not runs.run_transition(last, to=Run.Status.SUCCEEDED, allowed_from=Run.ON_WORKER,
                                   finished_at=timezone.now()):
            raise SystemExit(f"run {last.id} did not move to succeeded")
        transition_ms = (time.perf_counter() - started) * 1000
        row_at = None
        deadline = started + 30
        while True:
            cursor.execute("SELECT celery_task_id <> '' FROM training_run WHERE sweep_id = %s AND id > %s "
                           "ORDER BY id LIMIT 1", [sweep.id, first_new])
            found = cursor.fetchone()
            now_s = time.perf_counter()
            if found and row_at is None:
                row_at = now_s
            if found and found[0]:
                break
            if now_s > deadline:
                raise SystemExit(f"sweep {sweep.id}: no refine run queued within 30 s; see the worker's log")
            time.sleep(0.002)
    return {"sweep": sweep.id, "queued_ms": (now_s - started) * 1000, "row_ms": (row_at - started) * 1000,
            "transition_ms": transition_ms}


def advance_task_ms(log: Path) -> list[float]:
    """The advance task's own run time, from the worker's log ("... succeeded in 0.0812s: 'phase refine created'")."""
    text = log.read_text(errors="replace")
    return [float(s) * 1000 for s in re.findall(r"training\.sweep_advance\[[^\]]+\] succeeded in ([0-9.e-]+)s", text)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50, help="timed page requests (after one warm-up)")
    parser.add_argument("--advances", type=int, default=20, help="timed advances (after one warm-up)")
    args = parser.parse_args()

    from bench import baseline  # bench/ is a folder of scripts; ROOT is on the path

    machine = baseline.measure()
    print(baseline.line(machine), flush=True)
    benchdb.ensure_database(DB_NAME)
    import django

    django.setup()
    import logging

    from django.conf import settings

    logging.getLogger("axes").setLevel(logging.WARNING)  # a line per login otherwise
    benchdb.purge_queue(IDLE_QUEUE)
    team, user, dataset = setup_team()

    sweep, created_s = page_sweep(team, user, dataset, args.members)
    print(f"page: sweep #{sweep.id} of {args.members} members created through sweep_create in {created_s:.1f} s",
          flush=True)
    page = time_page(sweep, user, args.requests)
    retire(sweep)
    benchdb.purge_queue(IDLE_QUEUE)

    log = Path(settings.VAR_DIR) / "log" / "bench-sweeps-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    worker = start_worker(log)
    try:
        advances = [one_advance(team, user, dataset, i) for i in range(args.advances + 1)]
        time.sleep(0.5)  # the last task's log line
    finally:
        stop_worker(worker)
        benchdb.purge_queue(IDLE_QUEUE)
    task_ms = advance_task_ms(log)

    print(f"\n{baseline.line(machine)}")
    if page["page"]:
        share = sum(page["state_ms"]) / sum(page["total_ms"])
        print(f"sweep page, {args.members} members, GET {page['url']} by a team member (Django test client, warm): "
              f"{summary(page['total_ms'])} (target <= 300 ms); sweep_state {statistics.median(page['state_ms']):.1f} "
              f"ms median, {share:.0%} of the time; {page['queries']} queries, {page['bytes'] / 1024:.0f} KiB")
    else:
        print(f"sweep page: NOT TIMED, there is no sweep_detail page yet; training.sweeps.selectors.sweep_state "
              f"alone for {args.members} members: {summary(page['state_ms'])} ({page['queries']} queries)")
    timed = advances[1:]
    print(f"a member's end -> the next phase's first run queued (run_transition to the refine run's "
          f"celery_task_id), {len(timed)} sweeps after a warm-up of {advances[0]['queued_ms']:.0f} ms: "
          f"{summary([a['queued_ms'] for a in timed])} (target <= 1 s)")
    print(f"  of which run_transition itself (the UPDATE, the live messages, the advance queued on commit): "
          f"{summary([a['transition_ms'] for a in timed])}")
    print(f"  the refine run's row first seen: {summary([a['row_ms'] for a in timed])}")
    if len(task_ms) >= len(advances):
        print(f"  the advance task's own run time in the worker (its log; it goes on after the commit to send the "
              f"sweep's state to its page): {summary(task_ms[-len(timed):])}")


if __name__ == "__main__":
    main()
