"""Derived values: hand-computed expectations."""
import math

import pytest

from training.engine.config import parse_config
from training.engine.derived import (
    alpha_when_switching_rslora,
    derive,
    effective_batch,
    gain_matched_alpha,
    grad_accum_for_target,
    lora_scale,
    packed_attention_ratio,
    rank_range_for_dataset,
    steps_per_epoch,
    tokens_per_step,
    total_steps,
    warmup_steps_recommended,
    warmup_steps_resolved,
)


def test_effective_batch_multiplies_micro_batch_accumulation_and_devices():
    assert effective_batch(2, 8) == 16
    assert effective_batch(4, 4, devices=2) == 32


def test_steps_per_epoch_counts_a_last_partial_accumulation_as_a_step():
    # 100 examples, micro-batch 8 -> 13 micro-batches; accumulation 4 -> 3 full steps + 1 partial = 4
    assert steps_per_epoch(100, 8, 4) == 4
    assert steps_per_epoch(64, 8, 1) == 8
    assert steps_per_epoch(3, 8, 4) == 1
    assert steps_per_epoch(0, 8, 4) == 0


def test_total_steps_from_epochs_or_max_steps():
    assert total_steps(100, 8, 4, epochs=3) == 12
    assert total_steps(100, 8, 4, epochs=1.5) == 6
    assert total_steps(100, 8, 4, epochs=3, max_steps=50) == 50


def test_warmup_ratio_is_rounded_up_like_transformers():
    assert warmup_steps_resolved(0.03, 1000) == 30
    assert warmup_steps_resolved(0.03, 101) == 4  # ceil(3.03)
    assert warmup_steps_resolved(25, 1000) == 25
    assert warmup_steps_resolved(0.0, 1000) == 0


def test_recommended_warmup_has_a_floor_for_short_runs():
    assert warmup_steps_recommended(200) == 10
    assert warmup_steps_recommended(2000) == 60
    assert warmup_steps_recommended(5) == 5


def test_lora_scale_standard_and_rslora():
    assert lora_scale(32, 16, use_rslora=False) == 2.0
    assert lora_scale(32, 16, use_rslora=True) == 8.0
    assert lora_scale(16, 64, use_rslora=True) == 2.0


def test_gain_matched_alpha_follows_the_seed_example():
    # r=16, alpha=32 standard -> g=2; rsLoRA at r=64 keeps g=2 with alpha=16
    assert gain_matched_alpha(2, 64, use_rslora=True) == 16
    assert gain_matched_alpha(2, 16, use_rslora=False) == 32
    assert alpha_when_switching_rslora(32, 16, to_rslora=True) == 8  # 2 * sqrt(16)
    assert alpha_when_switching_rslora(8, 16, to_rslora=False) == 32


def test_grad_accum_for_a_target_effective_batch():
    assert grad_accum_for_target(16, 1) == 16
    assert grad_accum_for_target(16, 2) == 8
    assert grad_accum_for_target(16, 3) == 6  # ceil(5.33)


def test_tokens_per_step():
    assert tokens_per_step(8, 2, 2048) == 32768
    assert tokens_per_step(8, 2, 2048, packing=False, mean_tokens=300) == 4800


def test_packed_attention_ratio_for_the_1b_llama_of_the_gpu_bench():
    # Llama-3.2-1B shapes: 32 heads x 64 = 2048 wide; per layer q 2048², k and v 2048x512, o 2048², MLP 3 x 2048x8192
    layer = 2048 * 2048 * 2 + 2048 * 512 * 2 + 3 * 2048 * 8192
    assert layer == 60_817_408
    # micro-batch 8 x 2048 (the reference config, slower on the hf backend): 4·16384·2048 / (2·60.8M)
    assert packed_attention_ratio(8, 2048, 2048, layer) == pytest.approx(1.1035, abs=1e-4)
    assert packed_attention_ratio(4, 2048, 2048, layer) == pytest.approx(0.5518, abs=1e-4)  # the faster one


@pytest.mark.parametrize("rows, expected", [(10, (4, 8)), (499, (4, 8)), (500, (8, 16)), (5000, (16, 32)),
                                            (20000, (32, 64)), (100000, (64, 64)), (300000, (64, 128))])
def test_rank_range_buckets(rows, expected):
    assert rank_range_for_dataset(rows) == expected


def test_derive_from_a_config():
    config = parse_config({"model": "m", "train_file": "t.jsonl", "per_device_train_batch_size": 2,
                           "gradient_accumulation_steps": 8, "num_train_epochs": 2, "warmup_steps": 0.1,
                           "r": 64, "lora_alpha": 16, "use_rslora": True, "max_length": 1024, "packing": True})
    d = derive(config, num_examples=1000)
    assert d.effective_batch == 16
    assert d.steps_per_epoch == math.ceil(500 / 8)
    assert d.total_steps == 2 * 63
    assert d.warmup_steps == math.ceil(0.1 * 126)
    assert d.lora_scale == 2.0
    assert d.tokens_per_step == 16 * 1024
    assert derive(config).total_steps is None
