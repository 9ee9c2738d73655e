"""The official openai client, unmodified, against the real server (daphne), database, Redis, a worker and the tiny
model: a run's adapter and its base model answer a chat streamed and not, with usage counts, a stop string and
max_tokens honoured; bad parameters are OpenAI's 400 naming them; another team's run is OpenAI's 404."""
import openai
import pytest
from django.conf import settings

from dashboard.tokens.services import token_create
from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from tests.integration.conftest import wait_terminal
from tests.workers import start_worker, stop_worker
from training.models import Run
from training.runs import services as runs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def serving_worker(tmp_path):
    """A worker of its own queue that trains and then keeps a model loaded for a few idle seconds."""
    queue = f"{settings.TUNEBOARD_DEFAULT_QUEUE}-openai"
    worker = start_worker(queue=queue, name=f"openai-{tmp_path.name}@test", log=tmp_path / "worker.log",
                          env={"TUNEBOARD_PLAYGROUND_IDLE_S": "20"})
    yield worker
    stop_worker(worker)


def client(server, user) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token_create(user=user, name="openai")[1],
                         max_retries=0, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_run_answers_the_openai_client_streamed_and_not(server, serving_worker, tiny_model, team_member, tmp_path):
    team, user, dataset = team_member
    run = runs.run_create(team=team, user=user, dataset=dataset, queue=serving_worker.queue,
                          overrides=tiny_overrides(tiny_model, max_steps=6))
    run = wait_terminal(run, timeout=240)
    assert run.status == Run.Status.SUCCEEDED, run.error
    api = client(server, user)
    name = f"run-{run.id}"
    assert {m.id for m in api.models.list()} >= {name, f"{name}:base"}
    assert api.models.retrieve(name).owned_by == team.name

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What colour is the sky?"}]
    whole = api.chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0, seed=1)
    assert whole.object == "chat.completion" and whole.model == name
    answer = whole.choices[0]
    assert answer.message.role == "assistant" and answer.message.content
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 10
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert answer.finish_reason in ("stop", "length")

    stream = api.chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0, seed=1,
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2, chunks  # streamed, not sent whole
    assert "".join(pieces) == answer.message.content  # greedy: the same answer both ways
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    # A stop string ends the answer before it, the string itself left out.
    cut = answer.message.content[2:4]
    stopped = api.chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0, stop=[cut])
    assert stopped.choices[0].message.content == answer.message.content[:answer.message.content.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"

    base = api.chat.completions.create(model=f"{name}:base", messages=messages, max_tokens=5, temperature=0.8,
                                       top_p=0.9, seed=3)
    assert base.model == f"{name}:base" and base.usage.completion_tokens <= 5

    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model=name, messages=messages, temperature=7)
    assert bad.value.status_code == 400 and bad.value.param == "temperature" and "0 to 2" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model=name, messages=[{"role": "assistant", "content": "hi"}])
    assert bad.value.param == "messages[0].role"

    other = make_team("Other")
    stranger = make_member(other)
    with pytest.raises(openai.NotFoundError) as missing:
        client(server, stranger).chat.completions.create(model=name, messages=messages)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client(server, stranger).models.retrieve(name)
    assert name not in {m.id for m in client(server, stranger).models.list()}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="tb_wrong", max_retries=0).models.list()
