"""Symptom detectors on synthetic series: each must fire on its symptom and stay quiet on look-alikes."""
import json
import math
import random

import pytest

from guidance.content import GUIDED_PARAMS, SECTIONS
from guidance.detectors import IMPACT, Finding, RunSeries, Thresholds, Watcher, detect, loss_floor, series_from_events


def healthy(n=300, *, seed=0, warmup=10, total=None, noise=0.08, grad_noise=0.3, eval_every=25):
    """Noisy but healthy: loss decays towards a floor, grad norm wanders, LR warms up then decays linearly."""
    rng = random.Random(seed)
    total = total or n
    steps = list(range(1, n + 1))
    level = [0.6 + 1.6 * math.exp(-s / 80) for s in steps]
    loss = [lv * (1 + noise * rng.gauss(0, 1)) for lv in level]
    grad = [0.5 * math.exp(grad_noise * rng.gauss(0, 1)) for _ in steps]
    lr = [2e-4 * min(s / warmup, 1) * (1 - max(s - warmup, 0) / (total - warmup)) for s in steps]
    tps = [9000 * (1 + 0.05 * rng.gauss(0, 1)) for _ in steps]
    evals = [(s, 0.75 + 1.5 * math.exp(-s / 80) + 0.005 * rng.gauss(0, 1)) for s in steps if s % eval_every == 0]
    return dict(steps=steps, loss=loss, grad_norm=grad, learning_rate=lr, tokens_per_s=tps, evals=evals,
                total=total, warmup=warmup)


def series(d, **context):
    s = RunSeries(steps=list(d["steps"]), loss=list(d["loss"]), grad_norm=list(d["grad_norm"]),
                  learning_rate=list(d["learning_rate"]), tokens_per_s=list(d["tokens_per_s"]),
                  eval_steps=[s for s, _ in d.get("evals", [])], eval_loss=[v for _, v in d.get("evals", [])],
                  total_steps=d.get("total"), warmup_steps=d.get("warmup", 0))
    for key, value in context.items():
        setattr(s, key, value)
    return s


def events(d, *, config=None, dtype="bfloat16", extra=()):
    """The same series as the engine's event stream (NaN/Inf as strings, eval after the step's metrics)."""
    out = [{"type": "started", "config": config or {}, "dtype": dtype,
            "derived": {"total_steps": d.get("total"), "warmup_steps": d.get("warmup", 0)}}]
    evals = dict(d.get("evals", []))
    for i, step in enumerate(d["steps"]):
        loss = d["loss"][i]
        out.append({"type": "metrics", "step": step, "loss": loss if math.isfinite(loss) else str(loss),
                    "grad_norm": d["grad_norm"][i], "learning_rate": d["learning_rate"][i],
                    "tokens_per_s": d["tokens_per_s"][i], "epoch": 0.0, "tokens_seen": 0, "peak_vram_bytes": None})
        if step in evals:
            out.append({"type": "eval", "step": step, "epoch": 0.0, "eval_loss": evals[step]})
    return out + list(extra)


def codes(findings):
    return [f.code for f in findings]


def only(findings, code):
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, findings
    return hits[0]


def check_links(f: Finding):
    # a finding may only point at guidance that exists
    assert f.parameters and set(f.parameters) <= set(GUIDED_PARAMS) and IMPACT in SECTIONS
    assert set(f.sections) == {(p, IMPACT) for p in f.parameters}
    assert f.severity in ("info", "warning", "error")
    json.dumps(f.as_dict(), allow_nan=False)  # stored as JSON and sent over a websocket as is


# ---- healthy runs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_noisy_but_healthy_run_fires_nothing(seed):
    d = healthy(seed=seed)
    peers = loss_floor(healthy(seed=seed + 100)["loss"])  # a comparable run that did as well
    assert detect(series(d, peer_best_loss=peers, packed_tokens_per_s_estimate=12000)) == []


@pytest.mark.parametrize("seed", range(5))
def test_a_very_noisy_small_batch_run_fires_nothing(seed):
    # per-step loss of a micro-batch of 1 or 2: 20% noise, grad norm spread over a factor of 2 either way
    d = healthy(seed=seed, noise=0.2, grad_noise=0.35)
    assert detect(series(d)) == []


