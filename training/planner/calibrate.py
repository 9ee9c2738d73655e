"""Fitting the planner's constants per (GPU, backend, 4-bit) on measured runs.

A least-squares fit of relative errors (a 10% miss on a 2 GiB run counts as much as on a 60 GiB one), pulled
towards prior constants (physical guesses, or the defaults fitted on docs/benchmarks.md) so that two or three runs
move only what they can tell apart; constants stay non-negative. The error band is what the fit leaves: the
root-mean-square relative residual, doubled, never under 5% (and the prior's band while there are fewer than 3
runs). A run that ran out of memory says its peak was at least the GPU's memory: where the fit predicts less, it is
fitted again with that floor as a measurement.
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import lsq_linear

from training.planner import reference
from training.planner.estimate import (MEMORY_TERMS, SPEED_TERMS, Constants, Setup, gpu_peak_flops, memory_features,
                                       speed_features, static_bytes, step_tokens)
from training.planner.shapes import ModelShape

# How hard the prior pulls: a memory constant twice its prior costs as much as a 3% miss on one run (the memory
# terms are many and the reference rows few: the physical guesses keep the unmeasured ones sane); a speed constant
# twice its prior as much as a 3% miss. Chosen by bench/fit_planner.py's leave-one-out on the H200 rows (weights
# 1e-2, 3e-3, 1e-3, 3e-4 tried, 2026-12-03): with the checkpointing and optimizer terms a pull of 1e-2 kept the
# 0.1B rows' misses; 1e-3 is the middle of those that met 15%.
MEMORY_PRIOR_WEIGHT = 1e-3
SPEED_PRIOR_WEIGHT = 1e-3
MIN_BAND = 0.05
MIN_RUNS_FOR_BAND = 3
UNCALIBRATED_MEMORY_BAND = 0.20
UNCALIBRATED_SPEED_BAND = 0.35
REFERENCE_GPU = reference.H100


@dataclass(frozen=True)
class Sample:
    """One measured run: its shapes and config, the GPU it ran on, what it measured (None: not measured)."""
    shape: ModelShape
    setup: Setup
    gpu: str
    peak_bytes: float | None = None
    tokens_per_s: float | None = None
    mean_tokens: float | None = None
    startup_s: float | None = None
    oom: bool = False
    gpu_total_bytes: float | None = None
    label: str = ""


def group_key(gpu: str, backend: str, load_in_4bit: bool) -> tuple[str, str, bool]:
    return (gpu or "unknown GPU", backend, bool(load_in_4bit))


def group_text(key: tuple[str, str, bool]) -> str:
    gpu, backend, four_bit = key
    return f"{gpu}, {backend}, {'4-bit' if four_bit else '16-bit'}"


# Physical guesses, bytes per unit: an activation saved per hidden unit of every live layer (the norms' outputs,
# q/k/v/o inputs, the residual: about ten bf16 values), three bf16 MLP intermediates, the bf16 hidden state a
# checkpoint keeps (Unsloth offloads it), logits in bf16 plus a float32 copy and its gradient (Unsloth chunks
# its cross-entropy), 256 MiB of workspaces, and a byte per attention score the plain stack's masked SDPA keeps. Seconds: 35% (Unsloth) or 6% (plain) of the GPU's peak FLOP rate,
# 0.2 ms of kernel launches per layer pass, a nanosecond per trainable parameter's update, 10 ms a step, 1 ms per
# checkpointed layer pass (offload and reload), 50 µs per LoRA matrix a tensor-by-tensor optimizer updates.
def prior_constants(backend: str, load_in_4bit: bool, gpu: str = REFERENCE_GPU) -> Constants:
    unsloth = backend == "unsloth"
    memory = (20.0, 6.0, 0.2 if unsloth else 2.0, 2.0 if unsloth else 10.0, 256 * 1024 ** 2, 0.0 if unsloth else 1.0)
    peak = gpu_peak_flops(gpu) or gpu_peak_flops(REFERENCE_GPU)
    speed = (1 / (peak * (0.35 if unsloth else 0.06)), 2e-4, 1e-9, 0.01, 1e-3, 5e-5)
    return Constants(memory=memory, speed=speed, memory_error=0.5, speed_error=0.6, calibrated=False,
                     source="physical guesses, no measurement")


def _fit(rows: np.ndarray, targets: np.ndarray, prior: Sequence[float], weight: float) -> np.ndarray:
    """min Σ(rowsᵢ·k - targetᵢ)² + weight·Σ((k - prior)/prior)², k ≥ 0."""
    prior = np.asarray(prior, dtype=float)
    scale = np.where(prior > 0, prior, 1.0)
    # Work in units of the prior (k = scale·u): every column of order one, the pull the same for each term.
    a = np.vstack([rows * scale, math.sqrt(weight) * np.eye(len(prior))])
    b = np.concatenate([targets, math.sqrt(weight) * (prior / scale)])
    u = lsq_linear(a, b, bounds=(0, np.inf), method="bvls").x
    return u * scale


def _band(residuals: Sequence[float], prior_band: float) -> float:
    if len(residuals) < MIN_RUNS_FOR_BAND:
        return prior_band
    rms = math.sqrt(sum(r * r for r in residuals) / (len(residuals) - 1))
    return max(MIN_BAND, 2 * rms)


def predicted_peak(sample: Sample, memory: Sequence[float]) -> float:
    return static_bytes(sample.shape, sample.setup) + float(
        np.dot(memory_features(sample.shape, sample.setup), memory))


def predicted_step_s(sample: Sample, speed: Sequence[float]) -> float:
    return float(np.dot(speed_features(sample.shape, sample.setup, sample.mean_tokens), speed))


def measured_step_s(sample: Sample) -> float:
    return step_tokens(sample.setup, sample.mean_tokens) / sample.tokens_per_s


def fit_memory(samples: Sequence[Sample], prior: Sequence[float]) -> tuple[np.ndarray, list[float]]:
    """Constants and each measured sample's relative residual."""
    measured = [s for s in samples if s.peak_bytes]
    ooms = [s for s in samples if s.oom and s.gpu_total_bytes]
    if not measured and not ooms:
        return np.asarray(prior, dtype=float), []

    def solve(points: list[tuple[Sample, float]]) -> np.ndarray:
        rows = np.array([np.asarray(memory_features(s.shape, s.setup)) / y for s, y in points])
        targets = np.array([1 - static_bytes(s.shape, s.setup) / y for s, y in points])
        return _fit(rows, targets, prior, MEMORY_PRIOR_WEIGHT)

    points = [(s, float(s.peak_bytes)) for s in measured]
    k = solve(points) if points else np.asarray(prior, dtype=float)
    floors = [(s, float(s.gpu_total_bytes)) for s in ooms if predicted_peak(s, k) < s.gpu_total_bytes]
    if floors:
        k = solve(points + floors)
    return k, [predicted_peak(s, k) / y - 1 for s, y in points]


