"""What the run page receives live: each message keeps its own type, whatever the payload carries."""
import uuid

import pytest

from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from tests.integration.conftest import communicator, run_async, session_cookie
from training import selectors
from training.live import send as live
from training.models import MetricPoint
from training.runs import execution, services

pytestmark = pytest.mark.django_db(transaction=True)


def quiet_run(tmp_path):
    """A run and its member's session cookie, on a queue no worker consumes: the session's worker must not claim
    it and send messages of its own."""
    team = make_team()
    user = make_member(team)
    run = services.run_create(team=team, user=user, dataset=make_dataset(team, user, tmp_dir=tmp_path),
                              overrides=tiny_overrides("tiny-model"), queue=f"nobody-{uuid.uuid4().hex[:8]}")
    return run, session_cookie(user)


def test_a_live_event_arrives_as_an_event_naming_its_kind(tmp_path):
    run, cookie = quiet_run(tmp_path)

    async def watch():
        from channels.db import database_sync_to_async

        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        replay = await comm.receive_json_from(timeout=10)
        recorder = await database_sync_to_async(execution.RunRecorder)(run)
        await database_sync_to_async(recorder.record)({"type": "checkpoint", "step": 5, "path": "/ckpt/checkpoint-5"})
        await database_sync_to_async(recorder.record)(
            {"type": "warning", "code": "bias_no_effect", "field": "bias", "message": "no biases here"})
        messages = [await comm.receive_json_from(timeout=10), await comm.receive_json_from(timeout=10)]
        await comm.disconnect()
        return replay, messages

    replay, messages = run_async(watch)
    assert replay["type"] == "replay" and replay["events"] == []
    assert [(m["type"], m["event"], m["seq"]) for m in messages] == [("event", "checkpoint", 1), ("event", "warning", 2)]
    assert messages[0]["data"] == {"step": 5, "path": "/ckpt/checkpoint-5"}
    assert messages[1]["data"]["field"] == "bias"


def metrics(step: int) -> dict:
    return {"type": "metrics", "time": float(step), "step": step, "epoch": step / 10, "tokens_seen": step * 100,
            "loss": 3.0 - step / 10, "grad_norm": 1.0, "learning_rate": 1e-4, "tokens_per_s": 9.0,
            "peak_vram_bytes": None}


def test_a_batch_of_points_is_one_message_split_only_by_other_events_and_nothing_replayed_comes_twice(tmp_path):
    run, cookie = quiet_run(tmp_path)
    recorder = execution.RunRecorder(run)
    recorder.record_many([metrics(1), metrics(2)])  # before the page opens: it gets them by replay

    async def watch():
        from channels.db import database_sync_to_async

        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        replay = await comm.receive_json_from(timeout=10)
        # What the worker read in one go: step 2 again (a resumed run re-logs it), then new points around an event.
        await database_sync_to_async(recorder.record_many)([
            metrics(2), metrics(3), {"type": "eval", "time": 3.5, "step": 3, "epoch": 0.3, "eval_loss": 2.9},
            {"type": "checkpoint", "step": 3, "path": "/ckpt/checkpoint-3"}, metrics(4)])
        messages = [await comm.receive_json_from(timeout=10) for _ in range(3)]
        await comm.disconnect()
        return replay, messages

    replay, messages = run_async(watch)
    assert [p["step"] for p in replay["points"]] == [1, 2]
    assert [m["type"] for m in messages] == ["points", "event", "points"]
    assert [(p["kind"], p["step"]) for p in messages[0]["points"]] == [("metrics", 3), ("eval", 3)]
    assert messages[0]["points"][1]["eval_loss"] == 2.9 and messages[1]["event"] == "checkpoint"
    assert [(p["kind"], p["step"]) for p in messages[2]["points"]] == [("metrics", 4)]
    rows = {p.step: p for p in MetricPoint.objects.filter(run=run)}
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[3].loss == pytest.approx(2.7) and rows[3].eval_loss == 2.9  # one row per step, both kinds kept
    run.refresh_from_db()
    assert run.last_step == 4


