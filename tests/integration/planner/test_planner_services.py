"""The planner's Django side on the real database: a team's measured runs calibrate its predictions (and only its
own), a run that ran out of memory counts, the fit is redone when a run ends, the queue's live GPUs decide where
a config fits, and the model's shapes come from its folder or an earlier run."""
import pytest
from django.utils import timezone

from tests.factories import idle_queue, make_dataset, make_member, make_team, tiny_overrides
from training.models import MetricPoint, Run, Worker
from training.planner import calibrate, reference, services
from training.planner.estimate import Setup, predict, step_tokens
from training.runs import services as run_services

pytestmark = pytest.mark.django_db
H200 = "NVIDIA H200"
SHAPE = reference.TINYLLAMA_1_1B
MODEL_CONFIG = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 64, "tie_word_embeddings": False}


@pytest.fixture
def team(tmp_path):
    team = make_team()
    user = make_member(team)
    return team, user, make_dataset(team, user, tmp_dir=tmp_path)


def measured_run(team, *, micro_batch, peak_scale=1.2, oom=False, model="hub-org/tinyllama-shapes",
                 gpu_total=int(150e9)):
    """A finished run as a GPU worker would have recorded it: its started facts and per-step points, with a peak
    `peak_scale` times the defaults' prediction (so calibration has something to learn)."""
    t, user, dataset = team
    run = run_services.run_create(team=t, user=user, dataset=dataset, queue=idle_queue(), overrides=tiny_overrides(
        model, per_device_train_batch_size=micro_batch, max_length=2048, packing=True, backend="unsloth",
        max_steps=10))
    setup = Setup.of(run.config, backend="unsloth")
    p = predict(SHAPE, setup, calibrate.default_constants("unsloth", False, H200))
    Run.objects.filter(id=run.id).update(
        status=Run.Status.FAILED if oom else Run.Status.SUCCEEDED, finished_at=timezone.now(),
        error_class="OutOfMemoryError" if oom else "",
        started={"device": H200, "backend": "unsloth", "model_config": MODEL_CONFIG,
                 "gpu_memory_total": gpu_total})
    if not oom:
        MetricPoint.objects.bulk_create([
            MetricPoint(run_id=run.id, step=s, peak_vram_bytes=int(p.peak_bytes * peak_scale),
                        tokens_per_s=step_tokens(setup) / p.step_s, loss=1.0, time=timezone.now()) for s in range(1, 11)])
    return run


def test_a_teams_runs_calibrate_its_predictions_and_no_other_teams(team, tmp_path):
    for mb in (1, 2, 4, 8):
        measured_run(team, micro_batch=mb)
    table = services.team_calibrations(team[0].id)
    k = table[(H200, "unsloth", False)]
    assert k.calibrated and k.samples == 4 and k.source == "calibrated on 4 measured runs (NVIDIA H200, unsloth, 16-bit)"
    setup = Setup.of({**reference.COMMON, **reference.PACKED_2048}, backend="unsloth")
    measured = predict(SHAPE, setup, calibrate.default_constants("unsloth", False, H200)).peak_bytes * 1.2
    assert predict(SHAPE, setup, k).peak_bytes == pytest.approx(measured, rel=0.05)  # it learned the 20%

    other = make_team()
    assert services.team_calibrations(other.id) == {}  # another team's runs are not its calibration


def test_the_fit_is_redone_when_a_run_ends_and_an_oom_counts(team):
    measured_run(team, micro_batch=2)
    assert services.team_calibrations(team[0].id)[(H200, "unsloth", False)].samples == 1
    setup = Setup.of({"per_device_train_batch_size": 16, "max_length": 2048, "packing": True,
                      "gradient_accumulation_steps": 1}, backend="unsloth")
    before = predict(SHAPE, setup, services.team_calibrations(team[0].id)[(H200, "unsloth", False)]).peak_bytes
    # It ran out of memory on a GPU 30% larger than the prediction: the peak was above that GPU's size.
    measured_run(team, micro_batch=16, oom=True, gpu_total=int(1.3 * before))
    k = services.team_calibrations(team[0].id)[(H200, "unsloth", False)]
    assert k.samples == 2 and predict(SHAPE, setup, k).peak_bytes > 1.15 * before


