"""The run page's Export section and the export API without a worker: Export queues on the run's queue, bad input
(a run that did not succeed, an unknown quantization, the cpu queue, a field that does not exist) says what is
allowed and creates nothing, a viewer cannot; an export's files are listed with sizes and sha256 and downloaded by
name, and another team's export, a name not in the list or a path is a 404. The real conversion is
tests/integration/export/test_export.py."""
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from dashboard.tokens.services import token_create
from tests.factories import make_run
from tests.functional.conftest import client_for
from training.engine.gguf_export import sha256_of
from training.models import Export, Run

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def exports_dir(settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path / "exports"


def succeeded_run(team, user, dataset) -> Run:
    run = make_run(team, user, dataset)
    adapter = Path(run.artifact_dir) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, adapter_path=str(adapter),
                                         finished_at=timezone.now())
    run.refresh_from_db()
    return run


def finished_export(run: Run) -> Export:
    """An export with two files, recorded as the worker records them."""
    export = Export.objects.create(team=run.team, run=run, quantizations=["q8_0"], queue=run.queue,
                                   status=Export.Status.SUCCEEDED, seconds=3.5, finished_at=timezone.now())
    folder = django_settings.EXPORTS_DIR / str(export.id)
    folder.mkdir(parents=True)
    files = []
    for name, data, kind in [(f"run-{run.id}-f16.gguf", b"GGUF" + b"\0" * 60, "merged"),
                             ("Modelfile", b"FROM ./x.gguf\n", "modelfile")]:
        (folder / name).write_bytes(data)
        files.append({"name": name, "size": len(data), "sha256": sha256_of(folder / name), "kind": kind})
    (folder / "spec.json").write_text("{}")  # in the folder, not in the list: never served
    Export.objects.filter(id=export.id).update(files=files)
    export.refresh_from_db()
    return export


def test_export_queues_on_the_runs_queue_and_the_page_shows_it(world, member_client):
    run = succeeded_run(world.team, world.member, world.dataset)
    page = member_client.get(f"/runs/{run.id}/")
    assert b'id="export-form"' in page.content and b"Q4_K_M" in page.content
    response = member_client.post(f"/runs/{run.id}/export/", {"merged_gguf": "on", "quantizations": ["q8_0", "q4_0"],
                                                               "lora_gguf": "on"}, follow=True)
    export = Export.objects.get(run=run)
    assert (export.quantizations, export.merged_gguf, export.lora_gguf, export.queue, export.status) == (
        ["q8_0", "q4_0"], True, True, run.queue, "queued")
    assert f"Export #{export.id} queued on {run.queue}".encode() in response.content
    state = member_client.get(f"/runs/{run.id}/exports.json").json()
    assert state["active"] and state["exports"][0]["id"] == export.id and "Export #" in state["html"]
    # the same export asked again while it is queued is that one
    member_client.post(f"/runs/{run.id}/export/", {"merged_gguf": "on", "quantizations": ["q8_0", "q4_0"],
                                                   "lora_gguf": "on"})
    assert Export.objects.filter(run=run).count() == 1


def test_refusals_say_why_and_create_nothing(world, member_client, viewer_client):
    queued = make_run(world.team, world.member, world.dataset)
    response = member_client.post(f"/runs/{queued.id}/export/", {"merged_gguf": "on"}, follow=True)
    assert f"run: run #{queued.id} is queued: only a succeeded run has a final adapter to export".encode() \
        in response.content
    assert b'id="export-form"' not in member_client.get(f"/runs/{queued.id}/").content
    run = succeeded_run(world.team, world.member, world.dataset)
    response = member_client.post(f"/runs/{run.id}/export/", {"quantizations": ["q3_k"]}, follow=True)
    assert b"quantizations: Select a valid choice. q3_k is not one of the available choices." in response.content
    response = member_client.post(f"/runs/{run.id}/export/", {}, follow=True)
    assert b"merged_gguf: choose the merged model, the adapter (lora_gguf) or both" in response.content
    assert viewer_client.post(f"/runs/{run.id}/export/", {"merged_gguf": "on"}).status_code == 403
    assert not Export.objects.exists()


