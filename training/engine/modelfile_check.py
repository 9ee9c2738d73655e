"""A checker for Ollama Modelfiles, per Ollama's documented syntax (docs/modelfile.md): one instruction per line (FROM,
ADAPTER, TEMPLATE, SYSTEM, PARAMETER, MESSAGE, LICENSE, REQUIRES; case-insensitive; # comments), values bare to the
end of the line, in "quotes" or in \"\"\"triple quotes\"\"\" across lines; PARAMETER names and value types as Ollama
documents them; MESSAGE roles; and TEMPLATE read as a Go text/template: every {{ }} action closed, its keyword
known, if/range/with/block/define closed by end, else only inside them, fields, variables and functions known.

Tuneboard checks each Modelfile it writes with it before the export succeeds, and the tests check them again."""
from __future__ import annotations

import re
from dataclasses import dataclass

INSTRUCTIONS = ("FROM", "ADAPTER", "TEMPLATE", "SYSTEM", "PARAMETER", "MESSAGE", "LICENSE", "REQUIRES")
# Ollama's documented parameters and their value types (api/types.go Options and Runner).
PARAMETERS: dict[str, type] = {
    "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "num_thread": int, "num_keep": int,
    "num_predict": int, "repeat_last_n": int, "top_k": int, "seed": int, "mirostat": int,
    "repeat_penalty": float, "temperature": float, "top_p": float, "min_p": float, "typical_p": float,
    "presence_penalty": float, "frequency_penalty": float, "mirostat_eta": float, "mirostat_tau": float,
    "use_mmap": bool, "penalize_newline": bool, "stop": str,
}
ROLES = ("system", "user", "assistant", "tool")
# The data Ollama hands a template (template/template.go) and the fields of a message, a tool and a tool call.
FIELDS = {"System", "Prompt", "Response", "Suffix", "Messages", "Tools", "Think", "ThinkLevel", "IsThinkSet",
          "Role", "Content", "Thinking", "ToolCalls", "ToolName", "ToolCallID", "Images", "Function", "Name",
          "Arguments", "Description", "Parameters", "Type", "Required", "Properties", "Index"}
# Go's built-in template functions and those Ollama adds.
FUNCTIONS = {"and", "or", "not", "len", "index", "slice", "print", "printf", "println", "html", "js", "urlquery",
             "call", "eq", "ne", "lt", "le", "gt", "ge", "json", "currentDate", "yesterdayDate", "toTypeScriptType"}
OPENERS = {"if", "range", "with", "block", "define"}


class ModelfileError(ValueError):
    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Command:
    name: str  # the instruction, upper case
    args: str
    line: int


def parse(text: str) -> list[Command]:
    """The Modelfile's instructions in order; ModelfileError naming the line of the first thing that is not one."""
    commands, lines, n = [], text.split("\n"), 0
    while n < len(lines):
        start, line = n + 1, lines[n].strip()
        n += 1
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        name = word.upper()
        if name not in INSTRUCTIONS:
            raise ModelfileError(start, f"{word!r} is not an instruction; allowed: {', '.join(INSTRUCTIONS)}")
        rest = rest.strip()
        prefix = ""
        if name in ("PARAMETER", "MESSAGE"):  # the first word is the parameter's name, the message's role
            prefix, _, rest = rest.partition(" ")
            rest = rest.strip()
            if not prefix or not rest:
                raise ModelfileError(start, f"{name} needs a {'name' if name == 'PARAMETER' else 'role'} and a value")
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                if n >= len(lines):
                    raise ModelfileError(start, f'{name}: the """ opened here is never closed')
                body += "\n" + lines[n]
                n += 1
            value, _, after = body.partition('"""')
            if after.strip():
                raise ModelfileError(n, f'{name}: text after the closing """: {after.strip()[:40]!r}')
        elif rest.startswith('"'):
            if len(rest) < 2 or not rest.endswith('"'):
                raise ModelfileError(start, f"{name}: the quoted value is not closed on its line")
            value = rest[1:-1]
        else:
            value = rest
        if not value and name != "SYSTEM":
            raise ModelfileError(start, f"{name} has no value")
        commands.append(Command(name, f"{prefix} {value}" if prefix else value, start))
    return commands


