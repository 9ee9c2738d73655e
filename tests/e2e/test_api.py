"""The API in Chromium: /api/docs/ renders the Swagger UI with every endpoint from the app's own files, no request
leaving the machine; the API tokens settings page makes a token (shown once, and it works), lists it, revokes it.
docs/api-tokens.png is that page with a new token (UPDATE_SCREENSHOTS=1)."""
from urllib.parse import urlparse

import httpx
import pytest

from tests.factories import make_member, make_team, make_user

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def offline(page) -> list[str]:
    """Abort (and record) every request to another host than the test server: the page must not need them."""
    outside: list[str] = []

    def route(route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", route)
    return outside


def test_the_api_docs_page_renders_with_no_network(web_server, page):
    outside = offline(page)
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(f"{web_server.url}/api/docs/")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert "Tuneboard API" in page.inner_text(".swagger-ui .info .title")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    for path in ("/api/v1/runs/", "/api/v1/runs/{id}/metrics/", "/api/v1/datasets/", "/api/v1/sweeps/",
                 "/api/v1/compare/", "/api/v1/me/", "/api/v1/workers/"):
        assert any(p.replace("\u200b", "") == path for p in paths), (path, paths)
    # An operation opens with its parameters and the error shape in the description.
    page.locator(".opblock-get .opblock-summary-path", has_text="/api/v1/runs/{id}/metrics/").first.click()
    page.wait_for_selector(".opblock.is-open .parameters")
    assert "every" in page.inner_text(".opblock.is-open .parameters")
    assert '{"errors": {field: [message, ...]}}' in page.inner_text(".swagger-ui .info")
    assert page.locator(".swagger-ui .auth-wrapper .authorize").count() == 1  # the bearer token scheme
    assert outside == [] and failed == [] and page.js_errors == []


def test_the_token_settings_page_makes_lists_and_revokes_a_token(web_server, page, screenshot_path):
    team = make_team("Platform")
    make_member(team, user=make_user("ana", password="ana-password"))
    log_in(page, web_server, "ana", "ana-password")
    page.click("a.account-link")
    page.wait_for_url(f"{web_server.url}/settings/tokens/")
    assert "No tokens yet." in page.inner_text("main")
    page.fill("#id_name", "nightly eval in CI")
    page.select_option("#id_expires_in_days", "90")
    page.click("#token-form button.primary")
    page.wait_for_selector("#new-token")
    token = page.input_value("#token-text")
    assert token.startswith("tb_") and len(token) == 46
    assert "Copy it now: it will not be shown again." in page.inner_text("#new-token")
    row = page.locator("#tokens tbody tr").first
    assert "nightly eval in CI" in row.inner_text() and token[:8] in row.inner_text() and "active" in row.inner_text()
    page.screenshot(path=str(screenshot_path("api-tokens.png")), full_page=True)

    me = httpx.get(f"{web_server.url}/api/v1/me/", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "ana"
    page.goto(f"{web_server.url}/settings/tokens/")
    assert page.locator("#new-token").count() == 0 and token not in page.content()
    assert "ago" in page.locator("#tokens tbody tr").first.inner_text()  # last used: the request above
    page.click("#tokens tbody tr button.danger")
    page.wait_for_selector(".message.success")
    assert "revoked" in page.locator("#tokens tbody tr").first.inner_text()
    assert page.locator("#tokens tbody tr button.danger").count() == 0
    refused = httpx.get(f"{web_server.url}/api/v1/me/", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert page.js_errors == []
