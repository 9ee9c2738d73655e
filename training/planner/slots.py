"""GPU slots: whether a run may start now on a worker already training others, by their predicted peaks; pure.

A worker with several slots trains several runs at once, each in its own process. Each run it admits reserves its
predicted peak (the upper end of the planner's band) plus a safety margin and a CUDA context; a candidate starts
when its own reservation fits what the admitted runs (or, if more, what the GPU reports in use) leave free. A run
alone on the GPU needs no sharing margin: nobody else's memory is at stake, and the planner already judged that it
fits. A run with no prediction needs the whole GPU, so it runs alone; one that could not fit even alone is told so
instead of waiting for memory that never comes.

A run of several GPUs (its config's `devices`, issue 23) trains one process per GPU, on GPUs 0..N-1 of the worker,
the first of them the one the other slots share: it starts only on a worker with at least N GPUs (a CPU worker runs
its ranks as CPU processes) and none of the worker's other slots busy, and holds the worker whole while it trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

GiB = 1024 ** 3
MiB = 1024 ** 2


def slot_threads(slots: int, cpus: int) -> int | None:
    """CPU threads for each training process of a worker with `slots` slots: its share of the cores, so that runs
    side by side do not oversubscribe them; None with one slot. On a 2-core dev machine two tiny runs at once
    trained 263 tokens/s in total with 2 threads each against 15.8k with one each (torch's threads spin while they
    wait; docs/benchmarks.md, 2026-12-04)."""
    return max(1, cpus // slots) if slots > 1 else None


@dataclass(frozen=True)
class Margin:
    """What a shared slot reserves beyond a run's predicted peak: a share of the peak (the prediction's own error
    and the allocator's fragmentation) and a fixed amount per process (the CUDA context, which torch does not count)."""

    fraction: float = 0.10
    context_bytes: int = 512 * MiB

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 10:
            raise ValueError(f"fraction must be between 0 and 10, not {self.fraction}")
        if self.context_bytes < 0:
            raise ValueError(f"context_bytes must be 0 or more, not {self.context_bytes}")

    def shared(self, peak: int) -> int:
        """What a run of this predicted peak reserves beside others."""
        return int(peak * (1 + self.fraction)) + self.context_bytes

    def alone(self, peak: int) -> int:
        """What it needs with the GPU to itself."""
        return int(peak) + self.context_bytes

    def describe(self, peak: int) -> str:
        return f"peak up to {gib(peak)} + {self.fraction:.0%} + {gib(self.context_bytes)} CUDA context"


@dataclass(frozen=True)
class Admitted:
    """A run the worker trains now and what it was admitted with (None: the whole GPU, its peak was unknown, or it
    trains on several GPUs)."""

    run_id: int
    reserved_bytes: int | None
    devices: int = 1


@dataclass(frozen=True)
class Gpu:
    """The GPU the worker's runs share: its size and, if the worker reported it, what is in use on it."""

    name: str
    total_bytes: int
    used_bytes: int | None = None


@dataclass(frozen=True)
class Admission:
    admit: bool
    reason: str  # in words, naming the figures; for an admitted run, what it was admitted with
    reserved_bytes: int | None = None  # what an admitted run reserves; None: the whole GPU, or a CPU worker
    never: bool = False  # it cannot fit this worker's GPU even alone: waiting here would be forever
    gpus_short: bool = False  # never, because the worker has fewer GPUs than the run asks for


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def predicted_peak(plan: dict | None) -> int | None:
    """The peak a slot admits by: the upper end of the planner's band, else its central figure; None if unknown."""
    plan = plan or {}
    for key in ("peak_high", "peak_bytes"):
        value = plan.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def runs_text(ids: Sequence[int]) -> str:
    """How a reason names runs: run #3; runs #3 and #4; runs #3, #4 and #5."""
    labels = [f"#{i}" for i in ids]
    if len(labels) > 1:
        return "runs " + ", ".join(labels[:-1]) + " and " + labels[-1]
    return "run " + labels[0]


