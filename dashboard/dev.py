"""`make dev`: set up a fresh machine's database, demo data and tiny model, then run web, workers, a demo run and a
demo rank sweep."""
from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dashboard.embedded import Services, default_var_dir

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

ROOT = Path(__file__).resolve().parent.parent
DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
DEMO_TEAM = ("Demo team", "demo")
DEMO_DATASET = "colours"
DEMO_PRESET = "Demo: tiny model, live curve"
# A few hundred steps on the tiny model: about a minute on a laptop CPU, long enough to watch the curve grow.
DEMO_STEPS = 300
DEMO_SWEEP = "Demo: rank sweep"
# The rank sweep's members (r = 2, 4, 8 for the demo dataset's 256 rows): short, so its verdict comes within minutes
# of the demo run on a laptop CPU; three evals each for the rule to read; no sample generation to wait for.
DEMO_SWEEP_OVERRIDES = {"max_steps": 60, "eval_steps": 20, "save_steps": 20, "sample_prompts": []}


def demo_preset_config(model_path: Path) -> dict:
    return {
        "model": str(model_path),
        "backend": "auto",  # unsloth on a CUDA box, the hf backend on CPU
        "optim": "adamw_torch",
        "max_length": 128,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "learning_rate": 0.002,
        "warmup_steps": 10,
        "max_steps": DEMO_STEPS,
        "logging_steps": 1,
        "eval_split": 0.1,
        "eval_steps": 20,
        "save_steps": 100,
        "sample_prompts": ["What colour is the plum? Say it 2 times."],
    }


def say(message: str) -> None:
    print(f"[tuneboard] {message}", flush=True)


