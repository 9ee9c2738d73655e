"""Celery tasks: training a run on a worker of its queue, and dataset statistics on the cpu queue."""
import socket

from celery import shared_task

from training.datasets import services as dataset_services
from training.runs import execution, services


@shared_task(bind=True, name="training.run_train")
def run_train(self, run_id: int) -> None:
    run = services.run_claim(run_id=run_id, worker_name=self.request.hostname or f"local@{socket.gethostname()}",
                             task_id=self.request.id or "")
    if run is None:
        return  # delivered twice, or stopped while queued
    execution.run_execute(run=run)


@shared_task(name="training.dataset_profile")
def dataset_profile(dataset_id: int, token: str) -> None:
    dataset_services.dataset_profile_execute(dataset_id=dataset_id, token=token)
