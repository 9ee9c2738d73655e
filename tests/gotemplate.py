"""A small executor of Go text/template, enough of it for the templates Tuneboard writes into Modelfiles (text,
fields, $ variables declared and assigned, if / else if / else / range / end, eq, ne, and, or, not), so a test can
render a TEMPLATE as Ollama would and compare it with the model's own Jinja rendering. Trim markers are honoured."""
from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _tokens(text: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", inner) in order, with {{- and -}} trimming the text beside them."""
    out: list[tuple[str, str]] = []
    at = 0
    for match in _ACTION.finditer(text):
        before = text[at:match.start()]
        if match.group(1):
            before = before.rstrip()
        out.append(("text", before))
        out.append(("action", match.group(2).strip()))
        at = match.end()
        if match.group(3):
            rest = text[at:]
            at += len(rest) - len(rest.lstrip())
    out.append(("text", text[at:]))
    return out


def _parse(tokens: list[tuple[str, str]], at: int, stop: tuple[str, ...]) -> tuple[list, int, str]:
    nodes: list = []
    while at < len(tokens):
        kind, value = tokens[at]
        at += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(None, 1)[0]
        if word in stop:
            return nodes, at, value
        if word in ("if", "range"):
            body, at, ended = _parse(tokens, at, ("else", "end"))
            branches = [(value[len(word):].strip(), body)]
            other: list = []
            while ended.startswith("else"):
                condition = ended[len("else"):].strip()
                part, at, ended = _parse(tokens, at, ("else", "end"))
                if condition.startswith("if "):
                    branches.append((condition[3:].strip(), part))
                else:
                    other = part
            nodes.append((word, branches, other))
        else:
            nodes.append(("action", value))
    return nodes, at, ""


class _Scope:
    def __init__(self, root: dict[str, Any]):
        self.root, self.vars = root, {"$": root}


def _value(term: str, dot: Any, scope: _Scope) -> Any:
    if term.startswith('"'):
        return term[1:-1]
    if term in ("true", "false"):
        return term == "true"
    if term.startswith("$"):
        name, _, path = term.partition(".")
        value = scope.vars[name]
    elif term.startswith("."):
        value, path = dot, term[1:]
    else:
        raise ValueError(f"unsupported term {term!r}")
    for part in filter(None, path.split(".")):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part)
    return value


def _pipeline(text: str, dot: Any, scope: _Scope) -> Any:
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    words = _split(text)
    functions = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not a,
                 "and": lambda *a: next((x for x in a if not x), a[-1]),
                 "or": lambda *a: next((x for x in a if x), a[-1])}
    if words[0] in functions:
        return functions[words[0]](*[_pipeline(w, dot, scope) for w in words[1:]])
    return _value(words[0], dot, scope)


def _split(text: str) -> list[str]:
    """Words of a pipeline, a parenthesised group as one word (no quoted string here holds a space)."""
    words, depth, current = [], 0, ""
    for c in text:
        if c == " " and depth == 0:
            if current:
                words.append(current)
            current = ""
            continue
        depth += c == "("
        depth -= c == ")"
        current += c
    if current:
        words.append(current)
    return words


def _run(nodes: list, dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "action":
            text = node[1]
            if ":=" in text or re.match(r"\$\w+\s*=", text):
                name, _, expression = re.split(r"(:=|=)", text, maxsplit=1)
                scope.vars[name.strip()] = _pipeline(expression, dot, scope)
            else:
                value = _pipeline(text, dot, scope)
                out.append("" if value is None else str(value))
        elif node[0] == "if":
            for condition, body in node[1]:
                if _pipeline(condition, dot, scope):
                    _run(body, dot, scope, out)
                    break
            else:
                _run(node[2], dot, scope, out)
        elif node[0] == "range":
            items = _pipeline(node[1][0][0], dot, scope) or []
            for item in items:
                _run(node[1][0][1], item, scope, out)
            if not items:
                _run(node[2], dot, scope, out)


def render(template: str, data: dict[str, Any]) -> str:
    """The template executed on `data` (System, Messages: [{Role, Content}], ...), as Go would for these forms."""
    nodes, _, _ = _parse(_tokens(template), 0, ())
    out: list[str] = []
    _run(nodes, data, _Scope(data), out)
    return "".join(out)
