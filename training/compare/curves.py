"""Pure numpy helpers for the compare charts: TensorBoard's debiased EMA, spike-keeping downsampling, group bands."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

MAX_POINTS = 1000
# Per bucket: the min, the max, the last point, and the first non-finite one (a NaN or inf is a gap to see).
KEPT_PER_BUCKET = 4


@dataclass(frozen=True)
class EmaState:
    """Where an EMA stopped, so a live page can go on smoothing the points that come after: the biased
    accumulator and how many finite points went into it."""

    last: float = 0.0
    count: int = 0


def ema(values: np.ndarray, weight: float, state: EmaState | None = None) -> tuple[np.ndarray, EmaState]:
    """TensorBoard's smoothing: last = last·w + (1 − w)·y over the finite points, shown as last / (1 − w^n) with n
    the finite points so far (so the first points are not pulled towards 0); non-finite points pass through
    unchanged and do not count. A constant series stays exactly constant, as in TensorBoard."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight!r}")
    y = np.asarray(values, dtype=np.float64)
    state = state or EmaState()
    out = y.copy()
    finite = np.isfinite(y)
    yf = y[finite]
    if not len(yf) or weight == 0:
        count = state.count + len(yf)
        return out, EmaState(last=float(yf[-1]) if len(yf) else state.last, count=count)
    if state.count == 0 and np.all(yf == yf[0]):
        biased = yf * (1 - weight ** np.arange(1, len(yf) + 1))
        return out, EmaState(last=float(biased[-1]), count=len(yf))
    # y[n] = w·y[n-1] + (1-w)·x[n], started from the previous accumulator.
    biased, _ = lfilter([1 - weight], [1, -weight], yf, zi=[weight * state.last])
    out[finite] = biased / _debias(weight, state.count, len(yf))
    return out, EmaState(last=float(biased[-1]), count=state.count + len(yf))


def _debias(weight: float, done: int, count: int) -> np.ndarray:
    """1 − w^n for n = done+1 … done+count. Past the point where w^n is below double precision it is exactly 1;
    computing those powers would only make denormals (slow) on the way to 0."""
    debias = np.ones(count)
    needed = int(np.ceil(np.log(1e-17) / np.log(weight))) if weight > 0 else 0
    head = max(0, min(count, needed - done))
    if head:
        debias[:head] = -np.expm1(np.arange(done + 1, done + head + 1) * np.log(weight))
    return debias


def _first_per_segment(mask: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """The index of the first True of each segment that has one (segment ids are non-decreasing)."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return idx
    seg = segment[idx]
    return idx[np.r_[True, seg[1:] != seg[:-1]]]


def downsample(x: np.ndarray, y: np.ndarray, *, x0: float | None = None, x1: float | None = None,
               max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of the points to draw for the x range [x0, x1] (x sorted ascending), at most max_points.

    The range gets equal-width buckets over x; each keeps its min, its max, its last point and its first non-finite
    one, so a one-step spike survives. One point either side of the range is kept so the line reaches the edges.
    A range that already fits is returned whole.
    """
    if max_points < KEPT_PER_BUCKET + 2:
        raise ValueError(f"max_points must be at least {KEPT_PER_BUCKET + 2}, got {max_points}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.arange(0)
    lo = x[0] if x0 is None else max(float(x0), x[0])
    hi = x[-1] if x1 is None else min(float(x1), x[-1])
    i0 = int(np.searchsorted(x, lo, "left"))
    i1 = int(np.searchsorted(x, hi, "right"))
    edges = [i for i in (i0 - 1, i1) if 0 <= i < n]
    if i1 - i0 <= max_points - len(edges):
        return np.unique(np.r_[np.arange(i0, i1), edges]).astype(np.int64)
    buckets = (max_points - 2) // KEPT_PER_BUCKET
    xs, ys = x[i0:i1], y[i0:i1]
    starts = np.searchsorted(xs, np.linspace(lo, hi, buckets + 1)[:-1], "left")
    starts = np.unique(starts)  # empty buckets dropped
    ends = np.r_[starts[1:], len(xs)]
    segment = np.repeat(np.arange(len(starts)), ends - starts)
    finite = np.isfinite(ys)
    safe_low = np.where(finite, ys, np.inf)
    safe_high = np.where(finite, ys, -np.inf)
    mins = np.minimum.reduceat(safe_low, starts)
    maxs = np.maximum.reduceat(safe_high, starts)
    kept = [
        _first_per_segment(finite & (ys == mins[segment]), segment),
        _first_per_segment(finite & (ys == maxs[segment]), segment),
        _first_per_segment(~finite, segment),
        ends - 1,
    ]
    return np.unique(np.concatenate([np.concatenate(kept) + i0, np.asarray(edges, dtype=np.int64)])).astype(np.int64)


def group_band(series: list[tuple[np.ndarray, np.ndarray]], *, x0: float | None = None, x1: float | None = None,
               points: int = 500) -> dict[str, np.ndarray]:
    """Mean, min and max across runs on a common x grid (each run interpolated linearly over its own finite
    points, and only within its own x range); x, mean, min, max arrays, NaN where no run has a value."""
    usable = []
    for x, y in series:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.any():
            usable.append((x[keep], y[keep]))
    if not usable:
        empty = np.array([], dtype=np.float64)
        return {"x": empty, "mean": empty, "min": empty, "max": empty}
    lo = min(x[0] for x, _ in usable) if x0 is None else float(x0)
    hi = max(x[-1] for x, _ in usable) if x1 is None else float(x1)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    stack = np.vstack([np.interp(grid, x, y, left=np.nan, right=np.nan) for x, y in usable])
    has = np.isfinite(stack).any(axis=0)
    with np.errstate(all="ignore"):
        mean = np.where(has, np.nanmean(np.where(has, stack, 0.0), axis=0), np.nan)
        low = np.where(has, np.nanmin(np.where(has, stack, 0.0), axis=0), np.nan)
        high = np.where(has, np.nanmax(np.where(has, stack, 0.0), axis=0), np.nan)
    return {"x": grid, "mean": mean, "min": low, "max": high}
