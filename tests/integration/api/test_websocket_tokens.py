"""Websockets with an API token (Authorization: Bearer in the handshake, or ?token= in the URL), on the real Redis
channel layer: the same team checks as a session's (another team's run 4404, the run list scoped to the token
user's teams, a viewer watches), a bad, revoked or expired token 4401, no Origin needed with a token and still
needed without one; revoking a token closes the sockets opened with it."""
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from dashboard.models import ApiToken
from dashboard.tokens import limits
from dashboard.tokens.services import digest_of, token_revoke
from tests.integration.conftest import communicator, run_async, session_cookie
from training.live import send as live
from training.live.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


def token_socket(path: str, token: str | None, *, how: str = "header") -> WebsocketCommunicator:
    """A script's websocket: no Origin and no cookie; the token in the header or the query string."""
    from dashboard.asgi import application

    headers = [(b"authorization", f"Bearer {token}".encode())] if token and how == "header" else []
    if token and how == "query":
        path = f"{path}?token={token}"
    return WebsocketCommunicator(application, path, headers=headers)


async def connect(comm) -> tuple[bool, int | None]:
    connected, code = await comm.connect(timeout=10)
    if connected:
        await comm.disconnect()
    return connected, code


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_token_opens_its_teams_run_and_no_other(api_world, how):
    a, b = api_world.a, api_world.b
    viewer_token = api_world.tokens[a.viewer]

    async def attempts():
        return [await connect(token_socket(f"/ws/runs/{a.run.id}/", viewer_token, how=how)),
                await connect(token_socket(f"/ws/runs/{b.run.id}/", viewer_token, how=how)),
                await connect(token_socket("/ws/runs/999999999/", viewer_token, how=how)),
                await connect(token_socket(f"/ws/runs/{a.run.id}/", "tb_" + "x" * 43, how=how)),
                await connect(token_socket(f"/ws/runs/{a.run.id}/", "not-a-token", how=how))]

    assert run_async(attempts) == [(True, None), (False, CLOSE_NOT_FOUND), (False, CLOSE_NOT_FOUND),
                                   (False, CLOSE_UNAUTHENTICATED), (False, CLOSE_UNAUTHENTICATED)]


def test_a_token_socket_replays_and_follows_the_run_like_a_page(api_world):
    a = api_world.a
    token = api_world.tokens[a.member]

    async def follow():
        comm = token_socket(f"/ws/runs/{a.run.id}/", token)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "replay", "after_step": 0})
        replay = await comm.receive_json_from(timeout=10)
        await sync_to_async(live.send_run_message)(a.run.id, "status", {"status": "running", "is_terminal": False})
        live_message = await comm.receive_json_from(timeout=10)
        await comm.disconnect()
        return replay, live_message

    replay, live_message = run_async(follow)
    assert replay["type"] == "replay" and replay["done"] and replay["status"]["id"] == a.run.id
    assert live_message == {"type": "status", "status": "running", "is_terminal": False}


def test_the_run_list_socket_with_a_token_sees_only_its_teams_rows(api_world):
    a, b = api_world.a, api_world.b

    async def watch():
        comm = token_socket("/ws/runs/", api_world.tokens[a.viewer])
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "watch", "runs": [a.run.id, b.run.id]})
        rows = await comm.receive_json_from(timeout=10)
        await comm.disconnect()
        return rows

    rows = run_async(watch)
    assert [r["id"] for r in rows["rows"]] == [a.run.id]


def test_revoked_and_expired_tokens_are_refused_and_revoking_closes_open_sockets(api_world, settings):
    settings.TUNEBOARD_WS_ACCESS_RECHECK_S = 60  # the push, not the periodic re-check, must close it
    a = api_world.a
    text = api_world.tokens[a.member]
    token = ApiToken.objects.get(digest=digest_of(text))
    expiring_text = api_world.tokens[a.viewer]

    async def scenario():
        comm = token_socket(f"/ws/runs/{a.run.id}/", text)
        assert (await comm.connect(timeout=10))[0]
        await sync_to_async(token_revoke)(token=token, user=a.member)
        closed = await comm.receive_output(timeout=10)
        again = await connect(token_socket(f"/ws/runs/{a.run.id}/", text))
        await sync_to_async(ApiToken.objects.filter(digest=digest_of(expiring_text)).update)(
            expires_at=timezone.now())
        expired = await connect(token_socket(f"/ws/runs/{a.run.id}/", expiring_text, how="query"))
        return closed, again, expired

    closed, again, expired = run_async(scenario)
    assert closed["type"] == "websocket.close" and closed["code"] == CLOSE_NOT_FOUND
    assert again == (False, CLOSE_UNAUTHENTICATED) and expired == (False, CLOSE_UNAUTHENTICATED)


def test_a_deactivated_users_token_socket_closes_at_the_periodic_recheck(api_world, settings):
    settings.TUNEBOARD_WS_ACCESS_RECHECK_S = 0.5
    a = api_world.a
    text = api_world.tokens[a.member]

    async def scenario():
        comm = token_socket(f"/ws/runs/{a.run.id}/", text)
        assert (await comm.connect(timeout=10))[0]
        # A queryset update sends no signal: the re-check (which asks the token too) must find it.
        await sync_to_async(type(a.member).objects.filter(id=a.member.id).update)(is_active=False)
        return await comm.receive_output(timeout=10)

    closed = run_async(scenario)
    assert closed["type"] == "websocket.close" and closed["code"] == CLOSE_NOT_FOUND


def test_a_session_socket_still_needs_its_origin(api_world):
    from dashboard.asgi import application

    cookie = session_cookie(api_world.a.member)

    async def attempts():
        no_origin = WebsocketCommunicator(application, f"/ws/runs/{api_world.a.run.id}/",
                                          headers=[(b"cookie", f"sessionid={cookie}".encode())])
        foreign = WebsocketCommunicator(application, f"/ws/runs/{api_world.a.run.id}/",
                                        headers=[(b"cookie", f"sessionid={cookie}".encode()),
                                                 (b"origin", b"http://evil.example")])
        return [await connect(no_origin), await connect(foreign),
                await connect(communicator(api_world.a.run.id, cookie))]

    refused_no_origin, refused_foreign, allowed = run_async(attempts)
    assert refused_no_origin[0] is False and refused_foreign[0] is False and allowed == (True, None)


def test_token_socket_failures_count_toward_the_addresss_limit(api_world, settings):
    settings.TUNEBOARD_TOKEN_FAILURE_LIMIT = 2
    address = None  # WebsocketCommunicator's scope has no client address
    good = api_world.tokens[api_world.a.member]

    async def attempts():
        return [await connect(token_socket(f"/ws/runs/{api_world.a.run.id}/", "tb_" + "y" * 43)),
                await connect(token_socket(f"/ws/runs/{api_world.a.run.id}/", "tb_" + "z" * 43)),
                await connect(token_socket(f"/ws/runs/{api_world.a.run.id}/", good))]

    try:
        results = run_async(attempts)
    finally:
        limits.reset(address)
    assert results == [(False, CLOSE_UNAUTHENTICATED)] * 3
