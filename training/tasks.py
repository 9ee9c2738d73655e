"""Celery tasks: training and evaluating on a worker of the run's queue; dataset statistics, sweep advances and the
evaluations a run asked for on the cpu queue; a playground's model served and GGUF exports made on the run's queue."""
import socket

from celery import shared_task

from training.datasets import services as dataset_services
from training.evaluation import loftq
from training.evaluation import services as eval_services
from training.export import services as export_services
from training.playground import services as playground_services
from training.runs import execution, slots
from training.sweeps import services as sweep_services
from training.sweeps import watch as sweep_watch
from training.trackers import services as trackers


@shared_task(bind=True, name="training.run_train", max_retries=None)
def run_train(self, run_id: int) -> None:
    claim = slots.run_claim_slot(run_id=run_id, worker_name=self.request.hostname or f"local@{socket.gethostname()}",
                                 task_id=self.request.id or "")
    if claim.retry_s is not None:
        # No slot or not enough GPU memory here now: back to the broker, for this worker later or another one.
        raise self.retry(countdown=claim.retry_s)
    if claim.run is None:
        return  # delivered twice, or stopped while queued
    with trackers.mirrored(claim.run) as mirror:  # its thread writes beside the training; closed once it ends
        execution.run_execute(run=claim.run, observers=[*sweep_watch.observers_for(claim.run), *mirror])
    slots.run_out_of_memory_shared(run=claim.run)


@shared_task(name="training.dataset_profile")
def dataset_profile(dataset_id: int, token: str) -> None:
    dataset_services.dataset_profile_execute(dataset_id=dataset_id, token=token)


@shared_task(name="training.sweep_advance")
def sweep_advance(sweep_id: int) -> str:
    return sweep_services.sweep_advance(sweep_id=sweep_id)


@shared_task(bind=True, name="training.eval_run")
def eval_run(self, evaluation_id: int) -> None:
    eval_services.evaluation_execute(evaluation_id=evaluation_id,
                                     worker_name=self.request.hostname or f"local@{socket.gethostname()}")


@shared_task(name="training.evals_for_checkpoint")
def evals_for_checkpoint(run_id: int, step: int) -> list[int]:
    return eval_services.evaluations_for_checkpoint(run_id=run_id, step=step)


@shared_task(name="training.evals_after_run")
def evals_after_run(run_id: int) -> list[int]:
    return eval_services.evaluations_after_run(run_id=run_id)


@shared_task(bind=True, name="training.loftq_check")
def loftq_check(self, check_id: int) -> None:
    loftq.loftq_check_execute(check_id=check_id, worker_name=self.request.hostname or socket.gethostname())


@shared_task(bind=True, name="training.playground_serve")
def playground_serve(self, session_id: int) -> None:
    playground_services.playground_serve(session_id=session_id,
                                         worker_name=self.request.hostname or f"local@{socket.gethostname()}")


@shared_task(bind=True, name="training.export_run")
def export_run(self, export_id: int) -> None:
    export_services.export_execute(export_id=export_id,
                                   worker_name=self.request.hostname or f"local@{socket.gethostname()}")
