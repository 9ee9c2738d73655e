"""The open search's pure parts: its params checked against the engine with field-named errors, the phase it makes,
its members' names and configs, how many to ask, the sampler's determinism, and the verdict over recorded results."""
from dataclasses import replace

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from training.engine.config import ConfigError, parse_config
from training.sweeps import search

BASE = {"model": "var/models/tiny", "train_file": "data.jsonl", "eval_split": 0.2, "eval_steps": 6,
        "max_steps": 24, "r": 16, "lora_alpha": 32, "seed": 7}
SPACE = {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "r": {"choices": [8, 16, 32]},
         "lora_dropout": {"low": 0.0, "high": 0.1}}
FULL = parse_config(BASE).model_dump(mode="json")


def errors(params, base=FULL):
    with pytest.raises(ConfigError) as exc:
        search.parse(params, base)
    return exc.value.errors


def test_a_space_becomes_optunas_distributions_with_the_defaults_filled_in():
    s = search.parse({"space": SPACE, "trials": 4}, FULL)
    assert s.space == {"learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
                       "r": CategoricalDistribution([8, 16, 32]), "lora_dropout": FloatDistribution(0.0, 0.1)}
    assert (s.trials, s.parallel, s.seed, s.reduction_factor) == (4, 2, 0, 3)
    assert s.params == {"space": SPACE, "trials": 4, "parallel": 2, "seed": 0, "reduction_factor": 3}
    assert search.parse({"space": {"r": {"low": 8, "high": 64, "step": 8}}}, FULL).space == {
        "r": IntDistribution(8, 64, step=8)}
    assert search.parse({"space": {"warmup_steps": {"low": 0, "high": 10}}}, FULL).space == {
        "warmup_steps": IntDistribution(0, 10)}  # an int-or-ratio field with whole bounds: steps