def test_api_create_list_get_and_refusals(world, client):
    run = succeeded_run(world.team, world.member, world.dataset)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=world.member, name='t')[1]}"}
    url = f"/api/v1/runs/{run.id}/exports/"
    for body, field, text in [
        ({"quantizations": ["q2_k"]}, "quantizations", "'q2_k' is not offered; allowed: q8_0, q6_k, q5_k_m, q4_k_m"),
        ({"quantizations": "q8_0"}, "quantizations", "a list of names; allowed: q8_0"),
        ({"merged_gguf": "yes"}, "merged_gguf", "true or false, not 'yes'"),
        ({"merged_gguf": False, "lora_gguf": False}, "merged_gguf", "choose the merged model, the adapter"),
        ({"merged_gguf": False}, "quantizations", "quantizations are of the merged model"),
        ({"queue": django_settings.TUNEBOARD_CPU_QUEUE}, "queue", "is the queue for dataset statistics"),
        ({"format": "gguf"}, "format", "not a field of an export; allowed: quantizations, merged_gguf"),
    ]:
        response = client.post(url, body, content_type="application/json", **auth)
        assert response.status_code == 400, (body, response.content)
        assert text in " ".join(response.json()["errors"][field]), (body, response.json())
    for body in ("[1, 2]", "null", '"q8_0"'):
        response = client.post(url, body, content_type="application/json", **auth)
        assert response.status_code == 400 and "__all__" in response.json()["errors"], body
    huge = 10**30
    assert client.get(f"/api/v1/exports/{huge}/", **auth).status_code == 404
    assert client.get(f"/api/v1/exports/{huge}/files/Modelfile", **auth).status_code == 404
    assert client.post(f"/api/v1/runs/{huge}/exports/", {}, content_type="application/json", **auth).status_code == 404
    assert not Export.objects.exists()
    response = client.post(url, {"quantizations": ["Q4_K_M"], "lora_gguf": False}, content_type="application/json",
                           **auth)
    assert response.status_code == 201, response.content
    created = response.json()
    assert (created["quantizations"], created["quantization_labels"], created["status"]) == (
        ["q4_k_m"], ["Q4_K_M"], "queued")
    assert [e["id"] for e in client.get(url, **auth).json()] == [created["id"]]
    assert client.get(f"/api/v1/exports/{created['id']}/", **auth).json()["lora_gguf"] is False
    other = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=world.outsider, name='o')[1]}"}
    assert client.get(f"/api/v1/exports/{created['id']}/", **other).status_code == 404
    assert client.post(url, {}, content_type="application/json", **other).status_code == 404


def test_files_download_by_name_scoped_to_the_team(world, member_client, client):
    run = succeeded_run(world.team, world.member, world.dataset)
    export = finished_export(run)
    page = member_client.get(f"/runs/{run.id}/").content.decode()
    for f in export.files:
        assert f["name"] in page and f["sha256"] in page
    gguf = export.files[0]["name"]
    response = member_client.get(f"/exports/{export.id}/files/{gguf}")
    assert response.status_code == 200 and b"".join(response.streaming_content).startswith(b"GGUF")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=world.member, name='t')[1]}"}
    body = client.get(f"/api/v1/exports/{export.id}/", **auth).json()
    assert body["files"][0] == {**export.files[0], "url": f"/api/v1/exports/{export.id}/files/{gguf}"}
    response = client.get(body["files"][1]["url"], **auth)
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"FROM ./x.gguf\n"
    for name in ["spec.json", "..%2Fspec.json", "%2Fetc%2Fpasswd", "missing.gguf", ".", "Modelfile%00"]:
        assert member_client.get(f"/exports/{export.id}/files/{name}").status_code == 404, name
        assert client.get(f"/api/v1/exports/{export.id}/files/{name}", **auth).status_code == 404, name
    outsider = client_for(world.outsider)
    assert outsider.get(f"/exports/{export.id}/files/{gguf}").status_code == 404
    other = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=world.outsider, name='o')[1]}"}
    assert client.get(f"/api/v1/exports/{export.id}/files/{gguf}", **other).status_code == 404
    assert outsider.get(f"/runs/{run.id}/exports.json").status_code == 404


def test_an_export_whose_worker_went_silent_fails_with_the_reason(world):
    from datetime import timedelta

    from training.export.services import exports_mark_lost
    from training.models import Worker

    run = succeeded_run(world.team, world.member, world.dataset)
    Worker.objects.create(name="gone@box", hostname="box", last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    Worker.objects.create(name="alive@box", hostname="box")
    gone, alive, restarted = (Export.objects.create(team=run.team, run=run, queue=run.queue, worker_name=name,
                                                    status=Export.Status.RUNNING)
                              for name in ("gone@box", "alive@box", "again@box"))
    assert exports_mark_lost() == [gone.id]
    assert exports_mark_lost(worker_name="again@box") == [restarted.id]
    for export, status, error in [(gone, "failed", "its worker went silent while exporting; export again"),
                                  (alive, "running", ""),
                                  (restarted, "failed", "its worker again@box restarted while exporting")]:
        export.refresh_from_db()
        assert export.status == status and error in export.error
