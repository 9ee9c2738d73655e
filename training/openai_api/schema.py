"""The OpenAI-compatible endpoints in the API's OpenAPI schema (/api/docs/). They are not DRF views (the chat
streams from an async view), so drf-spectacular cannot see them: this postprocessing hook (SPECTACULAR_SETTINGS)
adds their paths and the shapes of OpenAI's objects they take and return, as written in views.py and jobs.py."""
from __future__ import annotations

from typing import Any

TAG = "OpenAI-compatible"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, description: str = "") -> dict:
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


S, I, N, B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
NS, NI, NN = {"type": "string", "nullable": True}, {"type": "integer", "nullable": True}, {"type": "number",
                                                                                             "nullable": True}


def _list(item: str) -> dict:
    return _obj({"object": {"type": "string", "enum": ["list"]}, "data": {"type": "array", "items": _ref(item)},
                 "has_more": B}, ["object", "data"])


SCHEMAS: dict[str, dict] = {
    "OpenAIError": _obj({"error": _obj({"message": S, "type": S, "param": NS, "code": NS},
                                       ["message", "type", "param", "code"])}, ["error"],
                        "OpenAI's error shape: `param` names the request's parameter at fault"),
    "OpenAIChatMessage": _obj({"role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                               "content": S}, ["role", "content"]),
    "OpenAIChatCompletionRequest": _obj({
        "model": {"type": "string", "description": "run-<id> (the run's adapter), run-<id>:base (its base model "
                                                   "alone) or run-<id>:ckpt-<step> (a checkpoint's adapter)"},
        "messages": {"type": "array", "items": _ref("OpenAIChatMessage"),
                     "description": "an optional system message, then user and assistant alternating, ending with "
                                    "the user's; rendered by the model's own chat template"},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096, "nullable": True,
                       "description": "absent: up to the model's context"},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 4096, "nullable": True},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1, "description": "0: greedy"},
        "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "default": 1},
        "stop": {"oneOf": [S, {"type": "array", "items": S, "maxItems": 4}]},
        "seed": {"type": "integer", "minimum": 0},
        "stream": {"type": "boolean", "default": False,
                   "description": "true: text/event-stream of chat.completion.chunk objects, ending data: [DONE]"},
        "stream_options": _obj({"include_usage": B}),
    }, ["model", "messages"]),
    "OpenAIUsage": _obj({"prompt_tokens": I, "completion_tokens": I, "total_tokens": I}),
    "OpenAIChatCompletion": _obj({
        "id": S, "object": {"type": "string", "enum": ["chat.completion"]}, "created": I, "model": S,
        "choices": {"type": "array", "items": _obj({
            "index": I, "message": _obj({"role": S, "content": S, "refusal": NS}),
            "finish_reason": {"type": "string", "enum": ["stop", "length"]}})},
        "usage": _ref("OpenAIUsage")}, description="With stream true the answer is server-sent events instead: "
                                                   "data: {chat.completion.chunk} lines, then data: [DONE]"),
    "OpenAIModel": _obj({"id": S, "object": {"type": "string", "enum": ["model"]}, "created": I,
                         "owned_by": {"type": "string", "description": "the run's team"}}),
    "OpenAIModelList": _list("OpenAIModel"),
    "OpenAIFile": _obj({"id": {"type": "string", "description": "file-<dataset id>"}, "object": S, "bytes": I,
                        "created_at": I, "filename": S, "purpose": {"type": "string", "enum": ["fine-tune"]},
                        "status": S}),
    "OpenAIFileList": _list("OpenAIFile"),
    "OpenAIFileUpload": _obj({"file": {"type": "string", "format": "binary",
                                       "description": "JSONL rows, checked as on the datasets page"},
                              "purpose": {"type": "string", "enum": ["fine-tune"]},
                              "team": {"type": "integer", "description": "needed only by a member of several teams"}},
                             ["file", "purpose"]),
    "OpenAIHyperparameters": _obj({
        "n_epochs": {"oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "integer", "minimum": 1}],
                     "description": "→ num_train_epochs"},
        "batch_size": {"oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "integer", "minimum": 1}],
                       "description": "→ per_device_train_batch_size"},
        "learning_rate_multiplier": {"oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "number"}],
                                     "description": "learning_rate = multiplier × 2e-4 (the seed's default)"}}),
    "OpenAIFineTuningJobCreate": _obj({
        "model": {"type": "string", "description": "a model folder inside the model roots (as the run form takes)"},
        "training_file": {"type": "string", "description": "file-<id> from POST /v1/files"},
        "validation_file": NS, "hyperparameters": _ref("OpenAIHyperparameters"),
        "method": _obj({"type": {"type": "string", "enum": ["supervised"]},
                        "supervised": _obj({"hyperparameters": _ref("OpenAIHyperparameters")})}),
        "seed": I, "suffix": {"type": "string", "maxLength": 64, "description": "the run's name"},
        "tuneboard": {"type": "object", "additionalProperties": True,
                      "description": "Tuneboard's extension (extra_body={'tuneboard': {...}}): any other engine "
                                     "config field by name (max_steps, r, lora_alpha, max_length, ...) and queue"}},
        ["model", "training_file"]),
    "OpenAIFineTuningJob": _obj({
        "id": {"type": "string", "description": "ftjob-<run id>"}, "object": S, "created_at": I,
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "model": S, "fine_tuned_model": {"type": "string", "nullable": True,
                                         "description": "run-<id> once succeeded: the chat's model"},
        "finished_at": NI, "hyperparameters": _ref("OpenAIHyperparameters"), "training_file": S,
        "validation_file": NS, "seed": NI, "trained_tokens": NI, "organization_id": S,
        "result_files": {"type": "array", "items": S},
        "error": _obj({"code": S, "message": S, "param": NS}), "tuneboard": {"type": "object"}}),
    "OpenAIFineTuningJobList": _list("OpenAIFineTuningJob"),
    "OpenAIFineTuningJobEvent": _obj({"id": S, "object": S, "created_at": I,
                                      "level": {"type": "string", "enum": ["info", "warn", "error"]}, "message": S,
                                      "type": {"type": "string", "enum": ["message", "metrics"]},
                                      "data": {"type": "object"}}),
    "OpenAIFineTuningJobEventList": _list("OpenAIFineTuningJobEvent"),
    "OpenAIFineTuningJobCheckpoint": _obj({
        "id": S, "object": S, "created_at": I, "step_number": I, "fine_tuning_job_id": S,
        "fine_tuned_model_checkpoint": {"type": "string", "description": "run-<id>:ckpt-<step>: the chat's model"},
        "metrics": _obj({"step": N, "train_loss": NN, "valid_loss": NN})}),
    "OpenAIFineTuningJobCheckpointList": _list("OpenAIFineTuningJobCheckpoint"),
}

