"""Decision rules on recorded results: winners, the sentence of evidence, ties, invalid, diverged, undecided."""
import math

from training.sweeps import rules
from training.sweeps.plan import TEMPLATES, advance, confirmation, expand

BASE = {"model": "var/models/tiny", "train_file": "data.jsonl", "eval_split": 0.1, "eval_steps": 10,
        "max_steps": 200, "r": 16, "lora_alpha": 32}


def ok(loss, **kw):
    return {"status": "succeeded", "final_eval_loss": loss, **kw}


def decide(template, results, phase=None, base=None, **params):
    return rules.decide(expand(TEMPLATES[template], base or BASE, params=params, phase=phase), results)


# ---- smallest within tolerance (r, accumulation, warmup) -----------------------------------------------------------

def test_smallest_rank_within_tolerance_states_its_evidence():
    v = decide("r", {"r=8": ok(1.09), "r=16": ok(1.021), "r=32": ok(1.015)})
    assert v.winner == "r=16" and v.rule == "smallest_within_tolerance"
    assert v.text == ("r = 16: eval loss 1.021 against the best 1.015 (r = 32), within the 1% tolerance, and the "
                      "smallest such rank.")


def test_the_best_rank_wins_when_nothing_smaller_is_within_tolerance():
    v = decide("r", {"r=8": ok(1.09), "r=16": ok(1.04), "r=32": ok(1.015)})
    assert v.winner == "r=32" and "no smaller rank within the 1% tolerance" in v.text
    assert decide("r", {"r=8": ok(1.09), "r=16": ok(1.04), "r=32": ok(1.015)}, tolerance=0.03).winner == "r=16"


def test_a_tie_goes_to_the_smaller_rank_and_is_named():
    v = decide("r", {"r=8": ok(1.09), "r=16": ok(1.0152), "r=32": ok(1.015)})
    assert v.winner == "r=16" and v.ties == ("r=32",) and "tied with r=32" in v.text


def test_diverged_and_failed_members_are_named_and_not_compared():
    v = decide("r", {"r=8": {"status": "failed"}, "r=16": ok(1.03),
                     "r=32": {"status": "diverged", "final_eval_loss": 0.5}})
    assert v.winner == "r=16" and v.diverged == ("r=32",) and v.failed == ("r=8",)
    assert "diverged, not compared: r=32" in v.text and "failed, not compared: r=8" in v.text
    # a non-finite loss finding is a divergence whatever the status says
    v = decide("r", {"r=8": ok(0.9, findings=["loss_not_finite"]), "r=16": ok(1.03), "r=32": ok(1.02)})
    assert v.winner == "r=16" and v.diverged == ("r=8",)


def test_undecided_while_a_member_has_no_result_or_lacks_its_eval_loss():
    v = decide("r", {"r=8": ok(1.09), "r=16": {"status": "running"}})
    assert not v.decided and v.winner is None and v.text == "undecided: waiting for r=16, r=32: no result yet."
    v = decide("r", {"r=8": ok(1.09), "r=16": ok(1.0), "r=32": {"status": "succeeded"}})
    assert not v.decided and "r=32 (final_eval_loss)" in v.text
    v = decide("r", {n: {"status": "diverged"} for n in ("r=8", "r=16", "r=32")})
    assert not v.decided and "no member finished stable" in v.text and len(v.diverged) == 3


def test_best_eval_loss_can_be_the_metric():
    results = {"r=8": ok(1.2, best_eval_loss=1.0), "r=16": ok(1.0, best_eval_loss=1.1), "r=32": ok(1.1)}
    phase = expand(TEMPLATES["r"], BASE)
    assert rules.decide(phase, results).winner == "r=16"
    results["r=32"]["best_eval_loss"] = 1.05
    assert rules.decide(phase, results, metric="best_eval_loss").winner == "r=8"


def test_smallest_stable_accumulation():
    results = {f"gradient_accumulation_steps={a}": ok(1.0) for a in (4, 8, 16, 32)}
    results["gradient_accumulation_steps=1"] = ok(0.99, findings=["loss_spike@40", "loss_spike@80"])
    results["gradient_accumulation_steps=2"] = {"status": "diverged"}
    v = decide("gradient_accumulation_steps", results)
    assert v.winner == "gradient_accumulation_steps=4"
    assert v.invalid == ("gradient_accumulation_steps=1",) and v.diverged == ("gradient_accumulation_steps=2",)
    assert "unstable, not compared: gradient_accumulation_steps=1" in v.text


