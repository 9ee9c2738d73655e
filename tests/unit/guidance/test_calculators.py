"""Guidance calculators: the seed's formulas against hand-computed values, and predictions for a change."""
import pytest

from guidance import calculators as calc
from guidance.content import load_all
from training.engine.config import LoftQ

# --- effective batch and total steps -----------------------------------------------------------------------------

def test_step_plan_for_one_epoch():
    # 1,000 examples, micro-batch 2, accumulation 8 -> effective 16; 500 micro-batches / 8 = 62.5 -> 63 steps
    plan = calc.step_plan(num_examples=1_000, micro_batch=2, grad_accum=8)
    assert (plan.effective_batch, plan.steps_per_epoch, plan.total_steps) == (16, 63, 63)


def test_step_plan_over_epochs_and_devices():
    # 2 GPUs × micro 4 × accum 4 = 32; 3,200 examples -> 100 steps per epoch; 3 epochs -> 300
    plan = calc.step_plan(num_examples=3_200, micro_batch=4, grad_accum=4, epochs=3, devices=2)
    assert plan.as_dict() == {"effective_batch": 32, "steps_per_epoch": 100, "total_steps": 300}


def test_step_plan_max_steps_wins_over_epochs():
    assert calc.step_plan(num_examples=10_000, micro_batch=2, grad_accum=8, epochs=3, max_steps=250).total_steps == 250


@pytest.mark.parametrize("kwargs, field", [
    ({"micro_batch": 0}, "micro_batch"),
    ({"grad_accum": 1.5}, "grad_accum"),
    ({"epochs": 0}, "epochs"),
    ({"num_examples": -1}, "num_examples"),
    ({"max_steps": 0}, "max_steps"),
])
def test_step_plan_names_the_bad_input(kwargs, field):
    args = {"num_examples": 100, "micro_batch": 2, "grad_accum": 8, **kwargs}
    with pytest.raises(ValueError, match=field):
        calc.step_plan(**args)


# --- warmup ------------------------------------------------------------------------------------------------------

def test_warmup_three_percent_of_a_short_run_is_lifted_to_the_floor():
    assert calc.recommended_warmup_steps(200) == 10          # 3% of 200 = 6 -> floor 10
    assert calc.recommended_warmup_steps(200, floor=25) == 25


def test_warmup_floor_never_exceeds_the_run():
    assert calc.recommended_warmup_steps(8) == 8


def test_warmup_on_a_long_run_is_three_percent():
    assert calc.recommended_warmup_steps(2_000) == 60
    assert calc.recommended_warmup_steps(499) == 15          # 14.97 rounds to 15, above the floor
    assert calc.recommended_warmup_steps(500) == 15
    assert calc.recommended_warmup_steps(1_000, ratio=0.1) == 100


@pytest.mark.parametrize("kwargs, field", [({"floor": 5}, "floor"), ({"floor": 30}, "floor"), ({"ratio": 1.0}, "ratio")])
def test_warmup_refuses_values_outside_the_seed_rule(kwargs, field):
    with pytest.raises(ValueError, match=field):
        calc.recommended_warmup_steps(200, **kwargs)


def test_resolved_warmup_counts_a_ratio_rounded_up_and_an_int_as_steps():
    assert calc.resolved_warmup_steps(0.03, 200) == 6
    assert calc.resolved_warmup_steps(0.03, 210) == 7          # 6.3 -> 7
    assert calc.resolved_warmup_steps(10, 200) == 10
    with pytest.raises(ValueError, match="ratio in \\[0, 1\\)"):
        calc.resolved_warmup_steps(1.5, 200)


# --- LoRA gain and alpha -----------------------------------------------------------------------------------------

def test_gain_of_standard_and_rslora():
    assert calc.lora_gain(32, 16, use_rslora=False) == 2
    assert calc.lora_gain(32, 16, use_rslora=True) == 8


def test_gain_matched_alpha_for_rslora_and_standard():
    # The seed's example: r=16, alpha=32 under standard LoRA is g=2; at r=64 with rsLoRA, alpha = 2·√64 = 16.
    g = calc.lora_gain(32, 16, use_rslora=False)
    assert calc.alpha_for_gain(g, 64, use_rslora=True) == 16
    assert calc.alpha_for_gain(2, 64, use_rslora=False) == 128
    assert calc.alpha_for_gain(2, 10, use_rslora=True) == 6     # 2·√10 = 6.32 -> 6


