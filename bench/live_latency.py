"""Live metrics: latency from the worker's RunRecorder to a websocket client, and sustained ingest with many runs.

    .venv/bin/python bench/live_latency.py                      # latency (1 run) + ingest (100 runs at 150 points/s)
    .venv/bin/python bench/live_latency.py --runs 100 --rate 0  # ingest as fast as it goes (saturated)

Uses the real path: RunRecorder.record_many (PostgreSQL upsert of the batch, the run's last step, the symptom
watcher, then one channels-redis group send) in producer processes that stand in for the workers, daphne serving
dashboard.asgi, and one authenticated websocket client per run (the `websockets` library) that asks for a replay,
then counts live points. Each simulated engine writes a point every 1/rate s; like the worker, a producer records
whatever is waiting for a run in one call. Latency runs from the moment the engine wrote the point (so it includes
the wait for the worker and the database write) to the client's receipt, on one machine clock. Runs in its own
database (tuneboard_bench_live) and channel prefix, created and migrated on first use.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DB_NAME = "tuneboard_bench_live"
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
os.environ.setdefault("TUNEBOARD_CHANNEL_PREFIX", "tuneboard-bench-live")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")


def ensure_database() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone():
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)


def setup_runs(n: int) -> tuple[list[int], str]:
    """n running runs of one team, and a session cookie for its member."""
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from dashboard.models import Membership, Team
    from training.models import Dataset, Run

    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    user, _ = get_user_model().objects.get_or_create(username="bench")
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": Membership.Role.MEMBER})
    dataset, _ = Dataset.objects.get_or_create(team=team, name="bench", defaults={
        "path": "/dev/null", "source": "registered", "format": "text", "rows": 1, "size_bytes": 1, "sha256": "0" * 64, "created_by": user})
    runs = [Run.objects.create(team=team, dataset=dataset, created_by=user, name=f"bench {i}",
                               config={"model": "bench"}, status=Run.Status.RUNNING, queue="bench")
            for i in range(n)]
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.create()
    return [r.id for r in runs], f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def produce(run_ids: list[int], points: int, rate: float, ready, start_at, results) -> None:
    """One producer process, standing in for the workers of its runs: each run's engine writes a metrics event
    every 1/rate s (all at once if rate is 0); like the worker, each visit records whatever is waiting, in one
    record_many call of at most BATCH_LIMIT events.

    The clock starts once every producer is set up (Django loaded, recorders built), as a worker is up before its
    engine writes a point; the moment the engine wrote a step is start_at + step / rate, so the parent computes each
    point's latency from its step and nothing is shipped back per point."""
    import django

    django.setup()
    from training.models import Run
    from training.runs.execution import RunRecorder

    batch_limit = 1000  # the worker's TrainingProcess.batches limit
    recorders = [RunRecorder(Run.objects.get(id=run_id)) for run_id in run_ids]
    done = {recorder.run.id: 0 for recorder in recorders}
    ready.release()
    while start_at.value == 0:
        time.sleep(0.005)
    start = start_at.value
    while time.time() < start:
        time.sleep(0.001)
    cpu_start = time.process_time()
    sent = 0
    while any(n < points for n in done.values()):
        idle = True
        for recorder in recorders:
            run_id = recorder.run.id
            due = points if not rate else min(points, int((time.time() - start) * rate))
            steps = range(done[run_id] + 1, min(due, done[run_id] + batch_limit) + 1)
            if not steps:
                continue
            idle = False
            # When the engine wrote it: the latency counts the time it waited for the worker too.
            recorder.record_many([{"v": 1, "type": "metrics", "time": start + step / rate if rate else start,
                                   "step": step, "epoch": step / points, "tokens_seen": step * 1000,
                                   "loss": 2.0 / step ** 0.5, "grad_norm": 1.0, "learning_rate": 1e-4,
                                   "tokens_per_s": 1000.0, "peak_vram_bytes": None} for step in steps])
            sent += len(steps)
            done[run_id] = steps[-1]
        if idle:
            time.sleep(0.002)
    results.put((os.getpid(), sent, time.time(), time.process_time() - cpu_start))


async def listen(url: str, cookie: str, run_id: int, expected: int, received: dict, ready: asyncio.Event,
                 deadline: float) -> None:
    import websockets

    count = [0]
    async with websockets.connect(f"{url}/ws/runs/{run_id}/", additional_headers={"Cookie": cookie,
                                                                                  "Origin": "http://127.0.0.1"}) as ws:
        await ws.send(json.dumps({"type": "replay", "after_step": 0}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(deadline - time.time(), 0.1)))
            if message.get("type") == "replay" and message.get("done"):
                ready.set()
            body = message.get("message", message)
            if body.get("type") == "points":
                now = time.time()
                for point in body["points"]:
                    received[f"{run_id}:{point['step']}"] = now
                count[0] += len(body["points"])
                if count[0] >= expected:
                    return


