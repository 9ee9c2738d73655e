"""The whole product on one machine, driven as a user's script drives it: `make dev`'s launcher (web server, a
training worker with warm processes and slots, a cpu worker) on the embedded PostgreSQL and Redis where none answers,
then through the dashboard's own REST API and websockets, with an API token:

1. a run of a random model trains (Unsloth on a GPU) through the real Celery worker; its websocket's points are
   counted as they reach this client (queued -> first point; points/s);
2. a second run of the same team and model: the warm start (queued -> first point again);
3. two small runs launched at once share the GPU in slots (do their trainings overlap?);
4. the playground on the first run's adapter streams tokens over its websocket (load, first token, tokens/s).

    python3 bench/gpu_product.py                       # the lent GPU: a random 1B Llama, Unsloth, 2 slots
    .venv/bin/python bench/gpu_product.py --cpu --tiny # this CPU: the tiny model, the hf backend

On the lent GPU box (python3 3.12, torch 2.11+cu130, no PostgreSQL, Redis, Django or internet), the wheels travel in
two calls, /tmp/site staying on the warm machine between them: `/work/shared/gpu/fetch-wheels.sh` (.whl) and
`bench/gpu_product_wheels.sh` (.whl-product-a, .whl-product-b) here first, then
    call 1, carry [".whl", ".whl-product-b"]: python3 -m pip install -q --no-index --no-deps --no-compile
        --target /tmp/site .whl/*.whl .whl-product-b/*.whl
    call 2, carry [".whl-product-a"]: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site
        .whl-product-a/*.whl && PYTHONPATH=/tmp/site python3 bench/gpu_product.py --out $OUT/gpu_product.json

Prints one JSON object (also written to --out). Every figure is a wall-clock time seen by this client: from the
POST that queued the run to the first point on its websocket, and so on.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TERMINAL = {"succeeded", "failed", "stopped", "lost"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"[gpu_product {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_overrides(args, model: str) -> dict:
    if args.tiny:
        return {"model": model, "backend": "auto", "optim": "adamw_torch", "max_length": 128,
                "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 2e-3,
                "warmup_steps": 2, "max_steps": args.steps, "logging_steps": 1, "save_steps": args.steps,
                "sample_prompts": []}
    # The 1B bench shape of bench/warm_start.py: 16-bit LoRA r 16 on all linear layers, packed 2048-token blocks.
    return {"model": model, "backend": "auto", "optim": "adamw_8bit", "max_length": 2048, "packing": True,
            "dtype": "bfloat16", "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "r": 16,
            "lora_alpha": 16, "target_modules": "all-linear", "learning_rate": 2e-4, "warmup_steps": 2,
            "max_steps": args.steps, "logging_steps": 1, "save_steps": args.steps, "sample_prompts": []}


class Product:
    """The launcher (python -m dashboard.dev) in its own database, var folder, queues and channel prefix."""

    def __init__(self, args, work: Path):
        from dashboard.embedded import Services, pg_port, redis_port

        self.work = work
        self.services = Services(var_dir=work / "services", durable=False)
        self.services.ensure()
        for line in self.services.describe():
            log(line)
        token = uuid.uuid4().hex[:8]
        base = os.environ.get("DATABASE_URL") or f"postgres://postgres@127.0.0.1:{pg_port()}/tuneboard"
        self.env = {
            "DATABASE_URL": urlsplit(base)._replace(path=f"/tuneboard_gpu_product_{token}").geturl(),
            "REDIS_URL": os.environ.get("REDIS_URL") or f"redis://127.0.0.1:{redis_port()}/0",
            "TUNEBOARD_VAR_DIR": str(work / "var"),
            "TUNEBOARD_DEFAULT_QUEUE": f"gp-{token}", "TUNEBOARD_CPU_QUEUE": f"gp-{token}-cpu",
            "TUNEBOARD_CHANNEL_PREFIX": f"gp-{token}",
            # Warm processes on: `auto` turns them on where the worker sees a GPU; forced here so that --cpu
            # exercises the same path the GPU box takes.
            "TUNEBOARD_WARM_WORKERS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        os.environ.update(self.env)
        self.port = args.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "launcher.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dashboard.dev", "--no-demo-run", "--port", str(self.port),
             "--gpu-slots", str(args.slots)], cwd=ROOT, env=os.environ.copy(), stdout=self.log.open("w"),
            stderr=subprocess.STDOUT)
        self.started = time.perf_counter()

    def wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while "Tuneboard is running" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the launcher did not start:\n{self.log.read_text()[-4000:]}\n"
                                 f"{self._tail('web.log')}{self._tail('worker.log')}")
            time.sleep(0.5)
        return time.perf_counter() - self.started

    def _tail(self, name: str) -> str:
        path = self.work / "var" / "log" / name
        return f"--- {name}\n{path.read_text(errors='replace')[-3000:]}\n" if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
        try:
            import psycopg

            admin = urlsplit(self.env["DATABASE_URL"])
            with psycopg.connect(admin._replace(path="/postgres").geturl(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{admin.path.lstrip("/")}" WITH (FORCE)')
        except Exception as exc:  # noqa: BLE001 - the figures are printed; a leftover database is only noted
            log(f"could not drop the bench database: {exc}")
        self.services.stop()


def api_token() -> tuple[str, int]:
    """An API token of the demo user (made by the launcher, admin of the demo team), and the team's id."""
    import django

    django.setup()
    from django.contrib.auth.models import User

    from dashboard.dev import DEMO_TEAM, DEMO_USER
    from dashboard.models import Team
    from dashboard.tokens.services import token_create

    user = User.objects.get(username=DEMO_USER)
    _, secret = token_create(user=user, name=f"gpu_product {uuid.uuid4().hex[:6]}")
    return secret, Team.objects.get(slug=DEMO_TEAM[1]).id