# ---- loss NaN / Inf -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_loss_nan_or_inf_is_an_error_at_its_step(bad):
    d = healthy(n=60)
    for i in range(40, 60):
        d["loss"][i] = float(bad)
    found = detect(series_from_events(events(d)))
    f = only(found, "loss_not_finite")
    assert f.severity == "error" and f.step == 41
    assert f.evidence["steps"] == [41] and f.evidence["values"] == [bad]
    assert ("NaN" if bad == "nan" else "Inf") in f.title
    assert {"learning_rate", "warmup_steps", "dtype"} <= set(f.parameters)
    check_links(f)


def test_nan_in_fp16_names_the_precision_and_rslora_names_alpha():
    d = healthy(n=30)
    d["loss"][12] = float("nan")
    f = only(detect(series_from_events(events(d, config={"use_rslora": True}, dtype="float16"))), "loss_not_finite")
    assert "float16" in f.message and {"use_rslora", "lora_alpha"} <= set(f.parameters)


def test_finite_loss_never_fires_nan():
    assert "loss_not_finite" not in codes(detect(series(healthy(n=60))))


# ---- instability in the first steps ---------------------------------------------------------------------------

def first_steps(grad, loss=None, warmup=5):
    n = len(grad)
    loss = loss or [2.0 - 0.01 * i for i in range(n)]
    return dict(steps=list(range(1, n + 1)), loss=loss, grad_norm=grad, learning_rate=[1e-4] * n,
                tokens_per_s=[1000.0] * n, total=200, warmup=warmup)


def test_grad_norm_jump_in_the_first_steps_is_early_instability():
    grad = [1.0, 1.1, 0.9, 1.0, 6.0] + [1.0] * 10
    f = only(detect(series(first_steps(grad))), "early_instability")
    assert f.step == 5 and f.evidence["signal"] == "grad_norm" and f.evidence["steps"] == [5]
    assert f.evidence["thresholds"]["early_grad_ratio"] == 5.0 and f.evidence["ratio"] == pytest.approx(6.0)
    assert {"warmup_steps", "learning_rate", "dtype"} <= set(f.parameters)
    check_links(f)


def test_loss_jump_in_the_first_steps_is_early_instability():
    loss = [2.0, 2.05, 1.95, 2.0, 1.9, 1.97, 3.4] + [1.9] * 10
    f = only(detect(series(first_steps([1.0] * 17, loss))), "early_instability")
    assert f.step == 7 and f.evidence["signal"] == "loss"
    assert f.evidence["thresholds"]["early_loss_ratio"] == 1.5


def test_modest_early_wobble_is_not_instability():
    grad = [1.0, 1.4, 0.8, 2.5, 3.2, 1.2] + [1.0] * 10  # up to 3.2x: warmup ramping, not a blow-up
    loss = [2.0, 3.5, 1.9, 2.6, 2.0, 2.1, 2.7] + [1.9] * 9  # a noisy second batch, then up to 1.35x
    assert detect(series(first_steps(grad, loss))) == []


def test_the_first_steps_last_through_a_long_warmup():
    grad = [1.0] * 40 + [6.0] + [1.0] * 5
    assert codes(detect(series(first_steps(grad, warmup=50)))) == ["early_instability"]
    # with a short warmup, step 41 is past the first steps: judged as a spike (6x is under its 10x)
    assert detect(series(first_steps(grad, warmup=5))) == []


# ---- spikes after warmup --------------------------------------------------------------------------------------

def test_loss_spike_after_warmup():
    d = healthy(seed=3)
    d["loss"][149] *= 2.5
    f = only(detect(series(d)), "loss_spike")
    assert f.step == 150 and f.severity == "warning"
    assert f.evidence["steps"] == [150] and f.evidence["ratio"] > 2
    assert f.evidence["thresholds"]["loss_spike_ratio"] == 1.5 and f.evidence["thresholds"]["window"] == 50
    assert f.evidence["recent_min"] < f.evidence["running_median"] < f.evidence["value"]
    assert "learning_rate" in f.parameters
    check_links(f)


