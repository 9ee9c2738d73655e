"""The OpenAI-compatible chat over the playground's machinery: a run's model is a playground session of the run (its
adapter beside its base model, reused while live, started on the run's queue otherwise), a chat completion one prompt
queued for it (training.playground.services.playground_submit), its tokens read from the session's channel-layer
group as the playground's websocket reads them."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.exceptions import PermissionDenied, ValidationError

from training.access import team_ids_for
from training.live.send import playground_group
from training.models import PlaygroundSession, Run
from training.playground.services import playground_start, playground_submit

from .chat import PARAMS, ChatCall
from .errors import OpenAIError, bad, from_field_errors, not_found

# How long a request waits for its model to load and its answer to start, and then between two tokens.
FIRST_TOKEN_WAIT_S = 600.0
NEXT_TOKEN_WAIT_S = 120.0


class SessionEnded(Exception):
    """The session ended before the request's answer began (released when idle as the request came, say)."""


def chat_run(*, user, run_id: int, model: str) -> Run:
    """The run a model name names, if it is in the user's teams; any other is OpenAI's model_not_found."""
    run = Run.objects.filter(id=run_id, team_id__in=team_ids_for(user)).first()
    if run is None:
        raise not_found(f"The model {model!r} does not exist or you do not have access to it", param="model",
                        code="model_not_found")
    return run


def chat_session(*, user, run_id: int, model: str, checkpoint: int | None = None) -> int:
    """The id of a live playground session serving the run's adapter (final, or the checkpoint's) and its base model
    (started if none is)."""
    run = chat_run(user=user, run_id=run_id, model=model)
    try:
        return playground_start(run=run, user=user, checkpoint_step=checkpoint).id
    except PermissionDenied as exc:
        raise OpenAIError(403, str(exc), param="model", code="permission_denied") from None
    except ValidationError as exc:
        messages = [m for values in getattr(exc, "message_dict", {"": exc.messages}).values() for m in values]
        raise bad("model", f"{model}: " + "; ".join(messages), code="model_not_available") from None


def _is_live(session_id: int) -> bool:
    return PlaygroundSession.objects.filter(id=session_id, status__in=PlaygroundSession.LIVE).exists()


async def _events(session_id: int, call: ChatCall, request_id: str) -> AsyncIterator[dict[str, Any]]:
    """The serving process's token events for this request, then its reply; OpenAIError for a refusal."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = playground_group(session_id)
    await layer.group_add(group, channel)  # before the prompt is queued: no token can come before we listen
    try:
        if not await database_sync_to_async(_is_live)(session_id):
            raise SessionEnded
        refusal = await playground_submit(session_id, replace(call.request, id=request_id))
        if refusal:
            raise OpenAIError(429, refusal, code="rate_limit_exceeded")
        wait = FIRST_TOKEN_WAIT_S
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=wait)
            except TimeoutError:
                raise OpenAIError(504, f"no answer from the model's worker within {wait:g} s",
                                  code="timeout") from None
            event = message.get("message") or {}
            kind = event.get("type")
            if kind == "status" and not event.get("is_live"):
                if wait == FIRST_TOKEN_WAIT_S and event.get("status") == PlaygroundSession.Status.ENDED:
                    raise SessionEnded
                why = event.get("error") or event.get("end_reason") or event.get("status")
                raise OpenAIError(503, f"the model's worker stopped serving it: {why}", code="model_unavailable")
            if event.get("request") != request_id or event.get("side") not in (None, call.side):
                continue
            if kind == "refused":
                raise from_field_errors(event.get("errors") or {}, PARAMS)
            if kind in ("token", "reply"):
                wait = NEXT_TOKEN_WAIT_S
                yield event
                if kind == "reply":
                    return
    finally:
        await layer.group_discard(group, channel)


async def chat_events(*, user, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
    """The answer's events (token ..., reply) from a session serving the run; a session that ends before the answer
    begins is started again once (a model released when idle just as the request came)."""
    for attempt in (1, 2):
        session_id = await database_sync_to_async(chat_session)(user=user, run_id=call.run_id, model=call.model,
                                                                checkpoint=call.checkpoint)
        try:
            async for event in _events(session_id, call, uuid.uuid4().hex):
                yield event
            return
        except SessionEnded:
            if attempt == 2:
                raise OpenAIError(503, "the model was released twice before it answered; try again",
                                  code="model_unavailable") from None


def completion_id() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
