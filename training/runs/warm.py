"""Warm workers (issue 21): a worker keeps trainer processes warm between runs and hands the next run to one.

A warm process is `python -m training.engine warm` (training/engine/warm.py): its libraries are imported once
(Unsloth's patching included) and it keeps the last run's base model loaded. The worker's pool holds the idle ones:
- after a run finishes, its process stays, tagged with the run's team, backend and base; the next run of the same
  team and backend gets it (the same base preferred: the engine then reuses the loaded weights);
- a process never serves two teams: an idle one tagged with another team is killed before a run starts, and a run
  of another team gets a fresh one (libraries only, no run served yet: a spare started beside each run) or a new
  one;
- a run that stops or fails ends its process (the engine exits), and one that is killed is not reused;
- an idle one that has served a team is killed after TUNEBOARD_WARM_IDLE_S, when the worker takes another kind of
  task (an evaluation or the playground needs the GPU's memory), and at the worker's shutdown.
Runs executing at once in one worker process (GPU slots) each take their own process; the pool is locked. Fresh
processes (spares) are started when the worker is ready, one for each of its slots, so that the first runs after a
worker's start (a sweep's members, all queued at once) skip the imports too; while runs train, the pool keeps one
spare for each free slot, and at least one, so that no more processes import beside training runs than the free
slots can use. A spare holds no team's data or model and is not ended for being idle.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from django.conf import settings

from training.engine.backends import needs_compile_off
from training.engine.config import ConfigError, parse_config
from training.engine.events import TERMINAL
from training.engine.warm import READY, base_fields
from training.models import Run
from training.runs.process import TrainingProcess

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0  # a finished run's process puts its base back (unload, restore, checksums) within this
# The other tasks that load a model on a worker's GPU (training/tasks.py): before one runs, idle warm processes that
# hold a base model are ended, so that it has the memory.
TASKS_USING_THE_GPU = frozenset({"training.eval_run", "training.loftq_check", "training.playground_serve"})


@lru_cache(maxsize=1)
def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU" in out


def enabled() -> bool:
    """TUNEBOARD_WARM_WORKERS: on, off, or auto (on where the worker has a GPU)."""
    setting = settings.TUNEBOARD_WARM_WORKERS
    return _has_gpu() if setting == "auto" else bool(setting)


def resolved_backend(backend: str) -> str:
    """"auto" as the engine resolves it (training/engine/backends.py), without importing torch: Unsloth where a GPU is
    there and it is installed. A run asking for auto and one asking for what auto means here share processes."""
    if backend != "auto":
        return backend
    return "unsloth" if _has_gpu() and importlib.util.find_spec("unsloth") is not None else "hf"


def run_backend(config: dict) -> str:
    return resolved_backend(str(config.get("backend") or "auto"))


def run_base(config: dict) -> str | None:
    """The run's base as the worker knows it (the engine decides for itself whether it may reuse a loaded one), or
    None when the run changes its base in place."""
    try:
        parsed = parse_config(config)
    except ConfigError:
        return None
    fields = base_fields(parsed, run_backend(config), parsed.dtype)
    return None if fields is None else json.dumps(fields, sort_keys=True)


@dataclass(eq=False)
class WarmProcess:
    process: TrainingProcess
    backend: str  # the backend it imported for ("unsloth" or "hf": a run's "auto" resolved as the engine would)
    team_id: int | None = None  # the team it serves; None: it has served nobody yet
    base: str | None = None  # the base it keeps loaded (run_base), None: none
    idle_since: float = field(default_factory=time.monotonic)
    runs: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


def choose(idle: list[WarmProcess], *, team_id: int, backend: str, base: str | None
           ) -> tuple[WarmProcess | None, list[WarmProcess]]:
    """(the idle process a run takes, the idle processes to kill before it runs). Another team's processes are
    killed whatever else happens; of the rest, the same team's process holding the same base comes first, then the
    same team's, then a fresh one (libraries only). Only processes of the run's backend qualify."""
    kill = [w for w in idle if w.team_id is not None and w.team_id != team_id]
    mine = [w for w in idle if w not in kill and w.backend == backend]
    ranked = sorted(mine, key=lambda w: (w.team_id is None, not (base is not None and w.base == base),
                                         -w.idle_since))
    return (ranked[0] if ranked else None), kill


class WarmPool:
    """This worker process's idle warm processes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list[WarmProcess] = []
        self._reaper: threading.Thread | None = None
        self._closed = threading.Event()
        self._slots = 1  # the worker's slots: how many spares it keeps while no run trains
        self._busy = 0  # runs handed to a process of this pool and not yet ended

    def prestart(self, slots: int, backend: str = "auto") -> None:
        """The worker is ready with `slots` slots: a spare for each, importing before any run arrives."""
        with self._lock:
            self._slots = max(1, int(slots))
        self._keep_spare(resolved_backend(backend))

    def start_run(self, *, run: Run, cwd: Path, config_path: Path, stop_file: Path) -> WarmRun:
        """Hand the run to a warm process (an idle one of its team, a fresh one, or a new one)."""
        backend, base = run_backend(run.config), run_base(run.config)
        with self._lock:
            dead = [w for w in self._idle if not w.alive()]
            chosen, kill = choose([w for w in self._idle if w not in dead], team_id=run.team_id, backend=backend,
                                  base=base)
            self._idle = [w for w in self._idle if w not in dead and w not in kill and w is not chosen]
        for warm in dead:
            self._end(warm, "it had exited")
        for warm in kill:
            self._end(warm, f"run {run.id} is another team's")  # before this run starts: it holds their model
        request = json.dumps({"config": str(config_path), "stop_file": str(stop_file), "cwd": str(cwd),
                              "resume_from": run.resumed_from_checkpoint or None, "sent": time.time()})
        if chosen is None or not self._send(chosen, request):
            if chosen is not None:
                self._end(chosen, "it did not take the request")
            chosen = self._spawn(backend)
            self._send(chosen, request)  # a process that died at once reports as a dead child
        fresh = chosen.team_id is None
        chosen.team_id = run.team_id
        with self._lock:
            self._busy += 1
        log.info("run %s: in warm process %s (%s, %s runs served before)", run.id, chosen.pid,
                 "fresh" if fresh else f"team {run.team_id}'s", chosen.runs)
        self._keep_spare(backend)
        return WarmRun(self, chosen, stop_file, base)

    def _send(self, warm: WarmProcess, request: str) -> bool:
        warm.process.take_stderr()  # what it wrote while idle belongs to no run
        return warm.alive() and warm.process.write_line(request)

    def _spawn(self, backend: str) -> WarmProcess:
        args = [sys.executable, "-m", "training.engine", "warm", "--backend", backend]
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        return WarmProcess(TrainingProcess(args, cwd=settings.VAR_DIR, stop_file=None, stdin=True), backend)

    def spares_wanted(self) -> int:
        """Fresh processes of a backend to keep: one for each free slot, and at least one."""
        return max(1, self._slots - self._busy)

    def _keep_spare(self, backend: str) -> None:
        """Fresh processes of this backend, importing while runs train, for the next runs of any team."""
        with self._lock:
            if self._closed.is_set():
                return
            have = sum(1 for w in self._idle if w.team_id is None and w.backend == backend)
            for _ in range(self.spares_wanted() - have):
                self._idle.append(self._spawn(backend))
        self._start_reaper()

    def run_ended(self, backend: str) -> None:
        """A run handed out by start_run ended (its process given back or gone): its slot is free again."""
        with self._lock:
            self._busy = max(0, self._busy - 1)
        self._keep_spare(backend)

    def put_back(self, warm: WarmProcess, base: str | None) -> None:
        """A finished run's process, ready for its team's next run."""
        warm.base, warm.idle_since, warm.runs = base, time.monotonic(), warm.runs + 1
        with self._lock:
            if self._closed.is_set():
                self._end(warm, "the worker is shutting down")
                return
            self._idle.append(warm)
            served = sorted((w for w in self._idle if w.team_id is not None), key=lambda w: w.idle_since)
            extra = served[:max(0, len(served) - settings.TUNEBOARD_WARM_MAX_IDLE)]
            self._idle = [w for w in self._idle if w not in extra]
        for old in extra:
            self._end(old, f"at most {settings.TUNEBOARD_WARM_MAX_IDLE} idle warm processes are kept")
        self._start_reaper()

    def forget(self, warm: WarmProcess) -> None:
        with self._lock:
            if warm in self._idle:
                self._idle.remove(warm)

    def release_models(self, reason: str, *, keep_team: int | None = None) -> None:
        """Kill the idle processes that hold a team's model (fresh ones hold none), but those of `keep_team`."""
        with self._lock:
            served = [w for w in self._idle if w.team_id is not None and w.team_id != keep_team]
            self._idle = [w for w in self._idle if w not in served]
        for warm in served:
            self._end(warm, reason)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            idle, self._idle = self._idle, []
        for warm in idle:
            self._end(warm, "the worker is shutting down")

    def idle(self) -> list[WarmProcess]:
        with self._lock:
            return list(self._idle)

    def reap_expired(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            expired = [w for w in self._idle if not w.alive() or (
                w.team_id is not None and now - w.idle_since > settings.TUNEBOARD_WARM_IDLE_S)]
            self._idle = [w for w in self._idle if w not in expired]
        for warm in expired:
            self._end(warm, f"idle for over {settings.TUNEBOARD_WARM_IDLE_S:.0f} s" if warm.alive() else "it exited")

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None:
                return
            self._reaper = threading.Thread(target=self._reap_loop, name="tuneboard-warm-reaper", daemon=True)
        self._reaper.start()

    def _reap_loop(self) -> None:
        while not self._closed.wait(min(30.0, settings.TUNEBOARD_WARM_IDLE_S / 4)):
            try:
                self.reap_expired()
            except Exception:  # noqa: BLE001 - the reaper must go on
                log.exception("warm pool: reaping failed")

    @staticmethod
    def _end(warm: WarmProcess, reason: str) -> None:
        log.info("warm process %s (team %s, %s runs) killed: %s", warm.pid, warm.team_id, warm.runs, reason)
        warm.process.kill()
        warm.process.wait(timeout=10)


class WarmRun:
    """One run in a warm process, as run_execute's follow loop uses a TrainingProcess: its events until its
    terminal one, then (wait) the process is given back to the pool if the run finished, and ends otherwise."""

    def __init__(self, pool: WarmPool, warm: WarmProcess, stop_file: Path, base: str | None):
        self.pool, self.warm, self.stop_file, self.base = pool, warm, stop_file, base
        self.terminal: str | None = None
        self.ready: dict | None = None
        self.returned = self.waited = self.ended = False

    def _ended(self) -> None:
        """Once: the pool's slot count of this run is given back."""
        if not self.ended:
            self.ended = True
            self.pool.run_ended(self.warm.backend)

    @property
    def pid(self) -> int:
        return self.warm.pid

    def batches(self, *, timeout: float, limit: int = 1000) -> Iterator[list[str]]:
        for lines in self.warm.process.batches(timeout=timeout, limit=limit):
            yield self._take(lines)
            if self.terminal is not None:
                return

    def _take(self, lines: list[str]) -> list[str]:
        """The run's lines: the ready events around it are the process's, not the run's."""
        kept = []
        for line in lines:
            event = _event(line)
            kind = event.get("type") if event else None
            if kind == READY:
                if self.terminal is not None:
                    self.ready = event
                continue
            if self.terminal is not None:
                continue  # nothing of a run comes after its terminal event
            kept.append(line)
            if kind in TERMINAL:
                self.terminal = kind
        return kept

    def take_stderr(self) -> list[str]:
        return self.warm.process.take_stderr()

    def request_stop(self) -> None:
        self.stop_file.touch()

    def kill(self) -> None:
        """Kill the process, unless its run has finished: the follow loop kills a child whose run it reads as
        ended, which after `finished` is this run itself, and the process then belongs to the pool."""
        if self.returned or self.terminal == "finished":
            return
        self.pool.forget(self.warm)
        self.warm.process.kill()

    def wait(self, timeout: float = 30.0) -> int:
        self.waited = True
        try:
            return self._wait(timeout)
        finally:
            self._ended()

    def _wait(self, timeout: float) -> int:
        if self.terminal == "finished" and self.ready is None:
            deadline = time.monotonic() + READY_TIMEOUT_S
            for lines in self.warm.process.batches(timeout=1.0):
                self._take(lines)
                if self.ready is not None or time.monotonic() > deadline:
                    break
        if self.terminal == "finished" and self.ready is not None and self.warm.alive():
            self.returned = True
            self.pool.put_back(self.warm, self.base if self.ready.get("base") else None)
            if self.ready.get("note"):
                log.warning("warm process %s: %s", self.warm.pid, self.ready["note"])
            return 0
        if self.terminal == "finished":
            log.warning("warm process %s did not get ready after its run: killed", self.warm.pid)
            self.warm.process.kill()
        return self.warm.process.wait(timeout=timeout)

    def __del__(self):
        # A run that ended without wait() (the worker failed while recording it): its process is nobody's.
        if not self.waited and not self.returned:
            self.warm.process.kill()
            self._ended()


def _event(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


pool = WarmPool()


def before_task(name: str, args: list) -> None:
    """Before a task starts on this worker (Celery's task_prerun): a run's task ends other teams' idle processes
    before its slot is admitted by the GPU's free memory, which they hold; an evaluation, LoftQ check or playground
    loads a model of its own and ends every idle process that holds one."""
    if not any(w.team_id is not None for w in pool.idle()):
        return
    if name == "training.run_train" and args:
        team_id = Run.objects.filter(id=args[0]).values_list("team_id", flat=True).first()
        pool.release_models(f"a run of team {team_id} is starting", keep_team=team_id)
    elif name in TASKS_USING_THE_GPU:
        pool.release_models(f"the worker took a {name} task")


def start(*, run: Run, args: list[str], cwd: Path, stop_file: Path, config_path: Path):
    """The run's training process: a warm one when warm workers are on, else `args` (the engine's run command)
    in a process of its own."""
    ranks = int(run.config.get("devices") or 1)
    # A model whose Unsloth compile must be off before unsloth is imported (Gemma 2) cannot use a process that
    # imported it already: a cold one reads the setting as it starts (training/engine/backends.compile_lever).
    compile_off = needs_compile_off(str(run.config.get("model") or ""), run_backend(run.config))
    if not enabled() or ranks > 1 or compile_off:  # several GPUs: ranks launched by a run command
        return TrainingProcess(args, cwd=cwd, stop_file=stop_file, share_cores=ranks == 1)
    return pool.start_run(run=run, cwd=cwd, config_path=config_path, stop_file=stop_file)