def test_points_whose_live_message_was_lost_reach_the_page_from_the_database(tmp_path, monkeypatch):
    """Redis drops what it cannot deliver; the next points message (or the run's status) names the steps the worker
    had sent, and the consumer sends the page the ones it never got, once each."""
    run, cookie = quiet_run(tmp_path)
    recorder = execution.RunRecorder(run)
    real_send = live.send_run_message

    def losing_points(run_id, type_, payload):
        return False if type_ == "points" else real_send(run_id, type_, payload)

    async def watch():
        from channels.db import database_sync_to_async

        record = database_sync_to_async(recorder.record_many)
        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        await comm.receive_json_from(timeout=10)
        await record([metrics(1)])
        got = [await comm.receive_json_from(timeout=10)]
        monkeypatch.setattr(live, "send_run_message", losing_points)
        await record([metrics(2), {"type": "eval", "time": 2.5, "step": 2, "epoch": 0.2, "eval_loss": 2.9},
                      metrics(3)])
        monkeypatch.setattr(live, "send_run_message", real_send)
        await record([metrics(4)])  # its message names step 3: the page lacks 2 and 3
        got += [await comm.receive_json_from(timeout=10)]
        # The last points before a status lost too (the end of a run): the status carries the last step stored.
        monkeypatch.setattr(live, "send_run_message", losing_points)
        await record([metrics(5)])
        monkeypatch.setattr(live, "send_run_message", real_send)

        def send_status():
            run.refresh_from_db()
            live.send_run_message(run.id, "status", selectors.run_status_dict(run))

        await database_sync_to_async(send_status)()
        got += [await comm.receive_json_from(timeout=10) for _ in range(2)]
        await comm.disconnect()
        return got

    got = run_async(watch)
    assert [m["type"] for m in got] == ["points", "points", "points", "status"]
    assert [p["step"] for p in got[0]["points"]] == [1]
    # Read from the database: steps 2 and 3, and 4 as well (stored before its message); 4's own message is then
    # not forwarded again.
    assert [(p["step"], p["loss"], p["eval_loss"]) for p in got[1]["points"]] == [
        (2, pytest.approx(2.8), 2.9), (3, pytest.approx(2.7), None), (4, pytest.approx(2.6), None)]
    assert [p["step"] for p in got[2]["points"]] == [5]
    assert got[3]["last_step"] == 5


def test_replay_and_catch_up_read_the_database_in_chunks_and_send_each_point_once(tmp_path, monkeypatch):
    """With two points a chunk: four stored points replay as two chunks and a final message (which names step 4,
    though its own chunk is empty); three lost points and the one after them come back as two chunks."""
    monkeypatch.setattr(selectors, "REPLAY_CHUNK", 2)
    run, cookie = quiet_run(tmp_path)
    recorder = execution.RunRecorder(run)
    recorder.record_many([metrics(step) for step in range(1, 5)])
    real_send = live.send_run_message

    async def watch():
        from channels.db import database_sync_to_async

        record = database_sync_to_async(recorder.record_many)
        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        got = [await comm.receive_json_from(timeout=10) for _ in range(3)]
        monkeypatch.setattr(live, "send_run_message", lambda run_id, type_, payload: False)
        await record([metrics(5), metrics(6), metrics(7)])
        monkeypatch.setattr(live, "send_run_message", real_send)
        await record([metrics(8)])
        got += [await comm.receive_json_from(timeout=10) for _ in range(2)]
        assert await comm.receive_nothing(timeout=1)
        await comm.disconnect()
        return got

    got = run_async(watch)
    assert [(m["type"], m.get("done"), [p["step"] for p in m["points"]]) for m in got] == [
        ("replay", False, [1, 2]), ("replay", False, [3, 4]), ("replay", True, []),
        ("points", None, [5, 6]), ("points", None, [7, 8])]
    assert got[2]["last_step"] == 4


def test_a_payload_may_not_carry_its_own_type():
    with pytest.raises(ValueError, match="must not have its own 'type'"):
        live.send_run_message(1, "event", {"type": "checkpoint", "seq": 1})
