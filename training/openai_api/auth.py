"""The API's token (training/api/authentication.py: `Authorization: Bearer tb_...`, which OpenAI's clients send as the
api_key) for views that are not DRF's, its refusals in OpenAI's error shape."""
from __future__ import annotations

from django.http import HttpRequest
from rest_framework import exceptions
from rest_framework.request import Request

from training.api.authentication import BearerTokenAuthentication

from .errors import OpenAIError


def authenticate(request: HttpRequest):
    """The token's user; OpenAIError 401 (none, or refused) or 429 (too many refusals from this address)."""
    try:
        result = BearerTokenAuthentication().authenticate(Request(request))
    except exceptions.Throttled as exc:
        raise OpenAIError(429, str(exc.detail), code="rate_limit_exceeded") from None
    except exceptions.AuthenticationFailed as exc:
        raise OpenAIError(401, str(exc.detail), code="invalid_api_key") from None
    if result is None:
        raise OpenAIError(401, "no API key: send a Tuneboard token (Settings → API tokens) as "
                               "'Authorization: Bearer tb_...' (the OpenAI client's api_key)", code="missing_api_key")
    return result[0]