async def follow(url: str, token: str, run_id: int, queued_at: float) -> dict:
    """The run's websocket from its replay to its end: when each live point arrived, and the statuses seen."""
    import websockets

    arrivals: list[float] = []
    statuses: list[tuple[str, float]] = []
    steps: set[int] = set()
    ws_url = url.replace("http://", "ws://") + f"/ws/runs/{run_id}/"
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=None) as ws:
        await ws.send(json.dumps({"type": "replay", "after_step": 0}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=900))
            now = time.perf_counter()
            if message["type"] == "replay":
                steps |= {p["step"] for p in message["points"] if p.get("loss") is not None}
                if message["done"] and message["status"]["is_terminal"]:
                    statuses.append((message["status"]["status"], now))
                    break
            elif message["type"] == "points":
                for point in message["points"]:
                    if point["kind"] == "metrics" and point["step"] not in steps:
                        steps.add(point["step"])
                        arrivals.append(now)
            elif message["type"] == "status":
                statuses.append((message["status"], now))
                if message["is_terminal"]:
                    break
    running = next((t for s, t in statuses if s == "running"), None)
    ended = statuses[-1][1] if statuses else None
    result = {"run": run_id, "status": statuses[-1][0] if statuses else None, "points_live": len(arrivals),
              "steps": len(steps),
              "queued_to_running_s": round(running - queued_at, 2) if running else None,
              "queued_to_first_point_s": round(arrivals[0] - queued_at, 2) if arrivals else None,
              "running_at": running, "ended_at": ended}
    if len(arrivals) > 2:
        result["points_per_s"] = round((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 2)
    return result


def launch(client, dataset_id: int, overrides: dict, name: str) -> tuple[int, float]:
    response = client.post("/api/v1/runs/", json={"dataset": dataset_id, "overrides": overrides, "name": name})
    if response.status_code != 201:
        raise SystemExit(f"POST /api/v1/runs/ answered {response.status_code}: {response.text[:2000]}")
    return response.json()["id"], time.perf_counter()


async def playground(url: str, token: str, session_id: int, prompts: int, max_new_tokens: int) -> dict:
    import websockets

    ws_url = url.replace("http://", "ws://") + f"/ws/playground/{session_id}/"
    opened = time.perf_counter()
    result: dict = {"session": session_id, "prompts": []}
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        while True:  # the state, then its changes, until the model is loaded
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=600))
            if message.get("type") == "status" and message["status"] == "ready":
                result["ready_after_s"] = round(time.perf_counter() - opened, 2)
                result["load_s"] = (message.get("progress") or {}).get("load_s")
                break
            if message.get("type") == "status" and not message["is_live"]:
                raise SystemExit(f"the playground session ended: {message}")
        for index in range(prompts):
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "generate", "id": f"p{index}", "prompt": "What colour is the plum?",
                                      "temperature": 0.7, "top_p": 0.95, "max_new_tokens": max_new_tokens,
                                      "seed": index}))
            first, tokens, replies = None, 0, 0
            while replies < 2:  # the adapter's side and the base model's
                message = json.loads(await asyncio.wait_for(ws.recv(), timeout=300))
                if message.get("type") == "token":
                    tokens += 1
                    first = first or time.perf_counter()
                elif message.get("type") == "reply":
                    replies += 1
                elif message.get("type") in ("refused", "error"):
                    raise SystemExit(f"the playground refused a prompt: {message}")
            done = time.perf_counter()
            result["prompts"].append({
                "first_token_s": round(first - sent, 3) if first else None, "token_events": tokens,
                "token_events_per_s": round(tokens / (done - first), 1) if first and done > first else None})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="no GPU here: the hf backend on the CPU")
    parser.add_argument("--tiny", action="store_true", help="the tiny model and a short config (with --cpu)")
    parser.add_argument("--size", default="1b", help="training.engine.tiny size without --tiny (1b, 1.1b)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the first two runs (default 60; tiny 30)")
    parser.add_argument("--slots", type=int, default=2, help="the training worker's slots (default 2)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    args.steps = args.steps or (30 if args.tiny else 60)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = Path(tempfile.mkdtemp(prefix="gpu-product-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    result: dict = {"mode": "cpu-tiny" if args.cpu and args.tiny else ("tiny" if args.tiny else args.size),
                    "slots": args.slots, "steps": args.steps, "work": str(work)}
    began = time.perf_counter()
    product = Product(args, work)
    try:
        from training.engine.tiny import build_tiny_model, write_dataset

        size = "tiny" if args.tiny else args.size
        model = build_tiny_model(work / "var" / "models" / f"random-{size}", size=size)
        data = write_dataset(work / "data.jsonl", n=256 if args.tiny else 4000, fmt="messages")
        result["launcher_ready_s"] = round(product.wait_ready(timeout=900), 1)
        log(f"product up at {product.url} after {result['launcher_ready_s']} s")
        token, team_id = api_token()

        import httpx

        client = httpx.Client(base_url=product.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        upload = client.post("/api/v1/datasets/", data={"name": "gpu product", "team": str(team_id)},
                             files={"file": ("data.jsonl", io.BytesIO(data.read_bytes()), "application/jsonl")})
        if upload.status_code != 201:
            raise SystemExit(f"dataset upload answered {upload.status_code}: {upload.text[:2000]}")
        dataset_id = upload.json()["id"]
        overrides = run_overrides(args, str(model))

        for label in ("cold", "warm"):
            run_id, queued = launch(client, dataset_id, overrides, f"{label} run")
            log(f"{label} run #{run_id} queued")
            result[label] = asyncio.run(follow(product.url, token, run_id, queued))
            result[label]["backend"] = client.get(f"/api/v1/runs/{run_id}/").json().get("started", {}).get("backend")
            log(f"{label}: {result[label]}")

        # Two small runs at once: with 2 slots both train at the same time.
        small = {**overrides, "max_steps": max(10, args.steps // 2), "save_steps": max(10, args.steps // 2)}
        launched = [launch(client, dataset_id, small, f"slot run {i}") for i in (1, 2)]

        async def both():
            return await asyncio.gather(*(follow(product.url, token, rid, at) for rid, at in launched))

        pair = asyncio.run(both())
        overlap = min(r["ended_at"] for r in pair) - max(r["running_at"] for r in pair) \
            if all(r["running_at"] and r["ended_at"] for r in pair) else None
        result["slots_pair"] = {"runs": pair, "trained_at_once_s": round(overlap, 2) if overlap is not None else None}
        log(f"slots: {result['slots_pair']}")

        from django.contrib.auth.models import User

        from dashboard.dev import DEMO_USER
        from training.models import Run
        from training.playground.services import playground_start

        session = playground_start(run=Run.objects.get(id=result["cold"]["run"]),
                                   user=User.objects.get(username=DEMO_USER))
        result["playground"] = asyncio.run(playground(product.url, token, session.id, args.prompts,
                                                      max_new_tokens=32))
        log(f"playground: {result['playground']}")
        for entry in [result["cold"], result["warm"], *pair]:
            entry.pop("running_at", None), entry.pop("ended_at", None)
    finally:
        product.stop()
        result["total_s"] = round(time.perf_counter() - began, 1)
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
