"""The live channel on the real Redis: an idle run page keeps its socket, and a Redis outage never reaches the
worker's training loop."""
import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers

from tests.factories import make_dataset, make_member, make_run, make_team
from tests.integration.conftest import communicator, run_async, session_cookie
from training.live import send as live

pytestmark = pytest.mark.timeout(120)


@pytest.mark.django_db(transaction=True)
def test_an_idle_socket_still_gets_the_next_message(tmp_path):
    team = make_team()
    user = make_member(team)
    run = make_run(team, user, make_dataset(team, user, tmp_dir=tmp_path))
    cookie = session_cookie(user)

    async def idle_then_message():
        comm = communicator(run.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        assert (await comm.receive_json_from(timeout=10))["done"]
        await asyncio.sleep(7)  # longer than the layer's 5 s blocking read: the socket must survive silence
        sent = await sync_to_async(live.send_run_message)(run.id, "status", {"status": "running", "is_terminal": False})
        message = await comm.receive_json_from(timeout=10)
        await comm.disconnect()
        return sent, message

    sent, message = run_async(idle_then_message)
    assert sent and message == {"type": "status", "status": "running", "is_terminal": False}


def test_a_message_redis_cannot_take_is_reported_not_raised(settings):
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0", "socket_connect_timeout": 1}]},
    }}
    channel_layers.backends.clear()
    assert live.send_run_message(1, "points", {"points": [{"kind": "metrics", "step": 1, "loss": float("nan")}]}) is False
    with pytest.raises(ValueError, match="unknown run message type 'chart'; allowed: event, "):
        live.send_run_message(1, "chart", {})
