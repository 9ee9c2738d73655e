"""A failed start says its cause and what to change (training/engine/failures.py), and Gemma 2 on Unsloth starts
with Unsloth's compile off (backends.compile_lever), in a cold process."""
import json

import jinja2
import pytest
import torch
from torch._inductor.exc import InductorError

from training.engine import backends, failures
from training.engine.config import parse_config


def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def test_a_compiler_failure_names_unsloths_compiled_layers_torch_and_the_lever():
    exc = raised_from(RuntimeError("step failed"), InductorError(AssertionError(), "inductor"))
    cause, message = failures.explain(exc, backend="unsloth", model_type="gemma2")
    assert cause == "compiler"
    assert message.startswith(f"Unsloth's compiled gemma2 layers failed to build on torch {torch.__version__} "
                              "(InductorError")
    assert "UNSLOTH_COMPILE_DISABLE=1" in message and "backend hf" in message


def test_a_template_error_says_the_template_refused_a_row_and_what_to_do():
    refused = jinja2.exceptions.TemplateError("System role not supported")
    cause, message = failures.explain(raised_from(ValueError("formatting"), refused), backend="hf",
                                      model_type="gemma2")
    assert cause == "chat_template" and "TemplateError: System role not supported" in message
    assert "join its text to the first user turn" in message


def test_an_unsupported_architecture_says_which_library_and_the_other_backend():
    cause, message = failures.explain(NotImplementedError("Unsloth: gemma9 not supported yet"), backend="unsloth",
                                      model_type="gemma9")
    assert cause == "unsupported_architecture"
    assert message.startswith("Unsloth cannot train the gemma9 architecture here (NotImplementedError: Unsloth")
    assert "choose backend hf" in message
    cause, message = failures.explain(ValueError("Unrecognized configuration class Foo"), backend="hf",
                                      model_type=None)
    assert "transformers cannot train this model's architecture" in message and "backend hf" not in message


def test_other_failures_keep_their_own_message():
    assert failures.explain(ZeroDivisionError("division by zero"), backend="hf", model_type="llama") is None


@pytest.fixture
def model_dir(tmp_path):
    def make(model_type):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        return str(folder)
    return make


def config(model, backend):
    return parse_config({"model": model, "train_file": "t.jsonl", "backend": backend})


def test_gemma2_on_unsloth_starts_with_its_compile_off_and_says_so(model_dir):
    environ: dict = {}
    warning = backends.compile_lever(config(model_dir("gemma2"), "unsloth"), environ)
    assert environ == {"UNSLOTH_COMPILE_DISABLE": "1"}
    assert "gemma2 layers fail to build" in warning and "UNSLOTH_COMPILE_DISABLE=0" in warning


@pytest.mark.parametrize("model_type, backend, environ", [
    ("gemma2", "hf", {}),  # no Unsloth, nothing compiled
    ("gemma3_text", "unsloth", {}),  # its layers compile
    ("gemma2", "unsloth", {"UNSLOTH_COMPILE_DISABLE": "0"}),  # the worker's own choice stands
])
def test_the_lever_is_left_alone_elsewhere(model_dir, model_type, backend, environ):
    before = dict(environ)
    assert backends.compile_lever(config(model_dir(model_type), backend), environ) is None
    assert environ == before


def test_a_hub_id_has_no_model_type():
    assert backends.model_type_of("google/gemma-2-2b") is None
    assert not backends.needs_compile_off("google/gemma-2-2b", "unsloth")


def test_the_error_a_real_template_raises_through_the_tokenizer_is_read_as_the_templates():
    from training.engine.tiny import _train_tokenizer

    tokenizer = _train_tokenizer(vocab_size=300)
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                               "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(Exception) as caught:
        tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                      tokenize=False)
    cause, message = failures.explain(caught.value, backend="unsloth", model_type="gemma2")
    assert cause == "chat_template" and "System role not supported" in message
