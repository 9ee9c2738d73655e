"""The API's one error shape.

- 400: {"errors": {field: [message, ...]}}: a request field, a config field (as the run form names it: "r",
  "lr_scheduler_kwargs.num_cycles", "fit" for the fit planner's refusal), or "__all__" for what belongs to no field.
- 401, 403, 404, 405, 413, 415, 429: {"detail": "..."}. Another team's object is a 404, exactly like a missing one;
  a write the caller's role does not allow is a 403.

The services' own ValidationError (Django's) and PermissionDenied reach the caller as they reach a form: the same
messages on the same keys."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, RequestDataTooBig, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, status
from rest_framework.views import exception_handler as drf_exception_handler

from training.api.parsers import declared_length, json_limit, too_large

ALL = "__all__"


def _messages(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            out.extend(_messages(item))
        return out
    if isinstance(value, dict):
        return [f"{key}: {message}" for key, inner in value.items() for message in _messages(inner)]
    return [str(value)]


def error_dict(detail: Any) -> dict[str, list[str]]:
    """Any DRF or Django error detail as {field: [message, ...]}: nested fields dotted, non-field ones under
    "__all__"."""
    if not isinstance(detail, dict):
        return {ALL: _messages(detail)}
    out: dict[str, list[str]] = {}
    for key, value in detail.items():
        key = ALL if key in ("non_field_errors", NON_FIELD_ERRORS) else str(key)
        if isinstance(value, dict):
            for inner_key, messages in error_dict(value).items():
                out.setdefault(key if inner_key == ALL else f"{key}.{inner_key}", []).extend(messages)
        else:
            out.setdefault(key, []).extend(_messages(value))
    return out


def django_errors(error: DjangoValidationError) -> dict[str, list[str]]:
    if hasattr(error, "error_dict"):
        return error_dict(error.message_dict)
    return {ALL: list(error.messages)}


def bad_request(errors: dict[str, list[str] | str]) -> exceptions.ValidationError:
    """A 400 in the API's shape, raised by the views for what they check themselves."""
    return exceptions.ValidationError({k: v if isinstance(v, list) else [v] for k, v in errors.items()})


def exception_handler(exc: Exception, context: dict) -> Any:
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(django_errors(exc))
    elif isinstance(exc, RequestDataTooBig):  # Django's own check, as DRF reads a JSON body or a form field
        request = context.get("request")
        exc = too_large(declared_length({"request": request}) if request is not None else None, json_limit(),
                        "a JSON body or a form field (DATA_UPLOAD_MAX_MEMORY_SIZE)")
    elif isinstance(exc, TooManyFieldsSent):
        exc = exceptions.ValidationError({ALL: [str(exc) or "too many form fields"]})
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django's 500
    if isinstance(exc, exceptions.ParseError):
        response.data = {"errors": {ALL: [str(exc.detail)]}}
    elif response.status_code == status.HTTP_400_BAD_REQUEST:
        response.data = {"errors": error_dict(response.data)}
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else response.data
        response.data = {"detail": str(detail)}
    return response
