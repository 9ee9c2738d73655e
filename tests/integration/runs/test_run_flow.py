"""A run launched through the services trains in a real Celery worker's child process; the database and a
websocket client see every point, once; a duplicate delivery, Stop, Resume and a dying child behave."""
import os
import signal

import pytest
import redis
from django.conf import settings

from tests.integration.conftest import (
    communicator,
    create_run,
    receive_until,
    run_async,
    run_ended,
    session_cookie,
    wait_for,
    wait_for_run,
    wait_terminal,
    watch_run,
)
from training import tasks
from training.models import MetricPoint, Run, RunEvent
from training.runs import services
from training.selectors import run_points

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def steps_of(run: Run) -> list[int]:
    return list(MetricPoint.objects.filter(run=run).order_by("step").values_list("step", flat=True))


def metric_steps(messages: list[dict]) -> list[int]:
    """The loss points a page would draw: replayed rows with a loss, then live metrics points."""
    steps = []
    for m in messages:
        if m["type"] == "replay":
            steps += [p["step"] for p in m["points"] if p["loss"] is not None]
        elif m["type"] == "points":
            steps += [p["step"] for p in m["points"] if p["kind"] == "metrics"]
    return steps


def live_metrics(messages: list[dict]) -> list[dict]:
    return [p for m in messages if m["type"] == "points" for p in m["points"] if p["kind"] == "metrics"]


