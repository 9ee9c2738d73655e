"""The OpenAI-compatible chat request checked and mapped onto the playground's prompt without a model or a database:
the conversation before the last user message is the history of the one side that answers, every bad parameter is
named as OpenAI names it, and stop strings cut the streamed text before them."""
import pytest

from training.engine.serve import parse_request, until_stop
from training.openai_api.chat import chunk, completion, parse_chat
from training.openai_api.errors import OpenAIError

ASK = [{"role": "user", "content": "hi"}]


def test_the_conversation_maps_onto_one_sides_history_and_prompt():
    call = parse_chat({"model": "run-7:base", "messages": [
        {"role": "developer", "content": "brief"}, {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], "stop": "\n", "max_tokens": 9})
    assert (call.run_id, call.base, call.side, call.request.sides) == (7, True, "right", ("right",))
    assert call.request.prompt == "c" and call.request.stop == ("\n",) and call.request.max_new_tokens == 9
    assert call.request.history["right"] == [{"role": "system", "content": "brief"}, {"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]
    # OpenAI's defaults: temperature 1, top_p 1, and no max_tokens: up to the model's context.
    plain = parse_chat({"model": "run-7", "messages": ASK})
    assert (plain.side, plain.request.temperature, plain.request.top_p, plain.request.max_new_tokens) == (
        "left", 1.0, 1.0, None)


@pytest.mark.parametrize("body, status, param", [
    ({"model": "run-1", "messages": ASK, "temperature": 3}, 400, "temperature"),
    ({"model": "run-1", "messages": ASK, "top_p": 0}, 400, "top_p"),
    ({"model": "run-1", "messages": ASK, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "run-1", "messages": ASK, "max_tokens": 10 ** 6}, 400, "max_tokens"),
    ({"model": "run-1", "messages": ASK, "seed": -1}, 400, "seed"),
    ({"model": "run-1", "messages": ASK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "run-1", "messages": ASK, "n": 2}, 400, "n"),
    ({"model": "run-1", "messages": ASK, "tools": [{"type": "function"}]}, 400, "tools"),
    ({"model": "run-1", "messages": ASK, "frobnicate": 1}, 400, "frobnicate"),
    ({"model": "run-1", "messages": []}, 400, "messages"),
    ({"model": "run-1", "messages": [*ASK, {"role": "assistant", "content": "x"}]}, 400, "messages"),
    ({"model": "run-1", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": "run-1", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content"),
    ({"messages": ASK}, 400, "model"),
    ({"model": "gpt-4o", "messages": ASK}, 404, "model"),
])
def test_a_bad_parameter_is_named_as_openai_names_it(body, status, param):
    with pytest.raises(OpenAIError) as refused:
        parse_chat(body)
    assert (refused.value.status, refused.value.param) == (status, param)
    error = refused.value.body()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_stop_strings_cut_the_text_and_hold_back_what_may_become_one():
    assert until_stop("Hello END more", ("END",)) == ("Hello ", True)
    assert until_stop("Hello EN", ("END",)) == ("Hello ", False)  # may still become END
    assert until_stop("Hello E", ("END", "xyz")) == ("Hello ", False)
    assert until_stop("Hello", ("END",)) == ("Hello", False)
    assert until_stop("Hello", ()) == ("Hello", False)
    assert parse_request({"prompt": "p", "stop": ["a"], "sides": ["left"]}).sides == ("left",)
    for bad in ({"stop": "a"}, {"stop": [""]}, {"sides": ["middle"]}, {"sides": []}):
        with pytest.raises(Exception) as refused:
            parse_request({"prompt": "p", **bad})
        assert set(refused.value.errors) == set(bad)


def test_answers_take_openais_shapes():
    reply = {"text": "blue", "tokens": 3, "prompt_tokens": 10, "finish_reason": "length"}
    whole = completion(completion_id="c", created=1, model="run-1", reply=reply)
    assert whole["choices"][0]["message"]["content"] == "blue" and whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    assert chunk(completion_id="c", created=1, model="run-1", usage_of=reply)["choices"] == []
