"""Pre-flight review and cause ranking: each rule on configs built for it (edges inclusive), combinations, and
findings that name the misconfigured knob first without advice that points further out of the seed's range."""
import json
import math
import random
import statistics
import time

import pytest

from guidance import content
from guidance.detectors import RunSeries, Watcher, detect
from guidance.preflight import Note, distance, review
from training.engine.config import parse_config

BASE = {"model": "m", "train_file": "t"}
QUIET = {"warmup_steps": 10}  # the default 3% warmup on a short run gets the (info) floor note; keep it out


def cfg(**fields):
    return parse_config({**BASE, **fields}).model_dump(mode="json")


def codes(notes):
    return [n.code for n in notes]


def only(notes, code) -> Note:
    hits = [n for n in notes if n.code == code]
    assert len(hits) == 1, codes(notes)
    return hits[0]


def check_note(n: Note):
    guided = content.load_all()
    slug, anchor = n.section
    assert slug in guided and anchor in guided[slug].anchors, n.section  # the link lands on a real heading
    assert set(n.parameters) | set(n.combines_with) <= set(content.GUIDED_PARAMS) | {"per_device_train_batch_size"}
    assert n.severity in ("warning", "info") and n.title and n.message and n.evidence
    json.dumps(n.as_dict(), allow_nan=False)


def fixed_clears(config, note, **facts):
    """The one-click fix is a config the engine accepts, and it clears the note."""
    fixed = parse_config({**config, **note.fix}).model_dump(mode="json")
    return note.code not in codes(review(fixed, **facts))


def test_the_engine_defaults_raise_no_warning():
    assert [n for n in review(cfg()) if n.severity == "warning"] == []
    assert review(cfg(max_steps=1000)) == []


# ---- learning rate --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lr", [2e-5, 2e-3, 2e-4, 5e-5, 8e-4])
def test_a_learning_rate_within_an_order_of_magnitude_of_2e4_is_fine_edges_included(lr):
    assert "learning_rate_off" not in codes(review(cfg(learning_rate=lr)))


@pytest.mark.parametrize("lr, section, factor", [(0.3, "too_high", "1,500x above"), (2.1e-3, "too_high", "10x above"),
                                                  (1e-6, "too_low", "200x below")])
def test_a_learning_rate_an_order_of_magnitude_off_warns_with_the_seed_default_as_fix(lr, section, factor):
    config = cfg(learning_rate=lr)
    n = only(review(config), "learning_rate_off")
    assert n.severity == "warning" and n.section == ("learning_rate", section) and factor in n.title
    assert n.fix == {"learning_rate": 2e-4} and n.evidence["learning_rate"] == lr
    check_note(n)
    assert fixed_clears(config, n)


def test_a_high_learning_rate_with_a_high_gain_says_they_multiply():
    n = only(review(cfg(learning_rate=0.01, lora_alpha=64, r=16)), "learning_rate_off")
    assert n.combines_with == ("lora_alpha", "r") and "multiply" in n.message and n.evidence["gain"] == 4


def test_learning_rate_and_gain_each_within_bounds_but_together_too_large():
    config = cfg(learning_rate=2e-3, lora_alpha=128, r=32)  # lr at its edge, gain 4 at its edge: product 8e-3
    n = only(review(config), "learning_rate_and_gain")
    assert set(n.parameters) == {"learning_rate", "lora_alpha"} and n.evidence["update_scale"] == pytest.approx(8e-3)
    assert "learning_rate_off" not in codes(review(config)) and "lora_scale_off" not in codes(review(config))
    check_note(n)
    assert fixed_clears(config, n)
    assert "learning_rate_and_gain" not in codes(review(cfg(learning_rate=2e-3, lora_alpha=64, r=32)))  # 4e-3: edge


# ---- weight decay, alone and with the learning rate ------------------------------------------------------------

@pytest.mark.parametrize("wd", [0.0, 0.01, 0.1])
def test_weight_decay_in_the_seeds_0_to_0_1_is_fine(wd):
    assert not {"weight_decay_high", "weight_decay_heavy_for_learning_rate"} & set(codes(review(cfg(weight_decay=wd))))


