"""GPU slots on the worker: a run's task is claimed only when the worker has a free slot and its GPU the memory the
run's predicted peak needs (training.planner.slots), else it goes back to the queue with the reason on the run; and
an out-of-memory in a shared slot is told as a finding on that run alone."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Max

from guidance.models import Finding
from training.engine.events import json_safe
from training.live import send as live
from training.models import MetricPoint, Run, RunEvent, Worker
from training.planner import slots as planner_slots
from training.runs import services
from training.selectors import finding_dict, run_status_dict

log = logging.getLogger(__name__)
Status = Run.Status

SHARED_OOM = "out_of_memory_shared"
# A run no live worker of its queue can ever fit asks again this much less often than one waiting for memory.
HELD_RETRY_FACTOR = 6


@dataclass(frozen=True)
class Claim:
    run: Run | None  # claimed for this worker
    retry_s: float | None = None  # not admitted: send the task back to the queue, to be tried again after this


def margin() -> planner_slots.Margin:
    return planner_slots.Margin(fraction=settings.TUNEBOARD_SLOT_MARGIN,
                                context_bytes=settings.TUNEBOARD_SLOT_CONTEXT_MB * 1024 * 1024)


def worker_gpu(worker: Worker) -> planner_slots.Gpu | None:
    """The GPU a worker's runs share (its first: a run trains on one), from its last heartbeat; None: CPU only."""
    gpu = (worker.gpus or [None])[0]
    if not isinstance(gpu, dict) or not gpu.get("memory_total"):
        return None
    used = gpu.get("memory_used")
    return planner_slots.Gpu(name=str(gpu.get("name") or "GPU"), total_bytes=int(gpu["memory_total"]),
                             used_bytes=int(used) if used is not None else None)


def worker_gpu_count(worker: Worker) -> int:
    """The GPUs a worker's last heartbeat reported (0: CPU only)."""
    return sum(1 for gpu in worker.gpus or [] if isinstance(gpu, dict))


