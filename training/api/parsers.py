"""The API's parsers, with its limits on request bodies: JSON up to DATA_UPLOAD_MAX_MEMORY_SIZE, uploads up to
TUNEBOARD_DATASET_MAX_BYTES and their form; larger ones are a 413 naming the limit. (Its own module: DRF imports the
parser classes while it defines APIView, so this must not import rest_framework.views.)"""
from __future__ import annotations

import json

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser, MultiPartParser

# A multipart upload carries its form fields and boundaries beside the file.
MULTIPART_OVERHEAD = 1024 * 1024


class BodyTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "body_too_large"


def json_limit() -> int:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def upload_limit() -> int:
    return settings.TUNEBOARD_DATASET_MAX_BYTES + MULTIPART_OVERHEAD


def too_large(size: int | None, limit: int, what: str) -> BodyTooLarge:
    said = f"{size:,} bytes" if size is not None else "more than that"
    return BodyTooLarge(f"the request body is {said}; {what} takes at most {limit:,} bytes")


def declared_length(parser_context: dict | None) -> int | None:
    request = (parser_context or {}).get("request")
    text = request.META.get("CONTENT_LENGTH") if request is not None else None
    try:
        return int(text) if text else None
    except ValueError:
        return None


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE. Django refuses a larger Content-Length itself when DRF reads the
    body (RequestDataTooBig, made the same 413 by errors.py); this refuses a body sent without one (chunked) after
    reading one byte past the limit."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = json_limit()
        what = "a JSON body (DATA_UPLOAD_MAX_MEMORY_SIZE)"
        declared = declared_length(parser_context)
        if declared is not None and declared > limit:
            raise too_large(declared, limit, what)
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise too_large(None, limit, what)
        if not data:
            return {}
        try:
            body = json.loads(data.decode((parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET))
            where = surrogate_at(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise exceptions.ParseError(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise exceptions.ParseError("the body's JSON is nested too deeply") from None
        if where is not None:
            raise exceptions.ValidationError({where or "__all__": [
                "contains an unpaired surrogate (a \\ud800-\\udfff escape alone); allowed: text that is valid "
                "Unicode"]})
        return body


def surrogate_at(value, path: str = "") -> str | None:
    """The dotted path of the first key or string holding an unpaired surrogate, which JSON's \\u escapes can carry
    but no UTF-8 encoder (the database's, the answer's own) can write; None when there is none."""
    if isinstance(value, str):
        return path if any("\ud800" <= ch <= "\udfff" for ch in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        if isinstance(key, str) and surrogate_at(key) is not None:
            return path  # the key itself cannot be written back: the object that holds it is named
        inner_path = f"{path}.{key}" if path else str(key)
        found = surrogate_at(inner, inner_path)
        if found is not None:
            return found
    return None


class LimitedMultiPartParser(MultiPartParser):
    """Multipart uploads (a dataset's file) up to TUNEBOARD_DATASET_MAX_BYTES and the form around it, refused by
    their Content-Length before the file is received."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = upload_limit()
        declared = declared_length(parser_context)
        if declared is not None and declared > limit:
            raise too_large(declared, limit, "an upload (TUNEBOARD_DATASET_MAX_BYTES and 1 MiB of form)")
        return super().parse(stream, media_type, parser_context)
