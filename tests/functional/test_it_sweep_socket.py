"""The sweep page's websocket: refused as the run page's is (logged out 4401; another team's sweep 4404, like a
missing one), the sweep's state first, each member run's status, points and findings tagged with its run, a new
phase's runs followed once a state names them, nothing taken from the page, closed when its user leaves the team."""
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from dashboard.models import Membership
from tests.factories import idle_queue, make_dataset, make_member, make_run, make_team, tiny_overrides
from tests.integration.conftest import run_async, session_cookie
from training.live import send as live
from training.live.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from training.sweeps import services
from training.sweeps.selectors import sweep_state

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def socket(sweep_id: int, cookie: str | None) -> WebsocketCommunicator:
    from dashboard.asgi import application

    headers = [(b"origin", b"http://testserver")]
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, f"/ws/sweeps/{sweep_id}/", headers=headers)


@pytest.fixture
def setup(tmp_path):
    team, other = make_team(), make_team()
    user, outsider = make_member(team), make_member(other)
    dataset = make_dataset(team, user, tmp_dir=tmp_path)
    sweep = services.sweep_create(team=team, user=user, template="r", dataset=dataset, queue=idle_queue(),
                                  params={"values": [2, 4]},
                                  overrides=tiny_overrides("tiny-model", max_steps=12, eval_split=0.2, eval_steps=6))
    return team, user, outsider, dataset, sweep


async def closed_code(comm, timeout=10):
    output = await comm.receive_output(timeout=timeout)
    assert output["type"] == "websocket.close", output
    return output["code"]


def test_logged_out_and_another_teams_sweep_are_refused(setup):
    team, user, outsider, dataset, sweep = setup
    cookie = session_cookie(outsider)

    async def scenario():
        anonymous = socket(sweep.id, None)
        assert await anonymous.connect(timeout=10) == (False, CLOSE_UNAUTHENTICATED)
        theirs, missing = socket(sweep.id, cookie), socket(sweep.id + 1000, cookie)
        assert await theirs.connect(timeout=10) == (False, CLOSE_NOT_FOUND)
        assert await missing.connect(timeout=10) == (False, CLOSE_NOT_FOUND)

    run_async(scenario)


def test_state_first_then_member_runs_tagged_and_a_new_phases_runs_followed(setup):
    team, user, outsider, dataset, sweep = setup
    cookie = session_cookie(user)
    first, second = [m.run_id for m in sweep.members.order_by("index")]
    later = make_run(team, user, dataset)
    state = sweep_state(sweep)

    async def scenario():
        comm = socket(sweep.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        hello = await comm.receive_json_from(timeout=10)
        assert hello["type"] == "state" and hello["state"]["run_ids"] == [first, second]
        await sync_to_async(live.send_run_message)(second, "status", {"status": "running", "last_step": 3})
        await sync_to_async(live.send_run_message)(second, "log", {"tail": ["noise"]})  # not drawn: not sent
        await sync_to_async(live.send_run_message)(first, "points", {"points": [{"kind": "metrics", "step": 1,
                                                                                 "loss": 2.5}], "after": {}})
        got = [await comm.receive_json_from(timeout=10) for _ in range(2)]
        assert sorted((m["run_id"], m["message"]["type"]) for m in got) == [(first, "points"), (second, "status")]
        assert {m["type"] for m in got} == {"run"}
        # A new phase: its state names a run the socket did not follow; once forwarded, that run's messages come.
        await sync_to_async(live.send_sweep_state)(sweep.id, {**state, "run_ids": [first, second, later.id]})
        assert (await comm.receive_json_from(timeout=10))["state"]["run_ids"] == [first, second, later.id]
        await sync_to_async(live.send_run_message)(later.id, "finding", {"code": "flat_loss", "step": 6})
        message = await comm.receive_json_from(timeout=10)
        assert message["run_id"] == later.id and message["message"]["code"] == "flat_loss"
        # A run no longer a member (resumed as another) is left.
        await sync_to_async(live.send_sweep_state)(sweep.id, {**state, "run_ids": [second, later.id]})
        await comm.receive_json_from(timeout=10)
        await sync_to_async(live.send_run_message)(first, "status", {"status": "lost"})
        await sync_to_async(live.send_run_message)(second, "status", {"status": "succeeded"})
        message = await comm.receive_json_from(timeout=10)
        assert message["run_id"] == second
        await comm.send_json_to({"type": "replay", "after_step": 0})
        error = await comm.receive_json_from(timeout=10)
        assert error["type"] == "error" and "takes no messages" in error["error"]
        assert await comm.receive_nothing(timeout=0.5)
        await comm.disconnect()

    run_async(scenario)


def test_leaving_the_team_closes_the_socket(setup):
    team, user, outsider, dataset, sweep = setup
    cookie = session_cookie(user)

    async def scenario():
        comm = socket(sweep.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.receive_json_from(timeout=10)
        await sync_to_async(Membership.objects.filter(user=user, team=team).delete)()
        assert await closed_code(comm) == CLOSE_NOT_FOUND

    run_async(scenario)