def test_a_small_bump_is_not_a_loss_spike():
    d = healthy(seed=3)
    d["loss"][149] *= 1.3
    assert detect(series(d)) == []


def test_a_burst_of_spikes_is_one_finding_and_separate_bursts_are_two():
    d = healthy(seed=4)
    for i in (149, 150, 151, 152):
        d["loss"][i] *= 3
    d["loss"][249] *= 3
    found = [f for f in detect(series(d)) if f.code == "loss_spike"]
    assert [f.step for f in found] == [150, 250]
    assert len({f.key for f in found}) == 2


def test_grad_norm_spike_against_its_running_median():
    d = healthy(seed=5)
    d["grad_norm"][119] = 15 * 0.5
    f = only(detect(series(d)), "grad_norm_spike")
    assert f.step == 120 and f.evidence["running_median"] == pytest.approx(0.5, rel=0.3)
    assert f.evidence["thresholds"]["grad_spike_ratio"] == 10.0
    check_links(f)


def test_grad_norm_ninefold_is_not_a_spike_unless_the_threshold_says_so():
    d = healthy(seed=5)
    d["grad_norm"][119] = 9 * 0.5
    assert detect(series(d)) == []
    th = Thresholds.from_dict({"grad_spike_ratio": 5})
    assert codes(detect(series(d), th)) == ["grad_norm_spike"]


def test_a_dead_run_with_zero_grad_norm_is_no_spike():
    grad = [0.0] * 60
    grad[40] = 1e-3
    d = first_steps(grad, [2.0] * 60)
    assert "grad_norm_spike" not in codes(detect(series(d)))


# ---- flat loss ------------------------------------------------------------------------------------------------

def flat(n=40, lr=1e-9, warmup=2, noise=0.01, seed=0):
    rng = random.Random(seed)
    return dict(steps=list(range(1, n + 1)), loss=[6.1 * (1 + noise * rng.gauss(0, 1)) for _ in range(n)],
                grad_norm=[1.0] * n, learning_rate=[lr] * n, tokens_per_s=[1000.0] * n, total=n, warmup=warmup)


def test_flat_loss_from_the_start():
    f = only(detect(series(flat())), "flat_loss")
    assert f.step == 22  # warmup 2 + flat_steps 20
    assert abs(f.evidence["relative_drop"]) < 0.03 and f.evidence["steps"] == [1, 22]
    assert f.evidence["thresholds"]["flat_min_drop"] == 0.03 and f.evidence["learning_rate_max"] == 1e-9
    assert f.parameters[0] == "learning_rate" and "lora_alpha" in f.parameters
    check_links(f)


def test_zero_learning_rate_is_named():
    d = flat(lr=0.0)
    f = only(detect(series(d)), "flat_loss")
    assert f.evidence["learning_rate_all_zero"] is True and "was 0 at every logged step" in f.message
    assert "lr_scheduler_type" in f.parameters


def test_short_run_is_judged_at_its_last_step():
    f = only(detect(series(flat(n=15, warmup=2))), "flat_loss")
    assert f.step == 15


def test_a_loss_that_falls_is_not_flat():
    d = flat()
    d["loss"] = [6.1 - 0.02 * i for i in range(40)]  # first third 6.04, last third 5.74 by step 22: a 5% drop
    assert detect(series(d)) == []


# ---- plateau far above comparable runs -------------------------------------------------------------------------

def plateau(level=1.5, n=200, seed=0):
    rng = random.Random(seed)
    d = healthy(n=n, seed=seed)
    d["loss"] = [(level + 1.5 * math.exp(-s / 15)) * (1 + 0.05 * rng.gauss(0, 1)) for s in d["steps"]]
    d["evals"] = []
    return d


def test_plateau_far_above_the_best_of_comparable_runs():
    f = only(detect(series(plateau(1.5), peer_best_loss=1.0)), "plateau_above_peers")
    assert f.evidence["peer_best_loss"] == 1.0 and f.evidence["median_now"] > 1.2
    assert f.evidence["thresholds"]["peer_gap"] == 0.2 and f.evidence["relative_drop"] < 0.01
    assert f.evidence["steps"] == [f.step] and f.step >= 40
    assert {"learning_rate", "r", "lora_alpha", "weight_decay"} == set(f.parameters)
    check_links(f)


