"""The planner on the Django side: a team's measured runs as calibration samples, the queue's live GPUs, and the
prediction the forms show and the run keeps. Reads only; the run's services store and refuse."""
from __future__ import annotations

import logging
import statistics
import threading
from typing import Any, Mapping

from django.db.models import Aggregate, FloatField, Max, Q

from training.engine.derived import tokens_per_step, total_steps
from training.model_source import model_source_error
from training.models import MetricPoint, Run, Worker
from training.planner import calibrate, display, levers
from training.planner.estimate import (Constants, Prediction, Setup, human_bytes, human_rate, human_seconds, predict,
                                       resolved_backend)
from training.planner.shapes import ModelShape, ShapeError, read_shape, shape_from_config
from training.run_config import model_policy

log = logging.getLogger(__name__)
SKIP_STEPS = 2  # the first steps compile and warm up: their tokens/s is not the run's
SAMPLE_RUNS = 500  # the team's latest measured runs a calibration reads
_cache: dict[tuple, dict] = {}
_cache_lock = threading.Lock()


# ---- samples: what the team's runs measured -------------------------------------------------------------------

def run_sample(run: Run, points: list[tuple[int, float | None, float | None]]) -> calibrate.Sample | None:
    """A run as a calibration sample: its shapes, config and GPU from the `started` event; its peak VRAM (the
    highest the metrics reported) and its tokens/s (the median after the first steps). None without a GPU."""
    started = run.started or {}
    device = str(started.get("device") or "")
    if not started.get("model_config") or not device or device.startswith("cpu"):
        return None
    try:
        shape = shape_from_config(started["model_config"])
    except ShapeError:
        return None
    peaks = [p for _, p, _ in points if p]
    rates = [r for step, _, r in points if r and step > SKIP_STEPS]
    oom = run.error_class in ("OutOfMemoryError", "CUDAOutOfMemoryError") or "out of memory" in (run.error or "")
    if not peaks and not rates and not oom:
        return None
    return calibrate.Sample(
        shape=shape, setup=Setup.of(run.config, backend=str(started.get("backend") or resolved_backend(run.config))),
        gpu=device, peak_bytes=max(peaks) if peaks and not oom else None,
        tokens_per_s=statistics.median(rates) if rates and not oom else None,
        mean_tokens=(started.get("mean_tokens") if not run.config.get("packing") else None),
        # A cold start (the worker's warm processes skip most of it): the process's start to the first step.
        startup_s=None if started.get("warm_process") else started.get("first_step_s"), oom=oom,
        gpu_total_bytes=started.get("gpu_memory_total"),
        label=f"run #{run.id}")


def team_samples(team_id: int) -> list[calibrate.Sample]:
    runs = list(Run.objects.filter(team_id=team_id, status__in=list(Run.TERMINAL)).exclude(started={})
                .order_by("-id")[:SAMPLE_RUNS])
    points: dict[int, list] = {r.id: [] for r in runs}
    for run_id, step, peak, rate in (MetricPoint.objects.filter(run_id__in=list(points))
                                     .filter(Q(peak_vram_bytes__isnull=False) | Q(tokens_per_s__isnull=False))
                                     .values_list("run_id", "step", "peak_vram_bytes", "tokens_per_s")):
        points[run_id].append((step, peak, rate))
    return [s for s in (run_sample(r, points[r.id]) for r in runs) if s is not None]


def team_calibrations(team_id: int) -> dict[tuple[str, str, bool], Constants]:
    """Fitted again when a run of the team has ended since the last fit (the key is its latest run's end)."""
    latest = Run.objects.filter(team_id=team_id, status__in=list(Run.TERMINAL)).aggregate(
        last=Max("finished_at"), n=Max("id"))
    key = (team_id, latest["last"], latest["n"])
    with _cache_lock:
        hit = _cache.get(team_id)
        if hit and hit["key"] == key:
            return hit["table"]
    table = calibrate.calibrations(team_samples(team_id))
    with _cache_lock:
        _cache[team_id] = {"key": key, "table": table}
    return table