ERRORS = {code: {"description": what, "content": {"application/json": {"schema": _ref("OpenAIError")}}}
          for code, what in (("400", "a bad parameter, named in error.param"), ("401", "no or a refused token"),
                             ("404", "not one of your teams' (another team's is a 404 too)"))}
PAGE = [{"name": "after", "in": "query", "schema": S, "description": "the last id of the page before"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}]


def _op(summary: str, answer: str, *, body: dict | None = None, params: list | None = None, op_id: str) -> dict:
    op: dict[str, Any] = {"tags": [TAG], "summary": summary, "operationId": op_id, "security": [{"tokenAuth": []}],
                          "responses": {"200": {"description": "OK", "content": {
                              "application/json": {"schema": _ref(answer)}}}, **ERRORS}}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _json(name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _path(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": S, "description": description}


JOB = _path("fine_tuning_job_id", "ftjob-<run id>")


def paths() -> dict[str, dict]:
    chat = _op("Chat with a run's model (streamed as server-sent events with stream true)", "OpenAIChatCompletion",
               body=_json("OpenAIChatCompletionRequest"), op_id="openai_chat_completions")
    chat["responses"]["200"]["content"]["text/event-stream"] = {"schema": {
        "type": "string", "description": "data: {chat.completion.chunk}\\n\\n ... data: [DONE]\\n\\n"}}
    return {
        "/v1/chat/completions": {"post": chat},
        "/v1/models": {"get": _op("The models of your teams' succeeded runs", "OpenAIModelList",
                                  op_id="openai_models_list")},
        "/v1/models/{model}": {"get": _op("One model", "OpenAIModel", op_id="openai_models_retrieve",
                                          params=[_path("model", "run-<id>, run-<id>:base or run-<id>:ckpt-<step>")])},
        "/v1/files": {
            "get": _op("Your teams' datasets as files", "OpenAIFileList", op_id="openai_files_list",
                       params=[*PAGE, {"name": "purpose", "in": "query", "schema": S}]),
            "post": _op("Upload a JSONL file of purpose fine-tune: a dataset", "OpenAIFile",
                        op_id="openai_files_create",
                        body={"required": True, "content": {"multipart/form-data": {
                            "schema": _ref("OpenAIFileUpload")}}})},
        "/v1/files/{file_id}": {"get": _op("One file", "OpenAIFile", op_id="openai_files_retrieve",
                                           params=[_path("file_id", "file-<dataset id>")])},
        "/v1/fine_tuning/jobs": {
            "get": _op("Your teams' runs as fine-tuning jobs, newest first", "OpenAIFineTuningJobList",
                       op_id="openai_jobs_list", params=PAGE),
            "post": _op("Create a fine-tuning job: a run", "OpenAIFineTuningJob", op_id="openai_jobs_create",
                        body=_json("OpenAIFineTuningJobCreate"))},
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}": {
            "get": _op("One job", "OpenAIFineTuningJob", op_id="openai_jobs_retrieve", params=[JOB])},
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": {
            "post": _op("Cancel a queued or running job (it ends cancelled)", "OpenAIFineTuningJob",
                        op_id="openai_jobs_cancel", params=[JOB])},
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events": {
            "get": _op("The job's events, newest first: its run's events and a metrics event a step",
                       "OpenAIFineTuningJobEventList", op_id="openai_jobs_events", params=[JOB, *PAGE])},
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": {
            "get": _op("The adapters the job saved while training, newest first",
                       "OpenAIFineTuningJobCheckpointList", op_id="openai_jobs_checkpoints", params=[JOB, *PAGE])},
    }


def add_openai_endpoints(result: dict, generator, request, public) -> dict:
    """drf-spectacular's postprocessing hook: the /v1/ paths and their schemas added to the generated schema."""
    result.setdefault("paths", {}).update(paths())
    result.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    tags = result.setdefault("tags", [])
    tags.append({"name": TAG, "description": "OpenAI's clients with base_url=<server>/v1 and a Tuneboard token as "
                                             "the api_key: chat with a run's model, fine-tuning jobs over the runs"})
    return result
