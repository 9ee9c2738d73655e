"""The OpenAPI schema: drf-spectacular generates it from the API's views and validates it (OpenAPI 3), with no
warning or error; it names every endpoint of the contract and the token scheme."""
import pytest
import yaml
from django.core.management import call_command


def test_the_schema_is_generated_and_valid_with_no_warnings(tmp_path):
    out = tmp_path / "schema.yml"
    # --fail-on-warn: any warning (an unresolved serializer, a colliding enum name) fails the command.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "Tuneboard API"
    paths = set(schema["paths"])
    for path in ("/api/v1/me/", "/api/v1/datasets/", "/api/v1/datasets/register/", "/api/v1/datasets/{id}/",
                 "/api/v1/presets/", "/api/v1/runs/", "/api/v1/runs/{id}/", "/api/v1/runs/{id}/stop/",
                 "/api/v1/runs/{id}/resume/", "/api/v1/runs/{id}/metrics/", "/api/v1/runs/{id}/events/",
                 "/api/v1/runs/{id}/findings/", "/api/v1/runs/{id}/samples/", "/api/v1/runs/{id}/adapter/",
                 "/api/v1/runs/{id}/adapter/{name}", "/api/v1/runs/{id}/evaluations/", "/api/v1/compare/",
                 "/api/v1/sweeps/", "/api/v1/sweeps/{id}/", "/api/v1/sweeps/{id}/stop/", "/api/v1/workers/"):
        assert path in paths, path
    assert schema["components"]["securitySchemes"]["tokenAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "tb_ and 43 characters",
        "description": "A personal token from Settings → API tokens"}
    run_list = schema["paths"]["/api/v1/runs/"]["get"]
    assert {p["name"] for p in run_list["parameters"]} >= {"team", "status", "dataset", "sweep", "ordering", "page",
                                                           "page_size"}


@pytest.mark.django_db
def test_the_schema_is_served(client):
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200 and b"openapi: 3" in response.content
