"""Pure parsing of the command line's values: `--set name=value` overrides and id lists."""
from __future__ import annotations

import json
from typing import Any


class InputError(ValueError):
    """A value on the command line that cannot be sent: exit code 2, like a 400."""


def parse_value(text: str) -> Any:
    """JSON where it parses (32, 1e-4, true, null, [1, 2], {"a": 1}, "quoted"), else the text itself (cosine)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set r=32 --set learning_rate=1e-4` as {"r": 32, "learning_rate": 0.0001}; a later one wins. A dotted name
    (lr_scheduler_kwargs.num_cycles=2) fills a nested object, as the run form names its fields."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--set {item!r}: expected NAME=VALUE, e.g. --set r=32")
        target = out
        *parents, leaf = name.split(".")
        for parent in parents:
            if not parent:
                raise InputError(f"--set {item!r}: an empty part in the name {name!r}")
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise InputError(f"--set {item!r}: {parent!r} was already set to a value, not an object")
        if not leaf:
            raise InputError(f"--set {item!r}: an empty part in the name {name!r}")
        target[leaf] = parse_value(value)
    return out


def format_errors(errors: dict[str, list[str]]) -> list[str]:
    """The API's 400 body's errors as lines `field: message`."""
    lines = []
    for field, messages in errors.items():
        for message in messages if isinstance(messages, list) else [messages]:
            lines.append(f"{field}: {message}")
    return lines
