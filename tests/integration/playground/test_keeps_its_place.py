"""The playground keeps its place (issue 34), on the real database, Redis, a worker and the tiny model: a run queued
for the worker while a chat is active waits with the reason on its page (naming no chat or team) and starts once the
chat has been idle, or once the chat has kept it for the longest hold; a worker of the queue with a free slot takes a
queued run instead of holding it; the system
prompt reaches the prompt the model continues, rendered as training rendered the dataset's system turns; Stop ends
the reply being generated, its text so far kept, and the chat goes on."""
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from tests.factories import make_dataset, make_member, make_run, make_team, tiny_overrides
from tests.integration.conftest import run_async, session_cookie, wait_terminal
from training.engine.serve import render_chat
from training.models import PlaygroundSession, Run, Worker
from training.playground import hold, services
from training.runs import services as runs
from tests.workers import start_worker, stop_worker
from transformers import AutoTokenizer

from .conftest import IDLE_S, replies, socket, until

pytestmark = pytest.mark.django_db(transaction=True)
SYSTEM = "Answer with one colour."


def trained(worker, tiny_model, tmp_path, *, system: str | None = None):
    team = make_team()
    user = make_member(team)
    dataset = make_dataset(team, user, tmp_dir=tmp_path, system=system)
    run = wait_terminal(runs.run_create(team=team, user=user, dataset=dataset, queue=worker.queue,
                                        overrides=tiny_overrides(tiny_model, max_steps=2)), timeout=240)
    assert run.status == Run.Status.SUCCEEDED, run.error
    return team, user, dataset, run


async def ready_chat(session_id: int, cookie: str):
    """The chat's websocket, once its model is loaded."""
    comm = socket(session_id, cookie)
    assert (await comm.connect())[0]
    await until(comm, lambda m, _: m["type"] == "status" and m["status"] == "ready")
    return comm


def ask(request_id: str, prompt: str, **fields) -> dict:
    return {"type": "generate", "id": request_id, "prompt": prompt, "temperature": 0, "max_new_tokens": 8, **fields}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_run_queued_while_a_chat_is_active_waits_with_its_reason_and_starts_once_the_chat_is_idle(
        playground_worker, tiny_model, tmp_path):
    team, user, _, run = trained(playground_worker, tiny_model, tmp_path)
    session = services.playground_start(run=run, user=user)
    other_team = make_team("Other team")
    stranger = make_member(other_team)
    cookie = session_cookie(user)

    async def chat():
        comm = await ready_chat(session.id, cookie)
        await comm.send_json_to(ask("one", "What colour is the sky?"))
        await until(comm, lambda m, ms: len(replies(ms, "one")) == 2)
        # Another team's run is queued for the worker: it waits while this chat goes on for longer than the idle
        # time, one message every 2 s.
        theirs = await sync_to_async(lambda: runs.run_create(
            team=other_team, user=stranger, dataset=make_dataset(other_team, stranger, tmp_dir=tmp_path),
            queue=playground_worker.queue, overrides=tiny_overrides(tiny_model, max_steps=2)))()
        kept_for = time.monotonic()
        states, n = [], 0
        while time.monotonic() - kept_for < IDLE_S + 4:
            n += 1
            await comm.send_json_to(ask(f"more-{n}", "And the grass?"))
            got = await until(comm, lambda m, ms, r=f"more-{n}": len(replies(ms, r)) == 2)
            states += [m for m in got if m["type"] == "status"]
            await comm.receive_nothing(timeout=2)
        held = await sync_to_async(Run.objects.get)(id=theirs.id)
        still = await sync_to_async(lambda: PlaygroundSession.objects.get(id=session.id).status)()
        ended = await until(comm, lambda m, _: m["type"] == "status" and not m["is_live"], timeout=IDLE_S + 30)
        await comm.disconnect()
        return theirs, held, still, states, ended[-1], time.monotonic() - kept_for

    theirs, held, still, states, ended, waited = run_async(chat)
    assert still == PlaygroundSession.Status.READY  # not evicted: the chat outlived the idle time with a run queued
    assert held.status == Run.Status.QUEUED
    assert held.held_reason.startswith(f"waiting: a playground chat holds the worker {playground_worker.name} until ")
    assert held.held_reason.endswith(f"({IDLE_S} s after its last message)")
    # Said to the other team: no chat, run or team of this one is named.
    assert team.name not in held.held_reason and f"#{run.id}" not in held.held_reason
    assert states and states[-1]["progress"]["runs_waiting"] is True
    assert ended["end_reason"] == f"idle for {IDLE_S} s; its worker went on to the runs that waited for it"
    assert waited >= IDLE_S + 4
    theirs = wait_terminal(theirs, timeout=240)
    assert theirs.status == Run.Status.SUCCEEDED and theirs.worker.name == playground_worker.name
    assert theirs.held_reason == ""
    assert theirs.started_at >= PlaygroundSession.objects.get(id=session.id).ended_at


