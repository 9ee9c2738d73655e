"""Calibration: fitting recovers known constants from synthetic runs, bands follow the residuals, an OOM is a floor."""
import itertools
import random
from dataclasses import replace

import pytest

from training.planner import calibrate, reference
from training.planner.estimate import MEMORY_TERMS, Constants, Setup, predict, step_tokens
from training.planner.shapes import ModelShape

# MLP widths of 4x, 2x and 2.75x the hidden size: otherwise the hidden and intermediate terms cannot be told apart.
SHAPES = [ModelShape(32000, 768, 3072, 12, 12, 12, 64), ModelShape(32000, 1024, 2048, 24, 16, 16, 64),
          reference.TINYLLAMA_1_1B]
TRUE = Constants(memory=(14.0, 5.0, 0.5, 3.0, 3e8, 0.0), speed=(1 / (989e12 * 0.3), 3e-4, 2e-9, 0.02, 1.5e-3, 8e-5),
                 memory_error=0, speed_error=0)
GPU = "NVIDIA H200"


def synthetic(noise=0.0):
    samples, rng = [], random.Random(0)
    for i, (shape, seq, mb, gc) in enumerate(itertools.product(SHAPES, (512, 2048, 4096), (1, 4, 16), (True, False))):
        setup = Setup.of({"max_length": seq, "per_device_train_batch_size": mb, "gradient_accumulation_steps": 2,
                          "gradient_checkpointing": gc, "packing": True,
                          "optim": "adamw_8bit" if i % 3 else "adamw_torch_fused"}, backend="unsloth")
        p = predict(shape, setup, TRUE)
        wobble = 1 + noise * rng.choice((-1, 1))
        samples.append(calibrate.Sample(shape=shape, setup=setup, gpu=GPU, peak_bytes=p.peak_bytes * wobble,
                                        tokens_per_s=step_tokens(setup) / p.step_s * wobble, startup_s=40 + i % 3))
    return samples


@pytest.mark.parametrize("pull", ["as set", "off"])
def test_fitting_recovers_known_constants_from_synthetic_runs(pull, monkeypatch):
    if pull == "off":
        monkeypatch.setattr(calibrate, "MEMORY_PRIOR_WEIGHT", 1e-9)
        monkeypatch.setattr(calibrate, "SPEED_PRIOR_WEIGHT", 1e-9)
    fitted = calibrate.calibrate(synthetic(), calibrate.prior_constants("unsloth", False, GPU), source="synthetic")
    for term, got, want in zip(MEMORY_TERMS, fitted.memory, TRUE.memory):
        # The checkpointed hidden states are at most 3% of any of these peaks: the prior's pull moves them more.
        loose = 0.2 if term == "checkpoints" and pull == "as set" else 0.02
        assert got == pytest.approx(want, rel=loose, abs=1e-3), term
    for got, want in zip(fitted.speed, TRUE.speed):
        # The speed prior pulls harder (it keeps noisy rows from being overfitted): within 10% as set.
        assert got == pytest.approx(want, rel=0.1 if pull == "as set" else 0.02)
    assert fitted.calibrated and fitted.samples == 54 and fitted.startup_s == 41
    assert fitted.memory_error == calibrate.MIN_BAND and fitted.speed_error == calibrate.MIN_BAND


def test_the_band_is_what_the_fit_leaves():
    fitted = calibrate.calibrate(synthetic(noise=0.08), calibrate.prior_constants("unsloth", False, GPU), "noisy")
    assert 0.12 < fitted.memory_error < 0.2 and 0.12 < fitted.speed_error < 0.2  # twice the ±8% residuals


def test_fewer_than_three_runs_keep_the_priors_band():
    prior = calibrate.default_constants("unsloth", False, GPU)
    fitted = calibrate.calibrate(synthetic()[:2], prior, "two runs")
    assert fitted.memory_error == prior.memory_error and fitted.calibrated


def test_a_run_that_ran_out_of_memory_raises_the_prediction_to_the_gpus_size():
    shape = reference.TINYLLAMA_1_1B
    setup = Setup.of({"max_length": 4096, "per_device_train_batch_size": 16, "gradient_checkpointing": True,
                      "packing": True}, backend="unsloth")
    prior = calibrate.default_constants("unsloth", False, GPU)
    before = predict(shape, setup, prior).peak_bytes
    gpu_bytes = 1.5 * before  # it ran out of memory on a GPU half again as large as the defaults' peak
    oom = calibrate.Sample(shape=shape, setup=setup, gpu=GPU, oom=True, gpu_total_bytes=gpu_bytes)
    fitted = calibrate.calibrate([oom], prior, "an OOM")
    assert predict(shape, setup, fitted).peak_bytes > 0.95 * gpu_bytes
    # An OOM on a GPU smaller than the prediction tells nothing new: the constants stay.
    assert calibrate.calibrate([replace(oom, gpu_total_bytes=0.5 * before)], prior, "").memory == prior.memory


def test_groups_by_gpu_backend_and_precision_with_defaults_elsewhere():
    samples = synthetic()[:5] + [replace(synthetic()[6], gpu="NVIDIA A100-SXM4-80GB")]
    table = calibrate.calibrations(samples)
    assert set(table) == {(GPU, "unsloth", False), ("NVIDIA A100-SXM4-80GB", "unsloth", False)}
    assert table[(GPU, "unsloth", False)].source == "calibrated on 5 measured runs (NVIDIA H200, unsloth, 16-bit)"
    other = calibrate.constants_for(table, GPU, "hf", True)
    assert not other.calibrated and "no measured run on NVIDIA H200 with the hf backend (4-bit)" in other.source
    # An unknown GPU's FLOP rate is the reference's scaled by the peaks: an A100 is about 3.2x slower per FLOP.
    a100 = calibrate.default_constants("unsloth", False, "NVIDIA A100-SXM4-80GB")
    h100 = calibrate.default_constants("unsloth", False, reference.H100)
    assert a100.speed[0] / h100.speed[0] == pytest.approx(989 / 312)