def admit(*, worker: str, slots: int, running: Sequence[Admitted], peak: int | None, gpu: Gpu | None,
          margin: Margin, devices: int = 1, gpu_count: int | None = None) -> Admission:
    """May a run whose predicted peak is `peak` start now on `worker`, which has `slots` slots, trains `running`
    and has `gpu` (None: a CPU-only worker)? A CPU-only worker, or one of a single slot, admits by slot count alone.
    `devices`: the GPUs the run trains on; `gpu_count`: the worker's (by default 1 with a gpu, 0 without)."""
    if slots < 1:
        raise ValueError(f"slots must be 1 or more, not {slots}")
    gpu_count = (1 if gpu else 0) if gpu_count is None else gpu_count
    ids = [r.run_id for r in running]
    if devices > 1 and gpu_count and devices > gpu_count:
        return Admission(False, f"it asks for {devices} GPUs and {worker} has {gpu_count}", never=True,
                         gpus_short=True)
    if len(running) >= slots:
        return Admission(False, f"all {slots} slot{'s' if slots > 1 else ''} of {worker} are busy ({runs_text(ids)})")
    several = [r for r in running if r.devices > 1]
    if several:
        return Admission(False, f"{worker} is held whole by {runs_text([r.run_id for r in several])} (on "
                                f"{max(r.devices for r in several)} GPUs)")
    if devices > 1:
        if running:
            return Admission(False, f"it asks for {devices} GPUs of {worker}, which its other slots share: waiting "
                                    f"for {runs_text(ids)} to end")
        on = f"{devices} of its {gpu_count} GPUs" if gpu_count else f"{devices} CPU processes (CPU only)"
        return Admission(True, f"{worker}, {on}, to itself")
    if gpu is None:
        return Admission(True, f"slot {len(running) + 1} of {slots} on {worker} (CPU only: no GPU memory to share)")
    if slots == 1:
        # One slot: the run has the GPU to itself, as on a worker before slots; launch refused a misfit already.
        return Admission(True, f"the one slot of {worker}: the GPU to itself")
    where = f"the {gpu.name} of {worker} ({gib(gpu.total_bytes)})"
    whole = [r.run_id for r in running if r.reserved_bytes is None]
    if peak is None:
        if running:
            return Admission(False, f"its peak memory is not predicted, so it needs {where} to itself; waiting "
                                    f"for {runs_text(ids)} to end")
        return Admission(True, f"{where} to itself: its peak memory is not predicted")
    if margin.alone(peak) > gpu.total_bytes:
        return Admission(False, f"it needs {gib(margin.alone(peak))} even alone (peak up to {gib(peak)} + "
                                f"{gib(margin.context_bytes)} CUDA context), more than {where} has in all",
                         never=True)
    if whole:
        return Admission(False, f"{where} is held whole by {runs_text(whole)} (no predicted peak)")
    need = margin.shared(peak) if running else margin.alone(peak)
    admitted = sum(r.reserved_bytes or 0 for r in running)
    in_use = max(admitted, gpu.used_bytes or 0)
    free = gpu.total_bytes - in_use
    how = margin.describe(peak) if running else f"peak up to {gib(peak)} + {gib(margin.context_bytes)} CUDA context"
    if need > free:
        held = (f"{gib(admitted)} admitted for {runs_text(ids)}" if running else "nothing of Tuneboard's running")
        measured = (f", {gib(gpu.used_bytes)} in use by the last heartbeat" if gpu.used_bytes is not None else "")
        return Admission(False, f"it needs {gib(need)} ({how}); {where} has {gib(max(free, 0))} free "
                                f"({held}{measured})")
    # What it holds against the runs that come after it: a lone run too, since they will share the GPU with it.
    reserved = margin.shared(peak)
    if running:
        return Admission(True, f"slot {len(running) + 1} of {slots} on {worker} beside {runs_text(ids)}: reserves "
                               f"{gib(need)} ({how}) of {gib(free)} free", reserved_bytes=reserved)
    return Admission(True, f"slot 1 of {slots} on {worker}: needs {gib(need)} ({how}) of {gib(free)} free; reserves "
                           f"{gib(reserved)} ({margin.describe(peak)}) against runs that join it",
                     reserved_bytes=reserved)


@dataclass(frozen=True)
class Candidate:
    """Another live worker of the run's queue, for a run that cannot fit the worker that received it."""

    worker: str
    gpu_total_bytes: int | None  # None: CPU only


def held_reason(*, peak: int, here: str, others: Sequence[Candidate], queue: str, margin: Margin) -> tuple[str, bool]:
    """What a run that can never fit `here` waits for: (the reason, whether another live worker could take it)."""
    fitting = [c for c in others if c.gpu_total_bytes is None or margin.alone(peak) <= c.gpu_total_bytes]
    if fitting:
        return (f"waiting for {', '.join(c.worker for c in fitting)}: it does not fit {here}", True)
    sizes = [f"{c.worker} ({gib(c.gpu_total_bytes)})" for c in others if c.gpu_total_bytes is not None]
    return (f"held: it fits no live worker of queue {queue} (needs {gib(margin.alone(peak))} alone; "
            f"{here}{'; ' + ', '.join(sizes) if sizes else ''}); stop it and make it smaller (4-bit, a smaller "
            f"micro-batch with more accumulation, gradient checkpointing, a shorter max_length) or start a worker "
            f"with a larger GPU", False)


def devices_held_reason(*, devices: int, here: str, others: Sequence[tuple[str, int]], queue: str) -> tuple[str, bool]:
    """What a run asking `devices` GPUs waits for when `here` has too few: (the reason, whether another live worker
    of its queue, given as (name, GPU count; 0: CPU only), could take it)."""
    fitting = [name for name, count in others if count == 0 or count >= devices]
    if fitting:
        return f"waiting for {', '.join(fitting)}: {here}", True
    counts = ", ".join(f"{name} ({count})" for name, count in others)
    return (f"held: no live worker of queue {queue} has {devices} GPUs ({here}{'; ' + counts if counts else ''}); "
            f"stop it and ask for fewer GPUs, or start a worker on a box with {devices}"), False
