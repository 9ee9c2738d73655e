"""An Ollama Modelfile for an exported model: its TEMPLATE in Ollama's Go-template syntax, derived from the model's own
chat template, PARAMETER stop for the template's end-of-turn tokens, and SYSTEM where the dataset had one.

The template is derived, not looked up: the model's Jinja template renders a probe conversation (system, user,
answer, user, then the generation prompt) and the text between the probe's contents becomes the Go template's
literal pieces. So whatever a family writes around a turn (Llama 3.1's knowledge date, Qwen3's empty think block
after the generation prompt, Gemma 4's thought channel, SmolLM3's metadata) is what Ollama writes too, and Ollama
prompts the model as it was trained. The system turn follows the training's own rule (chat.template_rules): kept
where the template keeps it, else joined to the first user turn with a blank line, as chat.prepare_messages does.
The beginning-of-sequence token is left out: llama.cpp adds it from the GGUF's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

from training.engine import chat

# Probe contents no template rewrites (plain words: Llama 3 trims content, so no whitespace or control characters).
SYSTEM, USER1, ANSWER1, USER2 = "TBSYSTEMTEXT", "TBUSERONE", "TBANSWERONE", "TBUSERTWO"


class TemplateUnsupported(ValueError):
    """The chat template cannot be expressed as a turn-by-turn Go template (it rewrites the probe's turns)."""


@dataclass(frozen=True)
class OllamaTemplate:
    template: str  # Go template text
    stops: tuple[str, ...]
    system: str  # "kept" or "joined" (to the first user turn)


def _go_text(text: str) -> str:
    """Literal text inside a Go template: "{{" is the only sequence Go reads as an action, written as a string."""
    return text.replace("{{", '{{ "{{" }}')


def _strip_bos(tokenizer, text: str) -> str:
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


def _split(text: str, parts: list[str]) -> list[str]:
    """The text between (and around) `parts`, which must occur in this order."""
    pieces, at = [], 0
    for part in parts:
        found = text.find(part, at)
        if found < 0:
            raise TemplateUnsupported(f"the chat template does not keep the turn {part!r} in order")
        pieces.append(text[at:found])
        at = found + len(part)
    pieces.append(text[at:])
    return pieces


def derive_template(tokenizer) -> OllamaTemplate:
    """The Go template that renders a conversation as `tokenizer`'s chat template does (user/assistant turns
    alternating after an optional system prompt), with the stop strings for its end of turn."""
    rules = chat.template_rules(tokenizer)
    turns = [{"role": "user", "content": USER1}, {"role": "assistant", "content": ANSWER1},
             {"role": "user", "content": USER2}]
    plain = _strip_bos(tokenizer, chat.render(tokenizer, turns, add_generation_prompt=True))
    start, after_user, after_answer, end = _split(plain, [USER1, ANSWER1, USER2])
    # Each piece is what comes between two contents: user -> answer (user's end, assistant's header), answer -> user,
    # and the last user's end with the generation prompt.
    body = (f'{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}{{{{ .Content }}}}'
            f'{{{{ else if eq .Role "assistant" }}}}{_go_text(after_user)}{{{{ .Content }}}}{_go_text(after_answer)}'
            f'{{{{ end }}}}{{{{ end }}}}{_go_text(end)}')
    if rules.system == "kept":
        with_system = _strip_bos(tokenizer, chat.render(
            tokenizer, [{"role": "system", "content": SYSTEM}, *turns], add_generation_prompt=True))
        before_system, between, *_ = _split(with_system, [SYSTEM, USER1, ANSWER1, USER2])
        head = (f"{{{{ if .System }}}}{_go_text(before_system)}{{{{ .System }}}}{_go_text(between)}"
                f"{{{{ else }}}}{_go_text(start)}{{{{ end }}}}")
        system = "kept"
    else:
        # The training joined the system text to the first user turn ("<system>\n\n<user>"): so does the template.
        # Ollama keeps system messages in .Messages too (and joins them into .System): "first" is the first user turn.
        head = _go_text(start) + "{{ $first := true }}"
        body = body.replace('{{ if eq .Role "user" }}{{ .Content }}',
                            '{{ if eq .Role "user" }}{{ if and $.System $first }}{{ $.System }}\n\n{{ end }}'
                            '{{ $first = false }}{{ .Content }}', 1)
        system = "joined"
    stops = tuple(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in chat.end_of_turn_ids(tokenizer)))
    return OllamaTemplate(template=head + body, stops=stops, system=system)


def _quoted(text: str) -> str:
    if '"""' in text:
        raise TemplateUnsupported('the text holds """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(*, source: str, adapter: str | None = None, template: OllamaTemplate | None = None,
              system: str | None = None, alternatives: list[str] | tuple[str, ...] = (),
              license_text: str | None = None) -> str:
    """A Modelfile: FROM the GGUF `source` (a path beside the Modelfile: "./name.gguf"), ADAPTER a GGUF LoRA on it,
    TEMPLATE and PARAMETER stop from `template`, SYSTEM the dataset's system prompt; `alternatives` are other GGUFs
    the FROM line could name (the quantizations), listed in a comment."""
    lines = ["# Made by Tuneboard. Create the model with: ollama create <name> -f <this file>"]
    lines += [f"# or: FROM {alt}" for alt in alternatives]
    lines.append(f"FROM {source}")
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    if template is not None:
        lines.append(f"TEMPLATE {_quoted(template.template)}")
        lines += [f"PARAMETER stop {_quoted(stop) if any(c.isspace() for c in stop) else stop}"
                  for stop in template.stops]
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    if license_text:
        lines.append(f"LICENSE {_quoted(license_text)}")
    return "\n".join(lines) + "\n"