def test_smallest_stable_warmup_reaching_the_best_moves_above_an_unstable_one():
    names = ["warmup_steps=0", "warmup_steps=10", "warmup_steps=25", "warmup_steps=50", "warmup_steps=100"]
    results = dict(zip(names, [ok(1.00), ok(1.01, findings=["early_instability"]), ok(1.012), ok(1.005),
                               ok(1.03)]))
    v = decide("warmup_steps", results)
    # 0 is stable and best, but 10 was noisy early: only warmups above 10 count; 25 is within 1% of 1.005
    assert v.winner == "warmup_steps=25" and "only values above the unstable warmup_steps = 10" in v.text
    results["warmup_steps=100"] = ok(1.0, findings=["grad_norm_spike"])
    v = decide("warmup_steps", results)
    assert not v.decided and "the largest swept, was unstable: sweep higher" in v.text


def test_dropout_fit_reads_the_winners_findings():
    results = {"r=8": ok(1.05), "r=16": ok(1.02, findings=["overfitting"]), "r=32": ok(1.015)}
    v = decide("lora_dropout", results)
    assert v.winner == "r=16" and v.details["fit"] == "overfit" and "rerun it at dropout 0.1" in v.text
    v = decide("lora_dropout", {n: ok(2.0 + i / 10, findings=["flat_loss"]) for i, n in enumerate(["r=8", "r=16",
                                                                                                 "r=32"])})
    assert v.details["fit"] == "underfit"
    assert decide("lora_dropout", {"r=8": ok(1.05), "r=16": ok(1.02), "r=32": ok(1.015)}).details["fit"] == "ok"


# ---- preferred unless clearly better (bias, rsLoRA A/B) --------------------------------------------------------------

def bias(none, lora_only, all_, counts=(100, 110, 120), **extra):
    return {"bias=none": ok(none, trainable_params=counts[0]),
            "bias=lora_only": ok(lora_only, trainable_params=counts[1]),
            "bias=all": ok(all_, trainable_params=counts[2], **extra)}


def test_bias_prefers_none_unless_another_is_clearly_better():
    v = decide("bias", bias(1.015, 1.012, 1.010))
    assert v.winner == "bias=none" and "no other is clearly better (more than 1% lower)" in v.text
    v = decide("bias", bias(1.015, 0.99, 0.985))  # lora_only clearly better; all only marginally better than it
    assert v.winner == "bias=lora_only" and "2.5% below bias = none's 1.015" in v.text
    assert decide("bias", bias(1.015, 0.99, 0.95)).winner == "bias=all"


def test_bias_member_whose_trainable_count_did_not_change_is_invalid():
    v = decide("bias", bias(1.015, 0.95, 0.94, counts=(100, 100, 100)))  # a model with no bias parameters
    assert v.winner == "bias=none" and v.invalid == ("bias=lora_only", "bias=all")
    assert "bias=lora_only invalid: trainable count 100 unchanged from bias=none" in v.text
    v = decide("bias", bias(1.015, 0.95, 0.90, counts=(100, 110, 120), findings=["bias_no_effect"]))
    assert v.winner == "bias=lora_only" and v.invalid == ("bias=all",)
    results = bias(1.0, 1.0, 1.0)
    del results["bias=all"]["trainable_params"]
    assert not decide("bias", results).decided


def test_rslora_wins_or_ties_the_gain_matched_ab():
    assert decide("use_rslora", {"standard": ok(1.000), "rslora": ok(1.005)}).winner == "rslora"
    v = decide("use_rslora", {"standard": ok(0.95), "rslora": ok(1.0)})
    assert v.winner == "standard" and "5.0% below rslora's 1.000" in v.text


# ---- LoftQ, packing ------------------------------------------------------------------------------------------------

def test_loftq_by_eval_minus_lambda_times_init_time():
    results = {"standard": ok(1.030, init_s=2), "loftq(4,1)": ok(1.012, init_s=40), "loftq(4,4)": ok(1.002, init_s=150)}
    v = decide("loftq_config", results)  # scores 1.0302, 1.016, 1.017
    assert v.winner == "loftq(4,1)" and "1.012 + 0.0001 x 40 s init = 1.0160, the lowest score" in v.text
    assert decide("loftq_config", results, lam=0).winner == "loftq(4,4)"
    assert decide("loftq_config", results, lam=1e-3).winner == "standard"
    del results["standard"]["init_s"]
    assert not decide("loftq_config", results).decided


def packed(on_tps, on_loss, on_vram=10.0, on_status="succeeded"):
    return {"packing=False": ok(1.00, tokens_per_s=1000, peak_vram_gb=8.0),
            "packing=True": {"status": on_status, "final_eval_loss": on_loss, "tokens_per_s": on_tps,
                             "peak_vram_gb": on_vram}}


