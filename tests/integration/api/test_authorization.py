"""The pages' authorization matrix, repeated for the API: another team's objects are 404s exactly like missing ones
(in every read and write, and in the lists), a viewer reads but every write is a 403, a member writes, registering
a path needs an admin; nothing is changed by a refused request."""

import pytest

from dashboard.tokens.services import token_create
from tests.factories import make_preset, make_user
from training.models import Dataset, Run, Sweep

from .conftest import ApiClient, upload

pytestmark = pytest.mark.django_db


def object_paths(world_team) -> list[str]:
    run, dataset = world_team.run, world_team.dataset
    return [f"/api/v1/runs/{run.id}/", f"/api/v1/runs/{run.id}/metrics/", f"/api/v1/runs/{run.id}/metrics/?format=csv",
            f"/api/v1/runs/{run.id}/events/", f"/api/v1/runs/{run.id}/findings/", f"/api/v1/runs/{run.id}/samples/",
            f"/api/v1/runs/{run.id}/adapter/", f"/api/v1/runs/{run.id}/adapter/adapter_config.json",
            f"/api/v1/runs/{run.id}/evaluations/", f"/api/v1/runs/{run.id}/tensorboard/",
            f"/api/v1/datasets/{dataset.id}/"]


def test_another_teams_objects_are_404_like_missing_ones(api_world):
    alice = api_world.client(api_world.a.member)
    for path in object_paths(api_world.b):
        response = alice.get(path)
        assert response.status_code == 404, path
        assert set(response.json()) == {"detail"}, path
    missing = alice.get("/api/v1/runs/999999999/")
    assert missing.status_code == 404 and missing.json() == alice.get(f"/api/v1/runs/{api_world.b.run.id}/").json()
    for path in (f"/api/v1/runs/{api_world.b.run.id}/stop/", f"/api/v1/runs/{api_world.b.run.id}/resume/",
                 f"/api/v1/datasets/{api_world.b.dataset.id}/profile/"):
        assert alice.post(path, {"model": "x"}).status_code == 404, path
    # The compare data names the run that is missing for this caller.
    response = alice.get("/api/v1/compare/", runs=f"{api_world.a.run.id},{api_world.b.run.id}")
    assert response.status_code == 404 and str(api_world.b.run.id) in response.json()["detail"]
    assert Run.objects.get(id=api_world.b.run.id).status == Run.Status.QUEUED


def test_lists_hold_only_the_callers_teams_objects(api_world):
    alice = api_world.client(api_world.a.viewer)
    runs = alice.get("/api/v1/runs/").json()
    assert [r["id"] for r in runs["results"]] == [api_world.a.run.id] and runs["count"] == 1
    assert [d["id"] for d in alice.get("/api/v1/datasets/").json()["results"]] == [api_world.a.dataset.id]
    assert alice.get("/api/v1/runs/", team=api_world.b.team.id).json()["count"] == 0
    assert alice.get("/api/v1/runs/", dataset=api_world.b.dataset.id).json()["count"] == 0
    mine, theirs, shared = (make_preset(api_world.a.team, name="a preset"), make_preset(api_world.b.team),
                            make_preset(None, name="global preset"))
    assert {p["id"] for p in alice.get("/api/v1/presets/").json()["results"]} == {mine.id, shared.id}
    assert alice.get(f"/api/v1/presets/{theirs.id}/").status_code == 404
    assert alice.get(f"/api/v1/presets/{shared.id}/").json()["team"] is None
    assert alice.get("/api/v1/presets/", team=api_world.b.team.id).status_code == 400


def test_body_references_to_another_teams_objects_are_400s_on_their_field(api_world):
    alice = api_world.client(api_world.a.member)
    b = api_world.b
    response = alice.post("/api/v1/runs/", {"dataset": b.dataset.id, "overrides": {"model": "tiny-model"}})
    assert response.status_code == 400 and "no such dataset in your teams" in response.json()["errors"]["dataset"][0]
    response = alice.post("/api/v1/runs/", {"dataset": api_world.a.dataset.id, "preset": make_preset(b.team).id})
    assert "no such preset" in response.json()["errors"]["preset"][0]
    response = alice.post("/api/v1/runs/", {"dataset": api_world.a.dataset.id, "base_run": b.run.id})
    assert "no such run" in response.json()["errors"]["base_run"][0]
    response = alice.post("/api/v1/sweeps/", {"template": "r", "dataset": b.dataset.id})
    assert "no such dataset" in response.json()["errors"]["dataset"][0]
    response = alice.upload("/api/v1/datasets/", {"team": b.team.id, "name": "x", "file": upload("data.jsonl", b"{}")})
    assert response.status_code == 400 and "no such team of yours" in response.json()["errors"]["team"][0]
    assert Run.objects.filter(team=api_world.a.team).count() == 1 and Sweep.objects.count() == 0


