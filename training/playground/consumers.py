"""The playground's websocket: the session's status and load progress on connect and as they change, the prompts
the page sends (checked, then queued in Redis for the worker serving it) and the tokens of both sides as they are
generated; a cancel that ends the reply being written where it is. The page keeps the chat: each prompt comes with
each side's history (checked here and again by the serving process). Never writes the database; the shared connect, access re-check and close codes come from JsonRequests."""
from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from training import access
from training.engine.serve import MAX_HISTORY_MESSAGES, SpecError, parse_request
from training.live.consumers import JsonRequests
from training.live.send import playground_group
from training.models import PlaygroundSession
from training.playground import selectors
from training.playground.services import playground_cancel, playground_submit, session_state


class PlaygroundConsumer(JsonRequests):
    ALLOWED = [{"type": "generate", "id": "a string naming the prompt (echoed in its tokens)",
                "prompt": "text: the new user message",
                "system": "optional text: the system prompt, rendered before both sides' history by the chat "
                          "template's rules, as training rendered the dataset's system turns",
                "history": "optional {left: [...], right: [...]}: each side's earlier messages, {role: user or "
                           "assistant, content}, alternating from the user's, that side's own replies; at most "
                           f"{MAX_HISTORY_MESSAGES} a side",
                "temperature": "0 (greedy) to 2", "top_p": "above 0 to 1", "max_new_tokens": "1 to 4096",
                "seed": "optional integer >= 0"},
               {"type": "cancel", "request": "the id of a prompt whose reply is to end now (its text so far stays)"}]

    async def connect(self) -> None:
        self.session = await self.open_object(selectors.get_session_for_user, "session_id")
        if self.session is None:
            return
        # The group first, then the state: a change made while the state is read arrives after it.
        await self.join(playground_group(self.session.id))
        await self.send_json(await database_sync_to_async(self.state)())

    def state(self) -> dict[str, Any]:
        self.session.refresh_from_db()
        return session_state(self.session)


    def may_generate(self) -> str:
        """Why this user may not send a prompt now, or ""."""
        if access.role_for(self.user, self.session.team) not in ("member", "admin"):
            return f"the playground needs the member role in team {self.session.team.name}"
        status = PlaygroundSession.objects.filter(id=self.session.id).values_list("status", flat=True).first()
        if status not in PlaygroundSession.LIVE:
            return "this session's model was released; load it again"
        return ""

    async def receive_json(self, content: Any, **kwargs) -> None:
        if isinstance(content, dict) and content.get("type") == "cancel":
            await self.cancel(content)
            return
        if not isinstance(content, dict) or content.get("type") != "generate":
            kind = content.get("type") if isinstance(content, dict) else type(content).__name__
            await self.error(f"unknown message {kind!r}")
            return
        request_id = content.get("id") if isinstance(content.get("id"), str) else ""
        try:
            request = parse_request(content)
        except SpecError as exc:
            await self.send_json({"type": "refused", "request": request_id, "errors": exc.errors})
            return
        refusal = await database_sync_to_async(self.may_generate)()
        if refusal:
            await self.send_json({"type": "refused", "request": request_id, "errors": {"session": refusal}})
            return
        refusal = await playground_submit(self.session.id, request)
        if refusal:
            await self.send_json({"type": "refused", "request": request_id, "errors": {"session": refusal}})
            return
        await self.send_json({"type": "queued", "request": request.id})

    async def cancel(self, content: dict) -> None:
        request_id = content.get("request")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 64 or set(content) - {"type", "request"}:
            await self.error("a cancel is {type: 'cancel', request: the id of the prompt (1 to 64 characters)}")
            return
        refusal = await database_sync_to_async(self.may_generate)()
        if refusal:
            await self.send_json({"type": "error", "error": refusal})
            return
        await playground_cancel(self.session.id, request_id)

    async def playground_message(self, message: dict) -> None:
        """From the worker (training.live.send.send_playground_message): forwarded as it is."""
        await self.send_json(message["message"])

