"""The run page: status, the `started` facts, warnings, samples, findings, log and adapter files; Stop and Resume
for members only; every run, file and action of another team is a 404."""
import json
import re
from html import unescape as html_unescape
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from django.utils.html import escape

from guidance import content
from guidance.models import Finding
from tests.factories import make_preset, tiny_overrides
from tests.integration.conftest import communicator, run_async, session_cookie
from training.live import send as live
from training.models import MetricPoint, Run, RunEvent, Sample
from training.runs import services

from .conftest import client_for, named_run

pytestmark = pytest.mark.django_db


def run_data(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="run-data" type="application/json">') + len(
        '<script id="run-data" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def make_running(run: Run) -> Run:
    Run.objects.filter(id=run.id).update(
        status=Run.Status.RUNNING, last_step=7, total_steps=20, started_at=timezone.now(), log_tail="line one\nline two",
        started={"trainable_params": 1234567, "total_params": 9000000, "trainable_bias_params": 0, "lora_scale": 2.0,
                 "device": "cpu", "backend": "hf", "dtype": "float32"},
        derived={"effective_batch": 8, "total_steps": 20, "warmup_steps": 1},
        versions={"torch": "2.13.0", "transformers": "5.17.0"})
    now = timezone.now()
    RunEvent.objects.create(run=run, seq=1, type="started", data={"versions": {"torch": "2.13.0"}}, time=now)
    RunEvent.objects.create(run=run, seq=2, type="warning", time=now,
                            data={"code": "bias_no_effect", "field": "bias", "message": "this model has no biases"})
    Sample.objects.create(run=run, step=5, prompt="What colour is the sky?", completion="blue blue.", time=now)
    Finding.objects.create(run=run, code="loss_spike", severity="warning", step=6, title="Loss spike after warmup",
                           message="loss 9.1 is 3x its running median", parameters=["learning_rate"])
    run.refresh_from_db()
    return run


def make_succeeded(run: Run, tmp_path: Path) -> Run:
    adapter = tmp_path / f"adapter-{run.id}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (adapter / "nested").mkdir()
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, adapter_path=str(adapter), last_step=20,
                                         total_steps=20, finished_at=timezone.now())
    run.refresh_from_db()
    return run


def test_the_page_shows_status_facts_warnings_samples_findings_and_log(world, member_client):
    run = make_running(world.run)
    response = member_client.get(f"/runs/{run.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    for text in ("Running", "step 7 of 20", "1,234,567", "Trainable bias parameters", "LoRA scale", "cpu",
                 "this model has no biases", "What colour is the sky?", "blue blue.", "Loss spike after warmup",
                 "learning_rate", "line two", "transformers", "5.17.0", 'id="chart-loss"'):
        assert text in html, text
    data = run_data(response)
    assert data["id"] == run.id and data["ws"] == f"/ws/runs/{run.id}/"
    assert data["status"]["status"] == "running" and data["can_control"] is True
    assert 'src="/static/vendor/plotly.min.js"' in html and 'src="/static/js/run_detail.js"' in html
    assert 'id="stop-form"' in html and 'id="resume-form" hidden' in html


def test_plotly_is_served_by_the_app(member_client):
    response = member_client.get("/static/vendor/plotly.min.js")
    assert response.status_code == 200
    assert b"plotly" in b"".join(response.streaming_content)[:2000].lower()


def test_another_teams_run_and_its_actions_are_404(world, member_client):
    other = make_succeeded(world.other_run, Path(world.other_dataset.path).parent)
    for url in (f"/runs/{other.id}/", f"/runs/{other.id}/adapter/", f"/runs/{other.id}/adapter/adapter_config.json",
                "/runs/999999/"):
        assert member_client.get(url).status_code == 404, url
    for url in (f"/runs/{other.id}/stop/", f"/runs/{other.id}/resume/"):
        assert member_client.post(url).status_code == 404
    other.refresh_from_db()
    assert other.status == Run.Status.SUCCEEDED
    assert Run.objects.filter(resumed_from=other).count() == 0