def test_the_plan_says_which_live_gpus_it_fits_and_refuses_when_none(team, tiny_model):
    t = team[0]
    queue = "plan-queue"
    config = {"model": tiny_model, "max_length": 128, "per_device_train_batch_size": 8,
              "gradient_accumulation_steps": 1, "max_steps": 20, "backend": "hf"}
    plan = services.plan_config(team_id=t.id, config=config, queue=queue)
    assert plan["fits_any"] is None and "no live worker on this queue" in plan["text"]
    assert plan["model_shape"]["hidden_size"] == 64  # read from the tiny model's config.json
    Worker.objects.create(name="cpu@box", hostname="box", queues=[queue], gpus=[])
    plan = services.plan_config(team_id=t.id, config=config, queue=queue)
    assert "peak_bytes" not in plan and services.plan_refusal(plan) is None  # no GPU figure for a CPU queue

    Worker.objects.create(name="big@box", hostname="box", queues=[queue],
                          gpus=[{"name": H200, "memory_total": 150 * 10 ** 9}])
    Worker.objects.create(name="small@box", hostname="box", queues=[queue],
                          gpus=[{"name": "Tesla T4", "memory_total": 400 * 1024 ** 2}])  # under a CUDA context
    plan = services.plan_config(team_id=t.id, config=config, queue=queue)
    fits = {w["worker"]: w["fits"] for w in plan["workers"]}
    assert fits == {"cpu@box": None, "big@box": True, "small@box": False}
    assert "fits on: big@box (150 GB)" in plan["text"] and plan["gpu"] == H200 and plan["fits_any"]
    assert plan["seconds"] and plan["total_steps"] == 20

    Worker.objects.filter(name="big@box").delete()
    plan = services.plan_config(team_id=t.id, config=config, queue=queue)
    refusal = services.plan_refusal(plan)
    assert plan["fits_any"] is False and refusal.startswith("predicted peak ")
    assert "fits no live GPU worker on this queue (the largest: small@box, 0.4 GiB)" in refusal


def test_shapes_of_a_hub_model_come_from_an_earlier_run_of_the_team(team):
    t = team[0]
    plan = services.plan_config(team_id=t.id, config={"model": "org/never-trained"}, queue="q")
    assert plan == {"error": "the shapes of org/never-trained are unknown here: no config.json this server can "
                             "read, and no run of this team has trained it yet"}
    measured_run(team, micro_batch=2, model="org/trained-before")
    plan = services.plan_config(team_id=t.id, config={"model": "org/trained-before", "max_length": 2048},
                                queue="q")
    assert plan["model_shape"]["num_layers"] == 22
    assert services.plan_config(team_id=make_team().id, config={"model": "org/trained-before"},
                                queue="q").get("error")  # not from another team's run


def test_a_queue_of_cpu_workers_gets_no_gpu_figure_and_a_cpu_estimate_once_the_team_has_cpu_runs(team, tiny_model):
    t, user, dataset = team
    queue = "cpu-only-queue"
    Worker.objects.create(name="cpu@laptop", hostname="laptop", queues=[queue], gpus=[])
    config = {"model": tiny_model, "max_length": 128, "per_device_train_batch_size": 8,
              "gradient_accumulation_steps": 1, "max_steps": 20, "backend": "hf", "packing": True}
    plan = services.plan_config(team_id=t.id, config=config, queue=queue)
    assert plan["error"] == "no GPU estimate: the queue's workers are CPUs (cpu@laptop)"
    assert plan["text"] == ("No estimate: the queue's workers are CPUs (cpu@laptop); no CPU run of this model in the "
                            "team yet to time it on.")
    assert plan["cpu"] is None and "peak_bytes" not in plan and "gpu" not in plan
    assert services.display.form_plan(plan, config)["text"] == plan["text"]

    # A CPU run of the team on this model measured 512 tokens/s after its first steps (the first ones are slower).
    run = run_services.run_create(team=t, user=user, dataset=dataset, queue=idle_queue(),
                                  overrides=tiny_overrides(tiny_model, max_steps=10))
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, finished_at=timezone.now(),
                                         started={"device": "cpu", "backend": "hf"})
    MetricPoint.objects.bulk_create([MetricPoint(run_id=run.id, step=s, tokens_per_s=10.0 if s <= 2 else 512.0,
                                                 loss=1.0, time=timezone.now()) for s in range(1, 11)])
    plan = services.plan_config(team_id=t.id, config=config, queue=queue)
    # 20 packed steps of 8 x 128 tokens at 512 tokens/s: 40 s.
    assert plan["cpu"] == {"tokens_per_s": 512.0, "seconds": 40.0, "runs": 1, "total_steps": 20}
    assert "On CPU: ≈ 512 tokens/s, the median of the team's last 1 CPU run of this model; ≈ 40 s for 20 steps" \
        in plan["text"]
    assert "peak_bytes" not in plan and services.plan_refusal(plan) is None
    # A GPU worker on the queue brings the GPU prediction back.
    Worker.objects.create(name="gpu@box", hostname="box", queues=[queue],
                          gpus=[{"name": H200, "memory_total": 150 * 10 ** 9}])
    plan = services.plan_config(team_id=t.id, config=config, queue=queue)
    assert plan["gpu"] == H200 and plan["peak_bytes"] > 0
