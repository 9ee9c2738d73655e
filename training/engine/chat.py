"""Which tokens of a chat train, for whatever chat template the model has, and the template's rules checked per row.

TRL's assistant_only_loss needs `{% generation %}` markers that real templates lack (TRL 1.15 refuses the rest), and
Unsloth's train_on_responses_only needs the instruction/response headers spelled out per family. Here every row is
rendered once with the model's own template (date pinned, thinking off, so a row does not change with the day or the
template's defaults) and each assistant turn is found in that text: its content, then the end-of-turn token the
template writes right after it (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, `</s>`, `<|end|>`...). Those characters
are mapped to tokens with the fast tokenizer's offsets. The same function feeds the trainer (input_ids plus TRL's
`assistant_masks` column, read alike by TRL and Unsloth, packed or not), the dataset statistics and the checks, so
what the page counts is what trains.

System turns follow the template: where it refuses one (Gemma 2) or does not keep it before the first user turn
(Mistral Nemo drops it from every conversation that ends with an answer), its text is joined to the first user turn,
the transformation users expect, and the row says so. A template that rewrites an answer (the R1 distills cut the
reasoning before `</think>`) cannot train that answer as written: the row is refused with the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

ROLES = ("system", "user", "assistant")
# The date a template that prints "today" sees: Llama 3.x's own fallback date, so a run's rows never depend on the day.
PINNED_DATE = datetime(2024, 7, 26)
SENTINEL = "\u2063TUNEBOARD\u2063"  # an answer no template rewrites, to find where an answer starts
PROBE = {"system": "Answer in one word.", "user": "Which colour is the sky?", "assistant": "Blue.",
         "user2": "And grass?", "assistant2": "Green."}


def template_kwargs() -> dict:
    """What every render passes: a fixed date (date_string for Llama 3.x, strftime_now for templates that call it;
    a render variable shadows the global transformers defines) and thinking off (Qwen3, SmolLM3, Gemma 4: the empty
    think block then belongs to the prompt, not to the trained answer)."""
    return {"date_string": PINNED_DATE.strftime("%d %b %Y"), "strftime_now": PINNED_DATE.strftime,
            "enable_thinking": False}


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs())


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


@dataclass(frozen=True)
class TemplateRules:
    """How a chat template treats a conversation, found by rendering probe conversations once."""
    system: str  # "kept", "refused" (the template raises), "dropped" (its text is not in the row) or "moved"
    system_reason: str
    injected: str  # text of the template's own in every row (a default system prompt, a date), "" if none
    markers: bool  # `{% generation %}` markers: the template marks the answers itself

    @property
    def joins_system(self) -> bool:
        return self.system != "kept"


def _specials(tokenizer) -> list[str]:
    """The tokenizer's control tokens, longest first: special ones and every added one (some vocabularies, Phi-3's
    among them, mark their turn tokens as user-defined rather than special)."""
    found = set(tokenizer.all_special_tokens)
    found.update(t.content for t in tokenizer.added_tokens_decoder.values())
    return sorted((s for s in found if s), key=len, reverse=True)


def template_rules(tokenizer) -> TemplateRules:
    if not tokenizer.chat_template:
        raise TemplateProblem("the tokenizer has no chat template: messages rows cannot be rendered; allowed: "
                              "text or prompt_completion data, or a model with a chat template")
    p = PROBE
    with_system = [{"role": "system", "content": p["system"]}, {"role": "user", "content": p["user"]},
                   {"role": "assistant", "content": p["assistant"]}, {"role": "user", "content": p["user2"]},
                   {"role": "assistant", "content": p["assistant2"]}]
    try:
        text = render(tokenizer, with_system)
    except Exception as exc:  # noqa: BLE001 - a template refuses by raising whatever its author chose
        system, reason = "refused", f"the template refuses a system turn ({_message(exc)})"
    else:
        at, user_at = text.find(p["system"]), text.find(p["user"])
        if at < 0:
            system, reason = "dropped", "the template leaves a system turn out of conversations that end with an answer"
        elif at > user_at:
            system, reason = "moved", "the template moves the system text after the first user turn"
        else:
            system, reason = "kept", ""
    plain = render(tokenizer, with_system[1:3])
    leftover = plain.replace(p["user"], " ").replace(p["assistant"], " ")
    for special in _specials(tokenizer):
        leftover = leftover.replace(special, " ")
    words = [w for w in re.split(r"\s+", leftover) if w and w.strip("#:|<>[]/") not in ("system", "user", "assistant",
                                                                                         "model", "")]
    injected = " ".join(words) if len(" ".join(words)) > 12 else ""
    return TemplateRules(system=system, system_reason=reason, injected=injected,
                         markers=has_generation_markers(tokenizer.chat_template))


class TemplateProblem(ValueError):
    """A tokenizer/template that cannot render messages at all."""


def _message(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


@dataclass
class EncodedChat:
    """One messages row as it trains: the rendered text, its token ids, which tokens carry loss, and what the
    template or the system transformation changed. `error` set: the row cannot train as asked (and why)."""
    text: str = ""
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)  # character spans that train
    changes: list[str] = field(default_factory=list)
    error: str | None = None
    error_field: str = "train_file"
    prompt_mismatch: str | None = None


def prepare_messages(messages, rules: TemplateRules) -> tuple[list[dict], list[str], str | None]:
    """Check a row's structure and apply the system transformation; returns (messages, changes, error)."""
    if not isinstance(messages, list) or not messages:
        return [], [], "messages must be a non-empty list of {role, content} turns"
    clean = []
    for k, turn in enumerate(messages):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        if role not in ROLES:
            return [], [], f"turn {k + 1} has role {role!r}; allowed: {', '.join(ROLES)} (tool turns are not trained)"
        if not isinstance(content, str):
            return [], [], f"turn {k + 1} ({role}) has no text content"
        if role == "system" and k != 0:
            return [], [], f"turn {k + 1} is a system turn; a system turn may only come first"
        clean.append({"role": role, "content": content})
    changes = []
    if clean[0]["role"] == "system" and rules.joins_system:
        system = clean.pop(0)["content"]
        if not clean or clean[0]["role"] != "user":
            return [], [], f"{rules.system_reason}, and no user turn follows it to carry its text"
        clean[0] = {"role": "user", "content": f"{system}\n\n{clean[0]['content']}"}
        changes.append(f"system text joined to the first user turn: {rules.system_reason}")
    rest = clean[1:] if clean[0]["role"] == "system" else clean
    for k, turn in enumerate(rest):
        wanted = "user" if k % 2 == 0 else "assistant"
        if turn["role"] != wanted:
            return [], [], (f"turns must alternate user/assistant after an optional system turn; turn "
                            f"{k + 1 + (len(clean) - len(rest))} is {turn['role']} where {wanted} was expected")
    if not any(t["role"] == "assistant" for t in rest):
        return [], [], "no assistant turn: nothing to train"
    return clean, changes, None


