"""POST /api/v1/runs/ with from_run: a new run from an earlier one (its dataset, preset, config and queue, the body's
overrides over them) that links it as its parent; another team's run, a refused value and a viewer are refused."""
import pytest

from training.models import Run

pytestmark = pytest.mark.django_db


def test_a_run_from_a_run_takes_its_config_with_the_overrides_and_links_its_parent(api_world):
    a = api_world.a
    parent = a.run
    response = api_world.client(a.member).post("/api/v1/runs/", {"from_run": parent.id,
                                                                 "overrides": {"learning_rate": 1e-4}})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["parent"] == parent.id and body["dataset"] == parent.dataset_id and body["queue"] == parent.queue
    child = Run.objects.get(id=body["id"])
    assert child.parent_id == parent.id and child.config["learning_rate"] == 1e-4
    same = {k: v for k, v in parent.config.items() if k not in ("learning_rate", "output_dir")}
    assert {k: child.config[k] for k in same} == same  # everything else is the parent's
    # The body's own dataset, queue and name replace the parent's.
    again = api_world.client(a.member).post("/api/v1/runs/", {"from_run": child.id, "name": "third",
                                                              "overrides": {"max_steps": 3}})
    assert again.status_code == 201 and again.json()["parent"] == child.id and again.json()["name"] == "third"
    assert Run.objects.get(id=again.json()["id"]).config["learning_rate"] == 1e-4  # the chain carries the change


def test_from_run_refuses_another_teams_run_a_refused_value_and_a_viewer(api_world):
    a, b = api_world.a, api_world.b
    before = Run.objects.count()
    other = api_world.client(a.member).post("/api/v1/runs/", {"from_run": b.run.id})
    assert other.status_code == 400
    assert other.json()["errors"]["from_run"] == [f"no such run in your teams: {b.run.id}"]
    refused = api_world.client(a.member).post("/api/v1/runs/", {"from_run": a.run.id,
                                                                "overrides": {"learning_rate": 3}})
    assert refused.status_code == 400
    assert refused.json()["errors"]["learning_rate"] == ["3 is above 1: at most 1"]
    nothing = api_world.client(a.member).post("/api/v1/runs/", {"overrides": {"learning_rate": 1e-4}})
    assert nothing.status_code == 400 and "from_run" in nothing.json()["errors"]["dataset"][0]
    viewer = api_world.client(a.viewer).post("/api/v1/runs/", {"from_run": a.run.id})
    assert viewer.status_code == 403
    assert Run.objects.count() == before
