"""A run whose dataset the model's chat template cannot train as asked is refused before it exists, with the reason
(the engine's own check on every row), by the service the run form and the API share."""
from __future__ import annotations

import io
import json

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from tests.factories import idle_queue, make_member, make_team, tiny_overrides
from tests.families import family_tokenizer
from training.datasets import services as dataset_services
from training.models import Run
from training.runs import services

pytestmark = pytest.mark.django_db


def _upload(team, user, rows):
    body = "".join(json.dumps({"messages": row}) + "\n" for row in rows).encode()
    return dataset_services.dataset_create_from_upload(team=team, user=user, name="reasoning", file=io.BytesIO(body))


def test_answers_the_template_rewrites_are_refused_before_a_run_exists_and_full_loss_is_allowed(isolated_session):
    model = settings.MODELS_DIR / "r1-distill-tokenizer"
    family_tokenizer("r1-distill-llama").save_pretrained(model)  # the check needs the tokenizer, no weights
    team = make_team()
    user = make_member(team)
    rows = [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>add</think>4"}],
            [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]]
    dataset = _upload(team, user, rows)
    with pytest.raises(ValidationError) as caught:
        services.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(),
                            overrides=tiny_overrides(str(model)))
    message = caught.value.message_dict["completion_only_loss"][0]
    assert "row 1" in message and "rewrites assistant turn 2" in message
    assert not Run.objects.filter(team=team).exists()
    run = services.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(),
                              overrides=tiny_overrides(str(model), completion_only_loss=False))
    assert run.config["completion_only_loss"] is False
