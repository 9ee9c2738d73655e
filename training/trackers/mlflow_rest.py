"""A run mirrored to an MLflow tracking server over MLflow's REST API (/api/2.0/mlflow/...): its config as params,
its points as metric history by step, its findings and end as tags, its end status. Pure: no Django.

The REST API rather than the `mlflow` client library: each team has its own server and credentials, and the client
reads those from process-wide environment variables (MLFLOW_TRACKING_TOKEN, ...), which runs of two teams training
at once in one worker would share; its retries (up to minutes of backoff) are set the same way. Here each run's
server, credentials, timeout and retries are its own."""
from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from training.trackers.points import SERIES, FindingNote, Point, RunEnd, finite_or_text, value_text

KEYS = {name: key for name, _, key in SERIES}
# MLflow's own limits (mlflow/utils/validation.py): per log-batch request, and a param's value.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "stopped": "KILLED", "lost": "FAILED"}


class MlflowError(Exception):
    """The server cannot be used for this run; the message says what it answered, or why it was not reached."""


@dataclass(frozen=True)
class MlflowServer:
    """A team's MLflow tracking server: its address, the experiment its runs go in, and how to sign in (a token
    for Bearer auth, or a username and password for Basic auth, or neither)."""

    uri: str
    experiment: str
    username: str = ""
    password: str = ""
    token: str = ""

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def uri_error(uri: str) -> str:
    """Why `uri` is not an MLflow server address this client can talk to; empty when it is."""
    parsed = urllib.parse.urlsplit(uri.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "give the server's http:// or https:// address, e.g. http://mlflow.internal:5000"
    if parsed.query or parsed.fragment:
        return "the server's address only, without ?query or #fragment"
    return ""


class MlflowRest:
    """MLflow's REST calls for one server: JSON in and out, a timeout on each, a few quick retries when the server
    is unreachable or answers 5xx/429; a refusal (bad credentials, a bad request) is not retried."""

    def __init__(self, server: MlflowServer, *, timeout_s: float = 10, retries: int = 2,
                 sleep: Callable[[float], None] = time.sleep):
        self.server, self.timeout_s, self.retries, self.sleep = server, timeout_s, retries, sleep

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "tuneboard"}
        if self.server.token:
            headers["Authorization"] = f"Bearer {self.server.token}"
        elif self.server.username:
            pair = f"{self.server.username}:{self.server.password}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        return headers

    def call(self, method: str, endpoint: str, body: dict[str, Any] | None = None,
             query: dict[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.server.uri.rstrip('/')}/api/2.0/mlflow/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=data, method=method, headers=self._headers())
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode() or "{}")
            except urllib.error.HTTPError as exc:  # before URLError, its base
                if (exc.code < 500 and exc.code != 429) or attempt >= self.retries:
                    raise _http_error(exc) from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt >= self.retries:
                    reason = getattr(exc, "reason", None) or exc
                    raise MlflowError(f"could not reach {self.server.uri} ({reason})") from None
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise MlflowError(f"{self.server.uri} did not answer as an MLflow server (not JSON)") from None
            self.sleep(0.5 * 2**attempt)
            attempt += 1


def _http_error(exc: urllib.error.HTTPError) -> MlflowError:
    try:
        body = json.loads(exc.read().decode() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        body = {}
    detail = body.get("message") or exc.reason
    if exc.code in (401, 403):
        return MlflowError(f"the server refused the credentials (HTTP {exc.code}: {detail}); a team admin can set "
                           "them on the team's Trackers page")
    code = body.get("error_code")
    return MlflowError(f"the server answered HTTP {exc.code}{f' {code}' if code else ''}: {detail}")


class MlflowWriter:
    """One Tuneboard run as one MLflow run of the team's experiment (created on first use)."""

    name = "MLflow"

    def __init__(self, server: MlflowServer, *, run_name: str, tags: dict[str, str], user: str = "",
                 rest: MlflowRest | None = None):
        self.server, self.run_name, self.tags, self.user = server, run_name, tags, user
        self.rest = rest or MlflowRest(server)
        self.run_id = ""

    def open(self, config: dict[str, Any], *, title: str = "", start_time: float | None = None) -> dict[str, Any]:
        experiment_id = self._experiment_id()
        tags = {**self.tags, "mlflow.runName": self.run_name, "mlflow.source.name": "tuneboard"}
        if self.user:
            tags["mlflow.user"] = self.user
        answer = self.rest.call("POST", "runs/create", {
            "experiment_id": experiment_id, "run_name": self.run_name, "user_id": self.user,
            "start_time": int((start_time or time.time()) * 1000), "tags": _pairs(tags, MAX_TAG_VALUE)})
        self.run_id = answer["run"]["info"]["run_id"]
        params = _pairs({name: value_text(value) for name, value in config.items()}, MAX_PARAM_VALUE)
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self._batch(params=params[start:start + MAX_PARAMS_PER_BATCH])
        return {"run_id": self.run_id, "experiment_id": experiment_id,
                "url": self.server.run_url(experiment_id, self.run_id)}

    def _experiment_id(self) -> str:
        try:
            found = self.rest.call("GET", "experiments/get-by-name", query={"experiment_name": self.server.experiment})
            return found["experiment"]["experiment_id"]
        except MlflowError as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
        try:
            return self.rest.call("POST", "experiments/create", {"name": self.server.experiment})["experiment_id"]
        except MlflowError as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):  # another run created it meanwhile
                raise
        found = self.rest.call("GET", "experiments/get-by-name", query={"experiment_name": self.server.experiment})
        return found["experiment"]["experiment_id"]

    def points(self, points: Iterable[Point]) -> None:
        metrics = [{"key": KEYS[name], "value": finite_or_text(value), "timestamp": int(point.time * 1000),
                    "step": point.step} for point in points for name, value in point.values.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self._batch(metrics=metrics[start:start + MAX_METRICS_PER_BATCH])

    def finding(self, note: FindingNote) -> None:
        self._batch(tags=_pairs({f"tuneboard.finding.{note.step}.{note.code}": note.text}, MAX_TAG_VALUE))

    def end(self, end: RunEnd) -> None:
        tags = {"tuneboard.status": end.status}
        if end.error:
            tags["tuneboard.error"] = end.error
        self._batch(tags=_pairs(tags, MAX_TAG_VALUE))
        self.rest.call("POST", "runs/update", {"run_id": self.run_id, "status": STATUS.get(end.status, "FAILED"),
                                               "end_time": int(time.time() * 1000)})

    def close(self) -> None:
        """Nothing held open between calls."""

    def _batch(self, *, metrics: list | None = None, params: list | None = None, tags: list | None = None) -> None:
        self.rest.call("POST", "runs/log-batch", {"run_id": self.run_id, "metrics": metrics or [],
                                                  "params": params or [], "tags": tags or []})


def _pairs(values: dict[str, str], limit: int) -> list[dict[str, str]]:
    return [{"key": key[:250], "value": str(value)[:limit]} for key, value in values.items()]
