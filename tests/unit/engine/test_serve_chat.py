"""The playground engine's multi-turn chat, without a model: each side's history and the new prompt rendered through
the chat template (turn 2 carries that side's own turn-1 reply), a model without a template gets the plain
concatenation, rows of different lengths are padded on the left, and the history is checked by field."""
import pytest

from training.engine.serve import MAX_HISTORY_MESSAGES, SpecError, left_pad, parse_request, render_chat


@pytest.fixture(scope="module")
def tokenizer():
    from training.engine.tiny import _train_tokenizer

    return _train_tokenizer(vocab_size=512)


def chat(left_reply: str, right_reply: str, question: str = "What colour is the sky?") -> dict:
    return {side: [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
            for side, reply in (("left", left_reply), ("right", right_reply))}


def test_turn_two_is_rendered_with_that_sides_own_first_reply(tokenizer):
    request = parse_request({"id": "2", "prompt": "And the grass?", "history": chat("blue", "the sky is grey")})
    left = render_chat(tokenizer, request.history["left"], request.prompt)
    right = render_chat(tokenizer, request.history["right"], request.prompt)
    assert left == ("<|im_start|>user\nWhat colour is the sky?<|im_end|>\n<|im_start|>assistant\nblue<|im_end|>\n"
                    "<|im_start|>user\nAnd the grass?<|im_end|>\n<|im_start|>assistant\n")
    assert "the sky is grey" in right and "blue" not in right and right.endswith("<|im_start|>assistant\n")
    # A first turn renders as before: the one user message with the assistant's turn opened.
    first = parse_request({"prompt": "What colour is the sky?"})
    assert first.history == {"left": [], "right": []}
    assert render_chat(tokenizer, [], first.prompt) == (
        tokenizer.apply_chat_template([{"role": "user", "content": first.prompt}], tokenize=False,
                                      add_generation_prompt=True))


def test_a_model_without_a_chat_template_continues_the_plain_concatenation():
    class Plain:
        chat_template = None

    assert render_chat(Plain(), [], "Q: sky? A:") == "Q: sky? A:"
    history = [{"role": "user", "content": "Q: sky? A:"}, {"role": "assistant", "content": " blue\n"}]
    assert render_chat(Plain(), history, "Q: grass? A:") == "Q: sky? A: blue\nQ: grass? A:"


def test_sides_of_different_lengths_are_padded_on_the_left():
    rows, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert rows == [[5, 6, 7], [0, 0, 8]] and mask == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("history, says", [
    ({"left": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}] * 26, "right": []},
     f"left: at most {MAX_HISTORY_MESSAGES} earlier messages, not 52; start a new chat"),
    ({"left": [{"role": "assistant", "content": "yo"}]}, "left message 0: {role: 'user'"),
    ({"right": [{"role": "user", "content": "hi"}]}, "right: ends with the side's reply"),
    ({"middle": []}, "an object {left: [...], right: [...]}"),
    ({"left": "hi"}, "left: a list of messages"),
    (["hi"], "an object {left: [...], right: [...]}"),
])
def test_a_bad_history_is_refused_by_field(history, says):
    with pytest.raises(SpecError) as caught:
        parse_request({"id": "x", "prompt": "hello", "history": history, "temperature": 9})
    assert set(caught.value.errors) == {"history", "temperature"}
    assert says in caught.value.errors["history"]


def test_a_history_at_the_limit_is_taken():
    history = {"left": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}] * 25}
    assert len(parse_request({"prompt": "again", "history": history}).history["left"]) == MAX_HISTORY_MESSAGES


def test_the_system_prompt_comes_first_for_both_sides_as_training_rendered_it(tokenizer):
    request = parse_request({"id": "s", "prompt": "And the grass?", "system": "Answer in one word.",
                             "history": chat("blue", "grey")})
    assert request.system == "Answer in one word."
    left = render_chat(tokenizer, request.history["left"], request.prompt, request.system)
    assert left.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nWhat colour")
    assert left.endswith("<|im_start|>user\nAnd the grass?<|im_end|>\n<|im_start|>assistant\n")
    # The same text a training row with that system turn was rendered with, up to where its answer starts.
    row = tokenizer.apply_chat_template([{"role": "system", "content": "Answer in one word."},
                                         *request.history["left"], {"role": "user", "content": "And the grass?"}],
                                        tokenize=False, add_generation_prompt=True)
    assert left == row
    assert parse_request({"prompt": "hi", "system": "   "}).system == ""


def test_a_template_that_refuses_system_turns_gets_the_system_prompt_joined_to_the_first_user_turn(tokenizer):
    import copy

    strict = copy.copy(tokenizer)
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}"
                            "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    text = render_chat(strict, [], "What colour is the sky?", "Answer in one word.")
    assert text == "<|im_start|>user\nAnswer in one word.\n\nWhat colour is the sky?<|im_end|>\n<|im_start|>assistant\n"


def test_a_bad_system_prompt_is_refused_by_field():
    with pytest.raises(SpecError) as caught:
        parse_request({"prompt": "hi", "system": 7})
    assert set(caught.value.errors) == {"system"}
    with_system = {"left": [{"role": "system", "content": "Be brief."}], "right": []}
    with pytest.raises(SpecError) as caught:
        parse_request({"prompt": "hi", "system": "Be long.", "history": with_system})
    assert "send the system prompt once" in caught.value.errors["system"]


def test_a_cancel_line_reaches_the_server_at_once_and_other_lines_queue():
    import io

    from training.engine.serve import cancel_of, read_lines

    assert cancel_of('{"type": "cancel", "request": "p1"}') == "p1"
    assert cancel_of('{"id": "cancel", "prompt": "say \\"cancel\\""}') is None
    cancelled: set[str] = set()
    lines = read_lines(io.StringIO('{"id": "p1", "prompt": "hi"}\n{"type": "cancel", "request": "p1"}\n'), cancelled)
    assert lines.get(timeout=5) == '{"id": "p1", "prompt": "hi"}\n'
    assert lines.get(timeout=5) is None and cancelled == {"p1"}
