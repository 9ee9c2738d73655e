"""A team's templates render in Jinja's sandbox: an lm_eval task's fields (checked by their text, on documents, and
inside lm-evaluation-harness itself once the sandbox replaces its environment) and a model's chat template."""
import json
import uuid
from pathlib import Path

import pytest
from jinja2.sandbox import SecurityError

from training.engine import harness, sandbox
from training.engine.sandbox import TemplateRefused


def escapes(marker: Path) -> list[str]:
    """Templates that, in a plain jinja2.Environment, run a command creating `marker` (or reach a way to)."""
    command = f"touch {marker}"
    return [
        f"{{{{ lipsum.__globals__['os'].popen('{command}').read() }}}}",
        f"{{{{ cycler.__init__.__globals__.os.popen('{command}').read() }}}}",
        f"{{{{ joiner.__init__.__globals__['os'].popen('{command}').read() }}}}",
        f"{{{{ namespace.__init__.__globals__.os.popen('{command}').read() }}}}",
        f"{{{{ self.__init__.__globals__.__builtins__.__import__('os').popen('{command}').read() }}}}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ question['__class__'] }}",
    ]


DOC = {"question": "What colour is the sky?", "choices": ["red", "blue"], "label": 1}
FIELDS = ("doc_to_text", "doc_to_target", "doc_to_choice")


def test_each_escape_in_each_field_is_refused_by_its_text_naming_the_field(tmp_path):
    for field in FIELDS:
        for payload in escapes(tmp_path / "x"):
            task = {"doc_to_text": "{{question}}", "doc_to_target": "label", field: "Q: " + payload}
            errors = sandbox.text_errors(task)
            assert list(errors) == [field], (field, payload)
            assert "which a task's template may not" in errors[field]
            assert not sandbox.text_errors({**task, field: "{{question}}"})
    errors = sandbox.text_errors({"fewshot_config": {"doc_to_text": "{{ x.__class__ }}"}})
    assert list(errors) == ["fewshot_config.doc_to_text"]


def test_each_escape_in_each_field_is_refused_by_the_sandbox_on_a_document_and_runs_nothing(tmp_path):
    marker = tmp_path / "x"
    for field in FIELDS:
        for payload in [*escapes(marker), "{{ question|attr('__cla' ~ 'ss__') }}", "{% set l = [] %}{{ l.append(1) }}"]:
            errors = sandbox.render_errors({field: payload}, [DOC])
            assert list(errors) == [field] and errors[field].startswith("document 1: "), (field, payload, errors)
    assert not marker.exists()


def test_benign_templates_render_as_lm_eval_renders_them():
    task = {"doc_to_text": "{{question}} Answer:", "doc_to_choice": "{{choices}}", "doc_to_target": "label",
            "description": "{{ question|regex_replace('sky', 'sea')|upper }}\n",
            "gen_prefix": "{{ choices|join(', ') }}"}
    assert not sandbox.text_errors(task) and not sandbox.render_errors(task, [DOC])
    assert sandbox.render("doc_to_text", task["doc_to_text"], DOC) == "What colour is the sky? Answer:"
    assert sandbox.render("doc_to_choice", task["doc_to_choice"], DOC) == "['red', 'blue']"
    assert sandbox.render("description", task["description"], DOC) == "WHAT COLOUR IS THE SEA?\n"
    assert sandbox.render_errors({"doc_to_text": "{{ answer }}"}, [DOC, DOC]) == {
        "doc_to_text": "document 1: UndefinedError: 'answer' is undefined"}


def test_a_task_that_would_run_code_or_read_the_workers_disk_is_refused():
    base = "task: t\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_target: a\n"
    for extra, says in [("use_prompt: /etc/prompts.yaml:x", "use_prompt"), ("unsafe_code: true", "unsafe_code"),
                        ("class: x", "class"), ("metric_list:\n  - metric: a/b\n    hf_evaluate: true", "hf_evaluate"),
                        ("doc_to_choice: '{{ lipsum.__globals__ }}'", "doc_to_choice: the template reads")]:
        task, errors = harness.task_errors(base + extra)
        assert task is None and says in errors["task_config"], (extra, errors)
    assert harness.task_errors(base + "unsafe_code: false")[1] == {}


@pytest.fixture
def lm_eval_sandboxed(monkeypatch):
    """lm_eval's template environment as the harness child leaves it; put back after the test."""
    from lm_eval import utils

    monkeypatch.setattr(utils, "env", utils.env)
    monkeypatch.setattr(utils, "apply_template", utils.apply_template)
    return utils


def test_inside_lm_eval_a_template_that_escapes_on_some_document_fails_naming_its_field(lm_eval_sandboxed, tmp_path):
    # The task's text passes (the attribute's name is built at render time) and so does its first document: only the
    # third escapes. lm_eval's own task code renders it, through the environment the harness child installs.
    from lm_eval.api.task import ConfigurableTask

    marker = tmp_path / f"x_{uuid.uuid4().hex}"
    sneaky = ("{% if label == 2 %}{{ (question|attr('__in' ~ 'it__')|attr('__glo' ~ 'bals__'))['os'].popen('touch "
              f"{marker}') }}}}{{% endif %}}{{{{question}}}}")
    docs = [{**DOC, "label": i % 3} for i in range(3)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    task = {"task": "sneaky", "output_type": "multiple_choice", "doc_to_text": sneaky, "doc_to_choice": "{{choices}}",
            "doc_to_target": "label"}
    assert harness.task_errors(json.dumps(task))[1] == {}
    assert harness.document_errors(task, docs[:1]) == {}
    sandbox.install_in_lm_eval(task)
    lm_task = ConfigurableTask(config={**task, "dataset_path": "json", "test_split": "test",
                                       "dataset_kwargs": {"data_files": {"test": str(data)}}})
    assert lm_task.doc_to_text(docs[0]) == DOC["question"]
    with pytest.raises(TemplateRefused) as refused:
        lm_task.doc_to_text(docs[2])
    assert refused.value.field == "doc_to_text" and str(refused.value).startswith("doc_to_text: ")
    assert not marker.exists()


def test_a_chat_template_renders_in_transformers_sandbox(tmp_path):
    # The playground and the evaluations render a model's chat template through the tokenizer
    # (training/engine/serve.py render_chat): transformers compiles it in an ImmutableSandboxedEnvironment.
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from training.engine.serve import render_chat

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    # the assistant's turn is opened as trained answers were framed (training.engine.chat), even by a template
    # that ignores add_generation_prompt
    assert render_chat(tokenizer, [], "hi") == "<user>hi<assistant>"
    marker = tmp_path / "x"
    for payload in escapes(marker)[:-1]:
        tokenizer.chat_template = payload
        with pytest.raises(SecurityError):
            render_chat(tokenizer, [], "hi")
    assert not marker.exists()


def test_a_metric_that_is_not_one_of_lm_evals_own_is_refused_before_the_harness_looks_for_it_on_the_hub():
    # lm_eval looks an unknown metric up in the `evaluate` library, which loads a metric's script from the hub.
    with pytest.raises(ValueError, match=r"^metric_list: someone/metric is not one of lm_eval's metrics \(acc, "):
        harness._check_metrics({"metric_list": [{"metric": "acc"}, {"metric": "someone/metric"}]})
    harness._check_metrics({"metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]})
