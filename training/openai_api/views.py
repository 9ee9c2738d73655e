"""The OpenAI-compatible endpoints under /v1/ (OpenAI's clients take `base_url=<server>/v1` and a Tuneboard token as
the api_key): the chat (async: a streamed answer is server-sent events read from the channel layer as they come) and
the models a caller's teams have. Every refusal is OpenAI's error shape (errors.py)."""
from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from training.access import team_ids_for
from training.models import Run
from training.playground.services import checkpoint_steps

from . import chat, jobs
from .auth import authenticate
from .errors import OpenAIError, not_found
from .fine_tuning import parse_job
from .names import model_name, parse_model
from .services import chat_events, chat_run, completion_id


def error_response(exc: OpenAIError) -> JsonResponse:
    return JsonResponse(exc.body(), status=exc.status)


def json_body(request: HttpRequest) -> Any:
    if not request.content_type.startswith("application/json"):
        raise OpenAIError(415, f"send JSON (Content-Type: application/json), not {request.content_type!r}")
    try:
        return json.loads(request.body or b"null")
    except ValueError as exc:
        raise OpenAIError(400, f"the body is not JSON: {exc}") from None


def endpoint(*allowed: str):
    """A synchronous endpoint: the token's user handed to it, only `allowed` methods, an OpenAIError its response."""
    def decorate(handler):
        @csrf_exempt
        @functools.wraps(handler)
        def view(request: HttpRequest, **kwargs) -> JsonResponse:
            try:
                if request.method not in allowed:
                    raise OpenAIError(405, f"{request.method} is not allowed here; {' or '.join(allowed)}")
                return JsonResponse(handler(request, authenticate(request), **kwargs))
            except OpenAIError as exc:
                return error_response(exc)
        return view
    return decorate


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


