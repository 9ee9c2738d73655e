"""Live symptom detection: a real tiny run made to misbehave, trained by the real Celery worker, has its findings
saved once and sent to a websocket client as they happen."""
import pytest
from django.conf import settings

from guidance.models import Finding
from tests.factories import idle_queue, make_dataset, make_member, make_team, tiny_overrides
from tests.integration.conftest import (
    communicator,
    receive_until,
    run_ended,
    run_async,
    session_cookie,
    wait_terminal,
)
from training import tasks
from training.models import Run
from training.runs import services

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def test_a_flat_run_with_a_bias_llama_lacks_raises_its_findings_live(celery_worker, tiny_model, tmp_path):
    team = make_team()
    user = make_member(team)
    dataset = make_dataset(team, user, tmp_dir=tmp_path)
    # Created on a queue nobody consumes, so the websocket is listening before the worker takes it.
    run = services.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(), overrides=tiny_overrides(
        tiny_model, learning_rate=1e-12, bias="all", max_steps=30, warmup_steps=2))
    cookie = session_cookie(user)

    async def watch():
        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        first = await comm.receive_json_from(timeout=10)
        assert first["type"] == "replay" and first["done"] and first["findings"] == []
        tasks.run_train.apply_async(args=[run.id], queue=settings.TUNEBOARD_DEFAULT_QUEUE)
        messages = await receive_until(comm, run_ended, timeout=180)
        await comm.disconnect()
        return messages

    messages = run_async(watch)
    run = wait_terminal(run)
    assert run.status == Run.Status.SUCCEEDED, run.error

    saved = list(Finding.objects.filter(run=run).order_by("step", "code"))
    assert [(f.code, f.step) for f in saved] == [("bias_no_effect", 0), ("flat_loss", 22)]  # warmup 2 + 20 steps
    flat = saved[1]
    assert flat.parameters[0] == "learning_rate" and flat.severity == "warning"
    assert flat.evidence["learning_rate_max"] == pytest.approx(1e-12)

    live = [m for m in messages if m["type"] == "finding"]
    assert [(m["code"], m["step"]) for m in live] == [("bias_no_effect", 0), ("flat_loss", 22)]
    assert live[1]["id"] == flat.id and live[1]["guidance"][0] == {
        "param": "learning_rate", "url": "/guidance/learning_rate/#impact_and_symptoms"}
    # Sent as it was seen: before the run's later points, not with the end of the run.
    position = messages.index(live[1])
    later = [p["step"] for m in messages[position:] if m["type"] == "points" for p in m["points"]
             if p["kind"] == "metrics"]
    assert later and min(later) > 22