def test_plateau_near_the_peers_or_without_peers_is_fine():
    assert detect(series(plateau(1.1), peer_best_loss=1.0)) == []
    assert detect(series(plateau(1.5))) == []


def test_loss_floor_is_the_best_running_median_not_the_luckiest_batch():
    losses = [3.0, 2.0, 0.1, 2.0, 1.5] + [1.0] * 30 + [1.2] * 30
    assert loss_floor(losses) == 1.0
    assert loss_floor([2.0, float("nan"), 1.0, 3.0]) == 2.0 and loss_floor([]) is None


def test_still_improving_is_no_plateau_even_if_above_peers():
    d = healthy(n=100)
    d["evals"] = []
    assert detect(series(d, peer_best_loss=0.3)) == []


# ---- overfitting ----------------------------------------------------------------------------------------------

def overfit(eval_curve, n=200, seed=0):
    d = healthy(n=n, seed=seed)
    d["evals"] = [(s, eval_curve(s)) for s in d["steps"] if s % 20 == 0]
    return d


def test_eval_rising_while_train_falls_is_overfitting():
    d = overfit(lambda s: 1.5 - 0.004 * s if s <= 100 else 1.1 + 0.01 * (s - 100))
    f = only(detect(series(d)), "overfitting")
    assert f.evidence["trigger"] == "eval_rising"
    assert f.step == 160 and f.evidence["steps"] == [100, 120, 140, 160]  # three rises after the best at 100
    assert f.evidence["best_eval_step"] == 100 and f.evidence["gap_now"] > f.evidence["gap_at_best"]
    assert f.evidence["thresholds"]["overfit_evals"] == 3
    assert {"lora_dropout", "weight_decay", "r"} <= set(f.parameters) and "bias" not in f.parameters
    check_links(f)


def test_eval_stalled_with_a_widening_gap_is_overfitting_and_names_bias_when_on():
    d = overfit(lambda s: max(1.5 - 0.006 * s, 1.05) + (0.002 if s % 40 else 0))  # flat from step 80, no clean rise
    f = only(detect(series(d, config={"bias": "all"})), "overfitting")
    assert f.evidence["trigger"] == "gap_widening" and "bias" in f.parameters
    assert f.evidence["gap_now"] - f.evidence["gap_at_best"] >= 0.05 * f.evidence["best_eval_loss"]


def test_eval_falling_with_train_is_not_overfitting():
    assert detect(series(overfit(lambda s: 1.6 - 0.003 * s))) == []