def test_weight_decay_above_0_1_warns_and_says_when_a_high_learning_rate_makes_it_worse():
    n = only(review(cfg(weight_decay=0.3)), "weight_decay_high")
    assert n.fix == {"weight_decay": 0.01} and n.combines_with == () and n.section == ("weight_decay", "too_high")
    n = only(review(cfg(weight_decay=0.3, learning_rate=1e-3)), "weight_decay_high")
    assert n.combines_with == ("learning_rate",) and "learning rate x weight_decay" in n.message
    check_note(n)


def test_a_decay_in_range_is_heavy_at_a_high_learning_rate():
    config = cfg(weight_decay=0.05, learning_rate=1e-3)  # 5e-5 per step, the seed's most is 0.1 x 2e-4 = 2e-5
    n = only(review(config), "weight_decay_heavy_for_learning_rate")
    assert n.combines_with == ("learning_rate",) and n.fix == {"weight_decay": 0.002}
    assert n.evidence["decay_per_step"] == pytest.approx(5e-5)
    check_note(n)
    assert fixed_clears(config, n)
    # exactly the seed's heaviest pull (2e-3 x 0.01 = 2e-5, 2.0000000000000002e-05 in floats) is not heavy
    assert "weight_decay_heavy_for_learning_rate" not in codes(review(cfg(weight_decay=0.01, learning_rate=2e-3)))


# ---- alpha, r and rsLoRA --------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, r", [(16, 16), (32, 16), (8, 16), (64, 16)])  # 1, 2, and the far edges 0.5 and 4
def test_a_gain_within_a_factor_2_of_the_seeds_1_to_2_is_fine(alpha, r):
    assert "lora_scale_off" not in codes(review(cfg(lora_alpha=alpha, r=r)))


@pytest.mark.parametrize("alpha, r, side, fix", [(128, 16, "too_high", 32), (4, 16, "too_low", 32),
                                                 (1, 64, "too_low", 128)])
def test_a_gain_far_from_1_to_2_warns_with_alpha_2r(alpha, r, side, fix):
    config = cfg(lora_alpha=alpha, r=r)
    n = only(review(config), "lora_scale_off")
    assert n.section == ("lora_alpha", side) and n.fix == {"lora_alpha": fix} and n.combines_with == ("r",)
    assert n.evidence["gain"] == alpha / r
    check_note(n)
    assert fixed_clears(config, n)


def test_rslora_with_an_alpha_tuned_for_standard_scaling_gives_the_effective_gain_and_the_matched_alpha():
    config = cfg(use_rslora=True, r=16, lora_alpha=32)
    n = only(review(config), "rslora_alpha_not_matched")
    assert n.parameters == ("use_rslora", "lora_alpha") and n.combines_with == ("r",)
    assert n.evidence["gain_standard"] == 2 and n.evidence["gain_rslora"] == 8
    assert n.fix == {"lora_alpha": 8} and "alpha/sqrt(r) = 32/4 = 8" in n.message and "= 8." in n.message
    assert n.section == ("use_rslora", "alpha_not_matched")
    assert "lora_scale_off" not in codes(review(config))  # one note for one gain
    check_note(n)
    assert fixed_clears(config, n)


def test_rslora_with_a_gain_matched_alpha_or_at_the_gain_edge_is_fine():
    assert review(cfg(use_rslora=True, r=16, lora_alpha=8, max_steps=1000)) == []
    assert review(cfg(use_rslora=True, r=64, lora_alpha=16, max_steps=1000)) == []
    assert review(cfg(use_rslora=True, r=4, lora_alpha=8, max_steps=1000)) == []  # gain 8/2 = 4: the edge


def test_a_high_rank_without_rslora_is_an_info_with_a_gain_keeping_switch():
    n = only(review(cfg(r=64, lora_alpha=128)), "high_rank_without_rslora")
    assert n.severity == "info" and n.fix == {"use_rslora": True, "lora_alpha": 16}
    assert fixed_clears(cfg(r=64, lora_alpha=128), n)
    assert "high_rank_without_rslora" not in codes(review(cfg(r=32, lora_alpha=64)))