def test_alpha_kept_at_the_same_gain_when_switching_rslora():
    assert calc.alpha_after_rslora_switch(32, 16, to_rslora=True) == 8     # g=2 -> 2·√16
    assert calc.alpha_after_rslora_switch(8, 16, to_rslora=False) == 32    # g=8/4=2 -> 2·16


def test_alpha_calculators_refuse_a_zero_rank():
    with pytest.raises(ValueError, match="r must be"):
        calc.alpha_for_gain(2, 0, use_rslora=True)


# --- gradient accumulation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("micro, devices, expected", [(2, 1, 8), (1, 1, 16), (3, 1, 6), (4, 2, 2), (32, 1, 1)])
def test_grad_accum_for_an_effective_batch_of_16(micro, devices, expected):
    assert calc.grad_accum_for_target(micro, devices=devices) == expected


def test_grad_accum_for_another_target():
    assert calc.grad_accum_for_target(4, target_effective_batch=64) == 16


# --- rank range --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, expected", [
    (0, (4, 8)), (499, (4, 8)), (500, (8, 16)), (1_500, (8, 16)), (2_000, (16, 32)), (9_999, (16, 32)),
    (10_000, (32, 64)), (50_000, (64, 64)), (199_999, (64, 64)), (200_000, (64, 128)), (1_000_000, (64, 128)),
])
def test_rank_range_follows_the_seed_buckets(rows, expected):
    assert calc.rank_range(rows) == expected


def test_rank_range_refuses_a_negative_size():
    with pytest.raises(ValueError, match="num_examples"):
        calc.rank_range(-5)


# --- predictions for a change ------------------------------------------------------------------------------------

def test_raising_alpha_predicts_faster_learning_and_overshoot():
    text = calc.prediction_for_change("lora_alpha", 16, 32)
    assert text == load_all()["lora_alpha"].predictions["up"]
    assert "faster early learning" in text and "overshoot" in text


def test_lowering_the_learning_rate_uses_the_down_prediction():
    assert calc.prediction_for_change("learning_rate", 2e-4, 5e-5) == load_all()["learning_rate"].predictions["down"]


def test_switches_use_on_and_off():
    predictions = load_all()["use_rslora"].predictions
    assert calc.prediction_for_change("use_rslora", False, True) == predictions["on"]
    assert calc.prediction_for_change("use_rslora", True, False) == predictions["off"]


def test_a_choice_uses_the_new_values_own_prediction_or_changed():
    bias = load_all()["bias"].predictions
    assert calc.prediction_for_change("bias", "none", "all") == bias["all"]
    assert calc.prediction_for_change("bias", "all", "lora_only") == bias["lora_only"]
    assert calc.prediction_for_change("lr_scheduler_type", "linear", "cosine_with_restarts") == \
        load_all()["lr_scheduler_type"].predictions["cosine_with_restarts"]


def test_loftq_on_off_and_changed_accept_config_objects():
    loftq = load_all()["loftq_config"].predictions
    assert calc.prediction_for_change("loftq_config", None, {"loftq_bits": 4, "loftq_iter": 4}) == loftq["on"]
    assert calc.prediction_for_change("loftq_config", LoftQ(loftq_bits=4, loftq_iter=4), None) == loftq["off"]
    assert calc.prediction_for_change("loftq_config", LoftQ(loftq_iter=1), LoftQ(loftq_iter=4)) == loftq["changed"]
    assert calc.prediction_for_change("loftq_config", LoftQ(), {"loftq_bits": 4, "loftq_iter": 4}) == ""


def test_warmup_in_steps_against_a_ratio_compares_resolved_steps():
    warmup = load_all()["warmup_steps"].predictions
    # 0.03 of 200 steps is 6 steps: moving from 10 steps to 0.03 is a shorter warmup.
    assert calc.prediction_for_change("warmup_steps", 10, 0.03, total_steps=200) == warmup["down"]
    assert calc.prediction_for_change("warmup_steps", 10, 0.03, total_steps=1_000) == warmup["up"]
    assert calc.prediction_for_change("warmup_steps", 10, 0.03) == warmup["changed"]
    assert calc.prediction_for_change("warmup_steps", 0.03, 0.1) == warmup["up"]


def test_no_change_has_no_prediction():
    assert calc.prediction_for_change("r", 16, 16) == ""
    assert calc.prediction_for_change("warmup_steps", 6, 0.03, total_steps=200) == ""


def test_a_parameter_without_guidance_is_a_key_error():
    with pytest.raises(KeyError):
        calc.prediction_for_change("max_length", 1024, 2048)