def test_tiny_eval_wiggles_are_not_overfitting():
    # three rises in a row, but 0.1% in all: noise on a plateau, with the gap hardly changing
    d = overfit(lambda s: 0.9 + 1.4 * math.exp(-s / 80) + [0, 0.0003, 0.0006, 0.0009][s // 20 % 4])
    assert detect(series(d)) == []


def test_eval_and_train_both_rising_is_not_overfitting():
    d = overfit(lambda s: 1.5 - 0.004 * s if s <= 100 else 1.1 + 0.01 * (s - 100))
    d["loss"] = [1.0 + 0.002 * s for s in d["steps"]]  # train rises too: a divergence, not memorisation
    assert "overfitting" not in codes(detect(series(d)))


# ---- LR decayed too early -------------------------------------------------------------------------------------

def early_decay(stall=True, n=500):
    d = healthy(n=n, seed=1, total=n)
    d["learning_rate"] = [2e-4 * max(1 - s / 150, 0.0) for s in d["steps"]]  # hits 0 at step 150 of 500
    if stall:
        rng = random.Random(2)
        d["loss"] = [(0.9 + 1.3 * math.exp(-min(s, 150) / 60)) * (1 + 0.05 * rng.gauss(0, 1)) for s in d["steps"]]
    return d


def test_lr_at_its_floor_with_progress_stalled_and_many_steps_left():
    f = only(detect(series(early_decay())), "lr_decayed_early")
    assert 150 <= f.step <= 375 and f.evidence["steps_left"] >= 0.25 * 500
    assert f.evidence["values"][0] <= 0.1 * f.evidence["peak_learning_rate"]
    assert f.evidence["thresholds"]["lr_floor_frac"] == 0.1 and f"steps {f.evidence['window_steps'][2]}-" in f.message
    assert set(f.parameters) == {"lr_scheduler_type", "warmup_steps"}
    check_links(f)


def test_low_lr_while_loss_still_falls_is_fine():
    assert "lr_decayed_early" not in codes(detect(series(early_decay(stall=False))))


def test_stalling_at_the_end_of_a_full_length_schedule_is_fine():
    d = healthy(n=300)
    d["loss"] = [max(0.6 + 1.6 * math.exp(-s / 30), 0.62) for s in d["steps"]]
    assert "lr_decayed_early" not in codes(detect(series(d)))


# ---- throughput and packing -----------------------------------------------------------------------------------

def test_throughput_far_below_the_packed_estimate():
    d = healthy(n=40)
    d["tokens_per_s"] = [3000.0] * 40
    f = only(detect(series(d, packed_tokens_per_s_estimate=10000, config={"packing": False})),
             "throughput_below_packed")
    assert f.severity == "info" and f.evidence["ratio"] == pytest.approx(0.3)
    assert f.evidence["thresholds"]["throughput_frac"] == 0.5 and f.parameters == ("packing",)
    check_links(f)


def test_throughput_near_the_estimate_or_packing_on_or_no_estimate_is_fine():
    d = healthy(n=40)
    d["tokens_per_s"] = [500.0] + [8000.0] * 39  # a slow first point is start-up, not throughput
    assert detect(series(d, packed_tokens_per_s_estimate=10000)) == []
    d["tokens_per_s"] = [3000.0] * 40
    assert detect(series(d, packed_tokens_per_s_estimate=10000, config={"packing": True})) == []
    assert detect(series(d)) == []


def test_throughput_below_the_estimate_from_the_runs_own_padding_fires_live():
    # No packed run to compare with: 70% of the token slots are padding, so packed would be ~3.3x as fast.
    d = healthy(n=40)
    stream = events(d, config={"packing": False})
    for e in stream:
        if e["type"] == "metrics":
            e["padding_share"] = 0.7
    watcher = Watcher()
    seen = [f for e in stream for f in watcher.feed(e)]
    f = only(seen, "throughput_below_packed")
    assert f.evidence["estimate_from"] == "padding" and f.evidence["padding_share"] == pytest.approx(0.7)
    assert f.evidence["ratio"] == pytest.approx(0.3)
    assert f.evidence["estimate"] == pytest.approx(f.evidence["values"][0] / 0.3)
    assert "70% of each batch's token slots are padding" in f.message
    assert f.step == d["steps"][5]  # the first point left out (start-up), then min_history (5) points
    check_links(f)


@pytest.mark.parametrize("share, packing", [(0.3, False), (0.49, False), (0.7, True), (None, False)])
def test_little_padding_or_packing_on_or_no_padding_figure_is_fine(share, packing):
    d = healthy(n=40)
    s = series(d, config={"packing": packing})
    s.padding_share = [share] * 40
    assert [f for f in detect(s) if f.code == "throughput_below_packed"] == []


# ---- out of memory --------------------------------------------------------------------------------------------

def failed(**fields):
    return {"type": "failed", "step": 7, "error_class": "OutOfMemoryError", "message": "CUDA out of memory.",
            "traceback": "", "oom": True, **fields}


def test_out_of_memory_suggests_a_smaller_micro_batch_4bit_and_an_8bit_optimizer():
    config = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "load_in_4bit": False,
              "optim": "adamw_torch_fused", "packing": False}
    d = healthy(n=7)
    f = only(detect(series_from_events(events(d, config=config, extra=[failed()]))), "out_of_memory")
    assert f.severity == "error" and f.step == 7
    assert "per_device_train_batch_size to 2 and gradient_accumulation_steps to 4" in f.message
    assert "same effective batch, 8" in f.message
    assert f.parameters == ("gradient_accumulation_steps", "load_in_4bit", "optim")
    check_links(f)


def test_out_of_memory_with_an_odd_micro_batch_keeps_the_effective_batch():
    config = {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 2}
    f = only(detect(series_from_events(events(healthy(n=3), config=config, extra=[failed()]))), "out_of_memory")
    assert "per_device_train_batch_size to 1 and gradient_accumulation_steps to 6" in f.message


def test_out_of_memory_with_packing_on_suggests_turning_it_off():
    config = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "load_in_4bit": True,
              "optim": "paged_adamw_8bit", "packing": True}
    f = only(detect(series_from_events(events(healthy(n=3), config=config, extra=[failed(oom=False)]))),
             "out_of_memory")
    assert f.parameters == ("gradient_accumulation_steps", "packing")


