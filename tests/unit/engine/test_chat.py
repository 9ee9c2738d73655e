"""Answers-only masks and template rules on the real chat templates and tokenizers of ten model families."""
from __future__ import annotations

import pytest

from tests.families import FAMILIES, family_tokenizer
from training.engine.chat import (encode_chat, end_of_turn_ids, generation_prompt, plan_dataset, prepare_messages,
                                  render, template_rules, visible_text)

SYSTEM = "You are terse."
ROW_SYSTEM = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What colour is the sky?"},
              {"role": "assistant", "content": "The sky is blue."}]
ROW_TWO_TURNS = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."},
                 {"role": "user", "content": "Another one?"}, {"role": "assistant", "content": "A plum, then."}]
SYSTEM_RULE = {"gemma-2": "refused", "mistral-nemo": "dropped"}


def trained_text(tokenizer, encoded) -> str:
    """The decoded trained tokens, run by run."""
    runs, current = [], []
    for token, bit in zip(encoded.ids, encoded.mask):
        if bit:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return "".join(tokenizer.decode(run, skip_special_tokens=False) for run in runs)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_exactly_the_answers_and_their_end_of_turn_train(name):
    tokenizer = family_tokenizer(name)
    rules = template_rules(tokenizer)
    eot = FAMILIES[name].eos
    for row in (ROW_SYSTEM, ROW_TWO_TURNS):
        encoded = encode_chat(tokenizer, row, rules)
        assert encoded.error is None, encoded.error
        answers = [t["content"] for t in row if t["role"] == "assistant"]
        assert trained_text(tokenizer, encoded) == "".join(a + eot for a in answers)
        # what does not train holds every user and system text (none of it leaks into the loss)
        untrained = tokenizer.decode([t for t, bit in zip(encoded.ids, encoded.mask) if not bit])
        for turn in row:
            if turn["role"] != "assistant":
                assert turn["content"] in untrained
        # full loss: every token
        full = encode_chat(tokenizer, row, rules, answers_only=False)
        assert full.ids == encoded.ids and all(full.mask)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_system_turns_follow_the_template_or_join_the_first_user_turn(name):
    tokenizer = family_tokenizer(name)
    rules = template_rules(tokenizer)
    assert rules.system == SYSTEM_RULE.get(name, "kept")
    encoded = encode_chat(tokenizer, ROW_SYSTEM, rules)
    assert SYSTEM in encoded.text  # never lost: kept by the template, or joined to the user turn
    if rules.joins_system:
        assert encoded.changes and "joined to the first user turn" in encoded.changes[0]
        assert f"{SYSTEM}\n\nWhat colour is the sky?" in encoded.text
    else:
        assert encoded.changes == []


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_generation_prompt_is_the_trained_prefix_with_and_without_a_system_turn(name):
    tokenizer = family_tokenizer(name)
    rules = template_rules(tokenizer)
    for row in (ROW_SYSTEM, ROW_TWO_TURNS):
        encoded = encode_chat(tokenizer, row, rules)
        prompt = generation_prompt(tokenizer, row[:-1], rules)
        assert prompt == encoded.text[:encoded.spans[-1][0]]
        assert (SYSTEM in prompt) == (row is ROW_SYSTEM)
        assert not prompt.endswith(row[-2]["content"])  # the template's assistant header follows the question


def test_injected_text_is_named_and_the_date_pinned():
    assert "Cutting Knowledge Date" in template_rules(family_tokenizer("llama-3.1")).injected
    llama32 = family_tokenizer("llama-3.2")
    assert "26 Jul 2024" in template_rules(llama32).injected  # not today's date
    assert "26 Jul 2024" in render(llama32, ROW_TWO_TURNS)
    assert "You are Qwen" in template_rules(family_tokenizer("qwen-2.5")).injected
    assert template_rules(family_tokenizer("phi-3.5")).injected == ""


def test_reasoning_templates_are_handled_on_purpose():
    # Qwen3: thinking off, the empty think block is part of the prompt; the answer alone trains.
    qwen3 = family_tokenizer("qwen3")
    encoded = encode_chat(qwen3, ROW_SYSTEM, template_rules(qwen3))
    assert "<think>\n\n</think>\n\n" in encoded.text[:encoded.spans[-1][0]]
    assert encoded.prompt_mismatch is None
    # R1 distills: the template cuts reasoning out of answers, so such a row cannot train answers-only as written.
    r1 = family_tokenizer("r1-distill-llama")
    row = ROW_SYSTEM[:2] + [{"role": "assistant", "content": "<think>sky</think>The sky is blue."}]
    refused = encode_chat(r1, row, template_rules(r1))
    assert refused.error_field == "completion_only_loss" and "rewrites assistant turn 3" in refused.error
    assert encode_chat(r1, row, template_rules(r1), answers_only=False).error is None
    # ... and its generation prompt opens a think block no trained row has: reported, and prompts use the trained form
    plain = encode_chat(r1, ROW_SYSTEM, template_rules(r1))
    assert "<think>" in plain.prompt_mismatch
    assert not generation_prompt(r1, ROW_SYSTEM[:-1], template_rules(r1)).endswith("<think>\n")
    gemma4 = family_tokenizer("gemma-4")
    assert "channel" in encode_chat(gemma4, ROW_SYSTEM, template_rules(gemma4)).prompt_mismatch


def test_rows_the_template_cannot_take_are_counted_and_named():
    tokenizer = family_tokenizer("gemma-2")
    rows = [ROW_SYSTEM, ROW_TWO_TURNS, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            [{"role": "tool", "content": "x"}], ROW_TWO_TURNS[:1]]
    plan = plan_dataset(tokenizer, rows)
    summary = plan.summary()
    refused = {item["reason"]: item["first_rows"] for item in summary["refused"]}
    assert [3] in refused.values() and [4] in refused.values() and [5] in refused.values()
    assert any("alternate" in r for r in refused) and any("'tool'" in r for r in refused)
    assert any("no assistant turn" in r for r in refused)
    assert summary["changed"][0]["first_rows"] == [1]
    assert set(plan.error()) == {"train_file"}


def test_structure_errors_name_the_turn():
    rules = template_rules(family_tokenizer("qwen-2.5"))
    assert "turn 2" in prepare_messages([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
                                        rules)[2]
    assert "no text content" in prepare_messages([{"role": "user", "content": None}], rules)[2]


def test_a_template_with_generation_markers_uses_them(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rules = template_rules(tokenizer)
    assert rules.markers
    encoded = encode_chat(tokenizer, ROW_TWO_TURNS, rules)
    assert trained_text(tokenizer, encoded) == "An apple.<|im_end|>A plum, then.<|im_end|>"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_generation_stops_at_the_end_of_turn_and_shows_no_control_token(name):
    tokenizer = family_tokenizer(name)
    eot = tokenizer.convert_tokens_to_ids(FAMILIES[name].eos)
    assert eot in end_of_turn_ids(tokenizer)
    # what a model trained on these rows writes: an answer, its end-of-turn token, maybe the tags of a thinking block
    answer = "The sky is blue."
    ids = tokenizer("<think>" + answer + "</think>" if name == "qwen3" else answer, add_special_tokens=False)["input_ids"]
    shown = visible_text(tokenizer, ids + [eot])
    assert shown.strip() == answer
    assert all(special not in shown for special in (FAMILIES[name].eos, "<think>", "</think>"))
