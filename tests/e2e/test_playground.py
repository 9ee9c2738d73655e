"""In a real browser: from a trained tiny run's page open the Playground, load its final adapter beside the base
model on the run's queue, watch the load end with the worker named, chat two turns and see both sides' answers grow
token by token side by side, the second message sent with each side's own history (its own first reply); a decoding
setting out of range is named under its field; New chat clears both conversations, so the next message goes without
history; Release frees the worker. Takes docs/playground.png."""
import json
import re

import pytest

from tests.factories import make_dataset, make_member, make_team, make_user, tiny_overrides
from tests.integration.conftest import wait_for, wait_terminal
from training.models import PlaygroundSession, Run
from training.runs import services as runs

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

# Counts every change to each side's answer text: more than one per side means the tokens came in pieces.
COUNT_CHANGES = """() => {
  window.answerChanges = {left: 0, right: 0};
  for (const side of ["left", "right"]) {
    new MutationObserver(() => { window.answerChanges[side] += 1; })
      .observe(document.querySelector(`.side[data-side="${side}"] .turns`),
               {childList: true, characterData: true, subtree: true});
  }
}"""


def answers(page, side: str) -> list[str]:
    return page.locator(f'.side[data-side="{side}"] .turn .answer').evaluate_all("ps => ps.map(p => p.textContent)")


def asked(page, side: str) -> list[str]:
    return page.locator(f'.side[data-side="{side}"] .turn .asked').all_inner_texts()


def test_the_playground_streams_the_adapter_and_the_base_model_side_by_side(
        web_server, celery_worker, tiny_model, page, screenshot_path, tmp_path):
    team = make_team("Playground team")
    user = make_member(team, user=make_user("player", password="player-password"))
    dataset = make_dataset(team, user, rows=64, tmp_dir=tmp_path, name="colours")
    run = runs.run_create(team=team, user=user, dataset=dataset, name="ten tiny steps",
                          overrides=tiny_overrides(tiny_model, max_steps=10, save_steps=5))
    run = wait_terminal(run, timeout=240)
    assert run.status == Run.Status.SUCCEEDED, run.error

    sent = []  # the generate messages the page sends on the playground's socket
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
            if "/ws/playground/" in ws.url else None)
    log_in(page, web_server, "player", "player-password")
    page.goto(f"{web_server.url}/runs/{run.id}/")
    page.click("#playground-link")
    page.wait_for_url(re.compile(rf"/runs/{run.id}/playground/$"))
    assert page.locator("#id_checkpoint option").all_inner_texts() == ["final adapter", "checkpoint 5",
                                                                       "checkpoint 10"]
    page.select_option("#id_checkpoint", "final")
    page.select_option("#id_beside", "base")
    page.click("#load-form button[type=submit]")
    page.wait_for_url(re.compile(rf"/runs/{run.id}/playground/\?session=\d+$"))
    session = PlaygroundSession.objects.get(run=run)
    wait_for(lambda: page.inner_text("#session-status") == "Ready", timeout=120, what="the model to load")
    assert page.inner_text("#session-worker") == f"served by {celery_worker.name}"
    assert "loaded in" in page.inner_text("#load-stage")
    assert page.locator("#load-bar").evaluate("bar => bar.style.width") == "100%"
    assert "final" in page.inner_text('.side[data-side="left"] h2')
    assert "base model" in page.inner_text('.side[data-side="right"] h2')

    # A decoding setting out of range: named under its field, nothing sent to the worker.
    page.fill("#prompt", "What colour is the sky?")
    page.fill("#temperature", "5")
    page.click("#send")
    wait_for(lambda: page.locator('[data-error="temperature"]').is_visible(), timeout=10, what="the field's error")
    assert "from 0 to 2" in page.inner_text('[data-error="temperature"]')
    assert page.locator(".turn").count() == 0

    page.evaluate(COUNT_CHANGES)
    page.fill("#temperature", "0")
    page.fill("#max_new_tokens", "24")
    page.click("#send")
    wait_for(lambda: page.locator('.turn[data-done="1"]').count() == 2, timeout=60, what="both sides' replies")
    assert page.locator('[data-error="temperature"]').is_hidden()
    changes = page.evaluate("() => window.answerChanges")
    assert changes["left"] >= 3 and changes["right"] >= 3, changes  # the turn, then its tokens one by one
    first = {side: answers(page, side)[0] for side in ("left", "right")}
    for side in ("left", "right"):
        assert first[side].strip(), side
        assert "tokens in" in page.inner_text(f'.side[data-side="{side}"] .turn .stats')
    assert page.input_value("#prompt") == "" and page.inner_text("#chat-turns") == "1 turn in this chat"

    # The second turn: each side is sent its own conversation, and both answer it token by token again.
    page.evaluate(COUNT_CHANGES)
    page.fill("#prompt", "And the grass?")
    page.click("#send")
    wait_for(lambda: page.locator('.turn[data-done="1"]').count() == 4, timeout=60, what="both sides' second replies")
    changes = page.evaluate("() => window.answerChanges")
    assert changes["left"] >= 3 and changes["right"] >= 3, changes
    generates = [m for m in sent if m.get("type") == "generate"]
    assert [m["prompt"] for m in generates] == ["What colour is the sky?"] * 2 + ["And the grass?"]
    assert generates[1]["history"] == {"left": [], "right": []}
    for side in ("left", "right"):
        assert generates[2]["history"][side] == [{"role": "user", "content": "What colour is the sky?"},
                                                 {"role": "assistant", "content": first[side]}], side
        assert asked(page, side) == ["What colour is the sky?", "And the grass?"]
        assert answers(page, side)[1].strip(), side
        assert "tokens in" in page.locator(f'.side[data-side="{side}"] .turn .stats').nth(1).inner_text()
    assert page.inner_text("#chat-turns") == "2 turns in this chat"
    page.locator(".page").screenshot(path=str(screenshot_path("playground.png")))

    # New chat: both conversations cleared, and the next message goes without history.
    page.click("#new-chat")
    assert page.locator(".turn").count() == 0 and page.inner_text("#chat-turns") == "new chat"
    page.fill("#prompt", "What colour is snow?")
    page.click("#send")
    wait_for(lambda: page.locator('.turn[data-done="1"]').count() == 2, timeout=60, what="the new chat's replies")
    last = [m for m in sent if m.get("type") == "generate"][-1]
    assert last["prompt"] == "What colour is snow?" and last["history"] == {"left": [], "right": []}
    assert asked(page, "left") == asked(page, "right") == ["What colour is snow?"]
    assert page.js_errors == []

    # Release: the worker is free again (the session worker serves the other tests of this session).
    page.click("#release-form button")
    page.wait_for_url(re.compile(rf"\?session={session.id}$"))
    wait_for(lambda: PlaygroundSession.objects.get(id=session.id).status == "ended", timeout=10, what="the release")
    assert "Released: released by player" in page.inner_text("#session-end")
