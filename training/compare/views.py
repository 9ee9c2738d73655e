"""The Compare page, its data requests (series per metric, recomputed on zoom) and its CSV and JSON exports."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse

from training.compare import export, series
from training.engine.events import json_safe
from training.selectors import findings_for_runs


def _bad_request(request: HttpRequest, error: series.CompareError, *, as_json: bool) -> HttpResponse:
    if as_json:
        return JsonResponse(error.as_dict(), status=400)
    return render(request, "training/compare_error.html", {"error": error}, status=400)


@login_required
def compare_page(request: HttpRequest) -> HttpResponse:
    try:
        query = series.parse_query(request.GET, run_ids=series.request_run_ids(request.GET, request.user))
    except series.CompareError as error:
        return _bad_request(request, error, as_json=False)
    runs = series.runs_for_user(request.user, query.run_ids)
    page = series.compare_page(runs)
    ids = ",".join(str(r.id) for r in runs)
    origins = series.wall_time_origins(runs)
    data = {
        "runs": [{"id": r.id, "name": r.name, "legend": page.legend[r.id], "status": r.status,
                  "live": not r.is_terminal, "ws": f"/ws/runs/{r.id}/", "url": reverse("run_detail", args=[r.id]),
                  "config": _config_for(i, page), "t0": origins.get(r.id),
                  "outcomes": json_safe(page.outcomes[r.id])} for i, r in enumerate(runs)],
        "ids": ids,
        "query": {"x": query.x, "smooth": query.smooth, "metric": ",".join(query.metrics), "group": query.group},
        "metrics": {m: series.METRICS[m] for m in query.metrics},  # metric=loss,eval_loss shows only those
        "x_axes": list(series.X_AXES),
        "differing": page.differing,
        "outcome_rows": series.OUTCOME_ROWS,
        "data_url": reverse("compare_data"),
    }
    return render(request, "training/compare.html", {
        "runs": runs,
        "page": page,
        "outcome_rows": [(key, label, [(r.id, page.outcomes[r.id][key]) for r in runs])
                         for key, label in series.OUTCOME_ROWS],
        "findings": [(r, page.legend[r.id], found) for r, found in zip(runs, findings_for_runs(runs).values())],
        "ids": ids,
        "compare_data": data,
        "max_runs": series.MAX_RUNS,
    })


def _config_for(index: int, page: series.ComparePage) -> dict[str, Any]:
    """The index-th run's values of the differing fields (what the scatter and grouping offer)."""
    return {row["name"]: row["raw"][index] for row in page.parameters if row["differs"]}


@login_required
def compare_data(request: HttpRequest) -> JsonResponse:
    """The charts' series for metric(s), x axis, smoothing and x range; asked again on every zoom."""
    try:
        query = series.parse_query(request.GET, run_ids=series.request_run_ids(request.GET, request.user))
    except series.CompareError as error:
        return _bad_request(request, error, as_json=True)
    runs = series.runs_for_user(request.user, query.run_ids)
    return JsonResponse(series.series_payload(runs, query))


@login_required
def compare_export(request: HttpRequest, fmt: str) -> HttpResponse:
    """The compared runs' full-resolution points, as CSV or JSON, for the user's team only."""
    try:
        run_ids = series.request_run_ids(request.GET, request.user)
    except series.CompareError as error:
        return _bad_request(request, error, as_json=fmt == "json")
    runs = series.runs_for_user(request.user, run_ids)
    name = "compare-" + "-".join(str(r.id) for r in runs)
    if fmt == "csv":
        response = StreamingHttpResponse(export.csv_lines(runs), content_type="text/csv; charset=utf-8")
    else:
        page = series.compare_page(runs)
        response = StreamingHttpResponse(export.json_chunks(runs, page), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response
