"""Dataset statistics computed by a real Celery worker on the cpu queue with the tiny model's tokenizer, saved with
progress on the dataset row; the page starts them, polls them and shows the results, preview and advice."""
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from transformers import AutoTokenizer

from tests.factories import make_member, make_team
from tests.integration.conftest import wait_for
from tests.workers import start_worker, stop_worker
from training.datasets import services as dataset_services
from training.datasets.stats import profile, tokenizer_encoder
from training.engine.chat import template_rules
from training.models import Dataset

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = [{"messages": [{"role": "user", "content": f"what colour is thing {i}?" + " very" * (i % 7)},
                      {"role": "assistant", "content": "red" if i % 2 else "blue"}]} for i in range(40)]
ROWS += ROWS[:3]  # three duplicates


@pytest.fixture
def cpu_worker(tmp_path):
    worker = start_worker(queue=settings.TUNEBOARD_CPU_QUEUE, name=f"cpu-{tmp_path.name}@test",
                          log=tmp_path / "cpu-worker.log")
    yield worker
    stop_worker(worker)


def upload(team, user, rows=ROWS) -> Dataset:
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return dataset_services.dataset_create_from_upload(team=team, user=user, name="chat",
                                               file=SimpleUploadedFile("chat.jsonl", content))


def test_the_worker_profiles_the_dataset_with_the_models_tokenizer(cpu_worker, tiny_model):
    team = make_team()
    user = make_member(team)
    dataset = upload(team, user)
    dataset_services.dataset_profile_start(dataset=dataset, user=user, model=tiny_model, max_length=32, batch_size=4,
                                   eval_ratio=0.2, seed=11)

    def done():
        dataset.refresh_from_db()
        return dataset.stats["profile"]["state"] in ("done", "failed")

    wait_for(done, timeout=60, what="the profile task")
    state = dataset.stats["profile"]
    assert state["state"] == "done", (state.get("error"), cpu_worker.log_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected = profile(ROWS, tokenizer_encoder(tokenizer), total_rows=len(ROWS),
                       max_length=32, batch_size=4, eval_ratio=0.2, seed=11)
    expected["template"]["injected"] = template_rules(tokenizer).injected  # what the template adds to every row
    result = state["result"]
    assert {k: result[k] for k in expected} == json.loads(json.dumps(expected))
    assert state["done"] == len(ROWS) and result["duplicate_rows"] == 3
    tokens = "".join(t[0] for t in result["preview"][0]["tokens"])
    assert tokens.startswith("<|im_start|>user\nwhat colour is thing 0?")
    assert "".join(t[0] for t in result["preview"][0]["tokens"] if t[1]) == "blue<|im_end|>"

    client = Client()
    client.force_login(user)
    html = client.get(f"/datasets/{dataset.id}/").content.decode()
    assert 'id="length-histogram"' in html and f"{result['p50']} / {result['p95']} / {result['max']}" in html
    assert "r 4–8 for 34 training rows" in html and '<span class="tok loss special">&lt;|im_end|&gt;</span>' in html


def test_a_model_without_a_tokenizer_fails_with_its_reason(cpu_worker, tmp_path):
    team = make_team()
    user = make_member(team)
    dataset = upload(team, user)
    dataset_services.dataset_profile_start(dataset=dataset, user=user, model=str(settings.MODELS_DIR / "nothing-here"),
                                   max_length=64)

    def ended():
        dataset.refresh_from_db()
        return dataset.stats["profile"]["state"] in ("done", "failed")

    wait_for(ended, timeout=60, what="the profile task")
    assert dataset.stats["profile"]["state"] == "failed"
    assert "model: could not load a tokenizer from" in dataset.stats["profile"]["error"]


def test_bad_parameters_are_named_and_queue_nothing():
    team = make_team()
    user = make_member(team)
    dataset = upload(team, user)
    with pytest.raises(ValidationError) as caught:
        dataset_services.dataset_profile_start(dataset=dataset, user=user, model="", max_length=8, batch_size=0,
                                       eval_ratio=1.5)
    assert set(caught.value.message_dict) == {"model", "max_length", "batch_size", "eval_ratio"}
    dataset.refresh_from_db()
    assert "profile" not in dataset.stats


def test_the_page_starts_the_profile_and_the_status_is_the_teams_only(tiny_model):
    team, other = make_team(), make_team()
    user, outsider = make_member(team), make_member(other)
    dataset = upload(team, user)
    client = Client()
    client.force_login(user)
    bad = client.post(f"/datasets/{dataset.id}/", {"model": tiny_model, "max_length": "4", "batch_size": "8",
                                                  "seed": "1"})
    assert bad.status_code == 400 and "max_length" in bad.context["form"].errors
    response = client.post(f"/datasets/{dataset.id}/", {"model": tiny_model, "max_length": "64", "batch_size": "8",
                                                       "seed": "1", "completion_only_loss": "on"})
    assert response.status_code == 302
    status = client.get(f"/datasets/{dataset.id}/profile.json").json()
    assert status["state"] == "queued" and status["total"] == len(ROWS) and "token" not in status
    assert 'id="profile-bar"' in client.get(f"/datasets/{dataset.id}/").content.decode()
    stranger = Client()
    stranger.force_login(outsider)
    assert stranger.get(f"/datasets/{dataset.id}/").status_code == 404
    assert stranger.get(f"/datasets/{dataset.id}/profile.json").status_code == 404
    assert Path(dataset.path).is_file()
