"""The Compare page, its data requests (series per metric, recomputed on zoom) and its CSV and JSON exports."""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Iterable

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse

from training import compare
from training.findings import findings_for_runs
from training.live import json_safe
from training.models import Run


def _bad_request(request: HttpRequest, error: compare.CompareError, *, as_json: bool) -> HttpResponse:
    if as_json:
        return JsonResponse(error.as_dict(), status=400)
    return render(request, "training/compare_error.html", {"error": error}, status=400)


def _run_ids(request: HttpRequest) -> tuple[int, ...]:
    """From runs=1,2,3, or every run of sweep=<id>."""
    sweep = request.GET.get("sweep", "").strip()
    if sweep and not request.GET.getlist("runs"):
        if not sweep.isdigit():
            raise compare.CompareError("sweep", f"{sweep!r} is not a sweep id", "a sweep id, e.g. sweep=4")
        ids = compare.sweep_run_ids(request.user, int(sweep))
        return compare.parse_run_ids(",".join(map(str, ids)))
    # runs=1,2,3 (a shared link) or runs=1&runs=2 (the run list's checkboxes)
    return compare.parse_run_ids(",".join(request.GET.getlist("runs")))


@login_required
def compare_page(request: HttpRequest) -> HttpResponse:
    try:
        query = compare.parse_query(request.GET, run_ids=_run_ids(request))
    except compare.CompareError as error:
        return _bad_request(request, error, as_json=False)
    runs = compare.runs_for_user(request.user, query.run_ids)
    page = compare.compare_page(runs)
    ids = ",".join(str(r.id) for r in runs)
    origins = compare.wall_time_origins(runs)
    data = {
        "runs": [{"id": r.id, "name": r.name, "legend": page.legend[r.id], "status": r.status,
                  "live": not r.is_terminal, "ws": f"/ws/runs/{r.id}/", "url": reverse("run_detail", args=[r.id]),
                  "config": _config_for(i, page), "t0": origins.get(r.id),
                  "outcomes": json_safe(page.outcomes[r.id])} for i, r in enumerate(runs)],
        "ids": ids,
        "query": {"x": query.x, "smooth": query.smooth, "metric": ",".join(query.metrics), "group": query.group},
        "metrics": {m: compare.METRICS[m] for m in query.metrics},  # metric=loss,eval_loss shows only those
        "x_axes": list(compare.X_AXES),
        "differing": page.differing,
        "outcome_rows": compare.OUTCOME_ROWS,
        "data_url": reverse("compare_data"),
    }
    return render(request, "training/compare.html", {
        "runs": runs,
        "page": page,
        "outcome_rows": [(key, label, [(r.id, page.outcomes[r.id][key]) for r in runs])
                         for key, label in compare.OUTCOME_ROWS],
        "findings": [(r, page.legend[r.id], found) for r, found in zip(runs, findings_for_runs(runs).values())],
        "ids": ids,
        "compare_data": data,
        "max_runs": compare.MAX_RUNS,
    })


def _config_for(index: int, page: compare.ComparePage) -> dict[str, Any]:
    """The index-th run's values of the differing fields (what the scatter and grouping offer)."""
    return {row["name"]: row["raw"][index] for row in page.parameters if row["differs"]}


@login_required
def compare_data(request: HttpRequest) -> JsonResponse:
    """The charts' series for metric(s), x axis, smoothing and x range; asked again on every zoom."""
    try:
        query = compare.parse_query(request.GET, run_ids=_run_ids(request))
    except compare.CompareError as error:
        return _bad_request(request, error, as_json=True)
    runs = compare.runs_for_user(request.user, query.run_ids)
    return JsonResponse(compare.series_payload(runs, query))


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return str(value)


def _csv_lines(runs: list[Run]) -> Iterable[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run_id", "run_name", *compare.EXPORT_FIELDS])
    for run, chunk in compare.export_rows(runs):
        for point in chunk:
            writer.writerow([run.id, run.name, *(_csv_value(point[f]) for f in compare.EXPORT_FIELDS)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _json_chunks(runs: list[Run], page: compare.ComparePage) -> Iterable[str]:
    """{"runs": [{id, name, config, differing, outcomes, points: {field: [...]}}]}, one run at a time."""
    yield '{"fields": ' + json.dumps(list(compare.EXPORT_FIELDS)) + ', "differing": ' + json.dumps(page.differing)
    yield ', "runs": ['
    for index, run in enumerate(runs):
        points: dict[str, list] = {f: [] for f in compare.EXPORT_FIELDS}
        for _, chunk in compare.export_rows([run]):
            for point in chunk:
                for f in compare.EXPORT_FIELDS:
                    points[f].append(point[f])
        body = {"id": run.id, "name": run.name, "config": run.config, "outcomes": page.outcomes[run.id],
                "points": points}
        yield ("," if index else "") + json.dumps(json_safe(body))
    yield "]}"


@login_required
def compare_export(request: HttpRequest, fmt: str) -> HttpResponse:
    """The compared runs' full-resolution points, as CSV or JSON, for the user's team only."""
    try:
        run_ids = _run_ids(request)
    except compare.CompareError as error:
        return _bad_request(request, error, as_json=fmt == "json")
    runs = compare.runs_for_user(request.user, run_ids)
    name = "compare-" + "-".join(str(r.id) for r in runs)
    if fmt == "csv":
        response = StreamingHttpResponse(_csv_lines(runs), content_type="text/csv; charset=utf-8")
    else:
        page = compare.compare_page(runs)
        response = StreamingHttpResponse(_json_chunks(runs, page), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response