@pytest.mark.parametrize("rows, r, note", [(300, 8, False), (300, 4, False), (300, 16, True), (5000, 16, False),
                                           (5000, 32, False), (5000, 8, True), (None, 128, False), (None, 256, True)])
def test_rank_against_the_seeds_bucket_for_the_dataset_size(rows, r, note):
    facts = {"dataset_facts": {"rows": rows}} if rows is not None else {}
    found = review(cfg(r=r, lora_alpha=2 * r, use_rslora=r >= 64), **facts)
    assert ("rank_for_dataset" in codes(found)) is note
    if note:
        n = only(found, "rank_for_dataset")
        assert n.fix["lora_alpha"] == 2 * n.fix["r"]  # alpha/r kept


# ---- dropout --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dropout", [0.0, 0.03, 0.05, 0.07, 0.1])
def test_dropout_within_0_to_0_1_is_fine(dropout):
    assert "lora_dropout_high" not in codes(review(cfg(lora_dropout=dropout)))


def test_dropout_above_0_1_warns():
    config = cfg(lora_dropout=0.3)
    n = only(review(config), "lora_dropout_high")
    assert n.fix == {"lora_dropout": 0.05} and n.section == ("lora_dropout", "too_high")
    check_note(n)
    assert fixed_clears(config, n)


# ---- warmup ---------------------------------------------------------------------------------------------------

def test_warmup_that_is_most_of_the_run_warns_and_counts_optimizer_steps_with_accumulation():
    config = cfg(warmup_steps=80, max_steps=100, gradient_accumulation_steps=4, per_device_train_batch_size=2)
    n = only(review(config), "warmup_too_long")
    assert n.title == "Warmup is most of the run" and n.combines_with == ("gradient_accumulation_steps",)
    assert "counts optimizer steps" in n.message and "320 micro-batches (640 examples)" in n.message
    assert n.fix == {"warmup_steps": 10} and n.evidence["total_steps"] == 100
    check_note(n)
    assert fixed_clears(config, n)


def test_warmup_as_a_ratio_needs_no_accumulation_remark_and_is_judged_from_the_rows():
    # 4,000 rows / (2 x 4) = 500 steps; a 0.3 ratio is 150 of them, over the seed's 10%
    n = only(review(cfg(warmup_steps=0.3), dataset_facts={"rows": 4000}), "warmup_too_long")
    assert n.combines_with == () and n.evidence["total_steps"] == 500 and n.fix == {"warmup_steps": 0.03}
    assert n.title == "Warmup is 30% of the run"


@pytest.mark.parametrize("warmup, total, note", [(100, 1000, False), (101, 1000, True), (0.1, 1000, False),
                                                 (25, 200, False), (26, 200, True), (15, 30, False),
                                                 (16, 30, True)])
def test_warmup_edges_10_percent_the_25_step_floor_and_half_the_run(warmup, total, note):
    found = review(cfg(warmup_steps=warmup, max_steps=total))
    assert ("warmup_too_long" in codes(found)) is note


def test_warmup_is_skipped_without_a_run_length():
    assert "warmup_too_long" not in codes(review(cfg(warmup_steps=500)))


def test_a_short_run_gets_the_seeds_warmup_floor_as_an_info():
    n = only(review(cfg(max_steps=300)), "warmup_below_short_run_floor")  # 3% of 300 = 9 steps
    assert n.severity == "info" and n.fix == {"warmup_steps": 10}
    assert "warmup_below_short_run_floor" not in codes(review(cfg(max_steps=300, warmup_steps=10)))
    assert "warmup_below_short_run_floor" not in codes(review(cfg(max_steps=500)))


# ---- scheduler ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, kwargs", [("cosine", {}), ("cosine_with_restarts", {"num_cycles": 2}),
                                          ("polynomial", {}), ("cosine_with_min_lr", {"min_lr_rate": 0.01})])
def test_a_schedule_decaying_to_near_zero_in_a_short_run_warns(kind, kwargs):
    config = cfg(lr_scheduler_type=kind, lr_scheduler_kwargs=kwargs, max_steps=300, **QUIET)
    n = only(review(config), "scheduler_decays_to_zero_short_run")
    assert n.section == ("lr_scheduler_type", "decays_too_fast") and n.evidence["total_steps"] == 300
    check_note(n)
    assert fixed_clears(config, n)


