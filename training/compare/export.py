"""The compared runs' full-resolution points as CSV or JSON, streamed a run's chunk at a time (the Compare page's
exports and the API's)."""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Iterable

from training.compare import series
from training.engine.events import json_safe
from training.models import Run


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return str(value)


def csv_lines(runs: list[Run]) -> Iterable[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run_id", "run_name", *series.EXPORT_FIELDS])
    for run, chunk in series.export_rows(runs):
        for point in chunk:
            writer.writerow([run.id, run.name, *(csv_value(point[f]) for f in series.EXPORT_FIELDS)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def json_chunks(runs: list[Run], page: series.ComparePage) -> Iterable[str]:
    """{"runs": [{id, name, config, differing, outcomes, points: {field: [...]}}]}, one run at a time."""
    yield '{"fields": ' + json.dumps(list(series.EXPORT_FIELDS)) + ', "differing": ' + json.dumps(page.differing)
    yield ', "runs": ['
    for index, run in enumerate(runs):
        points: dict[str, list] = {f: [] for f in series.EXPORT_FIELDS}
        for _, chunk in series.export_rows([run]):
            for point in chunk:
                for f in series.EXPORT_FIELDS:
                    points[f].append(point[f])
        body = {"id": run.id, "name": run.name, "config": run.config, "outcomes": page.outcomes[run.id],
                "points": points}
        yield ("," if index else "") + json.dumps(json_safe(body))
    yield "]}"
