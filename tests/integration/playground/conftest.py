"""The playground's tests share a worker of their own queue that releases a model after IDLE_S idle seconds, and a
browser's websocket to a session."""
import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings

from tests.workers import start_worker, stop_worker

IDLE_S = 6


@pytest.fixture
def playground_worker(tmp_path):
    """A worker of its own queue that releases a playground model after IDLE_S idle seconds."""
    queue = f"{settings.TUNEBOARD_DEFAULT_QUEUE}-playground"
    worker = start_worker(queue=queue, name=f"playground-{tmp_path.name}@test", log=tmp_path / "worker.log",
                          env={"TUNEBOARD_PLAYGROUND_IDLE_S": str(IDLE_S)})
    yield worker
    stop_worker(worker)


def socket(session_id: int, cookie: str | None) -> WebsocketCommunicator:
    from dashboard.asgi import application

    headers = [(b"origin", b"http://testserver")]
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, f"/ws/playground/{session_id}/", headers=headers)


async def until(comm, stop, timeout=120) -> list[dict]:
    messages = []
    async with asyncio.timeout(timeout):
        while True:
            message = await comm.receive_json_from(timeout=timeout)
            messages.append(message)
            if stop(message, messages):
                return messages


def replies(messages, request) -> dict[str, dict]:
    return {m["side"]: m for m in messages if m["type"] == "reply" and m["request"] == request}
