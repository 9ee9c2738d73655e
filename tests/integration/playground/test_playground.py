"""The playground on the real database, Redis, a worker and the tiny model: a session loads a run's adapter beside
the base model on the run's queue, the websocket streams both sides' tokens in several messages and then a reply
each, a second turn with each side's own history streams on both sides too, bad prompts, decoding and histories are
refused by field, the model is released once idle; bad input to the page
changes nothing."""
import io

import pytest
import torch
from django.test import Client

from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from tests.integration.conftest import run_async, session_cookie, wait_terminal
from training.engine.events import EventSink
from training.engine.serve import MAX_HISTORY_MESSAGES, Request, Server, Spec, render_chat
from training.models import PlaygroundSession, Run
from training.playground import services
from training.runs import services as runs
from transformers import AutoModelForCausalLM, AutoTokenizer

from .conftest import IDLE_S, replies, socket, until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_session_streams_the_adapter_and_the_base_side_then_is_released_when_idle(
        playground_worker, tiny_model, team_member):
    team, user, dataset = team_member
    run = runs.run_create(team=team, user=user, dataset=dataset, queue=playground_worker.queue,
                          overrides=tiny_overrides(tiny_model, max_steps=10, save_steps=5))
    run = wait_terminal(run, timeout=240)
    assert run.status == Run.Status.SUCCEEDED, run.error
    session = services.playground_start(run=run, user=user)
    assert (session.status, session.queue, session.adapter_path) == ("queued", run.queue, run.adapter_path)
    assert services.playground_start(run=run, user=user).id == session.id  # a live session is reused
    cookie = session_cookie(user)

    async def chat():
        comm = socket(session.id, cookie)
        connected, _ = await comm.connect()
        assert connected
        states = await until(comm, lambda m, _: m["type"] == "status" and m["status"] in ("ready", "failed"))
        assert states[-1]["status"] == "ready", states[-1]
        assert states[-1]["worker"] == playground_worker.name and states[-1]["progress"]["device"] == "cpu"
        await comm.send_json_to({"type": "generate", "id": "one", "prompt": "What colour is the sky?",
                                 "temperature": 0, "top_p": 1, "max_new_tokens": 16})
        got = await until(comm, lambda m, ms: len(replies(ms, "one")) == 2)
        first = replies(got, "one")
        history = {side: [{"role": "user", "content": "What colour is the sky?"},
                          {"role": "assistant", "content": first[side]["text"]}] for side in ("left", "right")}
        await comm.send_json_to({"type": "generate", "id": "two", "prompt": "And the grass?", "history": history,
                                 "temperature": 0, "top_p": 1, "max_new_tokens": 16})
        second = await until(comm, lambda m, ms: len(replies(ms, "two")) == 2)
        endless = {"left": history["left"] * (MAX_HISTORY_MESSAGES // 2 + 1), "right": history["right"]}
        await comm.send_json_to({"type": "generate", "id": "endless", "prompt": "more", "history": endless})
        too_many = await until(comm, lambda m, _: m["type"] == "refused")
        bad = {"type": "generate", "id": "bad", "prompt": "hi", "temperature": 3, "top_p": 0, "max_new_tokens": 9999}
        await comm.send_json_to(bad)
        refused = await until(comm, lambda m, _: m["type"] == "refused")
        await comm.send_json_to({"type": "generate", "id": "long", "prompt": "word " * 2000, "max_new_tokens": 8})
        too_long = await until(comm, lambda m, _: m["type"] == "refused")
        released = await until(comm, lambda m, _: m["type"] == "status" and not m["is_live"], timeout=IDLE_S + 60)
        await comm.send_json_to({"type": "generate", "id": "late", "prompt": "still there?"})
        late = await until(comm, lambda m, _: m["type"] == "refused")
        await comm.disconnect()
        return got, second, too_many[-1], refused[-1], too_long[-1], released[-1], late[-1]

    got, second, too_many, refused, too_long, released, late = run_async(chat)
    assert got[0] == {"type": "queued", "request": "one"} and second[0] == {"type": "queued", "request": "two"}
    for messages, request in ((got, "one"), (second, "two")):
        for side in ("left", "right"):
            tokens = [m["text"] for m in messages if m["type"] == "token" and m["side"] == side]
            reply = replies(messages, request)[side]
            assert len(tokens) >= 2, (side, messages)  # streamed, not sent whole
            assert "".join(tokens) == reply["text"] and reply["tokens"] >= len(tokens)
            assert reply["ttft_s"] is not None and messages.index(reply) > max(
                i for i, m in enumerate(messages) if m["type"] == "token" and m["side"] == side)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for side in ("left", "right"):  # turn 2's prompt: turn 1's question, that side's own reply, the new question
        one, two = replies(got, "one")[side], replies(second, "two")[side]
        history = [{"role": "user", "content": "What colour is the sky?"},
                   {"role": "assistant", "content": one["text"]}]
        rendered = tokenizer(render_chat(tokenizer, history, "And the grass?"), add_special_tokens=False)
        assert two["prompt_tokens"] == len(rendered["input_ids"]) > one["prompt_tokens"]
    assert too_many["request"] == "endless" and set(too_many["errors"]) == {"history"}
    assert f"at most {MAX_HISTORY_MESSAGES} earlier messages" in too_many["errors"]["history"]
    assert set(refused["errors"]) == {"temperature", "top_p", "max_new_tokens"}
    assert "from 0 to 2" in refused["errors"]["temperature"]
    assert "exceeds the model's context of" in too_long["errors"]["prompt"] and too_long["request"] == "long"
    assert released["status"] == "ended" and released["end_reason"] == f"idle for {IDLE_S} s"
    assert "released" in late["errors"]["session"]
    session.refresh_from_db()
    assert session.status == "ended" and session.ended_at and session.worker_name == playground_worker.name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_base_side_is_the_base_model(playground_worker, tiny_model, team_member):
    """The right side, with the adapters off in the same batch, answers exactly what the base model alone does
    (greedy, bias none)."""
    team, user, dataset = team_member
    run = wait_terminal(runs.run_create(team=team, user=user, dataset=dataset, queue=playground_worker.queue,
                                        overrides=tiny_overrides(tiny_model, max_steps=6)), timeout=240)
    assert run.status == Run.Status.SUCCEEDED, run.error
    session = services.playground_start(run=run, user=user)
    cookie = session_cookie(user)

    async def ask():
        comm = socket(session.id, cookie)
        assert (await comm.connect())[0]
        await until(comm, lambda m, _: m["type"] == "status" and m["status"] == "ready")
        await comm.send_json_to({"type": "generate", "id": "q", "prompt": "Name a colour.", "temperature": 0,
                                 "max_new_tokens": 12})
        got = await until(comm, lambda m, ms: len(replies(ms, "q")) == 2)
        await comm.disconnect()
        return replies(got, "q")

    sides = run_async(ask)
    base = Server(Spec(model=tiny_model, left=run.adapter_path, right=None), EventSink(io.StringIO()))
    base.load()
    alone = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = base.prompt_ids(Request(id="q", prompt="Name a colour.", max_new_tokens=12, temperature=0))["right"]
    with torch.no_grad():
        generated = alone.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                   pad_token_id=base.tokenizer.pad_token_id)[0, len(ids):]
    expected = base.tokenizer.decode([t for t in generated.tolist() if t != base.tokenizer.eos_token_id],
                                     skip_special_tokens=True)
    assert sides["right"]["text"] == expected
    services.playground_release(session=session, user=user)


def test_bad_input_to_the_page_changes_nothing(team_member, tmp_path):
    team, user, dataset = team_member
    run = runs.run_create(team=team, user=user, dataset=dataset, queue="nobody-consumes-this",
                          overrides=tiny_overrides("tiny-model"))
    folder = tmp_path / "artifacts"
    (folder / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-5" / "adapter_config.json").write_text("{}")
    Run.objects.filter(id=run.id).update(artifact_dir=str(folder), status=Run.Status.STOPPED)
    other_team = make_team()
    stranger = make_member(other_team)
    theirs = runs.run_create(team=other_team, user=stranger, dataset=make_dataset(other_team, stranger, tmp_dir=tmp_path),
                             queue="nobody", overrides=tiny_overrides("tiny-model"))
    client = Client()
    client.force_login(user)
    url = f"/runs/{run.id}/playground/"
    assert client.get(f"/runs/{theirs.id}/playground/").status_code == 404
    assert client.get(url).status_code == 200
    response = client.post(url, {"checkpoint": "7", "beside": "base"})
    assert response.status_code == 400
    assert "has no checkpoint at step 7; saved: 5" in response.content.decode()
    response = client.post(url, {"checkpoint": "final", "beside": "base"})
    assert response.status_code == 400 and "saved no final adapter" in response.content.decode()
    response = client.post(url, {"checkpoint": "5", "beside": str(theirs.id)})
    assert response.status_code == 400 and f"no run &#x27;{theirs.id}&#x27; in this team" in response.content.decode()
    assert client.get(f"{url}?session=99999").status_code == 404
    assert PlaygroundSession.objects.count() == 0

    viewer = make_member(team, role="viewer")
    client.force_login(viewer)
    assert client.post(url, {"checkpoint": "5", "beside": "base"}).status_code == 403
    assert PlaygroundSession.objects.count() == 0

    # Loading an ended session's sides again (the page's script): the team's own only, checked like a load.
    ended = {"adapter_path": "/a", "model": "m", "status": PlaygroundSession.Status.ENDED}
    mine = PlaygroundSession.objects.create(team=team, run=run, queue=run.queue, checkpoint_step=7, **ended)
    their_session = PlaygroundSession.objects.create(team=other_team, run=theirs, queue=theirs.queue, **ended)
    assert client.post(f"{url}{mine.id}/again/").status_code == 403  # the viewer
    client.force_login(user)
    assert client.get(f"{url}{mine.id}/again/").status_code == 405
    assert client.post(f"/runs/{theirs.id}/playground/{their_session.id}/again/").status_code == 404
    assert client.post(f"{url}{their_session.id}/again/").status_code == 404
    response = client.post(f"{url}{mine.id}/again/")
    assert response.status_code == 400
    assert "has no checkpoint at step 7; saved: 5" in response.json()["errors"]["checkpoint"][0]
    assert PlaygroundSession.objects.count() == 2


def test_the_socket_refuses_a_logged_out_user_and_another_teams_member(team_member, tmp_path):
    team, user, dataset = team_member
    run = runs.run_create(team=team, user=user, dataset=dataset, queue="nobody", overrides=tiny_overrides("m"))
    session = PlaygroundSession.objects.create(team=team, run=run, adapter_path="/x", model="m", queue="nobody")
    stranger = session_cookie(make_member(make_team()))

    async def codes():
        out = []
        for cookie in (None, stranger):
            comm = socket(session.id, cookie)
            connected, code = await comm.connect()
            out.append((connected, code))
            await comm.disconnect()
        return out

    assert run_async(codes) == [(False, 4401), (False, 4404)]
