"""The API's token authentication: `Authorization: Bearer tb_...` (dashboard/tokens/). A refused token is a 401 with
the reason (malformed, unknown, revoked, expired, its user removed or deactivated), and each refusal counts toward
its address's limit (dashboard/tokens/limits.py): past it, 429 until the window ends, whatever the token."""
from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from dashboard.client_ip import client_ip
from dashboard.tokens import limits
from dashboard.tokens.services import TokenError, token_authenticate


class BearerTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request):
        header = get_authorization_header(request).decode("latin-1").strip()
        if not header:
            return None  # the session's turn (SessionAuthentication), or 401 without either
        address = client_ip(request._request)
        wait = limits.blocked_for(address)
        if wait:
            raise exceptions.Throttled(wait, detail=limits.refusal(wait))
        scheme, _, text = header.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise TokenError(f"unsupported Authorization scheme {scheme!r}: send 'Authorization: Bearer tb_...'")
            token = token_authenticate(text)
        except TokenError as exc:
            limits.record_failure(address)
            raise exceptions.AuthenticationFailed(str(exc)) from None
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        """Makes an unauthenticated request a 401 (not a 403), naming the scheme."""
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes the token (drf-spectacular finds it by the class's path)."""

    target_class = "training.api.authentication.BearerTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "tb_ and 43 characters",
                "description": "A personal token from Settings → API tokens"}