HOLD_MAX_S = 8


@pytest.fixture
def capped_worker(tmp_path):
    """A playground worker whose chats keep it for HOLD_MAX_S at most while runs wait for it."""
    worker = start_worker(queue=f"{settings.TUNEBOARD_DEFAULT_QUEUE}-capped", name=f"capped-{tmp_path.name}@test",
                          log=tmp_path / "worker.log", env={"TUNEBOARD_PLAYGROUND_IDLE_S": str(IDLE_S),
                                                            "TUNEBOARD_PLAYGROUND_HOLD_MAX_S": str(HOLD_MAX_S)})
    yield worker
    stop_worker(worker)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_chat_that_goes_on_gives_its_worker_to_the_waiting_run_after_the_longest_hold(
        capped_worker, tiny_model, tmp_path):
    team, user, _, run = trained(capped_worker, tiny_model, tmp_path)
    session = services.playground_start(run=run, user=user)
    other_team = make_team("Waiting team")
    stranger = make_member(other_team)
    cookie = session_cookie(user)

    async def chat():
        comm = await ready_chat(session.id, cookie)
        theirs = await sync_to_async(lambda: runs.run_create(
            team=other_team, user=stranger, dataset=make_dataset(other_team, stranger, tmp_dir=tmp_path),
            queue=capped_worker.queue, overrides=tiny_overrides(tiny_model, max_steps=2)))()
        queued_at, n, seen, held = time.monotonic(), 0, [], ""
        # A message every 2 s, well inside the idle time: only the cap ends this chat.
        while not any(m["type"] == "status" and not m["is_live"] for m in seen):
            assert time.monotonic() - queued_at < HOLD_MAX_S + 60, "the chat kept its worker past the cap"
            n += 1
            await comm.send_json_to(ask(f"more-{n}", "And the grass?"))
            seen += await until(comm, lambda m, ms, r=f"more-{n}": len(replies(ms, r)) == 2
                                or m["type"] == "status" and not m["is_live"])
            reasons = await sync_to_async(lambda: Run.objects.get(id=theirs.id).held_reason)()
            if reasons:
                held = reasons
            await comm.receive_nothing(timeout=2)
        await comm.disconnect()
        return theirs, held, [m for m in seen if m["type"] == "status"][-1], time.monotonic() - queued_at

    theirs, held, ended, kept_for = run_async(chat)
    assert held.endswith(f"(the longest a chat keeps its worker while runs wait, {HOLD_MAX_S} s)"), held
    assert ended["end_reason"].startswith(f"kept its worker for {HOLD_MAX_S} s while runs waited for it"), ended
    assert HOLD_MAX_S <= kept_for < IDLE_S + HOLD_MAX_S + 30
    theirs = wait_terminal(theirs, timeout=240)
    assert theirs.status == Run.Status.SUCCEEDED and theirs.worker.name == capped_worker.name


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_system_prompt_reaches_the_rendered_prompt_and_stop_ends_a_reply(playground_worker, tiny_model, tmp_path):
    team, user, _, run = trained(playground_worker, tiny_model, tmp_path, system=SYSTEM)
    session = services.playground_start(run=run, user=user)
    cookie = session_cookie(user)

    async def chat():
        comm = await ready_chat(session.id, cookie)
        await comm.send_json_to(ask("plain", "What colour is the sky?"))
        plain = await until(comm, lambda m, ms: len(replies(ms, "plain")) == 2)
        await comm.send_json_to(ask("system", "What colour is the sky?", system=SYSTEM))
        with_system = await until(comm, lambda m, ms: len(replies(ms, "system")) == 2)
        # A long reply (an untrained adapter does not stop early), stopped after its first tokens.
        await comm.send_json_to(ask("long", "Tell me everything.", max_new_tokens=900))
        first = await until(comm, lambda m, _: m["type"] == "token" and m["request"] == "long")
        await comm.send_json_to({"type": "cancel", "request": "long"})
        stopped = await until(comm, lambda m, ms: len(replies(ms, "long")) == 2, timeout=60)
        await comm.send_json_to(ask("after", "And the grass?"))
        after = await until(comm, lambda m, ms: len(replies(ms, "after")) == 2)
        await comm.send_json_to({"type": "cancel", "request": 7})
        bad_cancel = await until(comm, lambda m, _: m["type"] == "error")
        await comm.disconnect()
        return replies(plain, "plain"), replies(with_system, "system"), first + stopped, replies(after, "after"), \
            bad_cancel[-1]

    plain, with_system, long, after, bad_cancel = run_async(chat)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rendered = render_chat(tokenizer, [], "What colour is the sky?", SYSTEM)
    assert rendered.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    for side in ("left", "right"):
        assert with_system[side]["prompt_tokens"] == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert with_system[side]["prompt_tokens"] > plain[side]["prompt_tokens"]
        reply = replies(long, "long")[side]
        tokens = "".join(m["text"] for m in long if m["type"] == "token" and m["side"] == side)
        assert reply["finish_reason"] == "cancelled" and 0 < reply["tokens"] < 900
        assert reply["text"] == tokens  # what the page showed is the reply
        assert after[side]["finish_reason"] in ("stop", "length") and after[side]["text"]
    assert "cancel" in bad_cancel["error"]
    services.playground_release(session=session, user=user)