def test_a_viewer_reads_everything_and_every_write_is_a_403(api_world, tmp_path):
    a = api_world.a
    viewer = api_world.client(a.viewer)
    for path in object_paths(a):
        # The queued run saved no adapter yet: its file is missing for everyone; it has no TensorBoard files yet and
        # they can be written once it has ended: a 400 on 'run' that says so.
        response = viewer.get(path)
        expected = 404 if path.endswith("adapter_config.json") else 400 if path.endswith("tensorboard/") else 200
        assert response.status_code == expected, path
        if expected == 400:
            assert "once it has ended" in response.json()["errors"]["run"][0]
    writes = [
        viewer.post("/api/v1/runs/", {"dataset": a.dataset.id, "overrides": {"model": "tiny-model"}}),
        viewer.post(f"/api/v1/runs/{a.run.id}/stop/"),
        viewer.post(f"/api/v1/runs/{a.run.id}/resume/"),
        viewer.post("/api/v1/sweeps/", {"template": "r", "dataset": a.dataset.id,
                                        "overrides": {"model": "tiny-model"}}),
        viewer.upload("/api/v1/datasets/", {"team": a.team.id, "name": "x",
                                            "file": upload("data.jsonl", b'{"text": "a"}\n')}),
        viewer.upload("/api/v1/datasets/", {"name": "x", "file": upload("data.jsonl", b'{"text": "a"}\n')}),
        viewer.post("/api/v1/datasets/register/", {"team": a.team.id, "name": "x", "path": "/tmp/x.jsonl"}),
        viewer.post(f"/api/v1/datasets/{a.dataset.id}/profile/", {"model": "tiny-model"}),
    ]
    for response in writes:
        assert response.status_code == 403, response.content
        assert set(response.json()) == {"detail"} and "role" in response.json()["detail"]
    assert Run.objects.get(id=a.run.id).status == Run.Status.QUEUED
    assert Run.objects.filter(team=a.team).count() == 1 and Sweep.objects.count() == 0
    assert Dataset.objects.filter(team=a.team).count() == 1 and "profile" not in Dataset.objects.get(
        id=a.dataset.id).stats


def test_a_member_writes_and_only_an_admin_registers_a_path(api_world, settings, tmp_path):
    a = api_world.a
    member, admin = api_world.client(a.member), api_world.client(a.admin)
    stopped = member.post(f"/api/v1/runs/{a.run.id}/stop/")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    uploaded = member.upload("/api/v1/datasets/", {"name": "uploaded",
                                                   "file": upload("data.jsonl", b'{"text": "a b c"}\n' * 3)})
    assert uploaded.status_code == 201, uploaded.content
    assert uploaded.json()["team"] == a.team.id and uploaded.json()["rows"] == 3
    root = tmp_path / "registered"
    root.mkdir()
    (root / "data.jsonl").write_text('{"text": "hello"}\n' * 4)
    settings.TUNEBOARD_DATASET_ROOTS = [str(root)]
    body = {"team": a.team.id, "name": "registered", "path": str(root / "data.jsonl")}
    refused = member.post("/api/v1/datasets/register/", body)
    assert refused.status_code == 403 and "admin role" in refused.json()["detail"]
    registered = admin.post("/api/v1/datasets/register/", body)
    assert registered.status_code == 201, registered.content
    assert registered.json()["source"] == "registered" and registered.json()["path"] == str(root / "data.jsonl")


def test_a_user_in_no_team_is_refused_writes_and_sees_nothing(db):
    loner = ApiClient(token_create(user=make_user("loner"), name="t")[1])
    assert loner.get("/api/v1/runs/").json() == {"count": 0, "next": None, "previous": None, "results": []}
    response = loner.upload("/api/v1/datasets/", {"name": "x", "file": upload("data.jsonl", b'{"text": "a"}\n')})
    assert response.status_code == 403 and "member role" in response.json()["detail"]