def test_run_trains_to_succeeded_and_a_websocket_gets_its_points_live(celery_worker, tiny_model, team_member):
    run = create_run(team_member, tiny_model, max_steps=20, save_steps=10)
    messages = watch_run(run.id, session_cookie(team_member[1]))
    run = wait_terminal(run)
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert steps_of(run) == list(range(1, 21))
    live = live_metrics(messages)
    assert live, "no metric point arrived live"
    assert all(isinstance(m["loss"], float) for m in live)
    assert sorted(metric_steps(messages)) == list(range(1, 21)) == metric_steps(messages)
    statuses = [m["status"] for m in messages if m["type"] == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses
    assert run.started["trainable_params"] > 0 and run.started["lora_scale"] == 2.0
    assert run.total_steps == 20 and run.progress == 1.0
    assert run.versions["torch"] and run.derived["effective_batch"] == 8
    assert os.path.isdir(run.adapter_path) and run.last_checkpoint_step == 20
    # The log event: the engine's note at the first step (how long the start took, warm or cold).
    assert [e.type for e in RunEvent.objects.filter(run=run)] == [
        "started", "log", "checkpoint", "checkpoint", "finished"]


def test_reconnect_replays_what_was_missed_with_no_gap_or_duplicate(celery_worker, tiny_model, team_member):
    run = create_run(team_member, tiny_model, max_steps=40, gradient_accumulation_steps=2)
    cookie = session_cookie(team_member[1])

    async def first_connection():
        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        messages = await receive_until(
            comm, lambda m: run_ended(m) or any(p["step"] >= 5 for p in live_metrics([m])))
        await comm.disconnect()
        return messages

    async def second_connection(after_step):
        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": after_step})
        messages = await receive_until(comm, run_ended)
        await comm.disconnect()
        return messages

    first = run_async(first_connection)
    have = max(metric_steps(first))
    assert have < 40, "the run ended before the page disconnected; nothing to replay"
    # Points keep coming while the page is away.
    wait_for_run(run, lambda r: r.last_step >= have + 3 or r.is_terminal, timeout=60, what="steps while away")
    second = run_async(second_connection, have)
    replayed = [p["step"] for m in second if m["type"] == "replay" for p in m["points"]]
    assert replayed and replayed[0] == have + 1
    drawn = metric_steps(first) + metric_steps(second)
    assert drawn == list(range(1, 41))
    assert wait_terminal(run).status == Run.Status.SUCCEEDED


def test_a_task_delivered_twice_trains_once(celery_worker, tiny_model, team_member):
    run = create_run(team_member, tiny_model, max_steps=10)
    tasks.run_train.apply_async(args=[run.id], queue=run.queue)  # the broker's second delivery
    run = wait_terminal(run)
    broker = redis.Redis.from_url(settings.REDIS_URL)
    wait_for(lambda: broker.llen(run.queue) == 0, timeout=30, what="the second delivery to be consumed")
    tasks.run_train(run.id)  # and a third, in this process: nothing to claim
    assert run.status == Run.Status.SUCCEEDED
    types = list(RunEvent.objects.filter(run=run).values_list("type", flat=True))
    assert types.count("started") == 1 and types.count("finished") == 1
    assert steps_of(run) == list(range(1, 11))


def test_stop_checkpoints_and_resume_continues_from_it(celery_worker, tiny_model, team_member):
    team, user, _ = team_member
    # Long enough that the stop (polled every 0.5 s) lands mid-run even on a fast, idle machine (~15 ms a step).
    run = create_run(team_member, tiny_model, max_steps=240, gradient_accumulation_steps=2)
    wait_for_run(run, lambda r: r.last_step >= 3 or r.is_terminal, timeout=90, what="step 3")
    services.run_stop(run=run, user=user)
    run = wait_terminal(run, timeout=60)
    assert run.status == Run.Status.STOPPED, run.error
    assert 3 <= run.last_checkpoint_step < 240
    assert os.path.isdir(run.last_checkpoint_path)
    stopped = RunEvent.objects.get(run=run, type="stopped")
    assert stopped.data["checkpoint"] == run.last_checkpoint_path and stopped.data["reason"] == "stop file"
    original_points = steps_of(run)

    continuation = services.run_resume(run=run, user=user)
    continuation = wait_terminal(continuation)
    assert continuation.status == Run.Status.SUCCEEDED, continuation.error
    assert continuation.resumed_from_id == run.id and continuation.started["resumed_from_step"] == run.last_checkpoint_step
    assert steps_of(continuation) == list(range(run.last_checkpoint_step + 1, 241))
    assert [p["step"] for p in run_points(continuation)] == list(range(1, 241))
    assert steps_of(run) == original_points  # the original's record is untouched


def test_a_stop_the_training_cannot_honour_ends_in_a_kill(celery_worker, tiny_model, team_member):
    team, user, _ = team_member
    run = create_run(team_member, tiny_model, max_steps=2000)
    run = wait_for_run(run, lambda r: r.last_step >= 2 or r.is_terminal, timeout=90, what="step 2")
    child = run.started["pid"]
    os.kill(child, signal.SIGSTOP)  # a step that hangs: the stop file is never read
    services.run_stop(run=run, user=user)
    run = wait_terminal(run, timeout=40)
    assert run.status == Run.Status.STOPPED and run.error_class == "StopTimeout"
    assert "killed 10 s after the stop request" in run.error
    assert not RunEvent.objects.filter(run=run, type="stopped").exists()  # the engine never got to say it


def test_a_training_process_that_dies_unreported_fails_the_run_with_its_stderr(celery_worker, tiny_model,
                                                                                team_member):
    run = create_run(team_member, tiny_model, max_steps=2000)
    run = wait_for_run(run, lambda r: r.last_step >= 2 or r.is_terminal, timeout=90, what="step 2")
    os.kill(run.started["pid"], signal.SIGKILL)
    run = wait_terminal(run, timeout=30)
    assert run.status == Run.Status.FAILED
    assert run.error_class == "ProcessDied" and "SIGKILL" in run.error
    assert run.traceback  # the stderr tail


def test_the_engine_refusing_the_machine_fails_the_run_naming_the_field(celery_worker, tiny_model, team_member):
    run = wait_terminal(create_run(team_member, tiny_model, load_in_4bit=True))
    assert run.status == Run.Status.FAILED
    assert run.error_class == "ConfigError" and "load_in_4bit" in run.error
    assert RunEvent.objects.get(run=run, type="failed").data["errors"]["load_in_4bit"]
