"""The MLflow REST client's own rules, against a small stand-in HTTP server on a local port: how it signs in, what
it retries and what it refuses at once, the messages a run's warning shows, and what a run's mirror sends (params
in batches of 100, metrics by step in batches of 1000, a NaN loss as "NaN", the end status). The real server's
reading of it is tests/integration/trackers/."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from training.trackers.mlflow_rest import MlflowError, MlflowRest, MlflowServer, MlflowWriter, uri_error
from training.trackers.points import FindingNote, Point, RunEnd


class StandIn:
    """Answers each request with the next scripted (status, body) for its endpoint, else 200 {}; keeps requests."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: dict[str, list[tuple[int, dict]]] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                endpoint = self.path.split("/api/2.0/mlflow/", 1)[-1].split("?")[0]
                stand_in.requests.append({"method": self.command, "endpoint": endpoint, "path": self.path,
                                          "body": body, "auth": self.headers.get("Authorization")})
                scripted = stand_in.script.get(endpoint)
                status, answer = scripted.pop(0) if scripted else (200, {})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, endpoint: str) -> list[dict]:
        return [r for r in self.requests if r["endpoint"] == endpoint]


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    server.server.shutdown()


def rest(uri, **server):
    return MlflowRest(MlflowServer(uri=uri, experiment="exp", **server), sleep=lambda s: None)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_token_signs_in_as_bearer_and_a_username_as_basic(stand_in):
    rest(stand_in.uri, token="t0k").call("GET", "experiments/search")
    rest(stand_in.uri, username="ana", password="pw").call("GET", "experiments/search")
    rest(stand_in.uri).call("GET", "experiments/search")
    assert [r["auth"] for r in stand_in.requests] == ["Bearer t0k", "Basic YW5hOnB3", None]


def test_a_busy_server_is_asked_again_and_a_refusal_is_not(stand_in):
    stand_in.script["runs/get"] = [(503, {}), (200, {"run": {"ok": 1}})]
    assert rest(stand_in.uri).call("GET", "runs/get") == {"run": {"ok": 1}}
    stand_in.script["runs/update"] = [(401, {"error_code": "UNAUTHENTICATED", "message": "bad token"})]
    with pytest.raises(MlflowError, match=r"refused the credentials \(HTTP 401: bad token\)"):
        rest(stand_in.uri).call("POST", "runs/update", {})
    stand_in.script["runs/create"] = [(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "no such exp"})]
    with pytest.raises(MlflowError, match="HTTP 400 INVALID_PARAMETER_VALUE: no such exp"):
        rest(stand_in.uri).call("POST", "runs/create", {})
    assert [r["endpoint"] for r in stand_in.requests] == ["runs/get", "runs/get", "runs/update", "runs/create"]


def test_an_unreachable_server_says_so_after_its_retries():
    slept = []
    client = MlflowRest(MlflowServer(uri=f"http://127.0.0.1:{dead_port()}", experiment="e"), sleep=slept.append)
    with pytest.raises(MlflowError, match=r"could not reach http://127\.0\.0\.1:\d+ \(.*refused"):
        client.call("GET", "experiments/search")
    assert slept == [0.5, 1.0]


def test_an_address_must_be_http_or_https():
    assert uri_error("http://mlflow.internal:5000") == "" and uri_error("https://mlflow.example/prefix") == ""
    for bad in ("mlflow.internal:5000", "file:///tmp/mlruns", "databricks", "http://", "http://h/?x=1"):
        assert uri_error(bad), bad


def test_a_run_mirror_creates_the_experiment_once_and_sends_by_batch(stand_in):
    stand_in.script["experiments/get-by-name"] = [(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"})]
    stand_in.script["experiments/create"] = [(200, {"experiment_id": "12"})]
    stand_in.script["runs/create"] = [(200, {"run": {"info": {"run_id": "abc"}}})]
    server = MlflowServer(uri=stand_in.uri + "/", experiment="Team exp")
    writer = MlflowWriter(server, run_name="#3 demo", tags={"tuneboard.run_id": "3"}, user="ana",
                          rest=MlflowRest(server, sleep=lambda s: None))
    config = {f"field_{i:03d}": i for i in range(150)} | {"target_modules": ["q_proj", "v_proj"], "note": "x" * 7000}
    links = writer.open(config, start_time=1700000000.0)
    assert links == {"run_id": "abc", "experiment_id": "12", "url": f"{stand_in.uri}/#/experiments/12/runs/abc"}
    (create,) = stand_in.of("runs/create")
    assert create["body"]["experiment_id"] == "12" and create["body"]["start_time"] == 1700000000000
    tags = {t["key"]: t["value"] for t in create["body"]["tags"]}
    assert tags["mlflow.runName"] == "#3 demo" and tags["tuneboard.run_id"] == "3" and tags["mlflow.user"] == "ana"
    batches = [r["body"]["params"] for r in stand_in.of("runs/log-batch")]
    assert [len(b) for b in batches] == [100, 52]
    params = {p["key"]: p["value"] for b in batches for p in b}
    assert params["field_007"] == "7" and params["target_modules"] == '["q_proj", "v_proj"]'
    assert len(params["note"]) == 6000  # MLflow's limit on a param's value
    stand_in.requests.clear()

    writer.points([Point(step=s, time=1700000000.0 + s, values={"loss": 1.0, "grad_norm": 2.0}) for s in range(600)])
    writer.points([Point(step=600, time=1700000600.0, values={"loss": float("nan")})])
    metrics = [r["body"]["metrics"] for r in stand_in.of("runs/log-batch")]
    assert [len(m) for m in metrics] == [1000, 200, 1]
    assert metrics[0][:2] == [{"key": "loss", "value": 1.0, "timestamp": 1700000000000, "step": 0},
                              {"key": "grad_norm", "value": 2.0, "timestamp": 1700000000000, "step": 0}]
    assert metrics[2] == [{"key": "loss", "value": "NaN", "timestamp": 1700000600000, "step": 600}]
    stand_in.requests.clear()

    writer.finding(FindingNote(step=40, code="loss_spike", title="Spike", message="lower the rate"))
    writer.end(RunEnd(status="stopped", step=600))
    finding, status = (r["body"]["tags"] for r in stand_in.of("runs/log-batch"))
    assert finding == [{"key": "tuneboard.finding.40.loss_spike", "value": "**Spike** (loss_spike at step 40): "
                                                                         "lower the rate"}]
    assert status == [{"key": "tuneboard.status", "value": "stopped"}]
    (update,) = stand_in.of("runs/update")
    assert update["body"]["run_id"] == "abc" and update["body"]["status"] == "KILLED"


def test_an_experiment_another_run_just_made_is_found(stand_in):
    stand_in.script["experiments/get-by-name"] = [(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"}),
                                                  (200, {"experiment": {"experiment_id": "9"}})]
    stand_in.script["experiments/create"] = [(400, {"error_code": "RESOURCE_ALREADY_EXISTS"})]
    stand_in.script["runs/create"] = [(200, {"run": {"info": {"run_id": "r"}}})]
    server = MlflowServer(uri=stand_in.uri, experiment="e")
    links = MlflowWriter(server, run_name="n", tags={}, rest=MlflowRest(server, sleep=lambda s: None)).open({})
    assert links["experiment_id"] == "9"