@pytest.mark.parametrize("kind, kwargs, total", [("cosine", {}, 1000), ("cosine", {}, 5000), ("linear", {}, 300),
                                                 ("constant_with_warmup", {}, 300),
                                                 ("cosine_with_min_lr", {"min_lr_rate": 0.02}, 300),
                                                 ("polynomial", {"lr_end": 4e-6}, 300)])
def test_a_schedule_with_a_floor_or_a_run_that_is_not_short_is_fine(kind, kwargs, total):
    config = cfg(lr_scheduler_type=kind, lr_scheduler_kwargs=kwargs, max_steps=total, warmup_steps=25)
    assert "scheduler_decays_to_zero_short_run" not in codes(review(config))


# ---- LoftQ ----------------------------------------------------------------------------------------------------

def test_loftq_says_it_loads_in_full_precision_and_which_settings_it_wants():
    config = cfg(loftq_config={"loftq_bits": 8, "loftq_iter": 4}, target_modules="attention")
    found = review(config)
    n = only(found, "loftq_in_full_precision")
    assert n.combines_with == ("load_in_4bit",) and "full-precision" in n.message and "load_in_4bit" in n.message
    assert n.evidence["load_in_4bit"] is False and n.fix == {"loftq_config": None}
    assert only(found, "loftq_bits_unusual").fix == {"loftq_config": {"loftq_bits": 4, "loftq_iter": 4}}
    assert only(found, "loftq_few_targets").fix == {"target_modules": "all-linear"}
    for n in found:
        check_note(n)
        assert fixed_clears(config, n)
    assert codes(review(cfg(loftq_config={"loftq_bits": 4, "loftq_iter": 4}))) == ["loftq_in_full_precision"]


PHI3 = {"linear_layers": ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"]}


def test_loftq_counts_the_models_own_linear_layers_fused_ones_included():
    loftq = {"loftq_bits": 4, "loftq_iter": 4}
    fused = cfg(loftq_config=loftq, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    assert "loftq_few_targets" not in codes(review(fused, model_facts=PHI3))
    assert "loftq_few_targets" in codes(review(cfg(loftq_config=loftq, target_modules=["o_proj", "down_proj"]),
                                               model_facts=PHI3))


def test_layer_names_the_model_lacks_are_a_warning_naming_its_layers():
    from training.runs.preflight import target_facts

    from tests.unit.engine.test_targets import config_json

    facts = target_facts(config_json("phi3"), ["q_proj", "o_proj"])
    assert facts == {**PHI3, "unknown_targets": ["q_proj"]}
    n = only(review(cfg(target_modules=["q_proj", "o_proj"], **QUIET), model_facts=facts), "target_modules_unknown")
    assert n.severity == "warning" and n.fix == {"target_modules": "all-linear"}
    assert n.message.startswith("q_proj: no linear layer") and "gate_up_proj" in n.message
    slug, anchor = n.section
    assert anchor in content.load_all()[slug].anchors
    assert target_facts(config_json("phi3"), "attention") == PHI3
    assert target_facts({"hidden_size": 64}, ["q_proj"]) == {}


# ---- packing --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("facts, note", [({"p95_tokens": 1100}, True), ({"p95_tokens": 1024}, False),
                                         ({"p50_tokens": 1100, "p95_tokens": 2000}, True),
                                         ({"p50_tokens": 300, "p95_tokens": 1900}, False), ({}, False)])
def test_packing_with_examples_near_max_length(facts, note):
    found = review(cfg(packing=True, max_length=2048), dataset_facts=facts)
    assert ("packing_long_examples" in codes(found)) is note
    if note:
        assert only(found, "packing_long_examples").fix == {"packing": False}


@pytest.mark.parametrize("p95, note", [(300, True), (512, False), (900, False)])
def test_packing_off_with_examples_under_a_quarter_of_max_length(p95, note):
    found = review(cfg(packing=False, max_length=2048), dataset_facts={"p95_tokens": p95})
    assert ("packing_short_examples" in codes(found)) is note