def check(text: str) -> list[Command]:
    """parse(), then what each instruction's value must be: one FROM, PARAMETER names and types, MESSAGE roles, the
    TEMPLATE a Go template. Returns the instructions; ModelfileError on the first problem."""
    commands = parse(text)
    sources = [c for c in commands if c.name == "FROM"]
    if len(sources) != 1:
        raise ModelfileError(sources[1].line if sources else 1,
                             f"a Modelfile has exactly one FROM; this one has {len(sources)}")
    for command in commands:
        if command.name == "PARAMETER":
            name, _, value = command.args.partition(" ")
            if name not in PARAMETERS:
                raise ModelfileError(command.line, f"{name!r} is not a parameter; allowed: {', '.join(PARAMETERS)}")
            _check_value(command.line, name, value, PARAMETERS[name])
        elif command.name == "MESSAGE":
            role = command.args.partition(" ")[0]
            if role not in ROLES:
                raise ModelfileError(command.line, f"MESSAGE role {role!r}; allowed: {', '.join(ROLES)}")
        elif command.name == "TEMPLATE":
            try:
                check_go_template(command.args)
            except GoTemplateError as exc:
                raise ModelfileError(command.line, f"TEMPLATE: {exc}") from None
    return commands


def _check_value(line: int, name: str, value: str, kind: type) -> None:
    ok = {int: lambda v: re.fullmatch(r"-?\d+", v),
          float: lambda v: re.fullmatch(r"-?(\d+\.?\d*|\.\d+)([eE]-?\d+)?", v),
          bool: lambda v: v.lower() in ("true", "false"), str: lambda v: bool(v)}[kind](value)
    if not ok:
        raise ModelfileError(line, f"PARAMETER {name}: {value!r} is not {'an' if kind is int else 'a'} "
                                   f"{ {int: 'integer', float: 'number', bool: 'true or false', str: 'string'}[kind]}")


# Go text/template --------------------------------------------------------------------------------------------------

class GoTemplateError(ValueError):
    pass


_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(`[^`]*`)|(\$[A-Za-z_0-9]*)|(\.[A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_]'
                    r'[A-Za-z_0-9]*)*|\.)|(-?\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z_0-9]*)|(:=|=|\||\(|\)|,))')


def _actions(text: str) -> list[tuple[int, str]]:
    """Each action's inside (trim markers removed) with its line; a {{ with no }} is an error."""
    found, at = [], 0
    while (opened := text.find("{{", at)) >= 0:
        line = text.count("\n", 0, opened) + 1
        # an action may hold "}}" inside a string: find the end outside quotes
        end, quote, k = None, None, opened + 2
        while k < len(text):
            c = text[k]
            if quote:
                if c == "\\" and quote == '"':
                    k += 1
                elif c == quote:
                    quote = None
            elif c in "\"`":
                quote = c
            elif text.startswith("}}", k):
                end = k
                break
            k += 1
        if end is None:
            raise GoTemplateError(f"line {line}: {{{{ is never closed by }}}}")
        inner = text[opened + 2:end]
        inner = re.sub(r"^-\s", "", re.sub(r"\s-$", "", inner))
        found.append((line, inner.strip()))
        at = end + 2
    return found


