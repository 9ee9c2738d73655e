"""A script's whole flow against the real server: daphne serving dashboard.asgi over real HTTP and websockets, the
session's Celery worker training the tiny model. With only a token, it uploads a dataset, starts a run, follows it
over the websocket to its end, downloads the adapter and the metrics, starts and stops a sweep; once the token is
revoked, neither the API nor the websocket admits it."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from dashboard.tokens.services import token_create, token_revoke
from tests.factories import idle_queue, make_member, make_team, make_user, tiny_overrides
from training.engine.tiny import write_dataset

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def follow(ws_url: str, token: str, timeout: float = 180) -> list[dict]:
    """What `tuneboard runs watch` does: replay, then live messages until the run's status is terminal."""
    messages = []
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as socket:
        socket.send(json.dumps({"type": "replay", "after_step": 0}))
        while True:
            message = json.loads(socket.recv(timeout=timeout))
            messages.append(message)
            if message["type"] == "replay" and message["done"] and message["status"]["is_terminal"]:
                return messages
            if message["type"] == "status" and message["is_terminal"]:
                return messages


def test_a_token_uploads_trains_follows_downloads_and_sweeps(server, celery_worker, tiny_model, tmp_path):
    team = make_team("Scripted")
    user = make_member(team, user=make_user("scripter"))
    token_row, token = token_create(user=user, name="ci")
    api = httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)

    data = write_dataset(tmp_path / "chat.jsonl", n=64, fmt="messages")
    uploaded = api.post("/datasets/", data={"name": "chat"}, files={"file": ("chat.jsonl", data.read_bytes())})
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    assert dataset["rows"] == 64 and dataset["format"] == "messages" and dataset["team"] == team.id

    created = api.post("/runs/", json={"dataset": dataset["id"], "name": "from a script",
                                       "overrides": tiny_overrides(tiny_model, max_steps=20, save_steps=10)})
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] in ("queued", "starting", "running") and run["ws"] == f"/ws/runs/{run['id']}/"

    messages = follow(f"ws://127.0.0.1:{server.port}{run['ws']}", token)
    points = [p["step"] for m in messages if m["type"] == "points" for p in m["points"] if p["kind"] == "metrics"]
    replayed = [p["step"] for m in messages if m["type"] == "replay" for p in m["points"] if p["loss"] is not None]
    assert sorted(set(points + replayed)) == list(range(1, 21))
    last = messages[-1]
    assert (last["status"]["status"] if last["type"] == "replay" else last["status"]) == "succeeded"

    detail = api.get(f"/runs/{run['id']}/").json()
    assert detail["status"] == "succeeded" and detail["last_step"] == 20 and detail["progress"] == 1.0
    files = api.get(f"/runs/{run['id']}/adapter/").json()
    names = {f["name"] for f in files}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    weights = next(f for f in files if f["name"] == "adapter_model.safetensors")
    download = httpx.get(f"{server.url}{weights['url']}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert download.status_code == 200 and len(download.content) == weights["size"] > 0
    on_disk = Path(detail["config"]["output_dir"]) / "adapter" / "adapter_model.safetensors"
    assert download.content == on_disk.read_bytes()
    metrics = api.get(f"/runs/{run['id']}/metrics/", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(metrics.text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 21)) and all(float(r["loss"]) > 0 for r in rows)

    sweep = api.post("/sweeps/", json={"template": "r", "dataset": dataset["id"], "queue": idle_queue(),
                                       "overrides": tiny_overrides(tiny_model, max_steps=10, eval_split=0.1,
                                                                   eval_steps=5),
                                       "params": {"values": [2, 4]}})
    assert sweep.status_code == 201, sweep.text
    members = sweep.json()["state"]["phases"][0]["members"]
    assert [m["name"] for m in members] == ["r=2", "r=4"] and all(m["status"] == "queued" for m in members)
    stopped = api.post(f"/sweeps/{sweep.json()['id']}/stop/")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"

    token_revoke(token=token_row, user=user)
    refused = api.get("/me/")
    assert refused.status_code == 401 and "was revoked at" in refused.json()["detail"]
    with pytest.raises(InvalidStatus) as rejected:
        follow(f"ws://127.0.0.1:{server.port}{run['ws']}", token, timeout=10)
    assert rejected.value.response.status_code == 403  # daphne turns a close before accept into a 403