@pytest.mark.parametrize("space, field, message", [
    ({"learning_rate": {"low": 1e-3, "high": 1e-5}}, "space.learning_rate", "low must be below high"),
    ({"learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}, "space.learning_rate",
     "a log range needs low above 0"),
    ({"learning_rate": {"low": 1e-5, "high": 2.0}}, "space.learning_rate", "high 2.0: "),
    ({"lora_dropout": {"low": 0.0, "high": 1.0}}, "space.lora_dropout", "high 1.0: "),
    ({"r": {"low": 8.5, "high": 32}}, "space.r", "r is a whole number"),
    ({"r": {"choices": [8, 0]}}, "space.r", "choice 0: "),
    ({"r": {"choices": []}}, "space.r", "choices: give at least one value"),
    ({"r": {"choices": [8, 8]}}, "space.r", "each value once"),
    ({"optim": {"low": 1, "high": 2}}, "space.optim", "not a number: give its values as choices"),
    ({"optim": {"choices": ["adamw_torch", "sgd"]}}, "space.optim", "choice 'sgd': "),
    ({"model": {"choices": ["a", "b"]}}, "space.model", "a search cannot set model"),
    ({"train_file": {"choices": ["a.jsonl"]}}, "space.train_file", "a search cannot set train_file"),
    ({"output_dir": {"choices": ["x"]}}, "space.output_dir", "a search cannot set output_dir"),
    ({"max_steps": {"low": 10, "high": 20}}, "space.max_steps", "the base's step budget"),
    ({"seed": {"choices": [1, 2]}}, "space.seed", "the base's seed"),
    ({"learning_rat": {"low": 1e-5, "high": 1e-3}}, "space.learning_rat", "not a config field; allowed: "),
    ({"learning_rate": {"min": 1e-5, "max": 1e-3}}, "space.learning_rate", 'give a range {"low"'),
    ({"learning_rate": [1e-5, 1e-3]}, "space.learning_rate", 'give a range {"low"'),
])
def test_a_bad_space_names_the_field_and_what_is_allowed(space, field, message):
    assert message in errors({"space": space})[field]


def test_bad_counts_and_unknown_params_are_named_together():
    got = errors({"space": SPACE, "trials": 0, "parallel": 17, "seed": -1, "reduction_factor": 1, "budget": 3})
    assert got == {"trials": "a whole number from 1 to 100", "parallel": "a whole number from 1 to 16",
                   "seed": "the sampler's seed: a whole number from 0 to 4294967295",
                   "reduction_factor": "a whole number from 2 to 6",
                   "budget": "not a parameter of a search; allowed: space, trials, parallel, seed, reduction_factor"}
    assert errors({"space": SPACE, "trials": 101})["trials"] == "a whole number from 1 to 100"
    assert errors({"space": SPACE, "trials": True})["trials"] == "a whole number from 1 to 100"
    assert "choose at least one field" in errors({"trials": 4})["space"]
    assert "must be an object" in errors(["learning_rate"])["params"]


def test_the_phase_holds_the_base_budget_seed_and_eval_and_has_no_members_yet():
    p = search.phase(BASE, {"space": SPACE, "trials": 4})
    assert (p.key, p.axis, p.rule, p.members) == ("search", "trial", "lowest_eval", ())
    assert p.budget == {"max_steps": 24}
    assert {k: p.held[k] for k in ("max_steps", "eval_steps", "seed", "eval_split")} == {
        "max_steps": 24, "eval_steps": 6, "seed": 7, "eval_split": 0.2}
    assert p.title == "Search over learning_rate, lora_dropout, r: 4 trials, 2 at a time"
    assert p.params["space"] == SPACE and p.base["max_steps"] == 24


def test_the_phase_needs_a_step_budget_and_an_eval():
    with pytest.raises(ConfigError) as exc:
        search.phase({**BASE, "max_steps": None, "eval_steps": None}, {"space": SPACE})
    assert set(exc.value.errors) == {"max_steps", "eval_steps"}


def test_a_member_changes_only_the_searched_fields_and_is_named_by_them():
    m = search.member(FULL, 2, {"learning_rate": 0.000213, "r": 16, "lora_dropout": 0.0423})
    assert m.name == "trial 3: learning_rate=2.1e-4, lora_dropout=0.042, r=16"
    assert m.value == 3 and m.steps == 24
    assert {k for k in m.config if m.config[k] != FULL[k]} == {"learning_rate", "lora_dropout"}  # r was 16 already
    assert search.shown(1e-3) == "1e-3" and search.shown(0.1) == "0.1" and search.shown(0.0) == "0"
    with pytest.raises(ConfigError):
        search.member(FULL, 0, {"learning_rate": 5.0})


def test_parallel_members_are_kept_going_until_all_trials_are_asked():
    s = search.parse({"space": SPACE, "trials": 5, "parallel": 2}, FULL)
    assert search.to_ask(s, []) == 2
    assert search.to_ask(s, ["running", "queued"]) == 0
    assert search.to_ask(s, ["succeeded", "running"]) == 1
    assert search.to_ask(s, ["succeeded", "pruned", "lost"]) == 1  # a lost member waits for its resume: still going
    assert search.to_ask(s, ["succeeded", "pruned", "failed", "succeeded"]) == 1  # the fifth, the last
    assert search.to_ask(s, ["succeeded"] * 5) == 0


def test_the_sampler_is_tpe_seeded_by_the_search_and_the_member():
    s = search.parse({"space": SPACE, "seed": 3}, FULL)
    a, b, c = search.sampler(s, 4), search.sampler(s, 4), search.sampler(s, 5)
    assert type(a).__name__ == "TPESampler"
    draw = [x._rng.rng.random() for x in (a, b, c)]
    assert draw[0] == draw[1] != draw[2]


def results(**by_name):
    return {name: {"status": status, "final_eval_loss": loss} for name, (status, loss) in by_name.items()}


def phase_with(*values):
    p = search.phase(BASE, {"space": SPACE, "trials": len(values)})
    return replace(p, members=tuple(search.member(p.base, i, v) for i, v in enumerate(values)))


def test_the_verdict_names_the_best_trial_its_params_and_the_pruned_and_failed_counts():
    p = phase_with({"learning_rate": 1e-4, "r": 8, "lora_dropout": 0.05},
                   {"learning_rate": 4e-4, "r": 16, "lora_dropout": 0.0},
                   {"learning_rate": 1e-5, "r": 32, "lora_dropout": 0.1},
                   {"learning_rate": 9e-4, "r": 8, "lora_dropout": 0.02})
    n = [m.name for m in p.members]
    v = search.decide(p, {n[0]: {"status": "succeeded", "final_eval_loss": 2.2},
                          n[1]: {"status": "succeeded", "final_eval_loss": 2.05},
                          n[2]: {"status": "pruned", "final_eval_loss": 3.1},
                          n[3]: {"status": "failed"}})
    assert v.winner == n[1] and v.rule == "lowest_eval"
    assert v.text == ("trial 2 (learning_rate=4e-4, lora_dropout=0, r=16): the lowest eval loss of the 2 trials "
                      "compared, 2.050 (next: trial 1 at 2.200); of 4 trials, 1 pruned early by successive halving, "
                      "1 failed, 0 diverged.")
    assert v.details == {"params": {"learning_rate": 4e-4, "r": 16, "lora_dropout": 0.0}, "trials": 4,
                         "compared": 2, "pruned": 1, "failed": 1, "diverged": 0, "unstable": 0}
    assert v.pruned == (n[2],) and v.failed == (n[3],)


def test_no_verdict_while_a_trial_runs():
    p = phase_with({"learning_rate": 1e-4, "r": 8, "lora_dropout": 0.05},
                   {"learning_rate": 4e-4, "r": 16, "lora_dropout": 0.0})
    n = [m.name for m in p.members]
    v = search.decide(p, {n[0]: {"status": "succeeded", "final_eval_loss": 2.2}, n[1]: {"status": "running"}})
    assert not v.decided and "waiting for trial 2" in v.text