def fit_speed(samples: Sequence[Sample], prior: Sequence[float]) -> tuple[np.ndarray, list[float]]:
    measured = [s for s in samples if s.tokens_per_s]
    if not measured:
        return np.asarray(prior, dtype=float), []
    rows = np.array([np.asarray(speed_features(s.shape, s.setup, s.mean_tokens)) / measured_step_s(s)
                     for s in measured])
    k = _fit(rows, np.ones(len(measured)), prior, SPEED_PRIOR_WEIGHT)
    return k, [predicted_step_s(s, k) / measured_step_s(s) - 1 for s in measured]


def calibrate(samples: Sequence[Sample], prior: Constants, source: str) -> Constants:
    """The group's constants fitted on its samples, starting from `prior`."""
    memory, mem_res = fit_memory(samples, prior.memory)
    speed, speed_res = fit_speed(samples, prior.speed)
    startups = [s.startup_s for s in samples if s.startup_s]
    measured = sum(1 for s in samples if s.peak_bytes or s.tokens_per_s or s.oom)
    return Constants(memory=tuple(float(x) for x in memory), speed=tuple(float(x) for x in speed),
                     memory_error=_band(mem_res, prior.memory_error), speed_error=_band(speed_res, prior.speed_error),
                     calibrated=measured > 0, source=source, samples=measured,
                     startup_s=statistics.median(startups) if startups else prior.startup_s)


