"""Sweep templates expanded: which runs, which values, what is held fixed, the budgets, the chain; hand-computed."""
import math
from types import SimpleNamespace

import pytest

from training.engine.config import ConfigError, parse_config
from training.sweeps.plan import TEMPLATES, advance, expand

BASE = {"model": "var/models/tiny", "train_file": "data.jsonl", "eval_split": 0.1, "eval_steps": 10,
        "max_steps": 200, "r": 16, "lora_alpha": 32, "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4}
STEP_FIELDS = {"max_steps", "warmup_steps", "eval_steps", "save_steps", "logging_steps"}


def won(name, **details):
    return SimpleNamespace(winner=name, details=details)


def values(phase, field):
    return [m.config[field] for m in phase.members]


# Every phase of every template, on a base it can take (the later phases on the base their chain hands them).
PHASE_BASES = {
    ("lr_scheduler_type", "cosine_cycles"): {"lr_scheduler_type": "cosine"},
    ("lr_scheduler_type", "min_lr_rate"): {"lr_scheduler_type": "cosine_with_min_lr",
                                           "lr_scheduler_kwargs": {"min_lr_rate": 0.05}},
    ("lr_scheduler_type", "wsd_decay"): {"lr_scheduler_type": "warmup_stable_decay",
                                         "lr_scheduler_kwargs": {"num_decay_steps": 80, "min_lr_ratio": 0.05}},
    ("lr_scheduler_type", "wsd_min_lr"): {"lr_scheduler_type": "warmup_stable_decay",
                                          "lr_scheduler_kwargs": {"num_decay_steps": 80, "min_lr_ratio": 0.05}},
}
ALL_PHASES = [(t, s.key) for t, template in TEMPLATES.items() for s in template.phases]


def test_every_procedure_of_the_seed_has_a_template():
    assert set(TEMPLATES) == {"r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "loftq_config", "packing",
                              "gradient_accumulation_steps", "warmup_steps", "learning_rate", "optim",
                              "weight_decay", "lr_scheduler_type"}


@pytest.mark.parametrize("template,key", ALL_PHASES)
def test_every_member_passes_the_engine_and_changes_only_its_swept_values(template, key):
    base = {**BASE, **PHASE_BASES.get((template, key), {})}
    phase = expand(TEMPLATES[template], base, params={"mean_tokens": 300}, phase=key)
    assert len(phase.members) >= 1 and len({m.name for m in phase.members}) == len(phase.members)
    full = parse_config(base).model_dump()
    for m in phase.members:
        cfg = parse_config(m.config).model_dump()
        changed = {k for k in full if cfg[k] != full[k]}
        assert changed <= set(m.values) | set(m.budget_changes), (m.name, changed)
        assert set(m.budget_changes) <= STEP_FIELDS
        assert cfg["seed"] == full["seed"] and cfg["random_state"] == full["random_state"]
        assert cfg["train_file"] == full["train_file"] and cfg["eval_split"] == full["eval_split"]
        assert m.reuse == (m.config == {**full, "max_steps": 200})
    if "max_steps" in phase.budget:
        assert {m.steps for m in phase.members} == {phase.budget["max_steps"]} == {phase.held["max_steps"]}


# ---- r, lora_alpha, lora_dropout ----------------------------------------------------------------------------------

def test_rank_sweep_holds_alpha_over_r_and_dropout():
    phase = expand(TEMPLATES["r"], BASE)
    assert [m.name for m in phase.members] == ["r=8", "r=16", "r=32"]
    assert [(m.config["r"], m.config["lora_alpha"]) for m in phase.members] == [(8, 16), (16, 32), (32, 64)]
    assert phase.held["lora_alpha/r"] == 2.0 and phase.held["lora_dropout"] == 0.0
    assert phase.held["max_steps"] == 200 and phase.held["seed"] == 3407
    assert phase.rule == "smallest_within_tolerance" and phase.rule_params == {"tolerance": 0.01}
    assert [m.reuse for m in phase.members] == [False, True, False]


def test_rank_sweep_keeps_a_ratio_of_one_and_takes_its_ranks_from_the_dataset_bucket():
    phase = expand(TEMPLATES["r"], {**BASE, "lora_alpha": 16}, params={"rows": 3000})
    assert [(m.config["r"], m.config["lora_alpha"]) for m in phase.members] == [(8, 8), (16, 16), (32, 32)]
    assert [m.value for m in expand(TEMPLATES["r"], BASE, params={"rows": 300}).members] == [2, 4, 8]
    assert [m.value for m in expand(TEMPLATES["r"], BASE, params={"rows": 100_000}).members] == [32, 64, 128]
    assert [m.value for m in expand(TEMPLATES["r"], BASE, params={"values": [4, 64]}).members] == [4, 64]


def test_rank_sweep_with_rslora_holds_the_gain_over_sqrt_r():
    phase = expand(TEMPLATES["r"], {**BASE, "use_rslora": True, "lora_alpha": 8})  # g = 8 / 4 = 2
    assert [m.config["lora_alpha"] for m in phase.members] == [round(2 * math.sqrt(8)), 8, round(2 * math.sqrt(32))]
    assert phase.held["lora_alpha/sqrt(r)"] == 2.0


def test_lora_alpha_chain_sweeps_ranks_then_gains_at_the_winning_rank():
    t = TEMPLATES["lora_alpha"]
    ranks = expand(t, BASE)
    gains = advance(t, ranks, won("r=8"))
    assert gains.key == "gains" and gains.held["r"] == 8
    assert [m.value for m in gains.members] == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert [m.config["lora_alpha"] for m in gains.members] == [8, 12, 16, 24, 32]
    assert {m.config["r"] for m in gains.members} == {8}
    assert advance(t, gains, won("gain=3")) is None


def test_lora_dropout_fixes_005_during_the_ranks_then_reruns_the_winner_by_its_fit():
    t = TEMPLATES["lora_dropout"]
    ranks = expand(t, BASE)
    assert values(ranks, "lora_dropout") == [0.05, 0.05, 0.05] and ranks.held["lora_dropout"] == 0.05
    assert ranks.rule == "dropout_fit"
    over = advance(t, ranks, won("r=16", fit="overfit"))
    assert (over.key, values(over, "lora_dropout"), values(over, "r")) == ("overfit", [0.05, 0.1], [16, 16])
    assert [m.reuse for m in over.members] == [True, False]  # the winner's own run stands for 0.05
    under = advance(t, ranks, won("r=32", fit="underfit"))
    assert values(under, "lora_dropout") == [0.05, 0.0, 0.03] and set(values(under, "r")) == {32}
    assert advance(t, ranks, won("r=16", fit="ok")) is None


# ---- bias, use_rslora, loftq_config -----------------------------------------------------------------------------

def test_bias_sweeps_three_settings_preferring_none():
    phase = expand(TEMPLATES["bias"], BASE)
    assert values(phase, "bias") == ["none", "lora_only", "all"]
    assert phase.rule_params == {"order": ["none", "lora_only", "all"], "margin": 0.01, "check_trainable": True}
    assert phase.held["r"] == 16 and phase.held["learning_rate"] == 2e-4


def test_rslora_ab_is_gain_matched_then_ranks_at_constant_gain_then_gains():
    t = TEMPLATES["use_rslora"]
    ab = expand(t, {**BASE, "r": 8})  # alpha 32 at r 8: g = 4
    assert [(m.name, m.config["use_rslora"], m.config["lora_alpha"]) for m in ab.members] == [
        ("standard", False, 32), ("rslora", True, round(4 * math.sqrt(8)))]
    ab = expand(t, BASE)  # r 16, alpha 32: g = 2
    assert [m.config["lora_alpha"] for m in ab.members] == [32, 8]
    ranks = advance(t, ab, won("rslora"))
    assert [m.value for m in ranks.members] == [8, 16, 32, 64]
    assert [m.config["lora_alpha"] for m in ranks.members] == [6, 8, 11, 16]
    assert set(values(ranks, "use_rslora")) == {True}
    gains = advance(t, ranks, won("r=32"))
    assert [m.config["lora_alpha"] for m in gains.members] == [round(g * math.sqrt(32)) for g in (1, 1.5, 2, 3, 4)]
    assert advance(t, ab, won("standard")) is None  # rsLoRA lost: the procedure stops


def test_loftq_compares_standard_init_with_two_loftq_inits_then_iterations():
    t = TEMPLATES["loftq_config"]
    init = expand(t, BASE)
    assert [m.name for m in init.members] == ["standard", "loftq(4,1)", "loftq(4,4)"]
    assert values(init, "loftq_config") == [None, {"loftq_bits": 4, "loftq_iter": 1},
                                            {"loftq_bits": 4, "loftq_iter": 4}]
    assert init.rule == "loftq_score" and init.rule_params == {"lam": 1e-4}
    iters = advance(t, init, won("loftq(4,4)"), params={"lam": 5e-4})
    assert [m.config["loftq_config"]["loftq_iter"] for m in iters.members] == [1, 2, 4, 5, 8]
    assert [m.reuse for m in iters.members] == [False, False, True, False, False]
    assert iters.rule_params == {"lam": 5e-4}
    assert advance(t, init, won("standard")) is None


def test_loftq_on_a_4bit_base_is_refused_naming_the_field_and_member():
    with pytest.raises(ConfigError) as exc:
        expand(TEMPLATES["loftq_config"], {**BASE, "load_in_4bit": True})
    assert set(exc.value.errors) == {"loftq_config"} and "loftq(4,1)" in exc.value.errors["loftq_config"]


# ---- packing, gradient_accumulation_steps -------------------------------------------------------------------------

def test_packing_ab_at_equal_total_tokens():
    phase = expand(TEMPLATES["packing"], BASE, params={"mean_tokens": 300})
    off, on = phase.members
    assert (off.config["packing"], on.config["packing"]) == (False, True)
    # off: 200 steps x 8 sequences x 300 tokens = 480,000; on: 2048-token blocks, 16,384 a step -> 29 steps
    assert (off.steps, off.tokens, on.steps) == (200, 480_000, 29)
    assert phase.budget == {"tokens": 480_000} and abs(on.tokens - off.tokens) <= 8 * 2048
    assert on.config["eval_steps"] == round(10 * 29 / 200)  # evals at the same share of the tokens
    assert phase.held["max_length"] == 2048


def test_packing_needs_the_datasets_mean_length():
    with pytest.raises(ConfigError) as exc:
        expand(TEMPLATES["packing"], BASE)
    assert set(exc.value.errors) == {"mean_tokens"}


def test_accumulation_sweep_keeps_the_token_budget_and_rescales_step_intervals():
    phase = expand(TEMPLATES["gradient_accumulation_steps"], {**BASE, "warmup_steps": 20})
    accum = [m.value for m in phase.members]
    assert accum == [1, 2, 4, 8, 16, 32]
    # 200 steps x 2 x 4 = 1,600 sequences, a multiple of the largest effective batch (64): every member sees 1,600
    assert [m.steps for m in phase.members] == [1600 // (2 * a) for a in accum] == [800, 400, 200, 100, 50, 25]
    assert {m.tokens for m in phase.members} == {1600 * 2048} and phase.budget == {"tokens": 1600 * 2048}
    assert values(phase, "warmup_steps") == [80, 40, 20, 10, 5, 2]
    assert values(phase, "eval_steps") == [40, 20, 10, 5, 2, 1]
    assert set(values(phase, "learning_rate")) == {2e-4} and phase.held["learning_rate"] == 2e-4
    assert phase.rule_params == {"tolerance": 0.01, "stable_only": True}


def test_accumulation_budget_rounds_up_to_a_whole_largest_batch():
    phase = expand(TEMPLATES["gradient_accumulation_steps"], {**BASE, "max_steps": 90})  # 720 sequences -> 768
    assert {m.steps * 2 * m.value for m in phase.members} == {768}


# ---- warmup, learning_rate, optim, weight_decay, lr_scheduler_type ----------------------------------------------

def test_warmup_takes_steps_on_short_runs_and_ratios_otherwise():
    short = expand(TEMPLATES["warmup_steps"], {**BASE, "max_steps": 60})
    assert values(short, "warmup_steps") == [0, 10, 25, 50]  # 100 would be longer than the run
    long = expand(TEMPLATES["warmup_steps"], {**BASE, "max_steps": 2000})
    assert values(long, "warmup_steps") == [0.0, 0.01, 0.03, 0.06, 0.1]
    assert all(isinstance(v, float) for v in values(long, "warmup_steps"))
    assert long.rule_params == {"tolerance": 0.01, "stable_only": True, "above_unstable": True}


def test_warmup_refines_around_the_winner():
    t = TEMPLATES["warmup_steps"]
    coarse = expand(t, {**BASE, "max_steps": 2000})
    assert values(advance(t, coarse, won("warmup_steps=0.03")), "warmup_steps") == [0.02, 0.03, 0.04]
    assert values(advance(t, coarse, won("warmup_steps=0")), "warmup_steps") == [0.0, 0.01]
    short = expand(t, BASE)
    assert values(advance(t, short, won("warmup_steps=25")), "warmup_steps") == [15, 25, 35]
    assert values(advance(t, short, won("warmup_steps=0")), "warmup_steps") == [0, 10]


def test_learning_rate_range_test_is_one_short_rising_run():
    phase = expand(TEMPLATES["learning_rate"], BASE)
    (m,) = phase.members
    assert m.name == "range_test" and m.steps == 100 and phase.budget == {"max_steps": 100}
    assert (m.config["learning_rate"], m.config["lr_scheduler_type"], m.config["warmup_steps"]) == (
        1e-2, "exponential_range", 0)
    assert m.config["lr_scheduler_kwargs"] == {"start_lr": 1e-7}
    assert phase.rule == "lr_range" and phase.rule_params == {"bound_fraction": 0.3}
    with pytest.raises(ConfigError) as exc:
        expand(TEMPLATES["learning_rate"], BASE, params={"bound_fraction": 0.5})
    assert set(exc.value.errors) == {"bound_fraction"}


def test_learning_rate_coarse_grid_is_clipped_to_the_range_tests_bound_then_refined():
    t = TEMPLATES["learning_rate"]
    test = expand(t, BASE)
    coarse = advance(t, test, won("range_test", upper_bound=3e-4))
    assert values(coarse, "learning_rate") == [5e-5, 1e-4, 2e-4]
    assert values(advance(t, test, won("range_test", upper_bound=None)), "learning_rate") == [
        5e-5, 1e-4, 2e-4, 4e-4, 8e-4]
    assert values(advance(t, test, won("range_test", upper_bound=1e-5)), "learning_rate") == [2.5e-6, 5e-6, 1e-5]
    assert {m.steps for m in coarse.members} == {200}  # back to the base's budget after the short test
    clipped = advance(t, advance(t, test, won("range_test", upper_bound=2.2e-4)), won("learning_rate=0.0002"))
    assert values(clipped, "learning_rate") == [1e-4, 1.5e-4, 2e-4]  # the bound holds in the refinement too
    refine = advance(t, advance(t, test, won("range_test", upper_bound=None)), won("learning_rate=0.0002"))
    assert values(refine, "learning_rate") == [1e-4, 1.5e-4, 2e-4, 2.5e-4, 3e-4]
    assert advance(t, refine, won("learning_rate=0.00025")) is None


def test_optim_screens_then_retunes_the_winners_learning_rate():
    t = TEMPLATES["optim"]
    assert values(expand(t, BASE), "optim") == ["adamw_torch_fused", "adamw_torch"]
    screen = expand(t, BASE, params={"memory_bound": True})
    assert values(screen, "optim") == ["adamw_torch_fused", "adamw_torch", "paged_adamw_8bit"]
    lr = advance(t, screen, won("optim=adamw_torch"))
    assert values(lr, "learning_rate") == [1e-4, 2e-4, 4e-4] and set(values(lr, "optim")) == {"adamw_torch"}


def test_weight_decay_grid_then_its_neighbours():
    t = TEMPLATES["weight_decay"]
    coarse = expand(t, BASE)
    assert values(coarse, "weight_decay") == [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    assert values(advance(t, coarse, won("weight_decay=0.01")), "weight_decay") == [0.005, 0.01, 0.02]
    assert values(advance(t, coarse, won("weight_decay=0.03")), "weight_decay") == [0.02, 0.03, 0.05]
    assert values(advance(t, coarse, won("weight_decay=0")), "weight_decay") == [0.0, 5e-5, 1e-4]
    assert values(advance(t, coarse, won("weight_decay=0.1")), "weight_decay") == [0.05, 0.1, 0.2]


def test_scheduler_families_at_fixed_peak_and_warmup_then_the_winners_knobs():
    t = TEMPLATES["lr_scheduler_type"]
    coarse = expand(t, BASE)
    assert [(m.config["lr_scheduler_type"], m.config["lr_scheduler_kwargs"]) for m in coarse.members] == [
        ("linear", {}), ("cosine", {}), ("cosine_with_min_lr", {"min_lr_rate": 0.05}),
        # 40% of 200 steps decays; warmup ceil(0.03 x 200) = 6; the rest is stable
        ("warmup_stable_decay", {"num_decay_steps": 80, "num_stable_steps": 114, "min_lr_ratio": 0.05})]
    assert set(values(coarse, "learning_rate")) == {2e-4} and set(values(coarse, "warmup_steps")) == {0.03}
    assert advance(t, coarse, won("lr_scheduler_type=linear")) is None
    cycles = advance(t, coarse, won("lr_scheduler_type=cosine"))
    assert [m.config["lr_scheduler_kwargs"] for m in cycles.members] == [{"num_cycles": 0.5}, {"num_cycles": 1.0}]
    floors = advance(t, coarse, won("lr_scheduler_type=cosine_with_min_lr"))
    assert [m.config["lr_scheduler_kwargs"]["min_lr_rate"] for m in floors.members] == [0.02, 0.05, 0.1, 0.2]
    decay = advance(t, coarse, won("lr_scheduler_type=warmup_stable_decay"))
    assert [m.config["lr_scheduler_kwargs"]["num_decay_steps"] for m in decay.members] == [40, 80, 120]
    assert [m.config["lr_scheduler_kwargs"]["num_stable_steps"] for m in decay.members] == [154, 114, 74]
    ratio = advance(t, decay, won("decay_fraction=0.6"))
    assert ratio.members[0].config["lr_scheduler_kwargs"] == {
        "num_decay_steps": 120, "num_stable_steps": 74, "min_lr_ratio": 0.0}
    assert [m.value for m in ratio.members] == [0.0, 0.02, 0.05, 0.1]


# ---- bad input: refused before anything is created, naming the field --------------------------------------------

@pytest.mark.parametrize("template,params,base,field", [
    ("r", {"values": []}, {}, "r"),
    ("weight_decay", {"values": []}, {}, "weight_decay"),
    ("r", {"values": [8, 0]}, {}, "r"),
    ("learning_rate", {"values": [2e-4, 5]}, {}, "learning_rate"),
    ("optim", {"values": ["sgd"]}, {}, "optim"),
    ("r", {}, {"max_steps": None}, "max_steps"),
    ("r", {}, {"eval_split": None}, "eval_steps"),
    ("r", {}, {"lora_dropout": 2}, "lora_dropout"),
])
def test_bad_input_is_an_error_naming_the_field(template, params, base, field):
    phase = None if template != "learning_rate" else "coarse"
    with pytest.raises(ConfigError) as exc:
        expand(TEMPLATES[template], {**BASE, **base}, params=params, phase=phase)
    assert field in exc.value.errors


def test_an_unknown_phase_is_an_error():
    with pytest.raises(ConfigError) as exc:
        expand(TEMPLATES["r"], BASE, phase="nope")
    assert "phase" in exc.value.errors


def test_without_max_steps_the_budget_comes_from_the_row_count():
    phase = expand(TEMPLATES["r"], {**BASE, "max_steps": None}, params={"rows": 1000})
    assert {m.steps for m in phase.members} == {math.ceil(math.ceil(1000 / 2) / 4)} == {125}


def test_an_undecided_phase_does_not_advance():
    with pytest.raises(ValueError):
        advance(TEMPLATES["r"], expand(TEMPLATES["r"], BASE), won(None))