def test_out_of_memory_on_unsloth_suggests_checkpointing_and_the_tiled_mlp_where_they_are_off():
    config = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "load_in_4bit": True,
              "optim": "adamw_8bit", "packing": False, "gradient_checkpointing": False, "backend": "auto"}
    run = events(healthy(n=3), config=config, extra=[failed()])
    run[0]["backend"] = "unsloth"  # what "auto" resolved to
    f = only(detect(series_from_events(run)), "out_of_memory")
    assert "turn gradient_checkpointing on" in f.message and "turn tiled_mlp on" in f.message
    check_links(f)
    # Both already on, or the hf backend (no tiled MLP there): neither tip.
    run[0]["config"] = {**config, "gradient_checkpointing": True, "tiled_mlp": True}
    f = only(detect(series_from_events(run)), "out_of_memory")
    assert "gradient_checkpointing" not in f.message and "tiled_mlp" not in f.message
    run[0].update(config=config, backend="hf")
    assert "tiled_mlp" not in only(detect(series_from_events(run)), "out_of_memory").message


def test_other_failures_are_not_out_of_memory():
    extra = [failed(oom=False, error_class="ValueError", message="bad data")]
    assert detect(series_from_events(events(healthy(n=3), extra=extra))) == []


# ---- settings that did not take effect ------------------------------------------------------------------------

def test_the_packed_attention_cost_warning_is_an_info_finding_about_packing():
    extra = [{"type": "warning", "code": "packed_attention_cost", "field": "packing",
              "message": "attention does 3.6x the work"}]
    [f] = detect(series_from_events(events(healthy(n=3), extra=extra)))
    assert (f.code, f.severity, f.parameters, f.message) == (
        "packed_attention_cost", "info", ("packing",), "attention does 3.6x the work")
    check_links(f)


def test_unsloths_per_segment_attention_is_a_warning_finding_about_packing():
    extra = [{"type": "warning", "code": "unsloth_attention_per_segment", "field": "packing",
              "message": "torch 2.11.0 on this worker has no varlen attention"}]
    [f] = detect(series_from_events(events(healthy(n=3), extra=extra)))
    assert (f.code, f.severity, f.parameters) == ("unsloth_attention_per_segment", "warning", ("packing",))
    assert f.message.startswith("torch 2.11.0")
    check_links(f)


def test_engine_warnings_about_settings_become_findings():
    extra = [{"type": "warning", "code": "bias_no_effect", "field": "bias", "message": 'bias="all" made no bias'},
             {"type": "warning", "code": "loftq_not_applied", "field": "loftq_config", "message": "not applied"},
             {"type": "warning", "code": "truncation", "field": "max_length", "message": "cut"}]
    found = detect(series_from_events(events(healthy(n=3), extra=extra)))
    assert codes(found) == ["bias_no_effect", "loftq_not_applied"]
    assert [f.parameters for f in found] == [("bias",), ("loftq_config",)]
    assert all(f.step == 0 and f.severity == "warning" for f in found)
    assert found[0].message == 'bias="all" made no bias'
    for f in found:
        check_links(f)


# ---- thresholds -----------------------------------------------------------------------------------------------

def test_thresholds_override_from_a_dict():
    th = Thresholds.from_dict({"grad_spike_ratio": 8, "window": 30})
    assert th.grad_spike_ratio == 8.0 and isinstance(th.grad_spike_ratio, float)
    assert th.window == 30 and th.loss_spike_ratio == Thresholds().loss_spike_ratio
    assert Thresholds.from_dict(None) == Thresholds()


