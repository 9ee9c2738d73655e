"""What the job rows a run's queue takes besides runs (evaluations, exports) share: each is sent to its queue's
workers by the task's name (training/tasks.py imports the services, not the other way round), and one the broker
does not take fails with that reason rather than staying queued for good; a worker claims one once, whatever the
deliveries."""
from __future__ import annotations

import logging

from celery import current_app
from django.utils import timezone

log = logging.getLogger(__name__)


def job_enqueue(job, task: str) -> None:
    """Send `task` for the job row (a model with `queue`, `status` and its Status choices) to the job's queue."""
    try:
        current_app.send_task(task, args=[job.id], queue=job.queue)
    except Exception as exc:  # noqa: BLE001 - an unreachable broker fails the job, not the page
        log.exception("%s %s could not be queued", job._meta.verbose_name, job.id)
        type(job).objects.filter(id=job.id, status=job.Status.QUEUED).update(
            status=job.Status.FAILED, error=f"the task queue (Redis) did not take it: {exc}", finished_at=timezone.now())


def job_claim(model, job_id: int, *, worker_name: str) -> bool:
    """Take a queued job row for this worker, once whatever the deliveries: False where another took it first."""
    return bool(model.objects.filter(id=job_id, status=model.Status.QUEUED).update(
        status=model.Status.RUNNING, started_at=timezone.now(), worker_name=worker_name[:200]))
