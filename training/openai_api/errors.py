"""OpenAI's error shape, which its client libraries read: {"error": {"message", "type", "param", "code"}} with the
HTTP status they map to their exceptions (400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError,
404 NotFoundError, 409 ConflictError, 429 RateLimitError, 5xx InternalServerError). Pure: the views turn it into a
response."""
from __future__ import annotations

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
         429: "rate_limit_error", 503: "server_error", 504: "server_error"}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad(param: str | None, message: str, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str = "not_found") -> OpenAIError:
    return OpenAIError(404, message, param=param, code=code)


def from_field_errors(errors: dict, names: dict[str, str] | None = None) -> OpenAIError:
    """The services' {field: message(s)} as one 400 naming the first field (as OpenAI names one `param`), every
    message in the text; `names` gives a field its name in the OpenAI request."""
    names = names or {}
    parts, first = [], None
    for field, messages in errors.items():
        messages = messages if isinstance(messages, (list, tuple)) else [messages]
        name = names.get(field, field)
        first = first or name
        parts.extend(f"{name}: {message}" for message in messages)
    return bad(None if first == "__all__" else first, "; ".join(parts) or "invalid request")
