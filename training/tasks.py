"""Celery tasks: training a run on a worker of its queue; dataset statistics and sweep advances on the cpu queue."""
import socket

from celery import shared_task

from training.datasets import services as dataset_services
from training.runs import execution, services
from training.sweeps import services as sweep_services
from training.sweeps import watch as sweep_watch


@shared_task(bind=True, name="training.run_train")
def run_train(self, run_id: int) -> None:
    run = services.run_claim(run_id=run_id, worker_name=self.request.hostname or f"local@{socket.gethostname()}",
                             task_id=self.request.id or "")
    if run is None:
        return  # delivered twice, or stopped while queued
    execution.run_execute(run=run, observers=sweep_watch.observers_for(run))


@shared_task(name="training.dataset_profile")
def dataset_profile(dataset_id: int, token: str) -> None:
    dataset_services.dataset_profile_execute(dataset_id=dataset_id, token=token)


@shared_task(name="training.sweep_advance")
def sweep_advance(sweep_id: int) -> str:
    return sweep_services.sweep_advance(sweep_id=sweep_id)
