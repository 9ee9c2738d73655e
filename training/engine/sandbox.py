"""The sandbox a team's Jinja templates render in: an lm_eval task's fields (doc_to_text, doc_to_target, ...).

lm-evaluation-harness renders them with a plain `jinja2.Environment` (lm_eval/utils.py), where
`{{ lipsum.__globals__['os'].popen('id').read() }}` runs a command as the worker's user. Here they render in Jinja's
`ImmutableSandboxedEnvironment` (no attribute starting with "_", no method that changes a list or dict, no unsafe
callable), with the harness's filter and none of Jinja's helper globals: a task reads its document's fields, nothing
else. A template is checked three ways: its text at upload (no "_" attribute or key named in it, for a field that
reads one only at some document), a render of the first documents at upload, and every render at evaluation time
(the harness's own environment replaced before any task loads)."""
from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

# Every field lm_eval 0.4 renders as a template when it is a string that is not one of the document's columns
# (lm_eval/api/task.py: doc_to_*, gen_prefix, description through resolve_field, the decontamination query), and
# the few-shot examples' own overrides of them.
TEMPLATED_FIELDS = ("doc_to_text", "doc_to_target", "doc_to_choice", "gen_prefix", "description",
                    "doc_to_decontamination_query", "doc_to_image", "doc_to_audio")
FEWSHOT_TEMPLATED_FIELDS = ("doc_to_text", "doc_to_target", "doc_to_choice", "gen_prefix")
# Jinja's helper globals: nothing a task needs (no lm_eval task uses them); lipsum makes text of any length.
DROPPED_GLOBALS = ("lipsum", "cycler", "joiner", "namespace")


class TemplateRefused(Exception):
    """A team's template the sandbox refused: the field it came from and why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    """lm_eval's own filter (lm_eval/utils.py), which its tasks use: re.sub."""
    return re.sub(pattern, repl, string, count=count)


class _Sandbox(ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Jinja hands back an undefined value that fails only when it is printed or used, and a chain built on it
        # (x|attr('__init__')|attr('__globals__')) then fails as a mere "undefined": the refusal is the error.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def sandbox() -> ImmutableSandboxedEnvironment:
    """An environment as lm_eval's (undefined names fail, trailing newlines kept, its filter), sandboxed."""
    env = _Sandbox(undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = regex_replace
    for name in DROPPED_GLOBALS:
        env.globals.pop(name, None)
    return env


SANDBOX = sandbox()


def templated_fields(task: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, template) for each field of the task lm_eval would render, few-shot overrides as
    fewshot_config.<field>."""
    for name in TEMPLATED_FIELDS:
        if isinstance(task.get(name), str):
            yield name, task[name]
    fewshot = task.get("fewshot_config")
    if isinstance(fewshot, dict):
        for name in FEWSHOT_TEMPLATED_FIELDS:
            if isinstance(fewshot.get(name), str):
                yield f"fewshot_config.{name}", fewshot[name]


def _private_names(template: nodes.Template) -> Iterable[str]:
    for node in template.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        if isinstance(node, nodes.Name):
            if node.name in ("self", *DROPPED_GLOBALS):
                yield node.name
            continue
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            yield name


def text_errors(task: dict[str, Any]) -> dict[str, str]:
    """Each templated field whose text does not compile, or names what no template may read (an attribute or key
    starting with "_", Jinja's `self` or its helper globals): {field: why}. Pure, no document needed."""
    errors = {}
    for field, text in templated_fields(task):
        try:
            parsed = SANDBOX.parse(text)
        except TemplateError as exc:
            errors[field] = f"not a valid template: {exc}"
            continue
        private = sorted(set(_private_names(parsed)))
        if private:
            errors[field] = (f"the template reads {', '.join(private)}, which a task's template may not; it may read "
                             "the document's fields (e.g. {{ question }}) and use Jinja's filters")
    return errors


def render(field: str, template: str, doc: dict[str, Any]) -> str:
    """The template rendered on a document in the sandbox, as lm_eval renders it; TemplateRefused naming the field
    when the sandbox refuses it (an unsafe attribute, a call it does not allow) or the template fails."""
    try:
        return SANDBOX.from_string(template).render(**doc)
    except SecurityError as exc:
        raise TemplateRefused(field, f"the template tried what a task's template may not ({exc})") from None
    except TemplateError as exc:
        raise TemplateRefused(field, f"{type(exc).__name__}: {exc}") from None


def render_errors(task: dict[str, Any], docs: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Each templated field that fails to render on one of `docs` in the sandbox: {field: why, naming the
    document (1-based)}. A field that is one of a document's columns is read, not rendered, as lm_eval does."""
    errors: dict[str, str] = {}
    fields = list(templated_fields(task))
    for number, doc in enumerate(docs, start=1):
        for field, template in fields:
            if field in errors or template in doc:
                continue
            try:
                render(field, template, doc)
            except TemplateRefused as exc:
                errors[field] = f"document {number}: {exc.reason}"
            except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
                errors[field] = f"document {number}: {type(exc).__name__}: {exc}"
    return errors


def install_in_lm_eval(task: dict[str, Any]) -> None:
    """Replace lm-evaluation-harness's template environment with the sandbox, before any task loads: every template
    lm_eval renders goes through `lm_eval.utils.apply_template` (and the module's `env`), and a refusal names the
    task's field whose template it was."""
    from lm_eval import utils

    fields: dict[str, str] = {}
    for field, template in templated_fields(task):
        fields.setdefault(template, field)

    def apply_template(template: str, doc: dict) -> str:
        return render(fields.get(template, "a template of the task"), template, doc)

    utils.env = SANDBOX
    utils.apply_template = apply_template
