"""Websockets opened with an API token: `Authorization: Bearer <token>` in the handshake's headers (scripts), or
`?token=<token>` in the URL (clients that cannot set headers). Such a socket is the token's user's, checked by the
consumers exactly like a session's (team, role, the periodic re-check), plus the token itself on each re-check.

A socket without a token goes through the session stack, behind the same-origin check: a cookie is sent by the
browser whatever page opened the socket, so the origin must be checked; a token is sent only by whoever holds it,
so a token socket needs no Origin header (scripts send none)."""
from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser

from dashboard.client_ip import client_ip
from dashboard.tokens import limits
from dashboard.tokens.services import TokenError, token_authenticate


def token_of(scope) -> str | None:
    """The token the handshake carries, or None when it carries none (a session socket)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            return rest.strip() if scheme.lower() == "bearer" else value.decode("latin-1")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "token" in query:
        return query["token"][0]
    return None


class _Meta:
    """What dashboard.client_ip reads of a request, from a websocket's scope."""

    def __init__(self, scope):
        headers = dict(scope.get("headers", []))
        self.META = {"REMOTE_ADDR": (scope.get("client") or [None])[0],
                     "HTTP_X_FORWARDED_FOR": headers.get(b"x-forwarded-for", b"").decode("latin-1")}


def authenticate(text: str, address: str | None) -> tuple[object, int | None, str]:
    """(user, token id, "") for a good token; (AnonymousUser, None, why) otherwise. Failures count toward the
    address's limit as the API's do."""
    wait = limits.blocked_for(address)
    if wait:
        return AnonymousUser(), None, limits.refusal(wait)
    try:
        token = token_authenticate(text)
    except TokenError as exc:
        limits.record_failure(address)
        return AnonymousUser(), None, str(exc)
    return token.user, token.id, ""


class TokenOrSession:
    """Route a websocket to `token_app` with scope["user"] (and scope["api_token_id"]) from its token, or, without
    a token, to `session_app`. A refused token leaves an anonymous user (the consumers close with 4401) and the
    reason in scope["api_token_error"]."""

    def __init__(self, *, token_app, session_app):
        self.token_app, self.session_app = token_app, session_app

    async def __call__(self, scope, receive, send):
        text = token_of(scope)
        if text is None:
            return await self.session_app(scope, receive, send)
        user, token_id, error = await database_sync_to_async(authenticate)(text, client_ip(_Meta(scope)))
        scope = {**scope, "user": user, "api_token_id": token_id, "api_token_error": error}
        return await self.token_app(scope, receive, send)
