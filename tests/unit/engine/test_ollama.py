"""The Modelfile's TEMPLATE derived from a model's chat template: rendered as Ollama renders it (tests/gotemplate.py),
it gives what the model's own template gives, for every family the product supports and the tiny model, with the
system prompt where training put it; and every Modelfile written passes the checker."""
import pytest

from tests import gotemplate
from tests.families import FAMILIES, family_tokenizer
from training.engine import chat, modelfile_check, ollama

CONVERSATIONS = [
    [{"role": "user", "content": "Which colour is the sky?"}],
    [{"role": "user", "content": "Which colour is the sky?"}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "And grass?"}],
]
SYSTEM = "Answer in one word."


def hf_prompt(tokenizer, messages):
    text = chat.render(tokenizer, messages, add_generation_prompt=True)
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


def ollama_prompt(template: str, messages, system: str = ""):
    """As Ollama executes a template: system messages joined into .System and kept in .Messages."""
    turns = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return gotemplate.render(template, {"System": system, "Messages": turns})


@pytest.mark.parametrize("name", list(FAMILIES))
def test_template_renders_as_the_models_own(name):
    tokenizer = family_tokenizer(name)
    rules = chat.template_rules(tokenizer)
    derived = ollama.derive_template(tokenizer)
    for messages in CONVERSATIONS:
        assert ollama_prompt(derived.template, messages) == hf_prompt(tokenizer, messages)
        with_system = [{"role": "system", "content": SYSTEM}, *messages]
        trained, _, error = chat.prepare_messages(with_system + [{"role": "assistant", "content": "x"}], rules)
        assert error is None
        # the prompt the model trained on: its system turn kept, or joined to the first user turn
        assert (ollama_prompt(derived.template, with_system, SYSTEM)
                == hf_prompt(tokenizer, trained[:-1])), name
    assert derived.system == ("kept" if rules.system == "kept" else "joined")
    # the stops are the template's end of turn, as generation stops on them everywhere else
    assert set(derived.stops) == {tokenizer.convert_ids_to_tokens(i) for i in chat.end_of_turn_ids(tokenizer)}
    text = ollama.modelfile(source="./run-1-f16.gguf", template=derived, system=SYSTEM,
                            alternatives=["./run-1-Q8_0.gguf"])
    commands = modelfile_check.check(text)
    assert [c.name for c in commands] == ["FROM", "TEMPLATE", *["PARAMETER"] * len(derived.stops), "SYSTEM"]
    assert next(c for c in commands if c.name == "TEMPLATE").args == derived.template


def test_the_tiny_models_template(tmp_path):
    from training.engine.tiny import _train_tokenizer

    tokenizer = _train_tokenizer(vocab_size=512)
    derived = ollama.derive_template(tokenizer)
    assert derived.stops == ("<|im_end|>",)
    for messages in CONVERSATIONS:
        assert ollama_prompt(derived.template, messages) == hf_prompt(tokenizer, messages)


def test_adapter_modelfile_names_base_and_adapter():
    text = ollama.modelfile(source="./run-3-base-f16.gguf", adapter="./run-3-lora-f16.gguf")
    commands = modelfile_check.check(text)
    assert [(c.name, c.args) for c in commands] == [("FROM", "./run-3-base-f16.gguf"),
                                                    ("ADAPTER", "./run-3-lora-f16.gguf")]


def test_go_text_that_looks_like_an_action_is_quoted():
    assert ollama._go_text("a {{ b") == 'a {{ "{{" }} b'
    assert gotemplate.render(ollama._go_text("a {{ b"), {}) == "a {{ b"
