"""loftq_config's check as a job: created from a config and a dataset, refused before anything is queued when no live
worker of the queue has a CUDA GPU (4-bit weights need one), run by a GPU worker in a child process."""
from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from dashboard.models import Membership, Team
from training.access import require_role
from training.engine.config import ConfigError, parse_config
from training.engine.loftq_check import NEEDS_GPU
from training.evaluation.services import run_engine
from training.models import Dataset, LoftqCheck, Worker

log = logging.getLogger(__name__)
Status = LoftqCheck.Status
SAMPLES, MAX_LENGTH = 16, 256  # ours: a small calibration set, as the issue asks
DEFAULT_PAIRS = [[4, 1], [4, 4]]  # loftq_config Step 1: (bits=4, iter=1) and (bits=4, iter=4) against standard init


def gpu_workers(queue: str) -> list[Worker]:
    """Live workers that consume `queue` and reported a GPU in their heartbeat."""
    return [w for w in Worker.objects.all() if not w.is_silent and queue in (w.queues or []) and w.gpus]


def loftq_check_create(*, team: Team, user, dataset: Dataset, config: dict[str, Any],
                       queue: str | None = None) -> LoftqCheck:
    require_role(user=user, team=team, role=Membership.Role.MEMBER, action="Running the LoftQ check")
    if dataset.team_id != team.id:
        raise ValidationError({"dataset": "no such dataset in this team"})
    try:
        parsed = parse_config({**config, "train_file": dataset.path})
    except ConfigError as exc:
        raise ValidationError(exc.errors) from None
    queue = queue or settings.TUNEBOARD_DEFAULT_QUEUE
    if not gpu_workers(queue):
        raise ValidationError({"queue": f"{NEEDS_GPU.split('; this machine')[0]}; no live worker of queue {queue!r} "
                                        "reported a GPU"})
    pairs = ([[parsed.loftq_config.loftq_bits, parsed.loftq_config.loftq_iter]] if parsed.loftq_config
             else DEFAULT_PAIRS)
    spec = {"r": parsed.r, "lora_alpha": parsed.lora_alpha, "target_modules": parsed.target_modules,
            "loftq": pairs, "samples": SAMPLES, "max_length": min(parsed.max_length, MAX_LENGTH)}
    with transaction.atomic():
        check = LoftqCheck.objects.create(team=team, dataset=dataset, model=parsed.model, spec=spec, queue=queue,
                                          created_by=user)
        transaction.on_commit(lambda: current_app.send_task("training.loftq_check", args=[check.id], queue=queue))
    return check


def loftq_check_execute(*, check_id: int, worker_name: str) -> None:
    """Claim once, run the engine's loftq-check, store its results; every outcome succeeded or failed with why."""
    if not LoftqCheck.objects.filter(id=check_id, status=Status.QUEUED).update(status=Status.RUNNING,
                                                                               worker_name=worker_name[:200]):
        return
    check = LoftqCheck.objects.select_related("dataset").get(id=check_id)
    try:
        _, terminal = run_engine(settings.EVALS_DIR / f"loftq-{check.id}", "loftq-check",
                                 {"model": check.model, "calibration_file": check.dataset.path, **check.spec})
        LoftqCheck.objects.filter(id=check.id).update(status=Status.SUCCEEDED, results=terminal["results"],
                                                      finished_at=timezone.now())
    except Exception as exc:  # noqa: BLE001
        log.exception("LoftQ check %s failed", check_id)
        LoftqCheck.objects.filter(id=check_id).update(status=Status.FAILED, error=str(exc), finished_at=timezone.now())


def check_dict(check: LoftqCheck) -> dict[str, Any]:
    """A check as its page shows it: each init's figures and how far LoftQ moved the logits MSE from standard init."""
    standard = next((r for r in check.results if r.get("init") == "standard"), None)
    rows = []
    for result in check.results:
        change = None
        if standard and result is not standard and standard.get("logits_mse"):
            change = result["logits_mse"] / standard["logits_mse"] - 1
        rows.append({**result, "change": f"{change:+.1%}" if change is not None else None})
    return {"id": check.id, "team": check.team.name, "dataset": check.dataset.name, "model": check.model,
            "spec": check.spec, "queue": check.queue, "status": check.status,
            "status_display": check.get_status_display(), "results": rows, "error": check.error,
            "created_at": check.created_at, "worker": check.worker_name}
