"""The official openai client, unmodified, against the real server (daphne), database, Redis, a worker and the tiny
model: it uploads a file, creates a fine-tuning job, follows its events to success, lists its checkpoints, then chats
with the result (and a checkpoint, and the base model) streamed and not, with usage counts, a stop string and
max_tokens honoured; a cancelled job ends cancelled; bad hyperparameters and chat parameters are OpenAI's 400 naming
them; another team's job, file and model are OpenAI's 404."""
import time

import openai
import pytest
from django.conf import settings

from dashboard.tokens.services import token_create
from tests.factories import make_member, make_team
from tests.integration.conftest import wait_for
from tests.workers import start_worker, stop_worker
from training.engine.tiny import write_dataset
from training.models import Dataset, Run

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


def follow(api: openai.OpenAI, job_id: str, timeout: float = 240):
    """The job's events, oldest first, until the job has ended; and the ended job."""
    deadline = time.monotonic() + timeout
    while True:
        job = api.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            events = list(api.fine_tuning.jobs.list_events(job_id, limit=5))  # every page, newest first
            return job, events[::-1]
        assert time.monotonic() < deadline, f"{job_id} still {job.status} after {timeout} s"
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_openai_client_fine_tunes_and_chats(server, serving_worker, tiny_model, team_member, tmp_path):
    team, user, _ = team_member
    api = client(server, user)
    data = write_dataset(tmp_path / "train.jsonl", n=32)
    uploaded = api.files.create(file=data.open("rb"), purpose="fine-tune")
    assert uploaded.object == "file" and uploaded.purpose == "fine-tune" and uploaded.filename == "train.jsonl"
    assert Dataset.objects.get(id=int(uploaded.id.removeprefix("file-"))).rows == 32
    assert api.files.retrieve(uploaded.id).bytes == data.stat().st_size
    with pytest.raises(openai.BadRequestError) as bad_file:
        api.files.create(file=("broken.jsonl", b'{"messages": [}\n'), purpose="fine-tune")
    assert bad_file.value.param == "file"

    tiny = {"backend": "hf", "optim": "adamw_torch", "max_length": 128, "max_steps": 6, "save_steps": 3,
            "warmup_steps": 0, "logging_steps": 1, "queue": serving_worker.queue}
    with pytest.raises(openai.BadRequestError) as bad:
        api.fine_tuning.jobs.create(model=tiny_model, training_file=uploaded.id, hyperparameters={"n_epochs": 0},
                                    extra_body={"tuneboard": tiny})
    assert bad.value.status_code == 400 and bad.value.param == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as bad:
        api.fine_tuning.jobs.create(model=tiny_model, training_file=uploaded.id,
                                    extra_body={"tuneboard": {**tiny, "lora_dropout": 3}})
    assert bad.value.param == "tuneboard.lora_dropout"
    with pytest.raises(openai.BadRequestError) as bad:
        api.fine_tuning.jobs.create(model="/not/in/the/roots", training_file=uploaded.id)
    assert bad.value.param == "model"
    assert not Run.objects.exists()  # a refused job leaves nothing behind

    job = api.fine_tuning.jobs.create(model=tiny_model, training_file=uploaded.id, suffix="sky colours", seed=7,
                                      hyperparameters={"batch_size": 8, "learning_rate_multiplier": 2},
                                      extra_body={"tuneboard": tiny})
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running") and job.fine_tuned_model is None
    assert (job.hyperparameters.batch_size, job.hyperparameters.learning_rate_multiplier, job.seed) == (8, 2, 7)
    run = Run.objects.get(id=int(job.id.removeprefix("ftjob-")))
    assert run.name == "sky colours" and run.config["learning_rate"] == pytest.approx(4e-4)
    assert run.config["per_device_train_batch_size"] == 8 and run.config["max_steps"] == 6
    assert job.id in {j.id for j in api.fine_tuning.jobs.list()}

    job, events = follow(api, job.id)
    assert job.status == "succeeded", (job.error, [e.message for e in events])
    assert job.fine_tuned_model == f"run-{run.id}" and job.finished_at and job.trained_tokens
    messages = [e.message for e in events]
    assert messages[0] == f"Created fine-tuning job: {job.id}" and messages[-1] == "The job has successfully completed"
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(1, 7)) and all(e.object == "fine_tuning.job.event" for e in events)
    first_page = api.fine_tuning.jobs.list_events(job.id, limit=3)
    assert [e.id for e in first_page.data] == [e.id for e in events[::-1][:3]] and first_page.has_more

    checkpoints = api.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 3]
    assert checkpoints[-1].fine_tuned_model_checkpoint == f"run-{run.id}:ckpt-3"
    assert checkpoints[-1].metrics.train_loss is not None and checkpoints[-1].fine_tuning_job_id == job.id

    name = job.fine_tuned_model
    assert {m.id for m in api.models.list()} >= {name, f"{name}:base"}
    assert api.models.retrieve(name).owned_by == team.name
    chat = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What colour is the sky?"}]
    whole = api.chat.completions.create(model=name, messages=chat, max_tokens=12, temperature=0, seed=1)
    assert whole.object == "chat.completion" and whole.model == name
    answer = whole.choices[0]
    assert answer.message.role == "assistant" and answer.message.content
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 10
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert answer.finish_reason in ("stop", "length")

    stream = api.chat.completions.create(model=name, messages=chat, max_tokens=12, temperature=0, seed=1,
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
    stopped = api.chat.completions.create(model=name, messages=chat, max_tokens=12, temperature=0, stop=[cut])
    assert stopped.choices[0].message.content == answer.message.content[:answer.message.content.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"

    base = api.chat.completions.create(model=f"{name}:base", messages=chat, max_tokens=5, temperature=0.8,
                                       top_p=0.9, seed=3)
    assert base.model == f"{name}:base" and base.usage.completion_tokens <= 5
    early = api.chat.completions.create(model=checkpoints[-1].fine_tuned_model_checkpoint, messages=chat,
                                        max_tokens=5, temperature=0)
    assert early.usage.completion_tokens <= 5

    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model=name, messages=chat, temperature=7)
    assert bad.value.status_code == 400 and bad.value.param == "temperature" and "0 to 2" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model=name, messages=[{"role": "assistant", "content": "hi"}])
    assert bad.value.param == "messages[0].role"

    # A job cancelled (queued, or training at its next step) ends cancelled.
    long = api.fine_tuning.jobs.create(model=tiny_model, training_file=uploaded.id,
                                       extra_body={"tuneboard": {**tiny, "max_steps": 5000}})
    wait_for(lambda: api.fine_tuning.jobs.retrieve(long.id).status == "running", timeout=120, what="training")
    assert api.fine_tuning.jobs.cancel(long.id).status in ("running", "cancelled")
    long, long_events = follow(api, long.id)
    assert long.status == "cancelled" and long_events[-1].message == "The job was cancelled"
    assert long.fine_tuned_model is None
    with pytest.raises(openai.BadRequestError):
        api.fine_tuning.jobs.cancel(long.id)

    stranger = client(server, make_member(make_team("Other")))
    for call in (lambda: stranger.fine_tuning.jobs.retrieve(job.id),
                 lambda: stranger.fine_tuning.jobs.list_events(job.id),
                 lambda: stranger.fine_tuning.jobs.cancel(job.id),
                 lambda: stranger.files.retrieve(uploaded.id),
                 lambda: stranger.models.retrieve(name),
                 lambda: stranger.fine_tuning.jobs.create(model=tiny_model, training_file=uploaded.id),
                 lambda: stranger.chat.completions.create(model=name, messages=chat)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in {j.id for j in stranger.fine_tuning.jobs.list()}
    assert name not in {m.id for m in stranger.models.list()}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="tb_wrong", max_retries=0).models.list()
