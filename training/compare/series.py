"""Reads for the Compare page: which runs (team-scoped, 2 to 20), their series smoothed and downsampled, and
what differs between them, with the guidance and the seed's prediction for each difference."""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import psycopg
from django.db import connection
from django.db.models import Count
from django.http import Http404, QueryDict
from psycopg.adapt import Loader
from psycopg.pq import Format

from guidance import comparison, content
from guidance.links import guidance_url
from guidance.models import Finding
from training import access, selectors
from training.compare import curves
from training.engine.config import TrainConfig
from training.models import MetricPoint, Run, SeriesPack, Sweep
from training.run_config import value_text

MIN_RUNS, MAX_RUNS = 2, 20
METRICS: dict[str, str] = {
    "loss": "train loss",
    "eval_loss": "eval loss",
    "grad_norm": "grad norm",
    "learning_rate": "learning rate",
    "tokens_per_s": "tokens/s",
    "peak_vram_bytes": "peak VRAM (bytes)",
}
# x axis name → the SQL for it (wall time: seconds since the epoch, made relative to the run's first point).
X_AXES: dict[str, str] = {"step": "step", "tokens": "tokens seen", "epoch": "epoch", "time": "wall time (s)"}
DEFAULT_SMOOTH = 0.6
MAX_SMOOTH = 0.999
# Config fields that say where files live, not how the run trains: the dataset row stands for train_file.
NOT_COMPARED = frozenset({"version", "train_file", "eval_file", "output_dir"})


class CompareError(ValueError):
    """A compare request that cannot be served; `field` names the parameter, `allowed` what it may be."""

    def __init__(self, field: str, message: str, allowed: str):
        self.field, self.message, self.allowed = field, message, allowed
        super().__init__(f"{field}: {message} (allowed: {allowed})")

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "error": self.message, "allowed": self.allowed}


@dataclass(frozen=True)
class CompareQuery:
    run_ids: tuple[int, ...]
    x: str = "step"
    smooth: float = DEFAULT_SMOOTH
    metrics: tuple[str, ...] = tuple(METRICS)
    x0: float | None = None
    x1: float | None = None
    group: str = ""