def test_unknown_threshold_is_refused_naming_the_allowed_keys():
    with pytest.raises(ValueError) as exc:
        Thresholds.from_dict({"grad_spike": 3})
    assert "grad_spike" in str(exc.value) and "grad_spike_ratio" in str(exc.value) and "window" in str(exc.value)


@pytest.mark.parametrize("bad", [{"window": 2.5}, {"window": 0}, {"peer_gap": -1}, {"flat_min_drop": "x"},
                                 {"spike_mad": True}, {"gap_widen": float("nan")}])
def test_bad_threshold_values_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Thresholds.from_dict(bad)


# ---- live watching --------------------------------------------------------------------------------------------

def misbehaving():
    """One run with several symptoms: a grad spike, a loss spike, overfitting, a NaN at the end, a warning."""
    d = overfit(lambda s: 1.5 - 0.004 * s if s <= 100 else 1.1 + 0.01 * (s - 100), n=220, seed=7)
    d["grad_norm"][59] = 20.0
    d["loss"][89] *= 3
    d["loss"][215] = float("nan")
    extra = [{"type": "warning", "code": "bias_no_effect", "field": "bias", "message": "no bias"}]
    return events(d, extra=extra)


def test_watcher_fires_each_finding_once_and_agrees_with_the_whole_series():
    stream = misbehaving()
    watcher = Watcher()
    seen = []
    for event in stream:
        new = watcher.feed(event)
        seen.extend(new)
        if event["type"] == "metrics" and event["step"] == 60:
            assert codes(new) == ["grad_norm_spike"]  # raised on the point that shows it
    assert sorted(codes(seen)) == sorted(["grad_norm_spike", "loss_spike", "overfitting", "loss_not_finite",
                                          "bias_no_effect"])
    assert len({f.key for f in seen}) == len(seen)
    whole = detect(series_from_events(stream))
    assert sorted((f.key, f.step) for f in seen) == sorted((f.key, f.step) for f in whole)
    assert watcher.findings == seen


def test_watcher_ignores_replayed_points_and_reports_nothing_twice():
    stream = misbehaving()
    watcher = Watcher()
    first = watcher.feed_many(stream)
    assert len(first) == 5
    assert watcher.feed_many(stream) == []
    assert all(watcher.feed(e) == [] for e in stream)
    assert len(watcher.series.steps) == 220


def test_watcher_takes_thresholds_as_a_dict():
    with pytest.raises(ValueError, match="allowed"):
        Watcher({"nope": 1})
    d = healthy(seed=5)
    d["grad_norm"][119] = 9 * 0.5
    assert Watcher().feed_many(events(d)) == []
    assert codes(Watcher({"grad_spike_ratio": 5}).feed_many(events(d))) == ["grad_norm_spike"]


def test_series_from_events_reads_nan_strings_context_and_skips_duplicates():
    d = healthy(n=5)
    d["loss"][2] = float("inf")
    stream = events(d, config={"packing": False}, dtype="float16")
    stream.insert(3, dict(stream[2]))  # the same step delivered twice
    s = series_from_events(stream, peer_best_loss=1.0)
    assert s.steps == [1, 2, 3, 4, 5] and math.isinf(s.loss[2])
    assert s.total_steps == 5 and s.warmup_steps == 10 and s.dtype == "float16" and s.peer_best_loss == 1.0
    assert s.config == {"packing": False}


def test_the_learning_rate_peak_before_a_point_is_a_running_maximum_of_finite_values():
    from guidance.detectors import RunSeries

    s = RunSeries(learning_rate=[None, 1e-4, float("nan"), 3e-4, 2e-4, float("inf"), 1e-5])
    assert [s.lr_peak_before(i) for i in range(8)] == [0.0, 0.0, 1e-4, 1e-4, 3e-4, 3e-4, 3e-4, 3e-4]
    s.learning_rate.append(5e-4)  # a live run grows: the cache extends from where it stopped
    assert s.lr_peak_before(8) == 5e-4 and s.lr_peak_before(3) == 1e-4