# ---- effective batch ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("micro, accum, devices, note", [(2, 2, 1, False), (1, 4, 1, False), (1, 3, 1, True),
                                                         (8, 32, 1, False), (8, 33, 1, True), (1, 2, 2, False),
                                                         (2, 8, 1, False)])
def test_effective_batch_within_a_factor_4_of_16_to_64(micro, accum, devices, note):
    found = review(cfg(per_device_train_batch_size=micro, gradient_accumulation_steps=accum), devices=devices)
    assert ("effective_batch_off" in codes(found)) is note


def test_a_tiny_effective_batch_gets_the_seeds_accumulation_for_16():
    config = cfg(per_device_train_batch_size=1, gradient_accumulation_steps=1)
    n = only(review(config), "effective_batch_off")
    assert n.fix == {"gradient_accumulation_steps": 16} and n.evidence["effective_batch"] == 1
    check_note(n)
    assert fixed_clears(config, n)


# ---- bias -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_bias_on_a_model_without_bias_parameters_warns(bias):
    config = cfg(bias=bias)
    n = only(review(config, model_facts={"has_bias_params": False}), "bias_without_bias_params")
    assert n.fix == {"bias": "none"} and n.section == ("bias", "no_effect")
    assert "bias_all" not in codes(review(config, model_facts={"has_bias_params": False}))
    check_note(n)


def test_bias_all_is_an_info_pointing_to_lora_only_and_unknown_facts_skip_the_bias_rule():
    assert only(review(cfg(bias="all")), "bias_all").fix == {"bias": "lora_only"}
    assert review(cfg(bias="lora_only", max_steps=1000)) == []
    assert review(cfg(bias="lora_only", max_steps=1000), model_facts={"has_bias_params": True}) == []


# ---- the review as a whole ------------------------------------------------------------------------------------

def test_warnings_come_before_infos_and_every_note_links_to_real_guidance():
    config = cfg(learning_rate=0.3, lora_dropout=0.5, bias="all", r=128, lora_alpha=256, max_steps=200,
                 lr_scheduler_type="cosine", per_device_train_batch_size=1, gradient_accumulation_steps=1)
    found = review(config, dataset_facts={"rows": 300, "p95_tokens": 100})
    severities = [n.severity for n in found]
    assert severities == sorted(severities, key=["warning", "info"].index) and "info" in severities
    for n in found:
        check_note(n)


def test_distance_is_in_doublings_past_the_seeds_edge_and_zero_inside():
    assert distance(cfg(learning_rate=0.3), "learning_rate", "up") == pytest.approx(math.log2(0.3 / 2e-3))
    assert distance(cfg(learning_rate=0.3), "learning_rate", "down") == 0
    assert distance(cfg(learning_rate=2e-3), "learning_rate", "up") == 0
    assert distance(cfg(lora_alpha=4, r=16), "lora_alpha", "down") == pytest.approx(2)  # gain 0.25 vs 1
    assert distance(cfg(per_device_train_batch_size=1, gradient_accumulation_steps=2), "gradient_accumulation_steps",
                    "down") == pytest.approx(3)
    assert distance({}, "learning_rate", "up") == 0 and distance(cfg(), "optim", "up") == 0
    with pytest.raises(ValueError):
        distance(cfg(), "learning_rate", "sideways")


def test_one_review_takes_under_5_ms():
    config = cfg(learning_rate=0.3, use_rslora=True, warmup_steps=80, lr_scheduler_type="cosine", packing=True,
                 loftq_config={"loftq_bits": 8})
    facts = {"dataset_facts": {"rows": 3000, "p95_tokens": 1500}, "model_facts": {"has_bias_params": False}}
    review(config, **facts)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        review(config, **facts)
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.005


# ---- cause ranking in the findings ----------------------------------------------------------------------------

