"""What the API reads, from the same selectors as the pages: the run list's rows with filters, ordering and pages; a
run's detail, metrics (JSON and CSV, a step range, downsampling, a resumed run's joined curve, a NaN loss), events,
findings, samples and evaluations; datasets with their statistics; presets; compare; workers."""
import csv
import io
import math
from datetime import datetime, timedelta, timezone

import pytest

from guidance.models import Finding
from tests.factories import make_preset
from training.models import MetricPoint, Run, RunEvent, Sample, Worker
from training.runs import services

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def add_points(run: Run, steps: range, *, eval_every: int = 10, nan_at: int | None = None) -> None:
    MetricPoint.objects.bulk_create([MetricPoint(
        run=run, step=s, epoch=s / 100, tokens_seen=s * 64, loss=math.nan if s == nan_at else 2.0 - s / 100,
        eval_loss=2.1 - s / 100 if s % eval_every == 0 else None, grad_norm=1.0, learning_rate=2e-4,
        tokens_per_s=900.0, peak_vram_bytes=2**20, time=T0 + timedelta(seconds=s)) for s in steps])
    Run.objects.filter(id=run.id).update(last_step=max(steps))


def more_runs(world_team, n: int) -> list[Run]:
    return [services.run_create(team=world_team.team, user=world_team.member, dataset=world_team.dataset,
                                name=f"extra {i}", queue=world_team.run.queue,
                                overrides={"model": "tiny-model", "r": 8 * (i + 1)}) for i in range(n)]


def test_the_run_list_pages_filters_and_orders(api_world):
    a = api_world.a
    extra = more_runs(a, 4)
    Run.objects.filter(id=extra[0].id).update(status=Run.Status.SUCCEEDED)
    Finding.objects.create(run=extra[1], code="flat_loss", severity="warning", step=3, title="Flat", message="m")
    client = api_world.client(a.viewer)
    first = client.get("/api/v1/runs/", page_size=2).json()
    assert first["count"] == 5 and len(first["results"]) == 2 and first["previous"] is None
    assert [r["id"] for r in first["results"]] == [extra[3].id, extra[2].id]  # newest first
    assert "page=2" in first["next"] and "page_size=2" in first["next"]
    last = client.get("/api/v1/runs/", page_size=2, page=3).json()
    assert [r["id"] for r in last["results"]] == [a.run.id] and last["next"] is None
    row = next(r for r in client.get("/api/v1/runs/").json()["results"] if r["id"] == extra[1].id)
    assert row["finding_count"] == 1 and row["status"] == "queued" and row["queue_position"] >= 1
    assert row["url"] == f"/runs/{extra[1].id}/" and row["team_name"] == "Alpha" and row["created_by"] == "alpha-member"
    succeeded = client.get("/api/v1/runs/", status="succeeded").json()
    assert [r["id"] for r in succeeded["results"]] == [extra[0].id]
    both = client.get("/api/v1/runs/?status=succeeded&status=queued").json()
    assert both["count"] == 5
    assert client.get("/api/v1/runs/", name="EXTRA 3").json()["results"][0]["id"] == extra[3].id
    by_name = [r["name"] for r in client.get("/api/v1/runs/", ordering="name").json()["results"]]
    assert by_name == sorted(by_name)
    assert client.get("/api/v1/runs/", dataset=a.dataset.id, team=a.team.id).json()["count"] == 5


def test_the_run_list_takes_the_runs_tables_filters_and_sorts_on_eval_loss(api_world):
    a = api_world.a
    extra = more_runs(a, 3)
    Run.objects.filter(id=extra[0].id).update(tags=["baseline"], best_eval_loss=1.5, config={
        **extra[0].config, "model": "other-model"})
    Run.objects.filter(id=extra[1].id).update(best_eval_loss=1.2, created_by=a.viewer)
    client = api_world.client(a.member)

    def ids(**params):
        return [r["id"] for r in client.get("/api/v1/runs/", **params).json()["results"]]

    assert ids(tag="baseline") == [extra[0].id]
    assert ids(model="other-model") == [extra[0].id]
    assert ids(q="extra 2") == [extra[2].id]
    assert extra[1].id not in ids(mine="true") and len(ids(mine="true")) == 3
    assert ids(ordering="best_eval_loss")[:2] == [extra[1].id, extra[0].id]  # runs without one come after
    row = client.get("/api/v1/runs/", tag="baseline").json()["results"][0]
    assert row["tags"] == ["baseline"] and row["best_eval_loss"] == 1.5
    refused = client.get("/api/v1/runs/", status="banana")
    assert refused.status_code == 400 and "status" in refused.json()["errors"]


