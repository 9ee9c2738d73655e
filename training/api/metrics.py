"""A run's metric points for the API: its whole curve (joined across its resume chain, as the run page draws it), a
step range, one point in `every`, as JSON or CSV, streamed a chunk of the replay's size at a time. Each point's last
field, `run`, is the run that logged it: a continuation's steps up to where it resumed are an earlier run's (keep
run == the run asked for to get only its own).

    ?after=S     only steps > S          ?before=S   only steps < S
    ?every=N     the 1st, N+1th, 2N+1th ... point of the range, every point with an eval loss, and the last one
    ?format=     json (default): {"run", "fields", "every", "points": [[value, ...], ...], "count"}, each point a
                 list in the order of "fields" (compact: a 100,000-step curve is 9.7 MB, not 21.5 as objects);
                 csv: a header row, then a row a point
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Mapping

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter

from training import selectors
from training.api.errors import bad_request
from training.engine.events import json_safe
from training.models import Run

FIELDS = selectors.CURVE_FIELDS
EVAL = FIELDS.index("eval_loss")
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
    if not text.isdecimal() or int(text) < low:
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


BATCH = 10_000  # rows per piece of the streamed body


def kept_rows(run: Run, query: MetricsQuery) -> Iterable[list[tuple]]:
    """The points the query keeps, as tuples of FIELDS in step order, BATCH at a time."""
    rows = selectors.run_point_rows(run, after_step=query.after, before_step=query.before)
    if query.every == 1:
        while batch := list(islice(rows, BATCH)):
            yield batch
        return
    kept: list[tuple] = []
    held: tuple | None = None  # the range's last point, if `every` skipped it
    for index, row in enumerate(rows):
        if index % query.every == 0 or row[EVAL] is not None:
            kept.append(row)
            held = None
            if len(kept) == BATCH:
                yield kept
                kept = []
        else:
            held = row
    if held is not None:
        kept.append(held)
    if kept:
        yield kept


def _json_rows(rows: list[tuple]) -> str:
    text = json.dumps(rows)
    # Only numbers are in a row, so these tokens can only be non-finite floats: the pages' strings instead.
    if "NaN" in text or "Infinity" in text:
        text = json.dumps(json_safe(rows))
    return text[1:-1]


def json_body(run: Run, query: MetricsQuery) -> Iterable[str]:
    yield f'{{"run": {run.id}, "fields": {json.dumps(list(FIELDS))}, "every": {query.every}, "points": ['
    count = 0
    for rows in kept_rows(run, query):
        yield ("," if count else "") + _json_rows(rows)
        count += len(rows)
    yield f'], "count": {count}}}'


def csv_body(run: Run, query: MetricsQuery) -> Iterable[str]:
    """A header row, then a row a point; an empty cell is a value the point lacks, and a non-finite one is written
    nan, inf or -inf (as the Compare page's export writes them: Python's own float text)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    for rows in kept_rows(run, query):
        writer.writerows(rows)
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