def run(n=60, *, config, lr=None, loss=None, grad=None, warmup=2, evals=(), total=None, seed=0):
    """A recorded series with its config, built as tests/unit/guidance/test_detectors.py builds them."""
    rng = random.Random(seed)
    steps = list(range(1, n + 1))
    peak = lr if lr is not None else config["learning_rate"]
    return RunSeries(steps=steps, loss=loss or [6.1 * (1 + 0.01 * rng.gauss(0, 1)) for _ in steps],
                     grad_norm=grad or [1.0] * n, learning_rate=[peak * min(s / max(warmup, 1), 1) for s in steps],
                     tokens_per_s=[1000.0] * n, eval_steps=[s for s, _ in evals], eval_loss=[v for _, v in evals],
                     total_steps=total or n, warmup_steps=warmup, config=config)


def one(findings, code):
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, [f.code for f in findings]
    return hits[0]


def no_advice_points_outward(f, config):
    """No advice moves a knob further out on the side of the seed's range it is already out on."""
    text = f.message.lower()
    for p, word in (("learning_rate", "the learning rate"), ("lora_alpha", "lora_alpha"),
                    ("weight_decay", "weight decay"), ("lora_dropout", "lora_dropout"), ("r", " r")):
        if distance(config, p, "up") > 0:
            assert f"raise {word}" not in text and f"add {word}" not in text, (p, f.message)
        if distance(config, p, "down") > 0:
            assert f"lower {word}" not in text and f"lower a heavy {word}" not in text, (p, f.message)


def test_the_issues_case_flat_loss_at_learning_rate_0_3_names_the_rate_first_and_says_lower_it():
    config = cfg(learning_rate=0.3, max_steps=60)
    grad = [max(0.003, 2.0 * math.exp(-s / 3)) for s in range(1, 61)]  # the gradient norm collapses to ~0.003
    f = one(detect(run(config=config, grad=grad)), "flat_loss")
    assert f.parameters[0] == "learning_rate"
    assert "Lower the learning rate" in f.message and "raise the learning rate" not in f.message.lower()
    assert "overshoot into a flat region" in f.message and "0.003 now" in f.message
    assert "raise lora_alpha" not in f.message and "lower a heavy weight decay" not in f.message
    assert f.evidence["config"]["learning_rate"] == 0.3 and f.evidence["grad_norm_now"] == pytest.approx(0.003)
    assert f.evidence["distance_from_seed"]["learning_rate"] == pytest.approx(math.log2(0.3 / 2e-3), abs=1e-3)
    no_advice_points_outward(f, config)
    # the pre-flight review says the same before the run
    assert review(config)[0].code == "learning_rate_off"


def test_a_flat_loss_with_a_tiny_lora_scale_names_alpha_first():
    config = cfg(lora_alpha=1, r=64)  # gain 1/64
    f = one(detect(run(config=config)), "flat_loss")
    assert f.parameters[0] == "lora_alpha" and f.message.index("raise lora_alpha") < f.message.index("raise the lea")
    assert f.evidence["config"]["gain"] == 1 / 64 and f.evidence["config"]["r"] == 64
    no_advice_points_outward(f, config)


def test_advice_never_moves_a_knob_past_its_ranges_edge():
    # At the top of the seed's band (2e-3) "raise the learning rate" would take it out; just inside, it may.
    at_edge = one(detect(run(config=cfg(lora_alpha=1, r=16, learning_rate=2e-3))), "flat_loss")
    assert "learning_rate" not in at_edge.parameters and "raise the learning rate" not in at_edge.message
    inside = one(detect(run(config=cfg(lora_alpha=1, r=16, learning_rate=1e-3))), "flat_loss")
    assert "learning_rate" in inside.parameters and "raise the learning rate" in inside.message
    # No weight decay to lower at 0.
    no_decay = one(detect(run(config=cfg(lora_alpha=1, r=16, weight_decay=0.0))), "flat_loss")
    assert "weight_decay" not in no_decay.parameters and "weight decay" not in no_decay.message


