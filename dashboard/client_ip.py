"""The address a login comes from, for the lockout by address (django-axes' AXES_CLIENT_IP_CALLABLE)."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The peer's address; behind TUNEBOARD_PROXY_COUNT proxies, each appending the address it saw to
    X-Forwarded-For, the entry that many from the right: what the outermost proxy saw. Entries further left are the
    client's own to write, so they never count; a request with fewer entries did not come through every proxy."""
    count = settings.TUNEBOARD_PROXY_COUNT
    if count:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= count:
            return hops[-count]
    return request.META.get("REMOTE_ADDR")