def encode_chat(tokenizer, messages, rules: TemplateRules, *, answers_only: bool = True,
                specials: list[str] | None = None) -> EncodedChat:
    """The row as the model trains on it. With answers_only, exactly each assistant turn's text plus the
    end-of-turn token the template writes after it carry loss; otherwise every token does."""
    clean, changes, error = prepare_messages(messages, rules)
    if error:
        return EncodedChat(changes=changes, error=error)
    try:
        text = render(tokenizer, clean)
    except Exception as exc:  # noqa: BLE001
        return EncodedChat(changes=changes, error=f"the chat template refuses this row: {_message(exc)}")
    out = EncodedChat(text=text, changes=changes)
    if rules.markers:
        batch = tokenizer.apply_chat_template(clean, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True, **template_kwargs())
        out.ids = list(batch["input_ids"])
        out.mask = list(batch["assistant_masks"]) if answers_only else [1] * len(out.ids)
        return out
    spans, error, last_start = _answer_spans(text, clean, specials or _specials(tokenizer))
    if error:
        if answers_only:
            out.error, out.error_field = error, "completion_only_loss"
            return out
        spans = []
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    out.ids = list(encoding["input_ids"])
    if not answers_only:
        out.mask = [1] * len(out.ids)
    else:
        out.spans = spans
        out.mask = [int(any(a <= start < b for a, b in spans)) if end > start else 0
                    for start, end in encoding["offset_mapping"]]
    if last_start is not None:
        out.prompt_mismatch = _prompt_mismatch(tokenizer, clean, text[:last_start])
    return out


def _answer_spans(text: str, messages: list[dict], specials: list[str]):
    """Find each turn's text in order; an answer's span runs over its text and the end-of-turn token after it.
    Returns (spans, error, start of the last answer)."""
    cursor, spans, last_start = 0, [], None
    for k, turn in enumerate(messages):
        content = turn["content"].strip()
        if not content:
            if turn["role"] == "assistant":
                return [], f"turn {k + 1} (assistant) is empty: nothing to train", None
            continue
        at = text.find(content, cursor)
        if at < 0:
            if turn["role"] != "assistant":
                return [], f"the chat template does not write turn {k + 1} ({turn['role']}) as given", None
            return [], (f"the chat template rewrites assistant turn {k + 1} (e.g. the R1 distills cut the "
                        "reasoning before </think>), so its answer cannot be trained as written; remove what the "
                        "template cuts, or set completion_only_loss to false to train every token"), None
        cursor = at + len(content)
        if turn["role"] == "assistant":
            end = next((cursor + len(s) for s in specials if text.startswith(s, cursor)), None)
            if end is None:
                return [], (f"the chat template writes no end-of-turn token right after assistant turn {k + 1}, so "
                            "the model could not learn to stop; set completion_only_loss to false"), None
            spans.append((at, end))
            last_start, cursor = at, end
    return spans, None, last_start