def test_a_flat_loss_with_a_tiny_learning_rate_and_heavy_decay_ranks_by_distance():
    config = cfg(learning_rate=1e-6, weight_decay=0.9)  # lr 4.3 doublings below its band, decay 3.2 above 0.1
    f = one(detect(run(config=config)), "flat_loss")
    assert f.parameters[:2] == ("learning_rate", "weight_decay")
    config = cfg(learning_rate=1e-5, weight_decay=0.9)  # now decay is further out (3.2 > 1)
    f = one(detect(run(config=config)), "flat_loss")
    assert f.parameters[:2] == ("weight_decay", "learning_rate")
    no_advice_points_outward(f, config)


def test_a_flat_loss_at_heavy_dropout_names_dropout_but_at_the_default_does_not():
    f = one(detect(run(config=cfg(lora_dropout=0.5, learning_rate=1e-5))), "flat_loss")
    assert "lora_dropout" in f.parameters and "lower lora_dropout" in f.message
    assert "lora_dropout" not in one(detect(run(config=cfg(learning_rate=1e-5))), "flat_loss").parameters


def test_without_a_config_the_order_is_the_detectors_own():
    f = one(detect(run(config={}, lr=1e-4)), "flat_loss")
    assert f.parameters == ("learning_rate", "lora_alpha", "weight_decay")
    assert "raise the learning rate, raise lora_alpha relative to r, or lower a heavy weight decay" in f.message


def test_a_plateau_above_peers_at_a_huge_learning_rate_says_overshoot_not_underfit():
    rng = random.Random(1)
    n = 200
    loss = [(2.5 + 1.0 * math.exp(-s / 10)) * (1 + 0.02 * rng.gauss(0, 1)) for s in range(1, n + 1)]
    config = cfg(learning_rate=0.05, max_steps=n)
    f = one(_with_peers(run(n, config=config, loss=loss)), "plateau_above_peers")
    assert f.parameters[0] == "learning_rate" and "overshoot" in f.message and "raise" not in f.message
    no_advice_points_outward(f, config)
    # the same curve at the seed's rate is underfitting, and a too-low rank comes before the in-range knobs
    config = cfg(r=2, lora_alpha=4, max_steps=n)
    f = one(_with_peers(run(n, config=config, loss=loss)), "plateau_above_peers")
    assert f.parameters[0] == "r" and "raise r" in f.message and "underfits" in f.message
    no_advice_points_outward(f, config)


def _with_peers(series):
    series.peer_best_loss = 1.0
    return detect(series)


def test_overfitting_never_says_add_dropout_when_dropout_is_already_above_the_range():
    n = 200
    rng = random.Random(0)
    loss = [(0.6 + 1.6 * math.exp(-s / 80)) * (1 + 0.05 * rng.gauss(0, 1)) for s in range(1, n + 1)]
    evals = [(s, 1.5 - 0.004 * s if s <= 100 else 1.1 + 0.01 * (s - 100)) for s in range(20, n + 1, 20)]
    config = cfg(lora_dropout=0.3, r=256, lora_alpha=512, use_rslora=False)
    f = one(detect(run(n, config=config, loss=loss, grad=[0.5] * n, evals=evals, warmup=10)), "overfitting")
    assert "add lora_dropout" not in f.message and "lora_dropout" not in f.parameters
    assert f.parameters[0] == "r" and "lower r" in f.message  # r 256 is a doubling past the seed's 128
    no_advice_points_outward(f, config)


def test_a_loss_spike_with_a_tiny_effective_batch_names_accumulation_first():
    d = [2.0 - 0.001 * s for s in range(1, 201)]
    d[149] *= 2.5
    config = cfg(per_device_train_batch_size=1, gradient_accumulation_steps=1)
    f = one(detect(run(200, config=config, loss=d, warmup=10)), "loss_spike")
    assert f.parameters[0] == "gradient_accumulation_steps"
    assert f.evidence["config"]["effective_batch"] == 1
    no_advice_points_outward(f, config)


def test_the_watcher_takes_the_config_before_the_started_event():
    w = Watcher(config=cfg(learning_rate=0.3))
    assert w.series.config["learning_rate"] == 0.3
    w.feed({"type": "started", "config": cfg(learning_rate=0.2), "train_examples": 400,
            "derived": {"total_steps": 10, "warmup_steps": 1}})
    assert w.series.config["learning_rate"] == 0.2 and w.series.train_examples == 400
