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
            return json.loads(data.decode((parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET))
        except (ValueError, UnicodeDecodeError) as exc:
            raise exceptions.ParseError(f"the body is not valid JSON: {exc}") from None


class LimitedMultiPartParser(MultiPartParser):
    """Multipart uploads (a dataset's file) up to TUNEBOARD_DATASET_MAX_BYTES and the form around it, refused by
    their Content-Length before the file is received."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = upload_limit()
        declared = declared_length(parser_context)
        if declared is not None and declared > limit:
            raise too_large(declared, limit, "an upload (TUNEBOARD_DATASET_MAX_BYTES and 1 MiB of form)")
        return super().parse(stream, media_type, parser_context)