# ---- the model's shapes and the queue's GPUs ------------------------------------------------------------------

def model_shape(model: str, team_id: int) -> ModelShape:
    """From the model folder's config.json when this deployment may read it; else as an earlier run of the team
    with this model recorded it; else ShapeError saying so."""
    if model.startswith("/") and not model_source_error(model, model_policy()):
        return read_shape(model)
    for started in (Run.objects.filter(team_id=team_id, config__model=model).exclude(started={})
                    .order_by("-id").values_list("started", flat=True)[:5]):
        if started.get("model_config"):
            return shape_from_config(started["model_config"])
    raise ShapeError(f"the shapes of {model} are unknown here: no config.json this server can read, and no run "
                     "of this team has trained it yet")


def queue_gpus(queue: str) -> list[dict[str, Any]]:
    """Each live worker on `queue` and its first GPU ({worker, gpu, memory_total}); a CPU-only worker has none."""
    out = []
    for w in Worker.objects.all():
        if w.is_silent or queue not in (w.queues or []):
            continue
        gpu = (w.gpus or [{}])[0] if w.gpus else None
        out.append({"worker": w.name, "gpu": gpu.get("name") if gpu else None,
                    "memory_total": gpu.get("memory_total") if gpu else None})
    return out


# ---- the plan -------------------------------------------------------------------------------------------------

def plan_config(*, team_id: int, config: Mapping[str, Any], queue: str, num_examples: int | None = None,
                mean_tokens: float | None = None) -> dict[str, Any]:
    """What the forms show and a run keeps: the prediction on each live GPU of the queue (or the reference GPU
    where none is live), where it fits, the levers when it fits nowhere, and the fastest fit on the chosen GPU.
    {"error": why} when there is no prediction (unknown shapes)."""
    try:
        shape = model_shape(str(config.get("model") or ""), team_id)
    except ShapeError as exc:
        return {"error": str(exc)}
    table = team_calibrations(team_id)
    backend = resolved_backend(config)
    setup = Setup.of(config, backend=backend)

    def constants_of(gpu: str):
        return lambda s: calibrate.constants_for(table, gpu, s.backend, s.load_in_4bit)

    total_steps = _total_steps(config, num_examples)
    evals, saves, eval_tokens = _evals_and_saves(config, total_steps, num_examples, mean_tokens)
    workers = queue_gpus(queue)
    gpu_workers = [w for w in workers if w["gpu"] and w["memory_total"]]
    if workers and not gpu_workers:
        # Only CPU workers take this queue: a GPU's figures would promise what no worker here can do.
        return cpu_plan(team_id=team_id, config=config, workers=workers, total_steps=total_steps,
                        mean_tokens=mean_tokens)
    targets = gpu_workers or [{"worker": None, "gpu": calibrate.REFERENCE_GPU, "memory_total": None}]
    by_gpu: dict[str, Prediction] = {}
    for t in targets:
        if t["gpu"] not in by_gpu:
            by_gpu[t["gpu"]] = predict(shape, setup, constants_of(t["gpu"])(setup), gpu_name=t["gpu"],
                                       total_steps=total_steps, mean_tokens=mean_tokens, eval_tokens=eval_tokens,
                                       evals=evals, saves=saves)
    fits_on = [w for w in gpu_workers if levers.fits(by_gpu[w["gpu"]], w["memory_total"])]
    chosen = max(fits_on or gpu_workers or targets, key=lambda w: (w["memory_total"] or 0))
    prediction = by_gpu[chosen["gpu"]]
    plan: dict[str, Any] = {
        **prediction.as_dict(), "gpu": chosen["gpu"], "model_shape": shape.as_dict(),
        "total_steps": total_steps, "workers": [
            {**w, "fits": levers.fits(by_gpu[w["gpu"]], w["memory_total"]) if w in gpu_workers else None,
             "needs": levers.needed_bytes(by_gpu[w["gpu"]]) if w in gpu_workers else None} for w in workers],
        "fits_any": bool(fits_on) if gpu_workers else None, "levers": [], "fastest": None}
    if gpu_workers and not fits_on:
        plan["levers"] = [lv.as_dict() for lv in levers.levers(shape, setup, constants_of(chosen["gpu"]),
                                                               chosen["memory_total"], gpu_name=chosen["gpu"])]
    if chosen["memory_total"]:
        best = levers.fastest_fit(shape, setup, constants_of(chosen["gpu"]), chosen["memory_total"],
                                  gpu_name=chosen["gpu"], total_steps=total_steps)
        if best and best[0] and best[1].tokens_per_s > prediction.tokens_per_s * 1.05:
            plan["fastest"] = {"changes": best[0], **best[1].as_dict(),
                               "speedup": best[1].tokens_per_s / prediction.tokens_per_s}
    plan["text"] = plan_text(plan)
    return plan