def _float(params: Mapping[str, str], key: str, *, allowed: str) -> float | None:
    text = (params.get(key) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CompareError(key, f"{text!r} is not a number", allowed) from None
    if not math.isfinite(value):
        raise CompareError(key, f"{text!r} is not a finite number", allowed)
    return value


def parse_run_ids(text: str) -> tuple[int, ...]:
    allowed = f"{MIN_RUNS} to {MAX_RUNS} run ids separated by commas, e.g. runs=12,15,19"
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    ids: list[int] = []
    for part in parts:
        if not part.isdecimal():
            raise CompareError("runs", f"{part!r} is not a run id", allowed)
        if int(part) not in ids:
            ids.append(int(part))
    if len(ids) < MIN_RUNS:
        raise CompareError("runs", f"{len(ids)} run{'s' if len(ids) != 1 else ''} chosen; choose at least {MIN_RUNS}",
                           allowed)
    if len(ids) > MAX_RUNS:
        raise CompareError("runs", f"{len(ids)} runs chosen; at most {MAX_RUNS} can be compared", allowed)
    return tuple(ids)


def parse_query(params: Mapping[str, str], *, run_ids: tuple[int, ...] | None = None) -> CompareQuery:
    """The query string of the page, the data request or an export; CompareError names the bad parameter."""
    ids = run_ids if run_ids is not None else parse_run_ids(params.get("runs", ""))
    x = params.get("x") or "step"
    if x not in X_AXES:
        raise CompareError("x", f"{x!r} is not an x axis", ", ".join(X_AXES))
    smooth = _float(params, "smooth", allowed=f"a number from 0 to {MAX_SMOOTH}")
    smooth = DEFAULT_SMOOTH if smooth is None else smooth
    if not 0 <= smooth <= MAX_SMOOTH:
        raise CompareError("smooth", f"{smooth} is out of range", f"a number from 0 to {MAX_SMOOTH}")
    metric_text = params.get("metric") or ""
    metrics = tuple(m for m in metric_text.split(",") if m) or tuple(METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CompareError("metric", f"{', '.join(map(repr, unknown))} is not a compared metric", ", ".join(METRICS))
    x0 = _float(params, "x0", allowed="a number on the x axis, or empty for the start")
    x1 = _float(params, "x1", allowed="a number on the x axis, or empty for the end")
    if x0 is not None and x1 is not None and x1 < x0:
        raise CompareError("x1", f"the range ends ({x1}) before it starts ({x0})", "x1 >= x0")
    group = params.get("group") or ""
    if group and group not in compared_fields():
        raise CompareError("group", f"{group!r} is not a config field", ", ".join(compared_fields()))
    return CompareQuery(run_ids=ids, x=x, smooth=smooth, metrics=metrics, x0=x0, x1=x1, group=group)


def compared_fields() -> tuple[str, ...]:
    return ("dataset", *(f for f in TrainConfig.model_fields if f not in NOT_COMPARED))


def runs_for_user(user, run_ids: Iterable[int]) -> list[Run]:
    """The runs in the order asked; any run that is missing or another team's is a 404, like a missing run."""
    run_ids = list(run_ids)
    found = {r.id: r for r in Run.objects.select_related("dataset", "team", "resumed_from").filter(
        id__in=run_ids, team_id__in=access.team_ids_for(user))}
    missing = [i for i in run_ids if i not in found]
    if missing:
        raise Http404(f"No such run: {', '.join(map(str, missing))}")
    return [found[i] for i in run_ids]


def request_run_ids(params: QueryDict, user) -> tuple[int, ...]:
    """The compared runs' ids from runs=1,2,3 (a shared link), runs=1&runs=2 (the run list's checkboxes), or every
    run of sweep=<id>; CompareError names the bad parameter."""
    sweep = params.get("sweep", "").strip()
    if sweep and not params.getlist("runs"):
        if not sweep.isdecimal():
            raise CompareError("sweep", f"{sweep!r} is not a sweep id", "a sweep id, e.g. sweep=4")
        return parse_run_ids(",".join(map(str, sweep_run_ids(user, int(sweep)))))
    return parse_run_ids(",".join(params.getlist("runs")))


def sweep_run_ids(user, sweep_id: int) -> tuple[int, ...]:
    """The runs of the sweep's latest phase (its members' latest attempts), in member order, at most MAX_RUNS: a
    whole sweep of 30 members would be refused; the phase is what its verdict compared. A sweep without phases
    (made before them) compares every run that names it."""
    sweep = Sweep.objects.filter(id=sweep_id, team_id__in=access.team_ids_for(user)).first()
    if sweep is None:
        raise Http404("No such sweep")
    phase = sweep.phases.order_by("-index").first()
    if phase is None:
        return tuple(sweep.runs.order_by("id").values_list("id", flat=True))[:MAX_RUNS]
    ids = phase.members.filter(run__isnull=False).order_by("index").values_list("run_id", flat=True)
    return tuple(dict.fromkeys(ids))[:MAX_RUNS]


# Series ----------------------------------------------------------------------------------------------------

class _Float8ArrayLoader(Loader):
    """float8[] in PostgreSQL's binary array format straight into numpy (no Python float per value). The
    queries leave NULLs out, so every element is a 4-byte length and 8 bytes of big-endian double."""

    format = Format.BINARY
    _element = np.dtype([("length", ">i4"), ("value", ">f8")])

    def load(self, data) -> np.ndarray:
        ndim, = struct.unpack_from(">i", data, 0)
        if ndim == 0:
            return np.empty(0)
        count, = struct.unpack_from(">i", data, 12)
        return np.frombuffer(data, dtype=self._element, count=count, offset=20)["value"].astype(np.float64)


FLOAT8_ARRAY_OID = 1022


def _curve_parts(runs: list[Run]) -> list[tuple[int, int, int, int]]:
    """(run id, source run id, after step, up to step) for every part of every run's curve (as on the run page)."""
    return [(run.id, *part) for run in runs for part in selectors.curve_parts(run)]


# The SQL of each column a compare series reads; x axes other than step are columns too.
COLUMN_SQL: dict[str, str] = {
    **{metric: f"mp.{metric}::float8" for metric in METRICS},
    "epoch": "mp.epoch",
    "tokens_seen": "mp.tokens_seen::float8",
    "time": "extract(epoch from mp.time)::float8",
}
X_COLUMNS: dict[str, str | None] = {"step": None, "tokens": "tokens_seen", "epoch": "epoch", "time": "time"}
EMPTY = (np.empty(0), np.empty(0))


def _query_columns(run_ids: list[int], column: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each run's own (steps, values) of one column, NULLs left out, in one query over UNIQUE(run, step) with
    the arrays decoded by numpy."""
    expr = COLUMN_SQL[column]
    sql = (f"SELECT mp.run_id, array_agg(mp.step::float8 ORDER BY mp.step), array_agg({expr} ORDER BY mp.step) "
           f"FROM {MetricPoint._meta.db_table} mp WHERE mp.run_id = ANY(%s) AND {expr} IS NOT NULL "
           "GROUP BY mp.run_id")
    connection.ensure_connection()
    # Django's cursors bind on the client, which cannot return binary results: a plain psycopg cursor can.
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.adapters.register_loader(FLOAT8_ARRAY_OID, _Float8ArrayLoader)
        cursor.execute(sql, [run_ids], binary=True)
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def _pack(steps: np.ndarray, values: np.ndarray) -> bytes:
    return steps.astype("<i4").tobytes() + values.astype("<f8").tobytes()


def _unpack(data, points: int) -> tuple[np.ndarray, np.ndarray]:
    steps = np.frombuffer(data, dtype="<i4", count=points).astype(np.float64)
    values = np.frombuffer(data, dtype="<f8", count=points, offset=4 * points)
    return steps, values


def _columns(sources: dict[int, tuple[str, int]], column: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(steps, values) of one column for each source run (id → (status, last_step)). A finished run's come from
    its SeriesPack, built on first use; a live run's from its rows."""
    finished = {i: last for i, (status, last) in sources.items() if status in Run.TERMINAL}
    live = [i for i in sources if i not in finished]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    connection.ensure_connection()
    # In binary, bytea arrives as its bytes; Django's text-mode cursor would send it hex-encoded, twice the size.
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(f"SELECT run_id, last_step, points, data FROM {SeriesPack._meta.db_table} "
                       "WHERE run_id = ANY(%s) AND \"column\" = %s", [list(finished), column], binary=True)
        for run_id, last_step, points, data in cursor.fetchall():
            if finished.get(run_id) == last_step:
                out[run_id] = _unpack(data, points)
    stale = [i for i in finished if i not in out]
    if stale:
        built = _query_columns(stale, column)
        SeriesPack.objects.bulk_create(
            [SeriesPack(run_id=i, column=column, last_step=finished[i], points=len(built.get(i, EMPTY)[0]),
                        data=_pack(*built.get(i, EMPTY))) for i in stale],
            update_conflicts=True, unique_fields=["run", "column"], update_fields=["last_step", "points", "data"])
        out.update(built)
    if live:
        out.update(_query_columns(live, column))
    return out


def series_packs_build(run: Run) -> None:
    """Pack every column of a run that has ended, so the first compare after it reads packs, not 100k rows."""
    if run.status in Run.TERMINAL:
        for column in COLUMN_SQL:
            _columns({run.id: (run.status, run.last_step)}, column)


def fetch_series(runs: list[Run], metric: str, x: str) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each run's full-resolution (step, x, value) for one metric, steps ascending, joined along its resume chain;
    steps without the value or the x left out."""
    if metric not in METRICS or x not in X_AXES:
        raise ValueError(f"unknown metric {metric!r} or x axis {x!r}")
    parts = _curve_parts(runs)
    source_ids = sorted({src for _, src, _, _ in parts})
    sources = {row[0]: (row[1], row[2]) for row in
               Run.objects.filter(id__in=source_ids).values_list("id", "status", "last_step")}
    values = _columns(sources, metric)
    x_column = X_COLUMNS[x]
    xs_by_run = _columns(sources, x_column) if x_column else {}
    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for run in runs:
        pieces = []
        for run_id, src, lo, hi in parts:
            if run_id != run.id:
                continue
            steps, ys = values.get(src, EMPTY)
            # Steps ascend (ORDER BY step, or a pack of them): the part is a slice, a view, not a masked copy.
            start, end = np.searchsorted(steps, [lo, hi], side="right")
            steps, ys = steps[start:end], ys[start:end]
            if x_column:
                x_steps, x_values = xs_by_run.get(src, EMPTY)
                at = np.minimum(np.searchsorted(x_steps, steps), max(len(x_steps) - 1, 0))
                has_x = (x_steps[at] == steps) if len(x_steps) else np.zeros(len(steps), dtype=bool)
                pieces.append((steps[has_x], x_values[at][has_x], ys[has_x]))
            else:
                pieces.append((steps, steps, ys))
        if len(pieces) == 1:  # a run that resumed nothing: its arrays as they are
            out[run.id] = pieces[0]
        elif pieces:
            out[run.id] = tuple(np.concatenate(column) for column in zip(*pieces))
    if x == "time":
        origins = wall_time_origins(runs)
        out = {run_id: (s, xs - origins.get(run_id, xs[0] if len(xs) else 0.0), v)
               for run_id, (s, xs, v) in out.items()}
    return out


def wall_time_origins(runs: list[Run]) -> dict[int, float]:
    """Where each run's wall-time axis starts (seconds since the epoch): when the first run of its resume chain
    started, so every metric of a run shares one origin."""
    origins = {}
    for run in runs:
        root = run
        while root.resumed_from_id and root.resumed_from is not None:
            root = root.resumed_from
        if root.started_at is not None:
            origins[run.id] = root.started_at.timestamp()
    return origins


def _json_floats(values: np.ndarray) -> list[float | None]:
    """A JSON-able list: non-finite values become null, a gap in the chart."""
    return [v if math.isfinite(v) else None for v in values.tolist()]


def _sorted_by_x(steps: np.ndarray, xs: np.ndarray, ys: np.ndarray):
    if len(xs) > 1 and np.any(np.diff(xs) < 0):  # tokens or epochs reset by a resume: draw in x order
        order = np.argsort(xs, kind="stable")
        return steps[order], xs[order], ys[order]
    return steps, xs, ys


def series_payload(runs: list[Run], query: CompareQuery) -> dict[str, Any]:
    """What the charts draw for the query: per metric and run the raw line and the smoothed one, each at most
    curves.MAX_POINTS points over the query's x range; with query.group, a mean and min–max band per value."""
    metrics: dict[str, Any] = {}
    for metric in query.metrics:
        fetched = fetch_series(runs, metric, query.x)
        per_run = []
        smoothed_full: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for run in runs:
            steps, xs, ys = fetched.get(run.id, (np.empty(0), np.empty(0), np.empty(0)))
            # Smoothing runs over the whole curve in step order, before any cut, so a zoom shows the same line.
            smooth, state = curves.ema(ys, query.smooth) if query.smooth > 0 else (None, None)
            if smooth is not None:
                _, xs_sorted, smooth_sorted = _sorted_by_x(steps, xs, smooth)
                smoothed_full[run.id] = (xs_sorted, smooth_sorted)
            steps_sorted, xs_sorted, ys_sorted = _sorted_by_x(steps, xs, ys)
            keep = curves.downsample(xs_sorted, ys_sorted, x0=query.x0, x1=query.x1)
            entry: dict[str, Any] = {
                "id": run.id,
                "points": int(len(ys)),
                "last_step": int(steps[-1]) if len(steps) else 0,
                "raw": {"x": xs_sorted[keep].tolist(), "y": _json_floats(ys_sorted[keep])},
                "smooth": None,
                "ema": {"last": state.last, "count": state.count} if state else None,
            }
            if smooth is not None:
                sx, sy = smoothed_full[run.id]
                keep_s = curves.downsample(sx, sy, x0=query.x0, x1=query.x1)
                entry["smooth"] = {"x": sx[keep_s].tolist(), "y": _json_floats(sy[keep_s])}
            per_run.append(entry)
        metric_payload: dict[str, Any] = {"runs": per_run}
        if query.group:
            metric_payload["groups"] = _groups(runs, query, fetched, smoothed_full)
        metrics[metric] = metric_payload
    return {"x": query.x, "smooth": query.smooth, "x0": query.x0, "x1": query.x1, "metrics": metrics}


def _groups(runs, query, fetched, smoothed_full) -> list[dict[str, Any]]:
    by_value: dict[str, list[Run]] = {}
    for run in runs:
        by_value.setdefault(value_text(config_value(run, query.group)), []).append(run)
    groups = []
    for value, members in by_value.items():
        lines = []
        for run in members:
            if run.id in smoothed_full:
                lines.append(smoothed_full[run.id])
            elif run.id in fetched:
                _, xs, ys = _sorted_by_x(*fetched[run.id])
                lines.append((xs, ys))
        band = curves.group_band(lines, x0=query.x0, x1=query.x1)
        groups.append({"value": value, "runs": [r.id for r in members], "x": band["x"].tolist(),
                       **{k: _json_floats(band[k]) for k in ("mean", "min", "max")}})
    return groups


# What differs ----------------------------------------------------------------------------------------------

def config_value(run: Run, name: str) -> Any:
    if name == "dataset":
        return run.dataset.name
    return (run.config or {}).get(name)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def parameter_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Every compared field with each run's value as text and whether the runs differ on it."""
    rows = []
    for name in compared_fields():
        values = [config_value(run, name) for run in runs]
        rows.append({"name": name, "values": [value_text(v) for v in values], "raw": values,
                     "differs": len({_key(v) for v in values}) > 1})
    return rows


def outcomes(runs: list[Run]) -> dict[int, dict[str, Any]]:
    """Per run: best and final eval loss, final train loss, train–eval gap, mean tokens/s, peak VRAM, findings."""
    columns = {m: fetch_series(runs, m, "step") for m in ("loss", "eval_loss", "tokens_per_s", "peak_vram_bytes")}
    findings = dict(Finding.objects.filter(run__in=runs).values("run").annotate(n=Count("id"))
                    .values_list("run", "n"))
    out = {}
    for run in runs:
        def values(metric: str) -> np.ndarray:
            return columns[metric].get(run.id, (None, None, np.empty(0)))[2]

        evals, losses = values("eval_loss"), values("loss")
        finite_evals = evals[np.isfinite(evals)]
        tokens_per_s = values("tokens_per_s")
        tokens_per_s = tokens_per_s[np.isfinite(tokens_per_s)]
        vram = values("peak_vram_bytes")
        final_eval = float(evals[-1]) if len(evals) else None
        final_loss = float(losses[-1]) if len(losses) else None
        out[run.id] = {
            "effective_batch": (run.derived or {}).get("effective_batch") or _effective_batch(run),
            "lora_scale": (run.started or {}).get("lora_scale"),
            "trainable_params": (run.started or {}).get("trainable_params"),
            "tokens_per_s": float(tokens_per_s.mean()) if len(tokens_per_s) else None,
            "peak_vram_gib": float(np.nanmax(vram)) / 1024**3 if len(vram) else None,
            "best_eval_loss": float(finite_evals.min()) if len(finite_evals) else None,
            "final_eval_loss": final_eval,
            "final_train_loss": final_loss,
            "train_eval_gap": final_eval - final_loss if final_eval is not None and final_loss is not None else None,
            "findings": findings.get(run.id, 0),
        }
    return out


def _effective_batch(run: Run) -> int | None:
    try:
        return comparison.derived_values(run.config or {}).effective_batch
    except (TypeError, ValueError):
        return None  # a value an older engine stored in another form


OUTCOME_ROWS = (
    ("effective_batch", "Effective batch"),
    ("lora_scale", "LoRA scale"),
    ("trainable_params", "Trainable parameters"),
    ("tokens_per_s", "Tokens/s (mean)"),
    ("peak_vram_gib", "Peak VRAM (GiB)"),
    ("best_eval_loss", "Best eval loss"),
    ("final_eval_loss", "Final eval loss"),
    ("train_eval_gap", "Train–eval gap (final eval − final train)"),
    ("findings", "Findings"),
)


def guidance_for(runs: list[Run], differing: list[str]) -> list[dict[str, Any]]:
    """For each differing parameter with guidance: its one line, its page and, for each run that moved it from the
    first run's value, the seed's prediction for that change."""
    guided = content.load_all()
    base = runs[0]
    out = []
    for name in differing:
        if name not in guided:
            continue
        guidance = guided[name]
        # One entry per distinct change: twenty runs of a sweep make a handful of changes, not twenty.
        distinct: dict[tuple[str, str, str], dict[str, Any]] = {}
        for run in runs[1:]:
            old, new = config_value(base, name), config_value(run, name)
            prediction = comparison.prediction_for_change(name, base.config or {}, run.config or {},
                                                       total_steps=run.total_steps)
            if prediction:
                key = (value_text(old), value_text(new), prediction)
                distinct.setdefault(key, {"runs": [], "from": key[0], "to": key[1], "prediction": prediction})
                distinct[key]["runs"].append(run.id)
        out.append({"param": name, "title": guidance.title, "one_line": guidance.one_line,
                    "url": guidance_url(name), "changes": list(distinct.values()), "base": base.id})
    return out


def derived_for(runs: list[Run]) -> list[dict[str, Any]]:
    """The derived values (effective batch, LoRA scale, tokens per step) that differ from the first run's, with
    what each difference means: one entry per distinct change, as guidance_for does."""
    base = runs[0]
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in runs[1:]:
        for change in comparison.derived_changes(base.config or {}, run.config or {}):
            key = (change["name"], change["from"], change["to"])
            out.setdefault(key, {**change, "runs": [], "base": base.id})["runs"].append(run.id)
    return list(out.values())


def not_comparable(runs: list[Run]) -> list[str]:
    return comparison.not_comparable([comparison.TrainedRun(label=f"#{run.id}", dataset_id=run.dataset_id,
                                                      dataset_name=run.dataset.name, config=run.config or {})
                                   for run in runs])


def legend_names(runs: list[Run], differing: list[str]) -> dict[int, str]:
    """#id and the values of (up to three of) the differing parameters; the run's name when nothing differs."""
    shown = differing[:3]
    names = {}
    for run in runs:
        if shown:
            names[run.id] = f"#{run.id} " + ", ".join(f"{p}={value_text(config_value(run, p))}" for p in shown)
        else:
            names[run.id] = f"#{run.id} {run.name}"
    return names


@dataclass
class ComparePage:
    runs: list[Run]
    parameters: list[dict[str, Any]]
    outcomes: dict[int, dict[str, Any]]
    guidance: list[dict[str, Any]]
    legend: dict[int, str]
    differing: list[str] = field(default_factory=list)
    derived: list[dict[str, Any]] = field(default_factory=list)
    not_comparable: list[str] = field(default_factory=list)


def compare_page(runs: list[Run]) -> ComparePage:
    parameters = parameter_rows(runs)
    differing = [row["name"] for row in parameters if row["differs"]]
    return ComparePage(runs=runs, parameters=parameters, outcomes=outcomes(runs),
                       guidance=guidance_for(runs, differing), legend=legend_names(runs, differing),
                       differing=differing, derived=derived_for(runs), not_comparable=not_comparable(runs))


# Export ----------------------------------------------------------------------------------------------------

EXPORT_FIELDS = selectors.POINT_FIELDS


def export_rows(runs: list[Run]) -> Iterable[tuple[Run, list[dict[str, Any]]]]:
    """Each run's full-resolution curve, chunk by chunk (keyset on step, as the run page's replay)."""
    for run in runs:
        for chunk in selectors.run_point_chunks(run):
            yield run, chunk