def check_go_template(text: str) -> None:
    """The template reads as a Go text/template of Ollama's: GoTemplateError naming the line of the first problem."""
    stack: list[tuple[str, int]] = []
    variables = [{"$"}]
    for line, inner in _actions(text):
        if inner.startswith("/*"):
            if not inner.endswith("*/"):
                raise GoTemplateError(f"line {line}: a comment must end with */ before }}}}")
            continue
        if not inner:
            raise GoTemplateError(f"line {line}: an empty action {{{{ }}}}")
        word = inner.split(None, 1)[0]
        rest = inner[len(word):].strip()
        if word == "end":
            if not stack:
                raise GoTemplateError(f"line {line}: {{{{ end }}}} closes nothing")
            stack.pop()
            variables.pop()
            if rest:
                raise GoTemplateError(f"line {line}: {{{{ end }}}} takes nothing after it")
        elif word == "else":
            if not stack or stack[-1][0] not in ("if", "range", "with"):
                raise GoTemplateError(f"line {line}: {{{{ else }}}} outside an if, range or with")
            if rest:
                kind, _, cond = rest.partition(" ")
                if kind not in ("if", "with") or not cond.strip():
                    raise GoTemplateError(f"line {line}: else may be followed by if or with and a condition only")
                _pipeline(line, cond, variables)
        elif word in ("break", "continue"):
            if not any(kind == "range" for kind, _ in stack):
                raise GoTemplateError(f"line {line}: {{{{ {word} }}}} outside a range")
        elif word in OPENERS:
            if word in ("define", "block"):
                if not re.match(r'"[^"]*"', rest):
                    raise GoTemplateError(f'line {line}: {word} needs a template name in quotes')
                rest = rest[rest.index('"', 1) + 1:].strip()
            if word != "define":
                if not rest:
                    raise GoTemplateError(f"line {line}: {word} needs a pipeline")
                variables.append(set(variables[-1]))
                _pipeline(line, rest, variables, declares=word == "range")
            else:
                variables.append({"$"})
            stack.append((word, line))
        elif word == "template":
            if not re.match(r'"[^"]*"', rest):
                raise GoTemplateError(f'line {line}: template needs a template name in quotes')
        else:
            _pipeline(line, inner, variables)
    if stack:
        kind, line = stack[-1]
        raise GoTemplateError(f"line {line}: this {kind} is never closed by {{{{ end }}}}")


def _pipeline(line: int, text: str, variables: list[set[str]], declares: bool = False) -> None:
    """A pipeline's tokens: known fields, functions and variables, balanced parentheses, declarations first."""
    tokens, at = [], 0
    while at < len(text.rstrip()):
        match = _TOKEN.match(text, at)
        if match is None:
            raise GoTemplateError(f"line {line}: cannot read {text[at:].strip()[:30]!r}")
        tokens.append(match)
        at = match.end()
    scope, depth = variables[-1], 0
    assign = next((k for k, t in enumerate(tokens) if t.group(7) in (":=", "=")), None)
    if assign is not None:
        names = [t.group(3) for t in tokens[:assign] if t.group(3)]
        others = [t.group(0).strip() for t in tokens[:assign] if not t.group(3) and t.group(7) != ","]
        if not names or others or (len(names) > 1 and not declares):
            raise GoTemplateError(f"line {line}: only variables may stand before {tokens[assign].group(7)}")
        if tokens[assign].group(7) == "=":
            unknown = [n for n in names if n not in scope]
            if unknown:
                raise GoTemplateError(f"line {line}: {unknown[0]} is assigned before it is declared with :=")
        else:
            scope.update(names)
        tokens = tokens[assign + 1:]
    if not tokens:
        raise GoTemplateError(f"line {line}: nothing to evaluate in {text!r}")
    for token in tokens:
        variable, field, name, symbol = token.group(3), token.group(4), token.group(6), token.group(7)
        if variable and variable not in scope:
            raise GoTemplateError(f"line {line}: variable {variable} is not declared")
        if field and field != ".":
            unknown = [f for f in field[1:].split(".") if f not in FIELDS]
            if unknown:
                raise GoTemplateError(f"line {line}: .{unknown[0]} is not a field Ollama gives a template")
        if name and name not in FUNCTIONS and name not in ("true", "false", "nil"):
            raise GoTemplateError(f"line {line}: {name!r} is not a template function; known: "
                                  f"{', '.join(sorted(FUNCTIONS))}")
        if symbol == "(":
            depth += 1
        elif symbol == ")":
            depth -= 1
            if depth < 0:
                raise GoTemplateError(f"line {line}: a ) with no (")
        elif symbol in (":=", "=", ","):
            raise GoTemplateError(f"line {line}: {symbol} out of place")
    if depth:
        raise GoTemplateError(f"line {line}: a ( is never closed")