# ---- the defaults: fitted on docs/benchmarks.md ----------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def reference_samples() -> tuple[Sample, ...]:
    return tuple(Sample(shape=row["shape"], setup=Setup.of(row["config"], backend=row["backend"]), gpu=row["gpu"],
                   peak_bytes=row["peak_bytes"], tokens_per_s=row["tokens_per_s"], mean_tokens=row["mean_tokens"],
                   oom=row.get("oom", False), gpu_total_bytes=row.get("gpu_total_bytes"), label=row["section"])
            for row in reference.rows())


def scaled_to_gpu(constants: Constants, from_gpu: str, to_gpu: str) -> Constants:
    """A calibration moved to another GPU: the FLOP-rate term scaled by the two GPUs' peaks (the rest kept)."""
    a, b = gpu_peak_flops(from_gpu), gpu_peak_flops(to_gpu)
    if not a or not b or a == b:
        return constants
    speed = (constants.speed[0] * a / b, *constants.speed[1:])
    return replace(constants, speed=speed, speed_error=max(constants.speed_error, UNCALIBRATED_SPEED_BAND))


_DEFAULTS: dict[tuple[str, bool, str], Constants] = {}


def defaults_from(rows: Sequence[Sample], backend: str, load_in_4bit: bool, gpu: str) -> Constants:
    """Constants fitted on measured figures for a GPU with no run of the team's: memory on the backend's rows of
    both precisions and every GPU (activations and logits are 16-bit either way and 4-bit changes only the
    weights, which are counted, not fitted); the FLOP rate on this GPU's rows of this precision where there are
    some, else on the reference GPU's, scaled to this GPU's peak."""
    prior = prior_constants(backend, load_in_4bit)
    mine = [s for s in rows if s.setup.backend == backend]
    fitted = calibrate([replace(s, tokens_per_s=None) for s in mine], prior, source="")
    speed_gpu = gpu if any(s.gpu == gpu and s.tokens_per_s for s in mine) else REFERENCE_GPU
    speed_rows = [s for s in mine if s.gpu == speed_gpu and s.setup.load_in_4bit == load_in_4bit]
    speed, _ = fit_speed(speed_rows, prior.speed)
    constants = replace(fitted, speed=tuple(float(x) for x in speed))
    if speed_gpu != gpu:
        constants = scaled_to_gpu(constants, speed_gpu, gpu)
    return constants


def default_constants(backend: str, load_in_4bit: bool, gpu: str) -> Constants:
    """Uncalibrated for this team on this GPU: fitted on the figures in docs/benchmarks.md (reference.rows())."""
    key = (backend, bool(load_in_4bit), gpu)
    if key not in _DEFAULTS:
        measured_here = any(s.gpu == gpu and s.tokens_per_s for s in reference_samples())
        _DEFAULTS[key] = replace(
            defaults_from(reference_samples(), backend, bool(load_in_4bit), gpu), calibrated=False,
            memory_error=UNCALIBRATED_MEMORY_BAND,
            speed_error=UNCALIBRATED_SPEED_BAND if measured_here or gpu_peak_flops(gpu) else 0.6,
            source=f"uncalibrated: no measured run on {gpu or 'this GPU'} with the {backend} backend "
                   f"({'4-bit' if load_in_4bit else '16-bit'}); defaults fitted on docs/benchmarks.md")
    return _DEFAULTS[key]


def calibrations(samples: Iterable[Sample]) -> dict[tuple[str, str, bool], Constants]:
    """Each (GPU, backend, 4-bit) group's constants, fitted on its samples from the group's defaults."""
    groups: dict[tuple[str, str, bool], list[Sample]] = {}
    for s in samples:
        groups.setdefault(group_key(s.gpu, s.setup.backend, s.setup.load_in_4bit), []).append(s)
    out = {}
    for key, members in groups.items():
        prior = default_constants(key[1], key[2], key[0])
        n = sum(1 for s in members if s.peak_bytes or s.tokens_per_s)
        out[key] = calibrate(members, prior, source=f"calibrated on {n} measured run{'s' if n != 1 else ''} "
                                                    f"({group_text(key)})")
    return out


def constants_for(table: Mapping[tuple[str, str, bool], Constants], gpu: str, backend: str,
                  load_in_4bit: bool) -> Constants:
    return table.get(group_key(gpu, backend, load_in_4bit)) or default_constants(backend, load_in_4bit, gpu)
