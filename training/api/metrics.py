"""A run's metric points for the API: its whole curve (joined across its resume chain, as the run page draws it), a
step range, one point in `every`, as JSON or CSV, streamed a chunk of the replay's size at a time.

    ?after=S     only steps > S          ?before=S   only steps < S
    ?every=N     the 1st, N+1th, 2N+1th ... point of the range, every point with an eval loss, and the last one
    ?format=     json (default): {"run", "fields", "every", "points": [{field: value}], "count"}; csv: a header row
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter

from training import selectors
from training.api.errors import bad_request
from training.compare.export import csv_value
from training.engine.events import json_safe
from training.models import Run

FIELDS = selectors.POINT_FIELDS
FORMATS = ("json", "csv")
PARAMETERS = [
    OpenApiParameter("after", int, description="Only steps after this one"),
    OpenApiParameter("before", int, description="Only steps before this one"),
    OpenApiParameter("every", int, description="Keep one point in N (eval points and the last are always kept)"),
    OpenApiParameter("format", str, enum=list(FORMATS), description="json (default) or csv"),
]


@dataclass(frozen=True)
class MetricsQuery:
    after: int = 0
    before: int | None = None
    every: int = 1
    format: str = "json"


def _whole(params: Mapping[str, str], name: str, *, low: int, meaning: str) -> int | None:
    text = (params.get(name) or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < low:
        raise bad_request({name: f"{text!r} is not {meaning}; give a whole number >= {low}"})
    return int(text)


def parse(params: Mapping[str, str]) -> MetricsQuery:
    """The query string as a MetricsQuery; a 400 naming the parameter otherwise."""
    after = _whole(params, "after", low=0, meaning="a step") or 0
    before = _whole(params, "before", low=1, meaning="a step")
    every = _whole(params, "every", low=1, meaning="a count of points") or 1
    fmt = (params.get("format") or "json").strip().lower()
    if fmt not in FORMATS:
        raise bad_request({"format": f"{fmt!r} is not a format of the metrics; allowed: {', '.join(FORMATS)}"})
    if before is not None and before <= after + 1:
        raise bad_request({"before": f"the range (after {after}, before {before}) holds no step; give before > "
                                     "after + 1"})
    return MetricsQuery(after=after, before=before, every=every, format=fmt)


def kept_chunks(run: Run, query: MetricsQuery) -> Iterable[list[dict[str, Any]]]:
    """The points the query keeps, a replay chunk at a time, in step order."""
    index = 0
    held: dict[str, Any] | None = None  # the range's last point, if `every` skipped it
    for chunk in selectors.run_point_chunks(run, after_step=query.after, before_step=query.before):
        if query.every == 1:
            yield chunk
            continue
        kept = []
        for point in chunk:
            if index % query.every == 0 or point["eval_loss"] is not None:
                kept.append(point)
                held = None
            else:
                held = point
            index += 1
        if kept:
            yield kept
    if held is not None:
        yield [held]


def _json_points(chunk: list[dict[str, Any]]) -> str:
    text = json.dumps(chunk)
    # Only numbers are in a point, so these tokens can only be non-finite floats: the pages' strings instead.
    if "NaN" in text or "Infinity" in text:
        text = json.dumps(json_safe(chunk))
    return text[1:-1]


def json_body(run: Run, query: MetricsQuery) -> Iterable[str]:
    yield f'{{"run": {run.id}, "fields": {json.dumps(list(FIELDS))}, "every": {query.every}, "points": ['
    count = 0
    for chunk in kept_chunks(run, query):
        yield ("," if count else "") + _json_points(chunk)
        count += len(chunk)
    yield f'], "count": {count}}}'


def csv_body(run: Run, query: MetricsQuery) -> Iterable[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    for chunk in kept_chunks(run, query):
        writer.writerows([csv_value(point[f]) for f in FIELDS] for point in chunk)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def response(run: Run, query: MetricsQuery) -> StreamingHttpResponse:
    if query.format == "csv":
        out = StreamingHttpResponse(csv_body(run, query), content_type="text/csv; charset=utf-8")
        out["Content-Disposition"] = f'attachment; filename="run-{run.id}-metrics.csv"'
        return out
    return StreamingHttpResponse(json_body(run, query), content_type="application/json")