def test_a_queued_run_is_not_held_where_a_worker_of_the_queue_has_a_free_slot(tmp_path):
    """The hold's rule on rows alone: a live session's queue holds its queued runs (the reason said once, and taken
    off when the chat ends) unless a live worker of the queue has a slot no run or chat holds."""
    team = make_team()
    user = make_member(team)
    queue = "play-queue"
    run = make_run(team, user, make_dataset(team, user, tmp_dir=tmp_path), queue=queue)
    serving = Worker.objects.create(name="serving@box", hostname="box", queues=[queue], slots=1)
    session = PlaygroundSession.objects.create(team=team, run=run, adapter_path="/a", model="m", queue=queue,
                                               status=PlaygroundSession.Status.READY, worker_name=serving.name)
    until = timezone.now()
    assert hold.runs_hold(session=session, until=until)
    run.refresh_from_db()
    assert run.held_reason == hold.hold_reason(worker_name=serving.name, until=until)
    # Another worker's own reason is not overwritten.
    Run.objects.filter(id=run.id).update(held_reason="waiting: other@box: no free slot (1 of 1 in use)")
    assert hold.runs_hold(session=session, until=until)
    assert Run.objects.get(id=run.id).held_reason.startswith("waiting: other@box")
    Run.objects.filter(id=run.id).update(held_reason=hold.hold_reason(worker_name=serving.name, until=until))
    hold.runs_unhold(worker_name=serving.name)
    assert Run.objects.get(id=run.id).held_reason == ""
    # A free worker of the queue: nothing held, Celery hands the run to it.
    Worker.objects.create(name="free@box", hostname="box", queues=[queue], slots=1)
    assert not hold.runs_hold(session=session, until=until)
    assert Run.objects.get(id=run.id).held_reason == ""
