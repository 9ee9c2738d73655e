"""A sweep hears when one of its runs is deleted (the admin, a shell): the member that ran it has failed
(selectors.member_status), so the sweep's advance is queued once the deletion commits and judges the phase without
it, or ends the sweep for Resume to train it again; no sweep waits for a run that no longer exists. Connected by
training.apps.TrainingConfig.ready()."""
from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete

from training.models import Run
from training.runs.services import sweep_advance_enqueue


def connect() -> None:
    post_delete.connect(run_deleted, sender=Run, dispatch_uid="sweeps-run-deleted")


def run_deleted(sender, instance: Run, using: str | None = None, **kwargs) -> None:
    if instance.sweep_id is not None:
        sweep_id = instance.sweep_id
        transaction.on_commit(lambda: sweep_advance_enqueue(sweep_id), using=using)
