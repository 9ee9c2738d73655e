"""A chat completion request in OpenAI's shape checked and turned into the playground's prompt (training/engine/serve.py
`Request`: the conversation before the last user message as history, that message as the prompt, one side answering:
"left" the run's adapter, "right" its base model), and the serving process's events turned into OpenAI's
`chat.completion` and `chat.completion.chunk` objects. Pure logic: no Django, no I/O."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training.engine.serve import MAX_NEW_TOKENS, MAX_STOPS, Request, SpecError, parse_request

from .errors import OpenAIError, bad
from .names import parse_model

# Fields OpenAI's clients may send that change nothing here when they have OpenAI's default value.
DEFAULTS = {"n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "parallel_tool_calls": None,
            "response_format": {"type": "text"}, "tools": None, "tool_choice": None, "logit_bias": None,
            "top_logprobs": None, "service_tier": None}
IGNORED = {"user", "metadata", "store"}  # bookkeeping of OpenAI's own that has no effect on the answer
KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "stream",
         "stream_options", *DEFAULTS, *IGNORED}
# The engine's request fields by the name the OpenAI request gives them.
PARAMS = {"max_new_tokens": "max_tokens", "history": "messages", "prompt": "messages", "stop": "stop",
          "temperature": "temperature", "top_p": "top_p", "seed": "seed"}


@dataclass(frozen=True)
class ChatCall:
    run_id: int
    base: bool
    checkpoint: int | None
    model: str
    request: Request
    stream: bool
    include_usage: bool

    @property
    def side(self) -> str:
        return "right" if self.base else "left"


def _text(content: Any, index: int) -> str:
    """A message's content: a string, or a list of text parts (OpenAI's content parts; images are not served)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise bad(f"messages[{index}].content", "a string, or a list of text parts {type: text, text}")


def _messages(messages: Any) -> tuple[list[dict[str, str]], str]:
    """(history, last user message): an optional system (or developer) message first, then user and assistant
    messages alternating from the user's, ending with the user's."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "a non-empty list of messages {role, content}")
    out: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"messages[{index}]", "an object {role, content}")
        role = "system" if message["role"] == "developer" else message["role"]
        system = bool(out) and out[0]["role"] == "system"
        expected = "user" if (len(out) - system) % 2 == 0 else "assistant"
        if role == "system" and index == 0:
            pass
        elif role != expected:
            raise bad(f"messages[{index}].role", f"{expected!r} expected here, not {message['role']!r}: after an "
                                                 "optional system message, user and assistant messages alternate "
                                                 "from the user's and end with the user's (tool messages are not "
                                                 "served)")
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise bad(f"messages[{index}].{extra[0]}", "not served here; a message has role and content")
        out.append({"role": role, "content": _text(message.get("content"), index)})
    if out[-1]["role"] != "user":
        raise bad("messages", "the last message must be the user's: the model answers it")
    return out[:-1], out[-1]["content"]


def parse_chat(body: Any) -> ChatCall:
    """The body of POST /v1/chat/completions, checked; OpenAIError (400, the parameter named) for the first fault."""
    if not isinstance(body, dict):
        raise bad(None, "the body must be a JSON object")
    for name in sorted(set(body) - KNOWN):
        raise bad(name, f"not a parameter this server takes; it takes {', '.join(sorted(KNOWN))}")
    for name, default in DEFAULTS.items():
        if name in body and body[name] not in (default, None):
            raise bad(name, f"only {default!r} is served here")
    if "model" not in body:
        raise bad("model", "required: a run's model, run-<id> (its adapter) or run-<id>:base (GET /v1/models)")
    parsed = parse_model(body["model"])
    if parsed is None:
        raise OpenAIError(404, f"The model {body['model']!r} does not exist: a run's model is named run-<id> (its "
                               "adapter), run-<id>:base (its base model alone) or run-<id>:ckpt-<step> (a "
                               "checkpoint's adapter); GET /v1/models lists yours",
                          param="model", code="model_not_found")
    history, prompt = _messages(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))  # None: up to the context
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    elif stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOPS):
        raise bad("stop", f"a string or a list of at most {MAX_STOPS} strings")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad("stream", "true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options", "an object {include_usage: true or false}")
    side = "right" if parsed[1] else "left"
    content: dict[str, Any] = {
        "prompt": prompt, "history": {side: history}, "sides": [side], "max_new_tokens": max_tokens,
        "temperature": body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0,
        "top_p": body.get("top_p") if body.get("top_p") is not None else 1.0,
        "seed": body.get("seed") if body.get("seed") is not None else 0, "stop": stop or []}
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > MAX_NEW_TOKENS:
        raise bad("max_tokens", f"at most {MAX_NEW_TOKENS}, not {max_tokens}")
    try:
        request = parse_request(content)
    except SpecError as exc:
        name, message = next(iter(exc.errors.items()))
        raise bad(PARAMS.get(name, name), message) from None
    return ChatCall(run_id=parsed[0], base=parsed[1], checkpoint=parsed[2], model=body["model"], request=request,
                    stream=bool(stream), include_usage=bool(options.get("include_usage")))


def usage(reply: dict) -> dict[str, int]:
    prompt, completion = int(reply.get("prompt_tokens") or 0), int(reply.get("tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(*, completion_id: str, created: int, model: str, reply: dict) -> dict:
    """The whole answer as OpenAI's chat.completion."""
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.get("text", ""),
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": reply.get("finish_reason") or "stop"}],
            "usage": usage(reply)}


def chunk(*, completion_id: str, created: int, model: str, delta: dict | None = None,
          finish_reason: str | None = None, usage_of: dict | None = None) -> dict:
    """One chat.completion.chunk: a delta of the answer, its end (finish_reason), or (usage_of) the usage alone with
    no choices, as OpenAI sends it last when stream_options.include_usage is set."""
    out: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "system_fingerprint": None}
    if usage_of is not None:
        return {**out, "choices": [], "usage": usage(usage_of)}
    return {**out, "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]}
