"""The OpenAPI schema: drf-spectacular generates it from the API's views and validates it (OpenAPI 3), with no
warning or error; it names every endpoint of the contract and the token scheme."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[3]


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
                 "/api/v1/sweeps/", "/api/v1/sweeps/{id}/", "/api/v1/sweeps/{id}/stop/", "/api/v1/workers/",
                 "/api/v1/runs/{id}/exports/", "/api/v1/exports/{id}/", "/api/v1/exports/{id}/files/{name}"):
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


@pytest.mark.parametrize("module", ["training.api.errors", "training.api.metrics", "training.api.authentication"])
def test_each_api_module_imports_first_in_a_fresh_process(module):
    """DRF imports the settings' parser, renderer and authentication classes while it defines APIView: a module of
    theirs that imported rest_framework.views (or a module that does) before them would be a circular import."""
    code = f"import django; django.setup(); import {module}"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings"})
    assert result.returncode == 0, result.stderr[-2000:]
