"""What `runs watch` makes of the run websocket's messages (training/live/consumers.py's shapes)."""
import pytest

from training.cli.client import CliError
from training.cli.watch import RunView

FINDING = {"id": 7, "code": "loss_spike", "severity": "warning", "step": 3, "title": "Loss spike", "message": "m",
           "parameters": ["learning_rate"]}


def test_replay_then_live_points_status_and_findings():
    view = RunView()
    view.feed({"type": "replay", "points": [{"step": 1, "loss": 2.0, "eval_loss": None}], "done": False})
    view.feed({"type": "replay", "points": [{"step": 2, "loss": 1.5, "eval_loss": None}], "done": True,
               "status": {"status": "running", "is_terminal": False, "last_step": 2, "total_steps": 10},
               "findings": [FINDING]})
    assert view.last_step == 2 and view.metrics["loss"] == 1.5 and not view.terminal
    assert view.take_new_findings() == [FINDING] and view.take_new_findings() == []
    view.feed({"type": "points", "points": [{"kind": "metrics", "step": 3, "loss": 1.2, "learning_rate": 1e-4},
                                            {"kind": "eval", "step": 3, "eval_loss": 1.4}]})
    view.feed({"type": "finding", **FINDING})  # already shown
    assert view.take_new_findings() == []
    assert view.metrics == {"loss": 1.2, "learning_rate": 1e-4, "eval_loss": 1.4} and view.last_step == 3
    view.feed({"type": "status", "status": "failed", "is_terminal": True, "last_step": 3, "error": "boom"})
    assert view.terminal and view.status["status"] == "failed"


def test_a_live_message_before_the_final_replay_does_not_end_the_watch():
    view = RunView()
    view.feed({"type": "event", "seq": 1})
    view.feed({"type": "log", "tail": "x"})
    assert not view.terminal and view.last_step == 0


def test_the_servers_refusal_is_an_error():
    with pytest.raises(CliError, match="unknown message"):
        RunView().feed({"type": "error", "error": "unknown message 'x'"})