async def clients(url: str, cookie: str, run_ids: list[int], expected: int, received: dict, timeout: float):
    deadline = time.time() + timeout
    readies = [asyncio.Event() for _ in run_ids]
    tasks = [asyncio.create_task(listen(url, cookie, rid, expected, received, ev, deadline))
             for rid, ev in zip(run_ids, readies)]
    await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in readies)), timeout=60)
    return tasks


def run_phase(url: str, cookie: str, run_ids: list[int], points: int, producers: int, rate: float,
              timeout: float) -> dict:
    ctx = mp.get_context("spawn")  # a forked child would share the parent's database connection
    ready = ctx.Semaphore(0)
    start_at = ctx.Value("d", 0.0)
    results_queue = ctx.Queue()
    received: dict[str, float] = {}

    async def main():
        tasks = await clients(url, cookie, run_ids, points, received, timeout)
        chunks = [run_ids[i::producers] for i in range(producers)]
        procs = [ctx.Process(target=produce, args=(chunk, points, rate, ready, start_at, results_queue))
                 for chunk in chunks]
        for p in procs:
            p.start()
        for _ in procs:  # every producer set up before the engines' clock starts
            if not await asyncio.to_thread(ready.acquire, True, 120):
                raise RuntimeError("a producer did not get ready in 120 s (see its traceback above)")
        start_at.value = time.time() + 0.2
        results = await asyncio.gather(*tasks, return_exceptions=True)
        finished = [await asyncio.to_thread(results_queue.get, True, 60) for _ in procs]
        for p in procs:
            p.join()
        return start_at.value, results, finished

    clients_cpu = time.process_time()
    start, results, finished = asyncio.run(main())
    clients_cpu = time.process_time() - clients_cpu
    sent_count = sum(n for _, n, _, _ in finished)

    def written(key: str) -> float:  # when the simulated engine wrote the point (see produce)
        return start + int(key.split(":")[1]) / rate if rate else start

    end = max(received.values(), default=start)
    latencies = sorted((t - written(k)) * 1000 for k, t in received.items())
    from training.models import MetricPoint

    stored = MetricPoint.objects.filter(run_id__in=run_ids).count()
    errors = [r for r in results if isinstance(r, Exception)]
    return {"runs": len(run_ids), "points_sent": sent_count, "points_stored": stored,
            "points_received": len(received),
            "lost_in_db": len(run_ids) * points - stored, "lost_on_websocket": sent_count - len(received),
            "client_errors": [repr(e)[:200] for e in errors[:3]],
            "offered_points_per_s": len(run_ids) * rate if rate else None,
            # stored by the recorders over the time they took: the sustained ingest rate
            "points_per_s": stored / (max(t for _, _, t, _ in finished) - start) if finished else 0,
            # CPU seconds: the producers' (recording) and this process's (the websocket clients, and setup)
            "producers_cpu_s": sum(cpu for _, _, _, cpu in finished), "clients_cpu_s": clients_cpu,
            "p50_ms": statistics.median(latencies) if latencies else None,
            "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
            "max_ms": latencies[-1] if latencies else None, "wall_s": end - start}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--points", type=int, default=1000, help="points per run in the ingest phase")
    parser.add_argument("--rate", type=float, default=150, help="points/s each run's engine writes (0: all at once)")
    parser.add_argument("--producers", type=int, default=4, help="producer processes (simulated workers)")
    parser.add_argument("--latency-points", type=int, default=200)
    args = parser.parse_args()

    from bench import baseline  # bench/ is a folder of scripts; ROOT is on the path

    machine = baseline.measure()
    print(baseline.line(machine), flush=True)
    ensure_database()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                               "dashboard.asgi:application"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        url = f"ws://127.0.0.1:{port}"
        latency_runs, cookie = setup_runs(1)
        latency = run_phase(url, cookie, latency_runs, args.latency_points, 1, rate=20, timeout=120)
        ingest_runs, cookie = setup_runs(args.runs)
        ingest = run_phase(url, cookie, ingest_runs, args.points, args.producers, rate=args.rate, timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(json.dumps({"baseline": machine, "latency": latency, "ingest": ingest}, indent=1))
    print(f"\n{baseline.line(machine)}")
    print(f"\nlatency, 1 run at 20 points/s: p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms "
          f"(target p95 <= 100 ms), lost {latency['lost_on_websocket']}")
    print(f"ingest, {ingest['runs']} runs x {args.points} points written at {args.rate:g}/s each "
          f"({ingest['offered_points_per_s'] or 'all at once'} points/s offered), {args.producers} producer processes: "
          f"{ingest['points_per_s']:.0f} points/s (target >= 10,000), lost in DB {ingest['lost_in_db']}, "
          f"lost on websocket {ingest['lost_on_websocket']}, p95 {ingest['p95_ms']:.0f} ms; CPU: producers "
          f"{ingest['producers_cpu_s']:.1f} s, websocket clients {ingest['clients_cpu_s']:.1f} s")


if __name__ == "__main__":
    main()
