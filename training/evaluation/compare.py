"""Evaluation in the Compare page: a row per eval suite in its outcomes (the page's template asks for it by the
compare_evaluation tag: compare/ cannot import this feature, whose jobs run through runs/, which packs compare's
series) and the same prompts' outputs side by side, as JSON for static/js/compare_outputs.js."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import reverse

from training.compare import series
from training.evaluation import selectors
from training.models import Run

BIGGEST_ID = 2**63 - 1  # ids are bigint: a longer number is no suite, not a database error


def compare_section(runs: list[Run]) -> dict[str, Any]:
    """What the Compare page shows of evaluation: each suite's figure per run, and where to ask for outputs."""
    suites = selectors.compare_suite_figures(runs)
    return {"suites": suites,
            "data": {"outputs_url": reverse("compare_outputs"), "runs": ",".join(str(r.id) for r in runs),
                     "page": selectors.COMPARE_OUTPUTS_PAGE,
                     "suites": [{"id": s["id"], "name": s["name"], "label": s["label"], "key": s["key"],
                                 "shared": s["shared"], "runs_evaluated": s["runs_evaluated"],
                                 "values": dict(s["values"])} for s in suites]}}


def _count(params, name: str, *, default: int, low: int, high: int | None) -> int:
    text = (params.get(name) or "").strip()
    allowed = f"a whole number from {low}" + (f" to {high}" if high is not None else "")
    if not text:
        return default
    if not text.isdecimal():
        raise series.CompareError(name, f"{text!r} is not a whole number", allowed)
    value = int(text)
    if value < low or (high is not None and value > high):
        raise series.CompareError(name, f"{value} is out of range", allowed)
    return value


@login_required
def compare_outputs(request: HttpRequest) -> JsonResponse:
    """?runs=1,2 (or sweep=<id>) &suite=<id> [&offset=0&limit=50]: a page of the suite's prompts with every
    compared run's output and the base model's. Scoped like compare_data: another team's run or suite is a 404."""
    try:
        run_ids = series.request_run_ids(request.GET, request.user)
        suite_text = (request.GET.get("suite") or "").strip()
        if not suite_text.isdecimal():
            raise series.CompareError("suite", f"{suite_text!r} is not an eval suite id" if suite_text
                                      else "no eval suite chosen", "an eval suite id, e.g. suite=3")
        offset = _count(request.GET, "offset", default=0, low=0, high=None)
        limit = _count(request.GET, "limit", default=selectors.COMPARE_OUTPUTS_PAGE, low=1,
                       high=selectors.COMPARE_OUTPUTS_MAX)
    except series.CompareError as error:
        return JsonResponse(error.as_dict(), status=400)
    runs = series.runs_for_user(request.user, run_ids)
    if int(suite_text) > BIGGEST_ID:
        raise Http404("No such eval suite")
    suite = selectors.get_suite_for_user(request.user, int(suite_text))
    return JsonResponse(selectors.compare_outputs(runs, suite, offset=offset, limit=limit))
