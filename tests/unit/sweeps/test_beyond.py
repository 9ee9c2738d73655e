"""A winner at the edge of its phase's values: said, and the next values offered, past the edge and checked by the
engine; hand-computed."""
import pytest

from training.sweeps.plan import TEMPLATES, beyond, expand

BASE = {"model": "var/models/tiny", "train_file": "data.jsonl", "eval_split": 0.1, "eval_steps": 10,
        "max_steps": 200, "r": 16, "lora_alpha": 32, "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4}


def edge_of(template, winner, *, phase=None, params=None, base=BASE):
    """The phase expanded as a sweep would, its winner named by value, and what beyond() says of it."""
    expanded = expand(TEMPLATES[template], base, params=params, phase=phase)
    member = next(m for m in expanded.members if m.value == winner)
    return beyond(TEMPLATES[template], expanded.key, rule=expanded.rule, axis=expanded.axis,
                  swept=[m.value for m in expanded.members], winner_value=member.value,
                  winner_config=member.config, params=expanded.params)


def test_a_rank_that_wins_at_the_top_offers_the_next_doublings_with_itself_as_the_reference():
    out = edge_of("r", 32)
    assert out.side == "top" and out.edge == 32 and out.values == (32, 64, 128)
    assert out.text.startswith("r = 32 won as the largest value swept (8, 16, 32): the best may lie above it")
    assert "past r = 64 returns diminish fast" in out.text  # 128 is past the seed's 64
    assert out.text.endswith("Next: 64, 128, with r = 32 rerun beside them at the same budget.")


def test_the_smallest_rank_winning_is_what_the_rank_rule_aims_at_not_an_edge():
    assert edge_of("r", 8) is None
    assert edge_of("r", 16) is None  # inside the range


def test_ranks_stop_at_128_and_say_why():
    out = edge_of("r", 128, params={"values": [32, 64, 128]})
    assert out.values == () and "r = 128 is as high as the guidance goes without evidence" in out.text
    out = edge_of("r", 64, params={"values": [16, 32, 64]})
    assert out.values == (64, 128)  # 256 is past the ceiling


def test_a_learning_rate_at_either_end_of_the_coarse_grid_goes_on_by_its_ratio():
    top = edge_of("learning_rate", 8e-4, phase="coarse")
    assert top.side == "top" and top.values == (8e-4, 1.6e-3, 3.2e-3)
    bottom = edge_of("learning_rate", 5e-5, phase="coarse")
    assert bottom.side == "bottom" and bottom.values == (5e-5, 2.5e-5, 1.25e-5)
    assert "the best may lie below it" in bottom.text


def test_the_range_tests_bound_caps_the_learning_rates_offered():
    out = edge_of("learning_rate", 4e-4, phase="coarse", params={"upper_bound": 5e-4})
    assert out.values == () and "the range test's upper bound, 0.0005, stops it there" in out.text
    out = edge_of("learning_rate", 8e-4, phase="coarse", params={"upper_bound": 2e-3})
    assert out.values == (8e-4, 1.6e-3)


def test_additive_axes_go_on_by_their_outermost_step_and_stop_where_the_engine_does():
    out = edge_of("warmup_steps", 0.1, params={"rows": 100_000}, base={**BASE, "max_steps": None})
    assert out is not None and out.values[1:] == (0.14, 0.18)
    # weight decay 0 at the bottom: nothing below 0, so nothing is said about it
    assert edge_of("weight_decay", 0.0, phase="coarse") is None
    top = edge_of("weight_decay", 0.1, phase="coarse")
    assert top.values == (0.1, 0.333)  # 1.11 is past what the engine takes
    assert top.text.endswith("Next: 0.333, with weight_decay = 0.1 rerun beside it at the same budget.")


def test_a_phase_without_a_numeric_range_says_nothing():
    assert edge_of("bias", "none") is None
    assert edge_of("packing", True, params={"mean_tokens": 100}) is None


@pytest.mark.parametrize("template,phase", [("learning_rate", "refine"), ("lora_alpha", "gains"),
                                            ("gradient_accumulation_steps", None)])
def test_every_value_offered_expands_as_a_member_of_the_same_phase(template, phase):
    expanded = expand(TEMPLATES[template], BASE, phase=phase)
    top = max(m.value for m in expanded.members)
    member = next(m for m in expanded.members if m.value == top)
    out = beyond(TEMPLATES[template], expanded.key, rule=expanded.rule, axis=expanded.axis,
                 swept=[m.value for m in expanded.members], winner_value=top, winner_config=member.config,
                 params=expanded.params)
    assert out.side == "top" and len(out.values) == 3 and out.values[0] == top
    again = expand(TEMPLATES[template], member.config, params={**expanded.params, "values": list(out.values)},
                   phase=expanded.key)
    assert [m.value for m in again.members] == list(out.values)
