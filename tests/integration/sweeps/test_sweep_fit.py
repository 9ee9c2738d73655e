"""The sweep form and the fit planner (issue 21): the preview shows the prediction for the member with the largest
predicted peak on the sweep's queue, and a sweep with a member that fits no live GPU worker of it is refused, the
member named, in the preview and at launch, nothing saved. A Worker row whose heartbeat reports a small GPU stands
in for a GPU box."""
import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import Client

from tests.factories import tiny_overrides
from training.models import Run, Sweep, Worker
from training.sweeps import services

pytestmark = pytest.mark.django_db

GiB = 1024 ** 3


@pytest.fixture
def small_gpu_queue() -> str:
    queue = f"{settings.TUNEBOARD_DEFAULT_QUEUE}-t4"
    Worker.objects.create(name="box-t4@test", hostname="box-t4", queues=[queue],
                          gpus=[{"name": "NVIDIA T4", "memory_total": 2 * GiB, "memory_used": 0, "utilization": 0}])
    return queue


def sweep_form(dataset, model: str, queue: str, **config) -> dict:
    base = {**tiny_overrides(model), "max_steps": 12, "eval_split": 0.2, "eval_steps": 6, **config}
    return {"template": "r", "dataset": str(dataset.id), "preset": "", "base_run": "", "values": "2, 64",
            "overrides": "\n".join(f"{k}={v}" for k, v in base.items()), "queue": queue, "auto_advance": "on",
            "early_stop": "on", "confirm_top": "0"}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_preview_shows_the_plan_of_the_member_with_the_largest_peak(tiny_model, team_member, small_gpu_queue):
    _, user, dataset = team_member
    answer = client_for(user).post("/sweeps/new/preview/", sweep_form(dataset, tiny_model, small_gpu_queue)).json()
    assert answer["errors"] == {} and [m["name"] for m in answer["members"]] == ["r=2", "r=64"]
    plan = answer["plan"]
    assert plan["member"] == "r=64"  # 32 times the adapters (and their optimizer state) of r=2
    assert plan["text"].startswith("peak ≈ ") and "fits on: box-t4@test (2 GB)" in plan["text"]
    assert "tokens/s on NVIDIA T4" in plan["text"] and plan["calibrated"] is False
    assert not Sweep.objects.exists() and not Run.objects.exists()


def test_a_member_that_fits_no_gpu_is_refused_by_name_in_the_preview_and_at_launch(tiny_model, team_member,
                                                                                    small_gpu_queue):
    _, user, dataset = team_member
    client = client_for(user)
    # Packed rows of 1,024 tokens, 32 a micro-batch, on the plain stack: ~4 GiB of attention scores per member.
    too_big = sweep_form(dataset, tiny_model, small_gpu_queue, max_length=1024, packing="true",
                         per_device_train_batch_size=32, gradient_accumulation_steps=2)
    response = client.post("/sweeps/new/preview/", too_big)
    assert response.status_code == 200
    errors = response.json()["errors"]
    assert list(errors) == ["__all__"] and len(errors["__all__"]) == 1
    message = errors["__all__"][0]
    assert message.startswith("Not started: member r=2: predicted peak ")
    assert "fits no live GPU worker on this queue (the largest: box-t4@test, 2.0 GiB)" in message
    assert "per_device_train_batch_size 16 × gradient_accumulation_steps 4 (same effective batch 64)" in message

    response = client.post("/sweeps/new/", {**too_big, "name": "too big"})
    assert response.status_code == 400
    assert list(response.context["form"].non_field_errors()) == [message]
    assert "Not started: member r=2: predicted peak" in response.content.decode()
    assert not Sweep.objects.exists() and not Run.objects.exists()

    # The lever applied to the base: it launches, and each member keeps its plan.
    fits = sweep_form(dataset, tiny_model, small_gpu_queue, max_length=1024, packing="true",
                      per_device_train_batch_size=16, gradient_accumulation_steps=4)
    response = client.post("/sweeps/new/", {**fits, "name": "fits"})
    sweep = Sweep.objects.get(name="fits")
    assert response.status_code == 302 and response["Location"] == f"/sweeps/{sweep.id}/"
    runs = list(Run.objects.filter(sweep=sweep).order_by("id"))
    assert len(runs) == 2 and all(r.plan["fits_any"] is True and r.plan["gpu"] == "NVIDIA T4" for r in runs)


def test_a_later_member_refused_by_run_create_names_the_member(tiny_model, team_member, small_gpu_queue):
    """What sweep_create checks first, a member's run refused later (a next phase, a resume) names it too."""
    _, user, dataset = team_member
    client = client_for(user)
    response = client.post("/sweeps/new/", {**sweep_form(dataset, tiny_model, small_gpu_queue), "name": "ranks"})
    assert response.status_code == 302
    sweep = Sweep.objects.get(name="ranks")
    too_big = {**tiny_overrides(tiny_model), "max_length": 1024, "packing": True, "per_device_train_batch_size": 32,
               "gradient_accumulation_steps": 2}
    with pytest.raises(ValidationError) as refused:
        services.member_run_create(sweep, user=user, name="ranks · r · r=128", config=too_big)
    assert list(refused.value.message_dict) == ["fit"]
    assert refused.value.message_dict["fit"][0].startswith("ranks · r · r=128: predicted peak ")