def test_packing_on_when_faster_and_eval_within_tolerance():
    v = decide("packing", packed(2500, 1.005), mean_tokens=300)
    assert v.winner == "packing=True" and "2,500 against 1,000 tokens/s (+150%)" in v.text
    assert decide("packing", packed(1050, 1.0), mean_tokens=300).winner == "packing=False"  # not materially faster
    v = decide("packing", packed(2500, 1.03), mean_tokens=300)
    assert v.winner == "packing=False" and "eval loss more than 1% worse" in v.text
    phase = expand(TEMPLATES["packing"], BASE, params={"mean_tokens": 300})
    assert rules.decide(phase, packed(2500, 1.0, on_vram=30), max_vram_gb=24).winner == "packing=False"
    v = decide("packing", packed(None, None, on_status="failed"), mean_tokens=300)  # packed ran out of memory
    assert v.winner == "packing=False" and v.failed == ("packing=True",)


# ---- learning-rate range test ----------------------------------------------------------------------------------------

def curve(blow_at=None, nan_at=None, n=100):
    points = []
    for i in range(n):
        lr = 1e-6 * 10 ** (5 * i / (n - 1))  # 1e-6 -> 1e-1
        loss = 3.0 - 1.5 * i / n
        if blow_at and lr >= blow_at:
            loss = 1.5 * (lr / blow_at) ** 3 + 3
        if nan_at and lr >= nan_at:
            loss = math.nan
        points.append([lr, loss])
    return points


def test_range_test_finds_the_blow_up_and_the_upper_bound():
    v = decide("learning_rate", {"range_test": {"status": "diverged", "curve": curve(blow_at=1e-3)}})
    assert v.decided and 1e-3 <= v.details["blowup_lr"] <= 3e-3
    assert v.details["upper_bound"] == float(f"{0.3 * v.details['blowup_lr']:.3g}")
    assert "upper bound" in v.text and "30% of it" in v.text
    v = decide("learning_rate", {"range_test": ok(None, curve=curve(nan_at=1e-2))}, bound_fraction=0.1)
    assert v.details["blowup_lr"] >= 1e-2 and v.details["blowup_lr"] == min(p[0] for p in curve() if p[0] >= 1e-2)
    assert math.isclose(v.details["upper_bound"], float(f"{0.1 * v.details['blowup_lr']:.3g}"))


def test_range_test_without_a_blow_up_leaves_the_grid_unclipped_and_needs_a_curve():
    v = decide("learning_rate", {"range_test": ok(None, curve=curve())})
    assert v.decided and v.details["upper_bound"] is None and "not clipped" in v.text
    assert not decide("learning_rate", {"range_test": ok(None, curve=[[1e-6, 2.0]])}).decided
    assert not decide("learning_rate", {"range_test": {"status": "running"}}).decided


def test_lowest_eval_names_ties_and_skips_unstable_members():
    results = {"optim=adamw_torch_fused": ok(1.0), "optim=adamw_torch": ok(1.0002)}
    v = decide("optim", results)
    assert v.winner == "optim=adamw_torch_fused" and v.ties == ("optim=adamw_torch",)
    assert "the lowest eval loss, 1.000 (next: optim = adamw_torch at 1.000); tied with optim=adamw_torch" in v.text
    results["optim=adamw_torch"] = ok(0.9, findings=["loss_spike@12"])
    v = decide("optim", results)
    assert v.winner == "optim=adamw_torch_fused" and v.invalid == ("optim=adamw_torch",)


# ---- phase chains, decided by the rules -----------------------------------------------------------------------------

def test_dropout_chain_from_rank_sweep_to_the_rerun_verdict():
    t = TEMPLATES["lora_dropout"]
    ranks = expand(t, BASE)
    v = rules.decide(ranks, {"r=8": ok(1.05), "r=16": ok(1.02, findings=["overfitting"]), "r=32": ok(1.015)})
    rerun = advance(t, ranks, v)
    assert rerun.key == "overfit" and [m.name for m in rerun.members] == ["lora_dropout=0.05", "lora_dropout=0.1"]
    final = rules.decide(rerun, {"lora_dropout=0.05": ok(1.02), "lora_dropout=0.1": ok(1.0)})
    assert final.winner == "lora_dropout=0.1"
    assert advance(t, rerun, final) is None


def test_learning_rate_chain_range_test_to_clipped_grid_to_refinement():
    t = TEMPLATES["learning_rate"]
    test = expand(t, BASE)
    v = rules.decide(test, {"range_test": {"status": "diverged", "curve": curve(blow_at=1e-3)}})
    coarse = advance(t, test, v)
    rates = [m.value for m in coarse.members]
    assert rates and max(rates) <= v.details["upper_bound"] and rates == [r for r in (5e-5, 1e-4, 2e-4, 4e-4, 8e-4)
                                                                          if r <= v.details["upper_bound"]]
    assert {m.config["lr_scheduler_type"] for m in coarse.members} == {"linear"}  # the base's, not the ramp's
    best = rules.decide(coarse, {m.name: ok(1.0 + abs(math.log(m.value / 2e-4))) for m in coarse.members})
    assert best.winner == "learning_rate=0.0002"
    refine = advance(t, coarse, best)
    assert all(m.value <= v.details["upper_bound"] for m in refine.members)


