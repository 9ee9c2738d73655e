"""What the run page receives live: each message keeps its own type, whatever the payload carries."""
import uuid

import pytest

from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from training import live, services

from .conftest import communicator, run_async, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_live_event_arrives_as_an_event_naming_its_kind(tmp_path):
    team = make_team()
    user = make_member(team)
    # On a queue no worker consumes: the session's worker must not claim it and send messages of its own.
    run = services.run_create(team=team, user=user, dataset=make_dataset(team, user, tmp_dir=tmp_path),
                              overrides=tiny_overrides("tiny-model"), queue=f"nobody-{uuid.uuid4().hex[:8]}")
    cookie = session_cookie(user)

    async def watch():
        from channels.db import database_sync_to_async

        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        replay = await comm.receive_json_from(timeout=10)
        recorder = await database_sync_to_async(services.RunRecorder)(run)
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


def test_a_payload_may_not_carry_its_own_type():
    with pytest.raises(ValueError, match="must not have its own 'type'"):
        live.send_run_message(1, "event", {"type": "checkpoint", "seq": 1})