def test_a_runs_detail_has_its_config_plan_and_status(api_world):
    a = api_world.a
    body = api_world.client(a.viewer).get(f"/api/v1/runs/{a.run.id}/").json()
    assert body["id"] == a.run.id and body["status"] == "queued" and body["model"] == "tiny-model"
    assert body["config"]["model"] == "tiny-model" and body["config"]["output_dir"].endswith(f"/{a.run.id}")
    assert isinstance(body["preflight"], list) and isinstance(body["plan"], dict)
    assert body["ws"] == f"/ws/runs/{a.run.id}/" and body["dataset"] == a.dataset.id


def test_metrics_as_json_and_csv_with_a_range_and_downsampling(api_world):
    a = api_world.a
    add_points(a.run, range(1, 101), nan_at=50)
    client = api_world.client(a.viewer)
    body = client.get(f"/api/v1/runs/{a.run.id}/metrics/").json()
    assert body["run"] == a.run.id and body["count"] == 100 and body["every"] == 1
    assert body["fields"] == ["step", "epoch", "tokens_seen", "loss", "eval_loss", "grad_norm", "learning_rate",
                              "tokens_per_s", "peak_vram_bytes", "run"]
    points = [dict(zip(body["fields"], p)) for p in body["points"]]
    assert [p["step"] for p in points] == list(range(1, 101))
    assert points[49]["loss"] == "nan" and points[9]["eval_loss"] == pytest.approx(2.0)
    assert points[8]["eval_loss"] is None
    assert points[0] == {"step": 1, "epoch": 0.01, "tokens_seen": 64, "loss": 1.99, "eval_loss": None, "grad_norm": 1.0,
                         "learning_rate": 2e-4, "tokens_per_s": 900.0, "peak_vram_bytes": 2**20, "run": a.run.id}
    ranged = client.get(f"/api/v1/runs/{a.run.id}/metrics/", after=20, before=31).json()
    assert [p[0] for p in ranged["points"]] == list(range(21, 31)) and ranged["count"] == 10
    every = client.get(f"/api/v1/runs/{a.run.id}/metrics/", every=25).json()
    # One in 25 (steps 1, 26, 51, 76), every eval point (10, 20, ...) and the last.
    assert [p[0] for p in every["points"]] == sorted({1, 26, 51, 76, *range(10, 101, 10), 100})
    no_eval_at_end = client.get(f"/api/v1/runs/{a.run.id}/metrics/", every=25, before=99).json()
    assert [p[0] for p in no_eval_at_end["points"]][-2:] == [90, 98]  # the range's last point is kept
    response = client.get(f"/api/v1/runs/{a.run.id}/metrics/", format="csv", after=45, before=52)
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.body.decode())))
    assert rows[0] == body["fields"] and [r[0] for r in rows[1:]] == [str(s) for s in range(46, 52)]
    assert rows[5][body["fields"].index("loss")] == "nan" and rows[5][body["fields"].index("eval_loss")] == "1.6"


def test_a_resumed_runs_metrics_are_its_whole_curve_each_point_naming_the_run_that_logged_it(api_world):
    a = api_world.a
    add_points(a.run, range(1, 41))
    Run.objects.filter(id=a.run.id).update(status=Run.Status.STOPPED, last_checkpoint_path="/ckpt/30",
                                           last_checkpoint_step=30)
    a.run.refresh_from_db()
    resumed = api_world.client(a.member).post(f"/api/v1/runs/{a.run.id}/resume/")
    assert resumed.status_code == 201, resumed.content
    continuation = Run.objects.get(id=resumed.json()["id"])
    assert resumed.json()["resumed_from"] == a.run.id and resumed.json()["resumed_from_step"] == 30
    add_points(continuation, range(31, 61))
    client = api_world.client(a.viewer)
    body = client.get(f"/api/v1/runs/{continuation.id}/metrics/").json()
    assert body["fields"][-1] == "run"
    # Up to the checkpoint the stopped run's points (its 31-40 were trained again), then the continuation's own.
    assert [(p[0], p[-1]) for p in body["points"]] == ([(s, a.run.id) for s in range(1, 31)]
                                                     + [(s, continuation.id) for s in range(31, 61)])
    rows = list(csv.reader(io.StringIO(client.get(f"/api/v1/runs/{continuation.id}/metrics/", format="csv", after=28,
                                                  before=33).body.decode())))
    assert [(r[0], r[-1]) for r in rows] == [("step", "run"), ("29", str(a.run.id)), ("30", str(a.run.id)),
                                             ("31", str(continuation.id)), ("32", str(continuation.id))]


