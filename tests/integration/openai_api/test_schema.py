"""The OpenAI-compatible endpoints are in the API's OpenAPI schema (/api/docs/), which stays valid with no warning."""
import yaml
from django.core.management import call_command


def test_the_openai_endpoints_are_in_the_valid_schema(tmp_path):
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    for path, method in (("/v1/chat/completions", "post"), ("/v1/models", "get"), ("/v1/models/{model}", "get"),
                         ("/v1/files", "post"), ("/v1/files", "get"), ("/v1/files/{file_id}", "get"),
                         ("/v1/fine_tuning/jobs", "post"), ("/v1/fine_tuning/jobs", "get"),
                         ("/v1/fine_tuning/jobs/{fine_tuning_job_id}", "get"),
                         ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", "post"),
                         ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", "get"),
                         ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", "get")):
        operation = schema["paths"][path][method]
        assert operation["security"] == [{"tokenAuth": []}] and "400" in operation["responses"], path
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    request = schema["components"]["schemas"]["OpenAIChatCompletionRequest"]["properties"]
    assert {"model", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "stream"} <= set(request)
    assert "/api/v1/runs/" in schema["paths"]  # the REST API's own paths are still there