def test_a_member_stops_a_queued_run(world, member_client):
    response = member_client.post(f"/runs/{world.run.id}/stop/")
    assert response.status_code == 302 and response["Location"] == f"/runs/{world.run.id}/"
    world.run.refresh_from_db()
    assert world.run.status == Run.Status.STOPPED


def test_a_member_stopping_a_running_run_asks_it_to_stop(world, member_client):
    run = make_running(world.run)
    member_client.post(f"/runs/{run.id}/stop/")
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPING
    page = member_client.get(f"/runs/{run.id}/", follow=True)
    assert b"Stopping" in page.content


def test_stop_and_resume_are_posts(world, member_client):
    assert member_client.get(f"/runs/{world.run.id}/stop/").status_code == 405
    assert member_client.get(f"/runs/{world.run.id}/resume/").status_code == 405
    world.run.refresh_from_db()
    assert world.run.status == Run.Status.QUEUED


def test_a_viewer_watches_but_cannot_stop_or_resume(world, viewer_client):
    run = make_running(world.run)
    page = viewer_client.get(f"/runs/{run.id}/")
    assert page.status_code == 200 and 'id="stop-form"' not in page.content.decode()
    assert run_data(page)["can_control"] is False
    assert viewer_client.post(f"/runs/{run.id}/stop/").status_code == 403
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING
    Run.objects.filter(id=run.id).update(status=Run.Status.STOPPED, last_checkpoint_path="/x", last_checkpoint_step=5)
    assert viewer_client.post(f"/runs/{run.id}/resume/").status_code == 403
    assert Run.objects.filter(resumed_from=run).count() == 0


def test_resume_without_a_checkpoint_says_why(world, member_client):
    Run.objects.filter(id=world.run.id).update(status=Run.Status.STOPPED)
    response = member_client.post(f"/runs/{world.run.id}/resume/", follow=True)
    assert b"saved no checkpoint to resume from" in response.content
    assert Run.objects.filter(resumed_from=world.run).count() == 0