CPU_SAMPLE_RUNS = 10  # the team's latest succeeded CPU runs of the model a CPU estimate reads


def cpu_plan(*, team_id: int, config: Mapping[str, Any], workers: list[dict[str, Any]], total_steps: int | None,
             mean_tokens: float | None) -> dict[str, Any]:
    """The plan for a queue whose live workers are all CPUs: no GPU figure; a time from the tokens/s the team's
    CPU runs of this model measured (their median), where there are such runs and the step count is known.
    {"error": why there is no GPU prediction, "text": what the form says, "cpu": the estimate or None}."""
    names = ", ".join(w["worker"] for w in workers)
    error = f"no GPU estimate: the queue's workers are CPUs ({names})"
    model = str(config.get("model") or "")
    runs = list(Run.objects.filter(team_id=team_id, status=Run.Status.SUCCEEDED, config__model=model,
                                   started__device__startswith="cpu")
                .order_by("-id").values_list("id", flat=True)[:CPU_SAMPLE_RUNS])
    rate = (MetricPoint.objects.filter(run_id__in=runs, step__gt=SKIP_STEPS, tokens_per_s__isnull=False)
            .aggregate(rate=Median("tokens_per_s"))["rate"] if runs else None)
    if not rate or not total_steps:
        why = ("no CPU run of this model in the team yet to time it on" if not rate
               else "the step count is not known yet (set max_steps, or packing off with a dataset chosen)")
        return {"error": error, "text": f"No estimate: the queue's workers are CPUs ({names}); {why}.", "cpu": None}
    per_step = tokens_per_step(int(config.get("per_device_train_batch_size", 2)),
                               int(config.get("gradient_accumulation_steps", 4)), int(config.get("max_length", 2048)),
                               1, bool(config.get("packing")), mean_tokens)
    seconds = total_steps * per_step / rate
    cpu = {"tokens_per_s": rate, "seconds": seconds, "runs": len(runs), "total_steps": total_steps}
    return {"error": error, "cpu": cpu, "text": (
        f"No GPU on this queue (CPU workers: {names}). On CPU: ≈ {human_rate(rate)} tokens/s, the median of the "
        f"team's last {len(runs)} CPU run{'s' if len(runs) != 1 else ''} of this model; ≈ {human_seconds(seconds)} "
        f"for {total_steps} steps.")}


def _total_steps(config: Mapping[str, Any], num_examples: int | None) -> int | None:
    if config.get("max_steps"):
        return int(config["max_steps"])
    if not num_examples:
        return None
    train = num_examples * (1 - float(config.get("eval_split") or 0))
    return total_steps(int(train), int(config.get("per_device_train_batch_size", 2)),
                       int(config.get("gradient_accumulation_steps", 4)), float(config.get("num_train_epochs", 1)))


