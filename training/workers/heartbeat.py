"""The periodic threads: a Celery worker's heartbeat (alive, GPUs, then the lost-run check), and the web process's
own lost-run check, so runs are marked lost even when every worker is gone."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from training.export import services as exports
from training.playground import services as playground
from training.runs import services
from training.sweeps.selectors import stalled_sweep_ids
from training.workers import services as worker_services

log = logging.getLogger(__name__)

NVIDIA_SMI_QUERY = "name,memory.total,memory.used,utilization.gpu"


def gpu_info() -> list[dict]:
    """Each GPU's name, memory (bytes) and utilisation (%) from nvidia-smi; [] on a machine without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return []
    gpus = []
    for row in out.strip().splitlines():
        name, total, used, util = (part.strip() for part in row.split(","))
        gpus.append({"name": name, "memory_total": _mib(total), "memory_used": _mib(used), "utilization": _num(util)})
    return gpus


def _mib(value: str) -> int | None:
    number = _num(value)
    return None if number is None else int(number * 1024 * 1024)


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None  # "[N/A]" on some GPUs


class Heartbeat(threading.Thread):
    """Every TUNEBOARD_HEARTBEAT_S: this worker's row (alive, GPUs), then the lost-run check. In the web process
    (no worker name) the lost-run check alone: with every worker dead nobody else would make it, and no page does
    (a GET does not write)."""

    def __init__(self, *, name: str | None, queues: list[str] | None = None, slots: int = 1):
        super().__init__(name="tuneboard-heartbeat" if name else "tuneboard-lost-run-check", daemon=True)
        self.worker_name = name
        self.who = name or "the web process"
        self.queues = queues or []
        self.slots = slots
        self.started_at: datetime = timezone.now()
        self._stopping = threading.Event()
        self._failing = False
        self._beaten = False  # for the one 'first heartbeat recorded' line

    def run(self) -> None:
        while True:
            self.beat()
            if self._stopping.wait(settings.TUNEBOARD_HEARTBEAT_S):
                return

    def stop(self) -> None:
        self._stopping.set()

    def beat(self) -> None:
        try:
            close_old_connections()
            if self.worker_name:
                worker_services.worker_heartbeat(name=self.worker_name, hostname=socket.gethostname(),
                                                 queues=self.queues, pid=os.getpid(), gpus=gpu_info(),
                                                 started_at=self.started_at, slots=self.slots)
            lost = services.runs_mark_lost()
            if lost:
                log.warning("runs %s marked lost by %s: their worker is silent or no longer runs them", lost, self.who)
            failed = exports.exports_mark_lost()
            if failed:
                log.warning("exports %s failed (%s): their worker is silent", failed, self.who)
            ended = playground.playground_sessions_mark_lost()
            if ended:
                log.warning("playground sessions %s ended by %s: their worker is silent", ended, self.who)
            for sweep_id in stalled_sweep_ids(now=timezone.now()):
                log.warning("sweep %s: its members ended but it did not advance; queued its advance again", sweep_id)
                services.sweep_advance_enqueue(sweep_id)
            if self._failing:
                log.info("heartbeat of %s recorded again", self.who)
            elif not self._beaten:
                log.info("first heartbeat recorded: %s, pid %d", self.who, os.getpid())
            self._beaten = True
            self._failing = False
        except Exception as exc:  # noqa: BLE001 - a database outage must not kill the thread; it retries
            if not self._failing:
                log.error("heartbeat of %s not recorded (%s: %s); retrying every %.0f s", self.who,
                          type(exc).__name__, exc, settings.TUNEBOARD_HEARTBEAT_S)
            self._failing = True


_heartbeat: Heartbeat | None = None


def start(*, name: str, queues: list[str], in_process: bool, slots: int = 1) -> Heartbeat:
    """At worker start: runs this worker held in a previous life are lost; then beat until the process ends.
    `in_process`: its tasks run in this process (the solo pool, or threads: one per slot)."""
    global _heartbeat
    lost = services.worker_runs_mark_lost(name=name)
    playground.playground_sessions_mark_lost(worker_name=name)
    exports.exports_mark_lost(worker_name=name)
    if lost:
        log.warning("runs %s were running on %s before it restarted: marked lost", lost, name)
    if not in_process:
        log.warning("%s runs its tasks in pool processes: a training task that dies with its pool process is noticed "
                    "only if the whole worker goes silent; run training workers with --pool solo (one slot) or "
                    "--pool threads (TUNEBOARD_WORKER_SLOTS)", name)
    _heartbeat = Heartbeat(name=name, queues=queues, slots=slots)
    _heartbeat.start()
    return _heartbeat


def stop() -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


def start_web_lost_run_check() -> Heartbeat:
    check = Heartbeat(name=None)
    check.start()
    return check
