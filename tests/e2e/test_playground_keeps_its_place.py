"""In a real browser, with the real worker and the tiny model: the playground keeps a chat while a run is queued on
its worker. The system prompt starts as the dataset's first system turn and goes with each message; a run queued for
the worker waits, its page and the run list saying until when, while the chat goes on past the idle time; Stop ends
a long reply with its text so far shown; once the chat is idle the worker goes to the run, and a message sent then
stays in the box while the same sides load again, and goes, with the chat so far, once they are ready. Takes
docs/playground-keeps-its-place.png and docs/run-waits-for-playground.png."""
import json
import re
import time

import pytest
from django.conf import settings

from tests.factories import make_dataset, make_member, make_team, make_user, tiny_overrides
from tests.integration.conftest import wait_for, wait_for_run, wait_terminal
from tests.workers import start_worker, stop_worker
from training.models import PlaygroundSession, Run
from training.runs import services as runs

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]
IDLE_S = 8
SYSTEM = "Answer with one colour."


@pytest.fixture
def keeping_worker(tmp_path):
    """A worker of its own queue that keeps an idle playground model IDLE_S seconds."""
    worker = start_worker(queue=f"{settings.TUNEBOARD_DEFAULT_QUEUE}-keep", name=f"keep-{tmp_path.name}@test",
                          log=tmp_path / "worker.log", env={"TUNEBOARD_PLAYGROUND_IDLE_S": str(IDLE_S)})
    yield worker
    stop_worker(worker)


def done(page) -> int:
    return page.locator('.turn[data-done="1"]').count()


def send(page, prompt: str, turns_before: int) -> None:
    page.fill("#prompt", prompt)
    page.click("#send")
    wait_for(lambda: done(page) == turns_before + 2, timeout=60, what=f"both replies to {prompt!r}")


def test_the_playground_keeps_a_chat_while_a_run_is_queued_on_its_worker(
        web_server, keeping_worker, tiny_model, page, screenshot_path, tmp_path):
    team = make_team("Keep team")
    user = make_member(team, user=make_user("keeper", password="keeper-password"))
    dataset = make_dataset(team, user, tmp_dir=tmp_path, name="colours with a system turn", system=SYSTEM)
    run = wait_terminal(runs.run_create(team=team, user=user, dataset=dataset, name="chat run",
                                        queue=keeping_worker.queue, overrides=tiny_overrides(tiny_model, max_steps=4)),
                        timeout=240)
    assert run.status == Run.Status.SUCCEEDED, run.error
    sent = []  # the messages the page sends on the playground's sockets
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
            if "/ws/playground/" in ws.url else None)
    log_in(page, web_server, "keeper", "keeper-password")
    page.goto(f"{web_server.url}/runs/{run.id}/playground/")
    page.click("#load-form button[type=submit]")
    page.wait_for_url(re.compile(r"\?session=\d+$"))
    first_session = PlaygroundSession.objects.get(run=run)
    wait_for(lambda: page.inner_text("#session-status") == "Ready", timeout=120, what="the model to load")

    # The system prompt: the dataset's first system turn, sent with the message.
    assert page.input_value("#system") == SYSTEM
    assert "colours with a system turn" in page.inner_text('[data-field="system"] .hint')
    page.fill("#temperature", "0")
    page.fill("#max_new_tokens", "8")
    send(page, "What colour is the sky?", 0)
    assert [m["system"] for m in sent if m.get("type") == "generate"] == [SYSTEM]

    # A run is queued for the worker: the chat keeps it, and says until when.
    waiting = runs.run_create(team=team, user=user, dataset=dataset, name="queued behind the chat",
                              queue=keeping_worker.queue, overrides=tiny_overrides(tiny_model, max_steps=2))
    queued_at = time.monotonic()
    wait_for(lambda: page.locator("#session-hold").is_visible(), timeout=20, what="the chat to say a run waits")
    assert re.match(r"A run is queued for this worker: it keeps this chat until \d\d:\d\d:\d\d",
                    page.inner_text("#session-hold"))
    other = page.context.new_page()
    other.goto(f"{web_server.url}/runs/{waiting.id}/")
    held = other.inner_text("#run-held")
    assert held.startswith(f"waiting: a playground chat holds the worker {keeping_worker.name} until ")
    other.goto(f"{web_server.url}/runs/")
    row = other.locator("tr", has_text="queued behind the chat")
    assert "a playground chat holds the worker" in row.locator(".held-reason").inner_text()
    row.screenshot(path=str(screenshot_path("run-waits-for-playground.png")))
    other.close()

    # Stop: a long reply ends where it is, its text so far shown and kept in the chat.
    page.fill("#max_new_tokens", "900")
    page.fill("#prompt", "Tell me everything.")
    page.click("#send")
    wait_for(lambda: page.locator("#stop-reply").is_visible()
             and len(page.locator('.turn[data-done="0"] .answer').first.text_content() or "") > 3,
             timeout=30, what="the long reply to start")
    page.click("#stop-reply")
    wait_for(lambda: done(page) == 4, timeout=30, what="Stop to end both replies")
    for side in ("left", "right"):
        last = page.locator(f'.side[data-side="{side}"] .turn').last
        assert re.fullmatch(r"stopped by you after \d+ tokens", last.locator(".stats").inner_text()), side
        assert last.locator(".answer").text_content()
    assert page.locator("#stop-reply").is_hidden()
    page.locator(".page").screenshot(path=str(screenshot_path("playground-keeps-its-place.png")))
    page.fill("#max_new_tokens", "8")

    # The chat goes on past the idle time while the run waits: one message every few seconds.
    turns = 4
    while time.monotonic() - queued_at < IDLE_S + 3:
        send(page, "And the grass?", turns)
        turns += 2
        time.sleep(2)
    assert page.inner_text("#session-status") == "Ready"
    assert Run.objects.get(id=waiting.id).status == Run.Status.QUEUED

    # Idle: the worker goes to the run; the next message stays in the box while the model loads again.
    wait_for(lambda: page.locator("#session-end").is_visible(), timeout=IDLE_S + 30, what="the chat to go idle")
    assert page.inner_text("#session-end").startswith(
        f"Released: idle for {IDLE_S} s; its worker went on to the runs that waited for it. Your chat stays here")
    wait_for_run(waiting, lambda r: r.status != Run.Status.QUEUED, timeout=30, what="the run to start")
    assert page.inner_text("#send") == "Load again and send"
    page.fill("#prompt", "And snow?")
    page.click("#send")
    wait_for(lambda: PlaygroundSession.objects.filter(run=run).count() == 2, timeout=10, what="a new session")
    assert page.input_value("#prompt") == "And snow?"
    assert "stays here" in page.inner_text("#outbox")
    second_session = PlaygroundSession.objects.filter(run=run).exclude(id=first_session.id).get()
    page.wait_for_url(re.compile(rf"\?session={second_session.id}$"))
    wait_for(lambda: done(page) == turns + 2, timeout=240, what="the kept message's replies in the new session")
    assert page.input_value("#prompt") == "" and page.locator("#outbox").is_hidden()
    last = [m for m in sent if m.get("type") == "generate"][-1]
    assert last["prompt"] == "And snow?" and last["system"] == SYSTEM
    assert len(last["history"]["left"]) == turns  # the whole chat so far, the stopped reply included
    assert wait_terminal(waiting, timeout=120).status == Run.Status.SUCCEEDED
    assert page.js_errors == []
    page.click("#release-form button")
    wait_for(lambda: not PlaygroundSession.objects.get(id=second_session.id).is_live, timeout=20, what="the release")