def _evals_and_saves(config, total_steps, num_examples, mean_tokens) -> tuple[int, int, float]:
    if not total_steps:
        return 0, 0, 0.0
    eval_steps, save_steps = config.get("eval_steps"), config.get("save_steps")
    evals = total_steps // eval_steps if eval_steps else 0
    saves = total_steps // save_steps if save_steps else 0
    eval_rows = (num_examples or 0) * float(config.get("eval_split") or 0)
    return evals, saves, eval_rows * min(mean_tokens or config.get("max_length", 2048), config.get("max_length", 2048))


def plan_text(plan: Mapping[str, Any]) -> str:
    """'peak ≈ 3.4 GiB (3.1–3.8), fits on: box-a (80 GB), box-b (24 GB); ≈ 11k tokens/s, ≈ 42 min'."""
    if plan.get("error"):
        return f"no prediction: {plan['error']}"
    text = f"peak ≈ {human_bytes(plan['peak_bytes'])} ({display.range_text(plan['peak_low'], plan['peak_high'])})"
    gpu_workers = [w for w in plan["workers"] if w["fits"] is not None]
    if gpu_workers:
        fit = [f"{w['worker']} ({w['memory_total'] / 1e9:.0f} GB)" for w in gpu_workers if w["fits"]]
        text += f", fits on: {', '.join(fit)}" if fit else ", fits no live GPU worker on this queue"
    elif plan["workers"]:
        text += ", no GPU worker on this queue (CPU workers: no VRAM limit known)"
    else:
        text += ", no live worker on this queue"
    text += f"; ≈ {human_rate(plan['tokens_per_s'])} tokens/s on {plan['gpu']}"
    if plan.get("seconds"):
        text += f", ≈ {human_seconds(plan['seconds'])}"
    if not plan["calibrated"]:
        text += " (uncalibrated)"
    return text


def plan_refusal(plan: Mapping[str, Any]) -> str | None:
    """Why a run must not be launched: it fits no live GPU worker of its queue (the prediction and the levers)."""
    if plan.get("error") or plan.get("fits_any") is not False:
        return None
    biggest = max((w for w in plan["workers"] if w["fits"] is not None), key=lambda w: w["memory_total"])
    lines = [f"predicted peak {human_bytes(plan['peak_bytes'])} (up to {human_bytes(plan['peak_high'])}) fits no "
             f"live GPU worker on this queue (the largest: {biggest['worker']}, "
             f"{human_bytes(biggest['memory_total'])})"]
    fitting = [lv for lv in plan["levers"] if lv["fits"]]
    if plan["levers"]:
        lines.append("levers: " + "; ".join(f"{lv['text']}{' (fits)' if lv['fits'] else ''}" for lv in plan["levers"]))
    if not fitting:
        lines.append("no single lever makes it fit: combine them or use a larger GPU")
    return ". ".join(lines)


# ---- a run's prediction against what it measured ------------------------------------------------------------

class Median(Aggregate):
    """PostgreSQL's median of a column (FILTER works with it, as with any aggregate)."""
    function = "PERCENTILE_CONT"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


def run_measured(run: Run) -> dict[str, Any]:
    """What the run measured, in one aggregate over its points: the highest peak VRAM the metrics reported, the
    median tokens/s after the first SKIP_STEPS steps (they compile and warm up); the time from its start to its
    end; the device it trained on and whether it ran all its steps."""
    figures = MetricPoint.objects.filter(run=run).aggregate(
        peak=Max("peak_vram_bytes"), rate=Median("tokens_per_s", filter=Q(step__gt=SKIP_STEPS)))
    seconds = ((run.finished_at - run.started_at).total_seconds() if run.started_at and run.finished_at else None)
    return {"peak_bytes": figures["peak"], "tokens_per_s": figures["rate"], "seconds": seconds,
            "device": str((run.started or {}).get("device") or ""), "finished": run.status == Run.Status.SUCCEEDED}


def run_plan_check(run: Run) -> dict[str, Any] | None:
    """The run page's "Predicted against measured" (display.predicted_vs_measured); None for a run without a
    plan (created before the planner, or none could be made), with no query."""
    if not run.plan or run.plan.get("error"):
        return None
    return display.predicted_vs_measured(run.plan, run_measured(run))