def test_rslora_chain_stops_when_standard_wins():
    t = TEMPLATES["use_rslora"]
    ab = expand(t, BASE)
    assert advance(t, ab, rules.decide(ab, {"standard": ok(0.9), "rslora": ok(1.0)})) is None
    ranks = advance(t, ab, rules.decide(ab, {"standard": ok(1.0), "rslora": ok(1.0)}))
    assert ranks.key == "ranks" and all(m.config["use_rslora"] for m in ranks.members)


def test_an_undecided_verdict_does_not_advance_the_chain():
    t = TEMPLATES["lora_alpha"]
    ranks = expand(t, BASE)
    v = rules.decide(ranks, {"r=8": ok(1.0)})
    assert not v.decided
    try:
        advance(t, ranks, v)
    except ValueError as exc:
        assert "undecided" in str(exc)
    else:
        raise AssertionError("advanced on an undecided verdict")


def test_every_rule_of_every_template_exists():
    assert {s.rule for t in TEMPLATES.values() for s in t.phases} <= set(rules.RULES)


def test_pruned_members_end_the_wait_and_are_named_not_compared():
    v = decide("r", {"r=8": ok(1.02), "r=16": {"status": "pruned"}, "r=32": ok(1.03)})
    assert v.winner == "r=8" and v.pruned == ("r=16",)
    assert "pruned early by successive halving, not compared: r=16" in v.text


def confirmed(first_losses, second_losses, top=2):
    phase = expand(TEMPLATES["r"], BASE, params={"values": [8, 16, 32]})
    results = {name: ok(loss) for name, loss in zip(("r=8", "r=16", "r=32"), first_losses)}
    verdict = rules.decide(phase, results)
    confirm = confirmation(phase, verdict, results, top=top)
    second = {m.name: ok(loss) for m, loss in zip(confirm.members, second_losses)}
    return verdict, confirm, rules.decide(confirm, second)


def test_the_confirmation_phase_reruns_the_winner_and_the_next_best_at_a_second_seed():
    verdict, confirm, _ = confirmed([1.05, 1.00, 1.02], [1.0, 1.0])
    assert verdict.winner == "r=16"
    assert [m.name for m in confirm.members] == ["r=16 (seed 3408)", "r=32 (seed 3408)"]
    assert all(m.config["seed"] == 3408 and m.config["random_state"] == 3408 for m in confirm.members)
    assert [m.config["r"] for m in confirm.members] == [16, 32]
    assert confirm.rule == "confirm" and confirm.rule_params["first"] == {"r=16": 1.00, "r=32": 1.02}


def test_confirm_judges_the_mean_over_both_seeds_and_says_whether_the_first_winner_held():
    _, _, held = confirmed([1.05, 1.00, 1.02], [1.01, 1.02])
    assert held.winner == "r=16 (seed 3408)" and "the first seed's winner held" in held.text
    assert "1.005 (1.000 then 1.010)" in held.text
    _, _, changed = confirmed([1.05, 1.00, 1.02], [1.10, 0.95])
    assert changed.winner == "r=32 (seed 3408)" and "the first seed had picked r=16" in changed.text


def test_no_confirmation_for_a_probe_or_top_zero():
    phase = expand(TEMPLATES["r"], BASE, params={"values": [8, 16]})
    results = {"r=8": ok(1.0), "r=16": ok(1.1)}
    verdict = rules.decide(phase, results)
    assert confirmation(phase, verdict, results, top=0) is None
    assert len(confirmation(phase, verdict, results, top=5).members) == 2  # only as many as finished


def test_a_verdict_survives_its_round_trip_through_json():
    v = decide("r", {"r=8": ok(1.02), "r=16": {"status": "diverged"}, "r=32": ok(1.03)})
    assert rules.Verdict.from_dict(v.as_dict()) == v


def test_a_rule_can_judge_a_suites_metric_and_says_which():
    results = {"r=8": ok(None, suite_error=0.30), "r=16": ok(None, suite_error=0.20), "r=32": ok(None, suite_error=0.25)}
    v = rules.decide(expand(TEMPLATES["r"], BASE), results, metric="suite_error",
                     label="error (1 - accuracy on colours)")
    assert v.winner == "r=16"
    assert v.text.startswith("r = 16: the best error (1 - accuracy on colours), 0.200")