def fail(message: str) -> None:
    print(f"[tuneboard] cannot start: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class Children:
    """The processes this launcher started, stopped in reverse order (each in its own session, so a terminal's
    Ctrl-C reaches only the launcher, which then shuts them down in order)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.items: list[tuple[str, subprocess.Popen]] = []
        self.commands: dict[str, list[str]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("a")
        process = subprocess.Popen(args, cwd=ROOT, env=os.environ, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.items.append((name, process))
        self.commands[name] = args
        return process

    def restart(self, name: str) -> subprocess.Popen:
        """The same command again, in the dead one's place."""
        self.items = [(n, p) for n, p in self.items if n != name]
        return self.start(name, self.commands[name])

    def running(self, name: str) -> bool:
        return any(n == name and process.poll() is None for n, process in self.items)

    def dead(self) -> list[tuple[str, int]]:
        return [(name, process.returncode) for name, process in self.items if process.poll() is not None]

    def stop_all(self, timeout: float = 20) -> None:
        """Last started, first stopped: the workers before the web server."""
        for name, process in reversed(self.items):
            if process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in {timeout:.0f} s: killing it")
                process.kill()
                process.wait()


# Services -----------------------------------------------------------------------------------------------------

def ensure_redis() -> None:
    from dashboard.preflight import redis_problem

    problem = redis_problem()
    if problem:
        fail(problem)


def ensure_database() -> None:
    """Create the database if the server answers but the database is missing; then check it answers."""
    import psycopg
    from django.conf import settings

    from dashboard.preflight import postgres_problem

    problem = postgres_problem()
    if problem is None:
        return
    db = settings.DATABASES["default"]
    if "does not exist" not in problem:
        fail(problem)
    say(f"creating database {db['NAME']}")
    try:
        with psycopg.connect(dbname="postgres", user=db["USER"] or None, password=db["PASSWORD"] or None,
                             host=db["HOST"] or None, port=db["PORT"] or None, connect_timeout=3,
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    except psycopg.Error as exc:
        fail(f"could not create database {db['NAME']!r}: {str(exc).strip()}. Create it yourself "
             f"(`createdb {db['NAME']}`) or point DATABASE_URL at one that exists.")
    problem = postgres_problem()
    if problem:
        fail(problem)


# Set-up ---------------------------------------------------------------------------------------------------------

def setup_django() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    say("applying migrations")
    call_command("migrate", interactive=False, verbosity=0)
    from django.conf import settings

    if not settings.WHITENOISE_USE_FINDERS:
        say("collecting static files")
        call_command("collectstatic", interactive=False, verbosity=0)


def setup_demo(log_dir: Path) -> tuple:
    """The demo team, user (admin of the team and a superuser), tiny model, dataset and preset; reused if present."""
    from django.conf import settings
    from django.contrib.auth.models import User

    from dashboard.models import Membership, Team
    from training.datasets import services as dataset_services
    from training.engine.tiny import write_dataset
    from training.models import Dataset, Preset

    team, _ = Team.objects.get_or_create(slug=DEMO_TEAM[1], defaults={"name": DEMO_TEAM[0]})
    user = User.objects.filter(username=DEMO_USER).first()
    if user is None:
        user = User.objects.create_superuser(DEMO_USER, email="", password=DEMO_PASSWORD)
    Membership.objects.update_or_create(user=user, team=team, defaults={"role": Membership.Role.ADMIN})

    model_path = Path(settings.MODELS_DIR) / "tiny-llama"
    if not (model_path / "config.json").is_file():
        say(f"building the tiny demo model in {model_path} (log: {log_dir / 'tiny-model.log'})")
        # In a child process: torch and transformers print pages of start-up chatter that belong in a log.
        with (log_dir / "tiny-model.log").open("a") as log:
            built = subprocess.run([sys.executable, "-m", "training.engine", "tiny-model", str(model_path)],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if built.returncode != 0:
            fail(f"building the tiny model failed; see {log_dir / 'tiny-model.log'}")

    dataset = Dataset.objects.filter(team=team, name=DEMO_DATASET).first()
    if dataset is None or not Path(dataset.path).is_file():
        if dataset is not None:
            # Its file was removed with var/: keep the record (runs point at it), add the data under a new name.
            Dataset.objects.filter(id=dataset.id).update(name=f"{DEMO_DATASET} (file missing, {dataset.id})")
        say("writing the demo dataset")
        source = write_dataset(Path(settings.VAR_DIR) / "demo" / "colours.jsonl", n=256, fmt="messages")
        dataset = dataset_services.dataset_create_from_upload(team=team, user=user, name=DEMO_DATASET,
                                                      file=io.BytesIO(source.read_bytes()))

    config = demo_preset_config(model_path)
    preset = Preset.objects.filter(team=team, name=DEMO_PRESET).first()
    if preset is None:
        preset = Preset(team=team, name=DEMO_PRESET, created_by=user,
                        notes="The tiny model on the demo dataset: a live curve in about a minute on a CPU.")
    if preset.config != config:
        preset.config = config
        preset.full_clean()
        preset.save()
    return team, user, dataset, preset


# Processes ------------------------------------------------------------------------------------------------------

def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_http(host: str, port: int, process: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def wait_worker(name: str, process: subprocess.Popen, timeout: float = 90) -> bool:
    from training.models import Worker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if Worker.objects.filter(name=name, pid=process.pid).exists():
            return True
        time.sleep(0.3)
    return False


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.dev", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address the web server listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
    parser.add_argument("--gpu-slots", type=int, default=int(os.environ.get("TUNEBOARD_WORKER_SLOTS") or 1),
                        help="runs the training worker trains at once, each in its own process (default "
                             "TUNEBOARD_WORKER_SLOTS, else 1)")
    parser.add_argument("--no-demo-run", action="store_true",
                        help="set up and serve, but start no demo run and do not start or resume the demo sweep")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be 1-65535, not {args.port}")
    if not 1 <= args.gpu_slots <= 64:
        parser.error(f"--gpu-slots must be 1-64, not {args.gpu_slots}")

    if not port_free(args.host, args.port):
        fail(f"port {args.port} on {args.host} is in use; pick another with --port")
    # From here on a Ctrl-C (or a SIGTERM) shuts the children down in order rather than leaving them running.
    # SIGINT too, explicitly: a process started in the background by a non-interactive shell (a CI script, `make
    # dev &`) inherits SIGINT ignored, and Python then leaves it ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # Before the settings are read: they read the URLs of the servers started here where none answers.
    services = Services(var_dir=default_var_dir())
    children: Children | None = None
    demo_sweeps: list[int] = []  # the demo sweep, once this launcher started or resumed it
    worker_name = ""
    try:
        services.ensure()
        for line in services.describe():
            say(line)
        from django.conf import settings

        log_dir = Path(settings.VAR_DIR) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        children = Children(log_dir)
        worker_name = f"dev-{settings.TUNEBOARD_DEFAULT_QUEUE}@{socket.gethostname()}"
        return run(args, children, worker_name, demo_sweeps, services)
    except KeyboardInterrupt:
        say("shutting down")
        return 0
    finally:
        if children is not None:
            if children.running("worker"):
                stop_demo_sweep(demo_sweeps)
                stop_demo_runs(worker_name)
            children.stop_all()
        services.stop()
        say("stopped" + (" (and the embedded PostgreSQL/Redis)" if any(s.process for s in services.started)
                         else ""))


def run(args: argparse.Namespace, children: Children, worker_name: str, demo_sweeps: list[int],
        services: Services) -> int:
    from django.conf import settings

    ensure_redis()
    ensure_database()
    setup_django()
    team, user, dataset, preset = setup_demo(children.log_dir)

    queue = settings.TUNEBOARD_DEFAULT_QUEUE
    say(f"starting the web server on http://{args.host}:{args.port} (log: {children.log_dir / 'web.log'})")
    web = children.start("web", [sys.executable, "-m", "daphne", "-b", args.host, "-p", str(args.port),
                                 "dashboard.asgi:application"])
    # Two solo workers: one trains (the gpu queue, one run at a time), one takes the cpu queue (dataset statistics,
    # sweep advances), so neither waits for a training to end: a sweep's next phase is queued as soon as its last
    # member ends, and an upload's statistics appear while the demo run trains.
    slots = f", {args.gpu_slots} slots" if args.gpu_slots > 1 else ""
    say(f"starting a worker for queue {queue!r}{slots} (log: {children.log_dir / 'worker.log'})")
    worker = children.start("worker", celery_worker(queue, worker_name, slots=args.gpu_slots))
    cpu_queue = settings.TUNEBOARD_CPU_QUEUE
    cpu_worker_name = f"dev-{cpu_queue}@{socket.gethostname()}"
    say(f"starting a worker for queue {cpu_queue!r}: dataset statistics and sweep advances "
        f"(log: {children.log_dir / 'cpu-worker.log'})")
    cpu_worker = children.start("cpu-worker", celery_worker(cpu_queue, cpu_worker_name))
    if not wait_http(args.host, args.port, web):
        fail(f"the web server did not start; see {children.log_dir / 'web.log'}")
    if not wait_worker(worker_name, worker):
        fail(f"the worker did not start; see {children.log_dir / 'worker.log'}")
    if not wait_worker(cpu_worker_name, cpu_worker):
        fail(f"the cpu worker did not start; see {children.log_dir / 'cpu-worker.log'}")

    site = f"http://{args.host}:{args.port}"
    url, sweep_line = f"{site}/", ""
    if not args.no_demo_run:
        from training.runs import services as run_services  # `services` here: the embedded servers

        run_ = run_services.run_create(team=team, user=user, dataset=dataset, preset=preset, name="demo run")
        url = f"{site}/runs/{run_.id}/"
        say(f"demo run #{run_.id} queued: {DEMO_STEPS} steps of the tiny model")
        sweep = start_demo_sweep(team, user, dataset, preset)
        demo_sweeps.append(sweep.id)
        sweep_line = f"\n  The demo rank sweep: {site}/sweeps/{sweep.id}/"
    print(f"\n  Tuneboard is running: {url}{sweep_line}\n  Log in as {DEMO_USER} / {DEMO_PASSWORD}.  "
          "Ctrl-C stops everything.\n", flush=True)
    return supervise(children, services)


# A process that dies this many times within RESTART_WINDOW_S is not restarted again: it would only die again (a
# broken settings file, a port taken), and its log says why.
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0


def supervise(children: Children, services: Services) -> int:
    """Keep every process up: one that exits is started again and the others go on (a killed training worker's
    runs become lost at once, when its successor of the same name starts, or within a minute by the web process's
    lost-run check); an embedded server that exits ends it all, since nothing works without it."""
    deaths: dict[str, list[float]] = {}
    while True:
        for server in services.started:
            if server.process is not None and server.process.poll() is not None:
                say(f"the embedded {server.name} exited (code {server.process.returncode}); see {server.log}")
                return 1
        for name, code in children.dead():
            now = time.monotonic()
            recent = [t for t in deaths.get(name, []) if now - t < RESTART_WINDOW_S] + [now]
            deaths[name] = recent
            if len(recent) > MAX_RESTARTS:
                say(f"{name} exited {len(recent)} times within {RESTART_WINDOW_S:.0f} s: stopping; see "
                    f"{children.log_dir / (name + '.log')}")
                return 1
            say(f"{name} exited (code {code}): starting it again; the others go on (log: "
                f"{children.log_dir / (name + '.log')})")
            children.restart(name)
        time.sleep(1)


def celery_worker(queue: str, name: str, slots: int = 1) -> list[str]:
    """One slot: the solo pool (the task runs in the worker's own process); several: one thread per slot, each
    run still in its own training process."""
    pool = ["--pool", "solo", "-c", "1"] if slots == 1 else ["--pool", "threads", "-c", str(slots)]
    return [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "-Q", queue, "-n", name, *pool,
            "--without-gossip", "--without-mingle", "-l", "info"]


def start_demo_sweep(team, user, dataset, preset):
    """The demo's rank sweep on the tiny model, started once: a later launch resumes it where the last one stopped
    it (its stopped members from their checkpoints) and leaves a finished one as it is."""
    from django.core.exceptions import ValidationError

    from training.models import Sweep
    from training.sweeps import services

    sweep = Sweep.objects.filter(team=team, name=DEMO_SWEEP, dataset=dataset).order_by("-created_at").first()
    if sweep is None:
        sweep = services.sweep_create(team=team, user=user, template="r", dataset=dataset, preset=preset,
                                      overrides=DEMO_SWEEP_OVERRIDES, name=DEMO_SWEEP)
        names = ", ".join(sweep.phases.get().members.order_by("index").values_list("name", flat=True))
        say(f"demo sweep #{sweep.id} queued: ranks {names}, {DEMO_SWEEP_OVERRIDES['max_steps']} steps each, "
            "judged by the smallest rank within 1% of the best eval loss")
        return sweep
    if sweep.status == Sweep.Status.FINISHED:
        say(f"demo sweep #{sweep.id} finished earlier: {sweep.verdict}")
        return sweep
    try:
        services.sweep_resume(sweep=sweep, user=user)
        say(f"demo sweep #{sweep.id} resumed")
    except ValidationError:
        say(f"demo sweep #{sweep.id} is {sweep.get_status_display().lower()}")
    return sweep


def stop_demo_sweep(sweep_ids: list[int]) -> None:
    """Stop the demo sweep this launcher started or resumed: its queued members would otherwise wait in Redis for
    a worker (or be lost with a Redis that keeps nothing); the next launch resumes it."""
    try:
        from django.contrib.auth.models import User

        from training.models import Sweep
        from training.sweeps import services

        user = User.objects.filter(username=DEMO_USER).first()
        for sweep in Sweep.objects.filter(id__in=sweep_ids).exclude(status__in=list(Sweep.TERMINAL)):
            services.sweep_stop(sweep=sweep, user=user)
            say(f"demo sweep #{sweep.id} stopped; the next `make dev` resumes it")
    except Exception as exc:  # noqa: BLE001 - shutting down must go on
        say(f"could not stop the demo sweep ({type(exc).__name__}: {exc})")


def stop_demo_runs(worker_name: str) -> None:
    """Stop what this launcher's worker trains, so the run ends `stopped` with a checkpoint rather than `lost`."""
    try:
        from django.contrib.auth.models import User
        from django.core.exceptions import PermissionDenied

        from training.models import Run
        from training.runs import services

        user = User.objects.filter(username=DEMO_USER).first()
        active = list(Run.objects.filter(status__in=list(Run.ON_WORKER), worker__name=worker_name)
                      .select_related("team"))
        for run_ in active:
            try:
                services.run_stop(run=run_, user=user)
            except PermissionDenied:
                pass  # another team's run (the demo user is not in it): it becomes lost, and can be resumed
        if active:
            say(f"stopping run(s) {', '.join(f'#{r.id}' for r in active)} at their next step")
        deadline = time.monotonic() + 30
        while active and time.monotonic() < deadline:
            if not Run.objects.filter(id__in=[r.id for r in active], status__in=list(Run.ON_WORKER)).exists():
                break
            time.sleep(0.5)
    except Exception as exc:  # noqa: BLE001 - shutting down must go on; the runs become lost at worst
        say(f"could not stop the running runs ({type(exc).__name__}: {exc}); they will show as lost")


if __name__ == "__main__":
    sys.exit(main())