def test_resume_creates_a_continuation_whose_page_says_where_it_joins(world, member_client):
    Run.objects.filter(id=world.run.id).update(status=Run.Status.STOPPED, last_checkpoint_path="/ckpt/checkpoint-5",
                                               last_checkpoint_step=5)
    page = member_client.get(f"/runs/{world.run.id}/")
    assert 'id="resume-form" hidden' not in page.content.decode()
    response = member_client.post(f"/runs/{world.run.id}/resume/")
    continuation = Run.objects.get(resumed_from=world.run)
    assert response["Location"] == f"/runs/{continuation.id}/"
    page = member_client.get(f"/runs/{continuation.id}/")
    assert f"Continues <a href=\"/runs/{world.run.id}/\">run #{world.run.id}</a>" in page.content.decode()
    assert run_data(page)["resumed_from_step"] == 5
    assert f"Resumed as <a href=\"/runs/{continuation.id}/\"" in member_client.get(
        f"/runs/{world.run.id}/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_queued_continuation_of_two_resumes_draws_the_curve_it_continues(world, member_client):
    """Run 1 stopped (checkpoint 10), its continuation lost (checkpoint 20), resumed again and still queued: its page
    names the earlier runs and the steps each gives, and its socket replays their points up to those steps, each
    with the run that logged it, never what an earlier run trained after the checkpoint resumed from; the run's own
    live points follow from there, each step once."""
    now = timezone.now()

    def lose_and_resume(run: Run, steps: range, checkpoint: int) -> Run:
        MetricPoint.objects.bulk_create([MetricPoint(run=run, step=s, loss=3.0 - s / 20, time=now,
                                                     eval_loss=2.9 - s / 20 if s % 5 == 0 else None) for s in steps])
        Run.objects.filter(id=run.id).update(status=Run.Status.LOST, last_checkpoint_path=f"/ckpt/{checkpoint}",
                                             last_checkpoint_step=checkpoint)
        run.refresh_from_db()
        return services.run_resume(run=run, user=world.member)

    first = world.run
    second = lose_and_resume(first, range(1, 15), checkpoint=10)
    third = lose_and_resume(second, range(10, 27), checkpoint=20)  # from its checkpoint: step 10 again
    assert third.status == Run.Status.QUEUED

    page = member_client.get(f"/runs/{third.id}/")
    assert run_data(page)["earlier"] == [
        {"run": first.id, "after": -1, "upto": 10, "label": f"run #{first.id}, up to step 10",
         "url": f"/runs/{first.id}/"},
        {"run": second.id, "after": 10, "upto": 20, "label": f"run #{second.id}, up to step 20",
         "url": f"/runs/{second.id}/"}]
    note = re.search(r'<p class="note" id="continues">(.*?)</p>', page.content.decode(), re.S).group(1)
    assert f"run #{first.id} up to step 10 and run #{second.id} up to step 20 (dashed, grey), then this one" in note
    assert run_data(member_client.get(f"/runs/{first.id}/"))["earlier"] == []
    cookie = session_cookie(world.member)

    async def scenario():
        socket = communicator(third.id, cookie)
        assert (await socket.connect(timeout=10))[0]
        await socket.send_json_to({"type": "replay", "after_step": 0})
        replay = await socket.receive_json_from(timeout=10)
        assert replay["type"] == "replay" and replay["done"]
        drawn = [(p["step"], p["run"]) for p in replay["points"]]
        assert drawn == [(s, first.id) for s in range(1, 11)] + [(s, second.id) for s in range(11, 21)]
        assert [p["step"] for p in replay["points"] if p["eval_loss"] is not None] == [5, 10, 15, 20]
        # The worker starts the run from step 20's checkpoint: it logs 20 again, then its own.
        await sync_to_async(live.send_run_message)(third.id, "points", {"points": [
            {"kind": "metrics", "step": 20, "loss": 1.9}, {"kind": "metrics", "step": 21, "loss": 1.85}],
            "after": {"metrics": None, "eval": None}})
        message = await socket.receive_json_from(timeout=10)
        assert message["type"] == "points" and [p["step"] for p in message["points"]] == [21]
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    run_async(scenario)


def test_adapter_files_download_for_the_team_only(world, member_client, tmp_path):
    run = make_succeeded(world.run, tmp_path)
    page = member_client.get(f"/runs/{run.id}/").content.decode()
    assert f'href="/runs/{run.id}/adapter/adapter_config.json"' in page
    listing = member_client.get(f"/runs/{run.id}/adapter/").json()
    assert [f["name"] for f in listing] == ["adapter_config.json", "adapter_model.safetensors"]
    download = member_client.get(f"/runs/{run.id}/adapter/adapter_config.json")
    assert download.status_code == 200 and b"".join(download.streaming_content) == b'{"r": 16}'
    assert "attachment" in download["Content-Disposition"]
    for name in ("nested", "..", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", ".hidden", "missing.bin"):
        assert member_client.get(f"/runs/{run.id}/adapter/{name}").status_code == 404, name
    assert client_for(world.outsider).get(f"/runs/{run.id}/adapter/adapter_config.json").status_code == 404


def test_a_run_without_an_adapter_has_no_files(world, member_client):
    assert member_client.get(f"/runs/{world.run.id}/adapter/").json() == []
    assert member_client.get(f"/runs/{world.run.id}/adapter/adapter_config.json").status_code == 404


def differences(html: str) -> dict[str, str]:
    """The "What this run changes" card: {param: prediction}."""
    card = html[html.index('id="differences"'):]
    card = card[:card.index("</section>")]
    return dict(re.findall(r'data-param="(\w+)".*?<p class="prediction">(.*?)</p>', card, re.S))


def test_a_run_without_a_preset_shows_what_it_changes_from_the_engine_defaults(world, member_client):
    run = named_run(world.team, world.member, world.dataset, "bold alpha", lora_alpha=64, learning_rate=1e-3)
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    assert "Against the engine&#x27;s defaults" in html
    changed = differences(html)
    # lora_alpha 32 -> 64 and learning_rate 2e-4 -> 1e-3, with the seed's predictions for going up; alpha's read
    # through the LoRA scale it makes.
    assert html_unescape(changed["lora_alpha"]) == (content.get("lora_alpha").predictions["up"]
                                                   + " (LoRA scale 2 (32/16) → 4 (64/16))")
    assert html_unescape(changed["learning_rate"]) == content.get("learning_rate").predictions["up"]
    assert "r" not in changed and "use_rslora" not in changed  # unchanged: no prediction
    assert 'href="/guidance/lora_alpha/"' in html


def test_a_preset_run_is_compared_with_its_preset(world, member_client):
    preset = make_preset(world.team, name="base", **tiny_overrides("tiny-model", r=8, lora_alpha=16))
    run = services.run_create(team=world.team, user=world.member, dataset=world.dataset, preset=preset,
                              overrides={"lora_alpha": 8})
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    assert "Against preset base" in html
    changed = differences(html)
    assert list(changed) == ["lora_alpha"]
    assert html_unescape(changed["lora_alpha"]).startswith(content.get("lora_alpha").predictions["down"]
                                                          + " (LoRA scale 2 (16/8) → 1 (8/8))")


def test_a_resumed_run_is_compared_with_the_run_it_continues(world, member_client):
    run = world.run
    Run.objects.filter(id=run.id).update(status=Run.Status.STOPPED, last_checkpoint_path="/x/checkpoint-5",
                                         last_checkpoint_step=5)
    run.refresh_from_db()
    continuation = services.run_resume(run=run, user=world.member)
    html = member_client.get(f"/runs/{continuation.id}/").content.decode()
    assert f"Against run #{run.id}, which it resumes" in html
    assert differences(html) == {} and "No guided parameter differs." in html


def before_it_started(html: str) -> str:
    section = html[html.index('<section class="card" id="before-it-started">'):]
    return section[:section.index("</section>")]


def test_before_it_started_shows_the_runs_preflight_notes_with_their_guidance_and_the_seeds_value(world,
                                                                                                  member_client):
    run = named_run(world.team, world.member, world.dataset, "hot", learning_rate=0.3)
    expected = ["learning_rate_off", "weight_decay_heavy_for_learning_rate", "warmup_below_short_run_floor",
                "rank_for_dataset"]
    assert [n["code"] for n in run.preflight] == expected  # made at creation, kept on the run
    html = member_client.get(f"/runs/{run.id}/").content.decode()
    section = before_it_started(html)
    assert "<h2>Before it started" in section and '<span class="badge warn" id="preflight-count">4</span>' in section
    assert re.findall(r'data-note="(\w+)"', section) == expected
    for note in run.preflight:
        assert escape(note["title"]) in section and escape(note["message"]) in section, note["code"]
        assert f'<a href="{note["guidance_url"]}">guidance</a>' in section, note["code"]
    assert '<a href="/guidance/learning_rate/#too_high">guidance</a>' in section
    assert "<code>learning_rate = 0.0002</code>" in section
    assert "<code>r = 8</code>, <code>lora_alpha = 16</code>" in section
    assert "(with <code>learning_rate</code>)" in section  # weight decay's note combines with the learning rate
    # The link lands on a section of the guidance page.
    assert 'id="too_high"' in member_client.get("/guidance/learning_rate/").content.decode()
    # A continuation keeps the notes of the config it continues.
    Run.objects.filter(id=run.id).update(status=Run.Status.STOPPED, last_checkpoint_path="/x/checkpoint-5",
                                         last_checkpoint_step=5)
    run.refresh_from_db()
    continuation = services.run_resume(run=run, user=world.member)
    assert continuation.preflight == run.preflight
    assert re.findall(r'data-note="(\w+)"', before_it_started(
        member_client.get(f"/runs/{continuation.id}/").content.decode())) == expected


def test_a_run_within_the_seeds_ranges_says_so_before_it_started(world, member_client):
    run = named_run(world.team, world.member, world.dataset, "tame", warmup_steps=10, r=8, lora_alpha=16)
    assert run.preflight == []
    section = before_it_started(member_client.get(f"/runs/{run.id}/").content.decode())
    assert '<span class="badge" id="preflight-count">0</span>' in section
    assert "Nothing: every reviewed value is within the recommended ranges." in section
    assert "data-note=" not in section
