"""Misconfigured tiny runs on the real Celery worker: the pre-flight notes are saved on the run when it is created,
and the findings raised while it trains name the misconfigured parameter first, with the config values they used
in their evidence (issue 18)."""
import math

import pytest

from guidance.models import Finding
from tests.integration.conftest import create_run, wait_terminal
from training.models import Run

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def saved_notes(run: Run) -> list[dict]:
    """The notes as the database holds them (not the object run_create returned)."""
    return Run.objects.get(id=run.id).preflight


def findings(run: Run) -> list[Finding]:
    return list(Finding.objects.filter(run=run).order_by("step", "code"))


def test_a_huge_learning_rate_is_noted_before_it_starts_and_named_first_when_it_blows_up(
        celery_worker, tiny_model, team_member):
    # 0.3 is 1,500x the seed's LoRA default; at a constant rate, trained on every token, the tiny Llama's gradient
    # norm jumps ~40x at step 3 (5x is the early_instability threshold), then collapses to ~0.004 while the loss
    # stalls. (On the answers alone, the default, its few tokens per batch make the jump too small to call.)
    run = create_run(team_member, tiny_model, learning_rate=0.3, lr_scheduler_type="constant",
                     completion_only_loss=False)
    notes = saved_notes(run)
    assert [n["code"] for n in notes if n["severity"] == "warning"] == [
        "learning_rate_off", "weight_decay_heavy_for_learning_rate"]
    lr_note = notes[0]
    assert lr_note["parameters"] == ["learning_rate"]
    assert lr_note["title"] == "Learning rate 0.3 is 1,500x above the LoRA default"
    assert lr_note["fix"] == {"learning_rate": 2e-4} and lr_note["fix_text"] == {"learning_rate": "0.0002"}
    assert lr_note["guidance_url"] == "/guidance/learning_rate/#too_high"
    assert lr_note["evidence"]["learning_rate"] == 0.3
    decay_note = notes[1]
    assert decay_note["combines_with"] == ["learning_rate"]
    assert decay_note["evidence"]["learning_rate"] == 0.3 and decay_note["evidence"]["weight_decay"] == 0.01

    run = wait_terminal(run)
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert saved_notes(run) == notes  # training does not touch them
    found = findings(run)
    unstable = [f for f in found if f.code == "early_instability"]
    assert len(unstable) == 1, [(f.code, f.step) for f in found]
    f = unstable[0]
    assert f.step <= 5 and f.evidence["signal"] == "grad_norm"
    assert f.parameters == ["learning_rate", "warmup_steps", "dtype"]
    assert f.evidence["config"]["learning_rate"] == 0.3
    assert f.evidence["config"]["warmup_steps"] == 0 and f.evidence["config"]["total_steps"] == 20
    assert f.evidence["distance_from_seed"]["learning_rate"] == pytest.approx(round(math.log2(0.3 / 2e-3), 3))
    assert f.evidence["distance_from_seed"]["warmup_steps"] == 0.0
    assert "lower the learning rate or lengthen warmup" in f.message
    # Whatever else fired and names the learning rate names it first, and none says to raise it.
    assert all(x.parameters[0] == "learning_rate" for x in found if "learning_rate" in x.parameters)
    assert not any("raise the learning rate" in x.message for x in found)


def test_a_tiny_lora_alpha_for_its_r_is_noted_before_it_starts_and_named_first_when_the_loss_stays_flat(
        celery_worker, tiny_model, team_member):
    # lora_alpha 1 at r 16 is a gain of 1/16 (the seed's is 1-2): at learning rate 2e-3, where the same run with
    # the default alpha falls ~13% in 20 steps, the loss moves ~1.5% (flat_loss fires under 3%).
    run = create_run(team_member, tiny_model, learning_rate=2e-3, lora_alpha=1, r=16)
    notes = saved_notes(run)
    warnings = [n for n in notes if n["severity"] == "warning"]
    assert [n["code"] for n in warnings] == ["lora_scale_off"]
    note = warnings[0]
    assert note["parameters"] == ["lora_alpha"] and note["combines_with"] == ["r"]
    assert note["fix"] == {"lora_alpha": 32} and note["fix_text"] == {"lora_alpha": "32"}
    assert note["guidance_url"] == "/guidance/lora_alpha/#too_low"
    assert note["evidence"]["gain"] == 1 / 16 and note["evidence"]["r"] == 16

    run = wait_terminal(run)
    assert run.status == Run.Status.SUCCEEDED, run.error
    found = findings(run)
    flat = [f for f in found if f.code == "flat_loss"]
    assert len(flat) == 1, [(f.code, f.step) for f in found]
    f = flat[0]
    assert f.step == 20  # warmup 0 + flat_steps 20, the run's last step
    assert abs(f.evidence["relative_drop"]) < f.evidence["thresholds"]["flat_min_drop"]
    # learning_rate 2e-3 is at the top of the seed's band: "raise the learning rate" would take it out, so it is
    # not advised.
    assert f.parameters == ["lora_alpha", "weight_decay"]
    assert f.evidence["config"] == {"lora_alpha": 1, "r": 16, "use_rslora": False, "gain": 1 / 16,
                                    "weight_decay": 0.01}
    assert f.evidence["distance_from_seed"] == {"lora_alpha": 4.0, "weight_decay": 0.0}
    assert "raise lora_alpha relative to r or lower a heavy weight decay" in f.message
    assert "raise the learning rate" not in f.message
