"""A worker's row, written by every heartbeat (run_claim creates it if a task arrives before the first beat)."""
from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from training.models import Worker


def worker_heartbeat(*, name: str, hostname: str, queues: list[str], pid: int, gpus: list[dict],
                     started_at: datetime, slots: int = 1) -> None:
    """Record that this worker is alive, its slots and its GPUs' state. What it runs is written by run_claim and
    cleared when run_execute ends: one writer each way, so a beat can never report a stale current run."""
    Worker.objects.update_or_create(name=name, defaults={
        "hostname": hostname, "queues": queues, "pid": pid, "gpus": gpus, "started_at": started_at, "slots": slots,
        "last_heartbeat_at": timezone.now()})