def _prompt_mismatch(tokenizer, messages: list[dict], trained_prefix: str) -> str | None:
    """How the template's generation prompt differs from what the last answer was trained after, or None."""
    last = max(k for k, t in enumerate(messages) if t["role"] == "assistant")
    try:
        prompt = render(tokenizer, messages[:last], add_generation_prompt=True)
    except Exception:  # noqa: BLE001
        return None
    if prompt == trained_prefix:
        return None
    common = 0
    while common < min(len(prompt), len(trained_prefix)) and prompt[common] == trained_prefix[common]:
        common += 1
    return (f"the template's generation prompt ends {prompt[common:][-60:]!r} where trained answers follow "
            f"{trained_prefix[common:][-60:]!r}; generation uses the trained form")


def generation_prompt(tokenizer, messages: list[dict], rules: TemplateRules) -> str:
    """The prompt for the next answer, formatted exactly as answers were trained: the system transformation applied
    and the text the template writes before an answer inside a conversation (not its add_generation_prompt form,
    which for R1 distills and Gemma 4 opens a thinking block that training rows never had)."""
    clean, _, error = prepare_messages(list(messages) + [{"role": "assistant", "content": SENTINEL}], rules)
    if error:
        raise TemplateProblem(error)
    if rules.markers:
        return render(tokenizer, clean[:-1], add_generation_prompt=True)
    text = render(tokenizer, clean)
    return text[:text.index(SENTINEL)]


def end_of_turn_ids(tokenizer) -> list[int]:
    """The token ids that end an answer: the tokenizer's end of sequence and the end-of-turn token the template writes
    right after an answer (Llama 3's `<|eot_id|>`, Gemma's `<end_of_turn>`, Phi-3's `<|end|>`), so that generation
    stops where the trained answers stopped rather than running on into the next turn."""
    ids = {tokenizer.eos_token_id} - {None}
    if tokenizer.chat_template:
        try:
            text = render(tokenizer, [{"role": "user", "content": PROBE["user"]},
                                      {"role": "assistant", "content": SENTINEL}])
        except Exception:  # noqa: BLE001 - a template that refuses the probe keeps the tokenizer's own end
            text = ""
        after = text[text.index(SENTINEL) + len(SENTINEL):] if SENTINEL in text else ""
        special = next((s for s in _specials(tokenizer) if after.startswith(s)), None)
        if special is not None:
            ids.add(tokenizer.convert_tokens_to_ids(special))
    return sorted(ids)


def visible_text(tokenizer, ids) -> str:
    """Generated ids as a person reads them: no control token as text, special or only added (Phi-3 marks its turn
    tokens as added, and Qwen3's `<think>` tags are added tokens that skip_special_tokens keeps)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for special in _specials(tokenizer):
        text = text.replace(special, "")
    return text


@dataclass
class DatasetPlan:
    """What a template makes of a whole dataset: the encoded rows and every row it refuses or changes, by reason."""
    rows: list[EncodedChat]
    rules: TemplateRules

    @property
    def refused(self) -> list[tuple[int, EncodedChat]]:
        return [(i, r) for i, r in enumerate(self.rows) if r.error]

    def reasons(self, kind: Callable[[EncodedChat], list[str]]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, row in enumerate(self.rows):
            for reason in kind(row):
                out.setdefault(reason, []).append(i)
        return out

    def summary(self) -> dict:
        """Plain data for the statistics and the run's warnings: counts, reasons and the first rows of each."""
        def listed(reasons: dict[str, list[int]]) -> list[dict]:
            return [{"reason": r, "rows": len(ix), "first_rows": [i + 1 for i in ix[:5]]} for r, ix in reasons.items()]
        return {
            "refused": listed(self.reasons(lambda r: [r.error] if r.error else [])),
            "changed": listed(self.reasons(lambda r: r.changes)),
            "prompt_mismatch": listed(self.reasons(lambda r: [r.prompt_mismatch] if r.prompt_mismatch else [])),
            "injected": self.rules.injected,
        }

    def error(self) -> dict[str, str] | None:
        """The ConfigError mapping for refused rows (field: first reason with the rows it covers), or None."""
        errors: dict[str, str] = {}
        for item in self.summary()["refused"]:
            row = next(r for _, r in self.refused if r.error == item["reason"])
            rows = ", ".join(str(i) for i in item["first_rows"]) + (" ..." if item["rows"] > 5 else "")
            errors.setdefault(row.error_field, f"{item['rows']} row(s) (row {rows}): {item['reason']}")
        return errors or None


def plan_dataset(tokenizer, rows, *, answers_only: bool = True) -> DatasetPlan:
    rules = template_rules(tokenizer)
    specials = _specials(tokenizer)
    return DatasetPlan([encode_chat(tokenizer, m, rules, answers_only=answers_only, specials=specials)
                        for m in rows], rules)