def _devices(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def _admitted(worker: Worker, *, excluding: int) -> list[planner_slots.Admitted]:
    rows = (Run.objects.filter(worker=worker, status__in=list(Run.ON_WORKER)).exclude(id=excluding)
            .order_by("id").values_list("id", "slot_reserved_bytes", "config__devices"))
    return [planner_slots.Admitted(run_id=run_id, reserved_bytes=reserved, devices=_devices(devices))
            for run_id, reserved, devices in rows]


def run_claim_slot(*, run_id: int, worker_name: str, task_id: str = "") -> Claim:
    """Claim a queued run for this worker if one of its slots and its GPU can take it now; otherwise keep it queued
    with the reason on the run and say when to try again (the task goes back to the broker for any worker)."""
    decisions: list[planner_slots.Admission] = []
    plan, devices = Run.objects.filter(id=run_id).values_list("plan", "config__devices").first() or (None, None)
    peak, devices = planner_slots.predicted_peak(plan), _devices(devices)

    def admit(worker: Worker) -> planner_slots.Admission:
        decision = planner_slots.admit(worker=worker.name, slots=worker.slots, peak=peak, gpu=worker_gpu(worker),
                                       running=_admitted(worker, excluding=run_id), margin=margin(),
                                       devices=devices, gpu_count=worker_gpu_count(worker))
        decisions.append(decision)
        return decision

    run = services.run_claim(run_id=run_id, worker_name=worker_name, task_id=task_id, admit=admit)
    if run is not None or not decisions or decisions[-1].admit:
        return Claim(run=run)  # claimed; or delivered twice, or stopped while queued
    decision = decisions[-1]
    reason, retry_s = f"waiting: {decision.reason}", settings.TUNEBOARD_SLOT_RETRY_S
    if decision.gpus_short:
        reason, elsewhere = _devices_held_reason(run_id, worker_name, devices, decision.reason)
        if not elsewhere:
            retry_s *= HELD_RETRY_FACTOR
    elif decision.never and peak is not None:
        reason, elsewhere = _held_reason(run_id, worker_name, peak, decision.reason)
        if not elsewhere:
            retry_s *= HELD_RETRY_FACTOR
    if not _hold(run_id, reason):
        return Claim(run=None)  # it left the queue meanwhile (stopped)
    log.info("run %s not started on %s: %s", run_id, worker_name, reason)
    return Claim(run=None, retry_s=retry_s)


def _held_reason(run_id: int, worker_name: str, peak: int, why: str) -> tuple[str, bool]:
    """For a run too big for this worker even alone: the other live workers of its queue that could take it."""
    queue = Run.objects.filter(id=run_id).values_list("queue", flat=True).first() or ""
    others = []
    for w in Worker.objects.exclude(name=worker_name):
        if w.is_silent or queue not in (w.queues or []):
            continue
        gpu = worker_gpu(w)
        others.append(planner_slots.Candidate(worker=w.name, gpu_total_bytes=gpu.total_bytes if gpu else None))
    return planner_slots.held_reason(peak=peak, here=f"{worker_name}: {why}", others=others, queue=queue,
                                     margin=margin())


def _devices_held_reason(run_id: int, worker_name: str, devices: int, why: str) -> tuple[str, bool]:
    queue = Run.objects.filter(id=run_id).values_list("queue", flat=True).first() or ""
    others = [(w.name, worker_gpu_count(w)) for w in Worker.objects.exclude(name=worker_name).order_by("name")
              if not w.is_silent and queue in (w.queues or [])]
    return planner_slots.devices_held_reason(devices=devices, here=why, others=others, queue=queue)


def _hold(run_id: int, reason: str) -> bool:
    """Write why a queued run waits (told to its page when it changed); False if it is no longer queued."""
    queued = Run.objects.filter(id=run_id, status=Status.QUEUED)
    if not queued.exists():
        return False
    if queued.exclude(held_reason=reason).update(held_reason=reason):
        run = Run.objects.select_related("worker").get(id=run_id)
        live.send_run_message(run.id, "status", run_status_dict(run))
        live.send_run_row(run)  # the run list shows it too
    return True


# Out of memory in a shared slot --------------------------------------------------------------------------------

def sharing_runs(run: Run) -> list[Run]:
    """The other runs its worker trained when it ended: started before and not ended by then."""
    if not run.worker_id or not run.finished_at:
        return []
    return list(Run.objects.filter(worker_id=run.worker_id, started_at__lte=run.finished_at)
                .exclude(id=run.id).exclude(finished_at__lt=run.finished_at).order_by("id"))


def run_out_of_memory_shared(*, run: Run) -> Finding | None:
    """After a run ended on a worker: if it failed out of memory while other runs shared the worker's GPU (or, on a
    CPU worker, its memory), a finding on it that says so, with what each had reserved, for the user and for the
    planner's calibration (the run's error_class is OutOfMemoryError). The other runs are not touched."""
    run.refresh_from_db()
    if run.status != Status.FAILED:
        return None
    failed = RunEvent.objects.filter(run=run, type="failed").order_by("-seq").first()
    if not (failed and failed.data.get("oom")) and run.error_class != "OutOfMemoryError":
        return None
    others = sharing_runs(run)
    if not others:
        return None  # alone: the out_of_memory detector's finding says what to change
    worker = run.worker
    gpu = worker_gpu(worker)
    step = int((failed.data.get("step") if failed else None) or run.last_step or 0)
    measured = MetricPoint.objects.filter(run=run).aggregate(peak=Max("peak_vram_bytes"))["peak"]
    limit = settings.TUNEBOARD_SLOT_ADDRESS_SPACE_MB * 1024 * 1024
    gib = planner_slots.gib
    where = (f"the {gpu.name} ({gib(gpu.total_bytes)}) of {worker.name}" if gpu else
             f"{worker.name} (CPU only{', each slot limited to ' + gib(limit) if limit else ''})")
    names = planner_slots.runs_text([o.id for o in others])
    own_peak = planner_slots.predicted_peak(run.plan)
    if gpu:
        share = "; ".join(f"#{o.id} reserved {gib(o.slot_reserved_bytes) if o.slot_reserved_bytes else 'all of it'}"
                          for o in others)
        own = (f"this run reserved {gib(run.slot_reserved_bytes)} for a predicted peak of up to {gib(own_peak)}"
               if own_peak and run.slot_reserved_bytes else "this run had no predicted peak")
        measured_text = f", and measured {gib(measured)} before it failed" if measured else ""
        detail = f" ({share}; {own}{measured_text})"
    else:
        detail = ""
    message = (
        f"It ran out of memory at step {step} while sharing {where} with {names}{detail}. Only this run failed; the "
        f"others went on. Resume it (from its last checkpoint, if it saved one) or start it again: a worker admits "
        f"it when its reservation fits beside what is running. If runs of this size keep failing side by side, raise "
        f"the worker's TUNEBOARD_SLOT_MARGIN (now {settings.TUNEBOARD_SLOT_MARGIN:.0%}) or give it fewer slots; to "
        f"make this run itself smaller, see the out-of-memory finding.")
    evidence = {
        "steps": [step], "values": [], "worker": worker.name, "gpu": worker.gpus[0] if gpu else None,
        "reserved_bytes": run.slot_reserved_bytes, "predicted_peak_bytes": own_peak,
        "measured_peak_vram_bytes": measured, "address_space_limit_bytes": limit or None,
        "margin": {"fraction": settings.TUNEBOARD_SLOT_MARGIN, "context_mb": settings.TUNEBOARD_SLOT_CONTEXT_MB},
        "sharing": [{"run": o.id, "reserved_bytes": o.slot_reserved_bytes,
                     "predicted_peak_bytes": planner_slots.predicted_peak(o.plan), "status": o.status} for o in others],
    }
    finding, created = Finding.objects.get_or_create(
        run=run, code=SHARED_OOM, step=step,
        defaults={"severity": Finding.Severity.ERROR, "title": f"Out of memory beside {names}",
                  "message": message, "evidence": json_safe(evidence),
                  "parameters": ["gradient_accumulation_steps", "load_in_4bit"]})
    if created:
        live.send_run_message(run.id, "finding", finding_dict(finding))
        live.send_run_row(run)
    return finding