def test_events_findings_samples_evaluations_and_adapter(api_world, tmp_path):
    a = api_world.a
    RunEvent.objects.create(run=a.run, seq=1, type="started", data={"device": "cpu"}, time=T0)
    RunEvent.objects.create(run=a.run, seq=2, type="checkpoint", data={"step": 10, "path": "x"}, time=T0)
    Sample.objects.create(run=a.run, step=10, prompt="Hi?", completion="Hello.", time=T0)
    Finding.objects.create(run=a.run, code="loss_spike", severity="warning", step=6, title="Spike", message="m",
                           evidence={"ratio": 3.5}, parameters=["learning_rate"])
    client = api_world.client(a.viewer)
    base = f"/api/v1/runs/{a.run.id}"
    assert [e["event"] for e in client.get(f"{base}/events/").json()] == ["started", "checkpoint"]
    assert [e["seq"] for e in client.get(f"{base}/events/", after=1).json()] == [2]
    finding = client.get(f"{base}/findings/").json()[0]
    assert finding["code"] == "loss_spike" and finding["evidence"] == {"ratio": 3.5}
    assert finding["guidance"][0]["param"] == "learning_rate"
    assert client.get(f"{base}/samples/").json() == [{"id": Sample.objects.get().id, "step": 10, "prompt": "Hi?",
                                                       "completion": "Hello."}]
    assert client.get(f"{base}/evaluations/").json() == {"evaluations": [], "pending_suites": [], "active": False}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    Run.objects.filter(id=a.run.id).update(adapter_path=str(adapter))
    files = client.get(f"{base}/adapter/").json()
    assert files == [{"name": "adapter_config.json", "size": 9, "url": f"{base}/adapter/adapter_config.json"},
                     {"name": "adapter_model.safetensors", "size": 100,
                      "url": f"{base}/adapter/adapter_model.safetensors"}]
    download = client.get(f"{base}/adapter/adapter_config.json")
    assert download.body == b'{"r": 16}'
    assert client.get(f"{base}/adapter/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get(f"{base}/adapter/.hidden").status_code == 404


def test_datasets_with_their_file_and_statistics(api_world):
    a = api_world.a
    client = api_world.client(a.viewer)
    listed = client.get("/api/v1/datasets/").json()
    assert listed["count"] == 1 and listed["results"][0]["name"] == "Alpha data"
    detail = client.get(f"/api/v1/datasets/{a.dataset.id}/").json()
    assert detail["rows"] == 64 and detail["format"] == "messages" and detail["file"]["kind"] == "jsonl"
    assert detail["statistics"] == {}
    started = api_world.client(a.member).post(f"/api/v1/datasets/{a.dataset.id}/profile/",
                                              {"model": "tiny-model", "max_length": 128})
    assert started.status_code == 202, started.content
    stats = client.get(f"/api/v1/datasets/{a.dataset.id}/").json()["statistics"]
    assert stats["state"] == "queued" and stats["total"] == 64 and stats["done"] == 0 and "token" not in stats
    assert stats["params"]["model"] == "tiny-model" and stats["params"]["max_length"] == 128
    assert stats["params"]["batch_size"] == 8 and stats["params"]["seed"] == 3407


def test_presets_me_workers_and_compare(api_world):
    a = api_world.a
    preset = make_preset(a.team, name="team default", r=16, learning_rate=2e-4)
    client = api_world.client(a.member)
    presets = client.get("/api/v1/presets/", team=a.team.id).json()["results"]
    assert [p["name"] for p in presets] == ["team default"] and presets[0]["config"]["r"] == 16
    me = client.get("/api/v1/me/").json()
    assert me["teams"] == [{"id": a.team.id, "name": "Alpha", "slug": a.team.slug, "role": "member"}]
    worker = Worker.objects.create(name="gpu@box", hostname="box", queues=["gpu"], slots=2)
    worker.current_runs.add(a.run, api_world.b.run)
    workers = client.get("/api/v1/workers/").json()
    assert workers[0]["name"] == "gpu@box" and workers[0]["runs"] == [{"id": a.run.id, "name": "Alpha run"}]
    assert workers[0]["hidden_runs"] == 1 and workers[0]["busy"] == 2 and workers[0]["alive"] is True
    other = services.run_create(team=a.team, user=a.member, dataset=a.dataset, preset=preset, name="rank 8",
                                queue=a.run.queue, overrides={"model": "tiny-model", "r": 8})
    add_points(a.run, range(1, 21))
    add_points(other, range(1, 21))
    body = client.get("/api/v1/compare/", runs=f"{a.run.id},{other.id}", metric="loss").json()
    assert [r["id"] for r in body["runs"]] == [a.run.id, other.id]
    assert "r" in body["differing"] and body["runs"][1]["config"]["r"] == 8
    loss = body["series"]["metrics"]["loss"]["runs"]
    assert list(body["series"]["metrics"]) == ["loss"] and [r["id"] for r in loss] == [a.run.id, other.id]
    assert loss[0]["points"] == 20 and loss[0]["raw"]["x"][:3] == [1, 2, 3]
    export = client.get("/api/v1/compare/export/", runs=f"{a.run.id},{other.id}", format="csv")
    rows = list(csv.reader(io.StringIO(export.body.decode())))
    assert rows[0][:3] == ["run_id", "run_name", "step"] and len(rows) == 41
