"""Following a run over its websocket (/ws/runs/<id>/, training/live/consumers.py): ask for the replay, then read
live messages until the run's status is terminal. RunView is the pure part: what the messages say so far."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import connect

from training.cli.client import CliError

METRIC_NAMES = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s")


@dataclass
class RunView:
    status: dict[str, Any] = field(default_factory=dict)
    last_step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[dict] = field(default_factory=list)
    new_findings: list[dict] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return bool(self.status.get("is_terminal"))

    def _point(self, point: dict) -> None:
        if point.get("kind") == "eval" or point.get("eval_loss") is not None:
            self.metrics["eval_loss"] = point.get("eval_loss")
        for name in METRIC_NAMES:
            if name != "eval_loss" and point.get(name) is not None:
                self.metrics[name] = point[name]
        self.last_step = max(self.last_step, int(point.get("step") or 0))

    def _finding(self, finding: dict) -> None:
        if all(f.get("id") != finding.get("id") for f in self.findings):
            self.findings.append(finding)
            self.new_findings.append(finding)

    def feed(self, message: dict) -> None:
        kind = message.get("type")
        if kind in ("replay", "points"):
            for point in message.get("points") or []:
                self._point(point)
            if kind == "replay" and message.get("done"):
                self.status = message.get("status") or self.status
                for finding in message.get("findings") or []:
                    self._finding(finding)
        elif kind == "status":
            self.status = message
        elif kind == "finding":
            self._finding(message)
        elif kind == "error":
            raise CliError(f"the server refused the watch: {message.get('error')}")
        if self.status.get("last_step"):
            self.last_step = max(self.last_step, int(self.status["last_step"]))

    def take_new_findings(self) -> list[dict]:
        out, self.new_findings = self.new_findings, []
        return out


def follow(url: str, token: str, view: RunView, on_change, *, reconnects: int = 5, timeout: float = 3600) -> RunView:
    """Feeds view every message until the run ends, calling on_change(view) after each. A dropped socket is
    reopened (replay after the last step it had) up to `reconnects` times in a row."""
    failures = 0
    while True:
        try:
            with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=15,
                         max_size=2 ** 24) as socket:
                socket.send(json.dumps({"type": "replay", "after_step": view.last_step}))
                failures = 0
                while True:
                    view.feed(json.loads(socket.recv(timeout=timeout)))
                    on_change(view)
                    if view.terminal:
                        return view
        except InvalidStatus as exc:
            code = exc.response.status_code
            raise CliError(f"the websocket was refused ({code}): the run is not one of your teams', or the token "
                           f"is no longer good") from None
        except TimeoutError:
            raise CliError(f"no message from the run in {timeout:.0f} s") from None
        except (ConnectionClosed, WebSocketException, OSError) as exc:
            failures += 1
            if failures > reconnects:
                raise CliError(f"lost the websocket {url}: {exc}") from None
            time.sleep(min(2 ** failures, 10))
