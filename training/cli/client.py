"""The API over HTTP: a token in every request, the API's error shapes turned into the command line's exit codes."""
from __future__ import annotations

from typing import Any

import httpx

from training.cli.config import Config
from training.cli.parsing import format_errors

# The exit codes, as `tuneboard --help` and the README list them.
OK, ERROR, REFUSED, RUN_FAILED = 0, 1, 2, 3


class CliError(Exception):
    """What ends a command: a message for stderr and the exit code."""

    def __init__(self, message: str, code: int = ERROR):
        super().__init__(message)
        self.code = code


class Api:
    def __init__(self, config: Config, timeout: float = 60):
        self.config = config
        self.http = httpx.Client(base_url=f"{config.url}/api/v1", timeout=timeout,
                                 headers={"Authorization": f"Bearer {config.token}"})

    def ws_url(self, path: str) -> str:
        return ("ws" + self.config.url[len("http"):]) + path

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.config.url}: {exc}") from None
        if response.status_code >= 400:
            raise refusal(response)
        return response

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params=params or None).json()

    def post(self, path: str, body: dict | None = None, **kwargs) -> Any:
        if "files" in kwargs:
            return self.request("POST", path, **kwargs).json()
        return self.request("POST", path, json=body if body is not None else {}, **kwargs).json()

    def pages(self, path: str, **params):
        """Every row of a paginated list, following "next"."""
        page = self.get(path, **params)
        while True:
            yield from page["results"]
            if not page.get("next"):
                return
            page = self.request("GET", page["next"]).json()


def refusal(response: httpx.Response) -> CliError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 400 and isinstance(body.get("errors"), dict):
        lines = format_errors(body["errors"])
        return CliError("refused:\n" + "\n".join(f"  {line}" for line in lines), REFUSED)
    detail = body.get("detail") if isinstance(body, dict) else None
    return CliError(f"{response.status_code} {response.reason_phrase}: {detail or response.text[:500]}")