@csrf_exempt
async def chat_completions(request: HttpRequest):
    """POST /v1/chat/completions: a run's adapter (model run-<id>) or its base model (run-<id>:base) answers."""
    if request.method != "POST":
        return error_response(OpenAIError(405, f"{request.method} is not allowed here; POST a chat completion"))
    try:
        user = await database_sync_to_async(authenticate)(request)
        call = chat.parse_chat(json_body(request))
        events = chat_events(user=user, call=call)
        first = await anext(events)  # refusals and an unavailable model are errors before the answer starts
        cid, created = completion_id()
        if not call.stream:
            reply = first
            async for event in events:
                reply = event
            return JsonResponse(chat.completion(completion_id=cid, created=created, model=call.model, reply=reply))
    except OpenAIError as exc:
        return error_response(exc)
    response = StreamingHttpResponse(_stream(call, first, events, cid, created), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must pass each chunk on as it comes
    return response


async def _stream(call: chat.ChatCall, first: dict, events: AsyncIterator[dict], cid: str,
                  created: int) -> AsyncIterator[str]:
    """The answer as OpenAI streams it: the assistant's role, each piece of text, the finish reason, the usage (if
    asked) and [DONE]; an error after the answer began is a data line in the error shape, as OpenAI sends it."""
    names = {"completion_id": cid, "created": created, "model": call.model}
    yield _sse(chat.chunk(**names, delta={"role": "assistant", "content": ""}))
    event = first
    try:
        while True:
            if event["type"] == "token":
                yield _sse(chat.chunk(**names, delta={"content": event["text"]}))
            else:
                yield _sse(chat.chunk(**names, finish_reason=event.get("finish_reason") or "stop"))
                if call.include_usage:
                    yield _sse(chat.chunk(**names, usage_of=event))
                break
            event = await anext(events)
    except OpenAIError as exc:
        yield _sse(exc.body())
    except StopAsyncIteration:
        pass
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"


def _model(run: Run, *, base: bool, checkpoint: int | None = None) -> dict:
    return {"id": model_name(run.id, base=base, checkpoint=checkpoint), "object": "model",
            "created": int(run.created_at.timestamp()), "owned_by": run.team.name}


def _models_of(user):
    return (Run.objects.filter(team_id__in=team_ids_for(user), status=Run.Status.SUCCEEDED).exclude(adapter_path="")
            .select_related("team").order_by("-id"))


@endpoint("GET")
def models(request: HttpRequest, user, name: str | None = None) -> dict:
    """GET /v1/models: each succeeded run of the caller's teams as two models, its adapter (run-<id>) and its base
    model alone (run-<id>:base); GET /v1/models/<name>: one of them, or a checkpoint's (run-<id>:ckpt-<step>)."""
    if name is None:
        return {"object": "list", "data": [m for run in _models_of(user)
                                           for m in (_model(run, base=False), _model(run, base=True))]}
    parsed = parse_model(name)
    run = chat_run(user=user, run_id=parsed[0], model=name) if parsed else None
    final = run is not None and run.status == Run.Status.SUCCEEDED and bool(run.adapter_path)
    if run is None or not (final if parsed[2] is None else parsed[2] in checkpoint_steps(run)):
        raise not_found(f"The model {name!r} does not exist or you do not have access to it", param="model",
                        code="model_not_found")
    return _model(run, base=parsed[1], checkpoint=parsed[2])


# Files and fine-tuning jobs ---------------------------------------------------------------------------------------

@endpoint("GET", "POST")
def files(request: HttpRequest, user) -> dict:
    """POST /v1/files (multipart: file, purpose fine-tune; optional team): a dataset, checked row by row;
    GET /v1/files: the datasets of the caller's teams."""
    if request.method == "GET":
        purpose = request.GET.get("purpose")
        if purpose not in (None, "", jobs.PURPOSE):
            return {"object": "list", "data": [], "has_more": False}
        return jobs.file_list(user, after=request.GET.get("after"), limit=request.GET.get("limit"))
    return jobs.file_object(jobs.file_create(user=user, upload=request.FILES.get("file"),
                                             purpose=request.POST.get("purpose"), team_id=request.POST.get("team")))


@endpoint("GET")
def file_detail(request: HttpRequest, user, file_id: str) -> dict:
    """GET /v1/files/<id>"""
    return jobs.file_object(jobs.get_file(user, file_id))


@endpoint("GET", "POST")
def fine_tuning_jobs(request: HttpRequest, user) -> dict:
    """POST /v1/fine_tuning/jobs: a run (hyperparameters and the tuneboard extension: training/openai_api/
    fine_tuning.py); GET: the runs of the caller's teams as jobs, newest first."""
    if request.method == "GET":
        return jobs.job_list(user, after=request.GET.get("after"), limit=request.GET.get("limit"))
    return jobs.job_object(jobs.job_create(user=user, request=parse_job(json_body(request))))


@endpoint("GET")
def fine_tuning_job(request: HttpRequest, user, job_id: str) -> dict:
    """GET /v1/fine_tuning/jobs/<id>"""
    return jobs.job_object(jobs.get_job(user, job_id))


@endpoint("POST")
def fine_tuning_job_cancel(request: HttpRequest, user, job_id: str) -> dict:
    """POST /v1/fine_tuning/jobs/<id>/cancel: a queued job ends cancelled at once, a running one at its next step."""
    return jobs.job_object(jobs.job_cancel(user=user, run=jobs.get_job(user, job_id)))


@endpoint("GET")
def fine_tuning_job_events(request: HttpRequest, user, job_id: str) -> dict:
    """GET /v1/fine_tuning/jobs/<id>/events"""
    return jobs.job_events(jobs.get_job(user, job_id), after=request.GET.get("after"), limit=request.GET.get("limit"))


@endpoint("GET")
def fine_tuning_job_checkpoints(request: HttpRequest, user, job_id: str) -> dict:
    """GET /v1/fine_tuning/jobs/<id>/checkpoints"""
    return jobs.job_checkpoints(jobs.get_job(user, job_id), after=request.GET.get("after"),
                                limit=request.GET.get("limit"))
