"""Serving a run's adapter for the playground: one process loads the base model and its adapters once, then answers
prompts read as JSON lines on stdin with tokens streamed as events on stdout, until it has been idle for idle_s.

`python -m training.engine serve SPEC.json`. SPEC (plain JSON, validated by `parse_spec`):
    model     the base model (a local folder or hub id)
    left      the adapter folder of the side on the left (a run's final adapter or a checkpoint)
    right     the adapter folder of the side on the right (another run of the same base model), or null for the
              base model itself: the same loaded weights with the adapters off (peft's "__base__")
    idle_s    seconds without a request after which the process ends (default 300)
Both sides answer each prompt in one batched generate (peft's mixed-adapter batches: one row per side), so they share
the new user message, the decoding settings and the forward passes. A request is {"id": str, "prompt": str,
"system": str, "history": {"left": [...], "right": [...]}, "temperature", "top_p", "max_new_tokens", "seed",
"stop": [str, ...], "sides": ["left", "right"]} (checked by `parse_request`); {"type": "cancel", "request": id} ends
that request's reply where it is (read at once, while a reply is being generated: the tokens so far are its text); or
{"type": "stop", "reason": str}. `sides` (default both)
are the rows that answer: the OpenAI-compatible endpoint asks one side alone (training/openai_api/). `stop` strings end
a side's reply where one appears (transformers' own stop-string criterion), the string itself not part of the text.
The history is a multi-turn chat, each side its own: that side's earlier messages, user and assistant alternating,
after an optional leading system message that the chat template renders by its own rules (at most
MAX_HISTORY_MESSAGES a side; none or missing: a first turn). `system`, the playground's system prompt, is that
message for both sides (a history that starts with its own system message takes none). Each side's history plus the
new prompt is rendered by `render_chat` (the chat template, or the plain concatenation for a model without one), so
the two rows can differ in length: they are padded on the left into the same batch.

Events: loading (stage, done, total) while loading; ready (device, load_s, context); per request either refused
(request, errors {field: message}) or token (request, side, text) as each side's text grows, then one reply per side
(request, side, text, tokens, prompt_tokens, finish_reason: stop (end of sequence or a stop string), length or
cancelled, ttft_s, seconds); finished (reason: idle, stop or stdin closed) or failed ends it.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jinja2 import TemplateError

from .chat import TemplateProblem, end_of_turn_ids, generation_prompt, template_rules, visible_text
from .evaluate import SpecError, check_number, context_length
from .events import EventSink

SIDES = ("left", "right")
BASE_SIDE = "__base__"  # peft's adapter name for a batch row that runs with the adapters off
MAX_PROMPT_CHARS = 100_000
MAX_HISTORY_MESSAGES = 50  # a side's earlier messages (user and assistant, each counts): 25 exchanges
MAX_CHAT_CHARS = 400_000  # a side's whole conversation, the new prompt included
MAX_NEW_TOKENS = 4096
MAX_STOPS = 4  # OpenAI's own limit on stop sequences
MAX_STOP_CHARS = 200


@dataclass(frozen=True)
class Spec:
    model: str
    left: str
    right: str | None
    idle_s: float = 300.0


@dataclass(frozen=True)
class Request:
    id: str
    prompt: str
    max_new_tokens: int | None = 64  # None: up to the model's context (at most MAX_NEW_TOKENS)
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    history: dict[str, list[dict[str, str]]] = field(default_factory=lambda: {side: [] for side in SIDES})
    stop: tuple[str, ...] = ()
    sides: tuple[str, ...] = SIDES
    system: str = ""  # the system prompt both sides get before their history ("": none)


def parse_spec(spec: Any) -> Spec:
    if not isinstance(spec, dict):
        raise SpecError({"spec": "must be a JSON object"})
    errors: dict[str, str] = {}
    for name in ("model", "left"):
        if not isinstance(spec.get(name), str) or not spec.get(name):
            errors[name] = "required: a path"
    right = spec.get("right")
    if right is not None and (not isinstance(right, str) or not right):
        errors["right"] = "an adapter folder, or null for the base model"
    idle_s = spec.get("idle_s", 300.0)
    if isinstance(idle_s, bool) or not isinstance(idle_s, (int, float)) or not 0 < idle_s <= 24 * 3600:
        errors["idle_s"] = "seconds, above 0 up to 86400"
    for name in sorted(set(spec) - {"model", "left", "right", "idle_s"}):
        errors[name] = "not a field of a serving spec"
    if errors:
        raise SpecError(errors)
    return Spec(model=spec["model"], left=spec["left"], right=right, idle_s=float(idle_s))


def _history(content: dict, errors: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """Each side's earlier messages, checked: user and assistant alternating from the user's, ending with a reply."""
    empty: dict[str, list[dict[str, str]]] = {side: [] for side in SIDES}
    history = content.get("history")
    if history is None:
        return empty
    if not isinstance(history, dict) or set(history) - set(SIDES):
        errors["history"] = "an object {left: [...], right: [...]} of each side's earlier messages"
        return empty
    out: dict[str, list[dict[str, str]]] = {}
    for side in SIDES:
        messages = history.get(side) or []
        if not isinstance(messages, list):
            errors["history"] = f"{side}: a list of messages"
            return empty
        if len(messages) > MAX_HISTORY_MESSAGES:
            errors["history"] = (f"{side}: at most {MAX_HISTORY_MESSAGES} earlier messages, not {len(messages)}; "
                                 "start a new chat")
            return empty
        system = 1 if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
        for index, message in enumerate(messages):
            role = "system" if index < system else "user" if (index - system) % 2 == 0 else "assistant"
            if (not isinstance(message, dict) or set(message) != {"role", "content"} or message["role"] != role
                    or not isinstance(message["content"], str)):
                errors["history"] = (f"{side} message {index}: {{role: {role!r}, content: text}} (the user's and "
                                     "the side's own messages alternate, from the user's, after an optional "
                                     "system message)")
                return empty
        if (len(messages) - system) % 2:
            errors["history"] = f"{side}: ends with the side's reply to the user's last message"
            return empty
        chars = sum(len(m["content"]) for m in messages) + len(content.get("prompt") or "")
        if chars > MAX_CHAT_CHARS:
            errors["history"] = f"{side}: at most {MAX_CHAT_CHARS:,} characters in all, not {chars:,}; start a new chat"
            return empty
        out[side] = [{"role": m["role"], "content": m["content"]} for m in messages]
    return out


def parse_request(content: Any) -> Request:
    """A prompt and its decoding settings, each field checked; SpecError names every bad field."""
    if not isinstance(content, dict):
        raise SpecError({"request": "must be a JSON object"})
    errors: dict[str, str] = {}
    prompt = content.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        errors["prompt"] = "write a prompt"
    elif len(prompt) > MAX_PROMPT_CHARS:
        errors["prompt"] = f"at most {MAX_PROMPT_CHARS:,} characters, not {len(prompt):,}"
    values = {
        "max_new_tokens": (None if "max_new_tokens" in content and content["max_new_tokens"] is None else
                           check_number(content, "max_new_tokens", 64, 1, MAX_NEW_TOKENS, errors, integer=True)),
        "temperature": check_number(content, "temperature", 0.7, 0, 2, errors),
        "top_p": check_number(content, "top_p", 0.95, 0, 1, errors, low_open=True),
        "seed": check_number(content, "seed", 0, 0, 2 ** 32 - 1, errors, integer=True),
    }
    history = _history(content, errors)
    system = content.get("system") or ""
    if not isinstance(system, str) or len(system) > MAX_PROMPT_CHARS:
        errors["system"] = f"text of at most {MAX_PROMPT_CHARS:,} characters"
        system = ""
    elif system.strip() and any(messages and messages[0]["role"] == "system" for messages in history.values()):
        errors["system"] = "the history already starts with a system message; send the system prompt once"
    request_id = content.get("id", "")
    if not isinstance(request_id, str) or len(request_id) > 64:
        errors["id"] = "a string of at most 64 characters"
    stop = content.get("stop") or []
    if (not isinstance(stop, list) or len(stop) > MAX_STOPS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)):
        errors["stop"] = f"a list of at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters"
        stop = []
    sides = content.get("sides", list(SIDES))
    if not isinstance(sides, list) or not sides or any(side not in SIDES for side in sides) or len(set(sides)) < len(
            sides):
        errors["sides"] = "a list of the sides that answer: left, right or both"
        sides = list(SIDES)
    for name in sorted(set(content) - {"type", "id", "prompt", "system", "history", "stop", "sides", *values}):
        errors[name] = ("not a field of a prompt; allowed: prompt, system, history, max_new_tokens, temperature, "
                        "top_p, seed, stop, sides")
    if errors:
        raise SpecError(errors)
    return Request(id=request_id, prompt=prompt, history=history, stop=tuple(stop), sides=tuple(sides),
                   system=system if system.strip() else "", **values)


def render_chat(tokenizer, history: list[dict[str, str]], prompt: str, system: str = "") -> str:
    """The text one side continues: the system prompt (if any), its history and the new user message through the
    model's chat template with the assistant's turn opened (the way chat runs trained: a system turn the template
    refuses or drops is joined to the first user turn, as training did); a model without a chat template gets the
    plain concatenation of the messages, which for a first turn is the prompt as it is (prompt/completion runs
    train on the raw concatenation of prompt and completion, so a conversation continues the same way), after the
    system prompt and a blank line."""
    messages = [*history, {"role": "user", "content": prompt}]
    if tokenizer.chat_template:
        if system:
            messages.insert(0, {"role": "system", "content": system})
        # formatted as the answers were trained: system turns and thinking blocks as in training.engine.chat
        return generation_prompt(tokenizer, messages, template_rules(tokenizer))
    return (f"{system}\n\n" if system else "") + "".join(message["content"] for message in messages)


class Cancelled:
    """generate()'s stopping criterion for a reply the user stopped: true for every row once `asked()` is."""

    def __init__(self, asked):
        self.asked = asked

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), bool(self.asked()), dtype=torch.bool, device=input_ids.device)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Rows of different lengths as one batch: padded on the left (generation continues every row at the right),
    with the attention mask that hides the padding."""
    width = max(len(row) for row in rows)
    return ([[pad_id] * (width - len(row)) + row for row in rows],
            [[0] * (width - len(row)) + [1] * len(row) for row in rows])


def until_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text a reply may show so far: cut before the first stop string in it (True: the reply ends there), else
    without a tail that could still grow into one (it shows once the next tokens decide)."""
    cuts = [text.find(stop) for stop in stops if stop in text]
    if cuts:
        return text[:min(cuts)], True
    held = max((n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
    return text[:len(text) - held], False


class SideStreamer:
    """generate()'s streamer for a batch of one row per side: each row's new text as it grows (held back while it
    ends inside a multi-byte character or may be the start of a stop string), nothing after the row's
    end-of-sequence token or a stop string."""

    def __init__(self, tokenizer, sides: list[str], eos_ids: set[int], on_text, stops: tuple[str, ...] = ()):
        self.tokenizer, self.sides, self.eos_ids, self.on_text = tokenizer, sides, eos_ids, on_text
        self.stops = stops
        self.ids: list[list[int]] = [[] for _ in sides]
        self.sent: list[str] = ["" for _ in sides]
        self.done = [False for _ in sides]
        self.first_at: list[float | None] = [None for _ in sides]
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.sides), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if token in self.eos_ids:
                self.done[row] = True
                continue
            self.ids[row].append(token)
            if self.first_at[row] is None:
                self.first_at[row] = time.perf_counter()
            text, stopped = until_stop(visible_text(self.tokenizer, self.ids[row]), self.stops)
            self.done[row] = stopped
            if text.endswith("\ufffd") or len(text) <= len(self.sent[row]):
                continue
            self.on_text(self.sides[row], text[len(self.sent[row]):])
            self.sent[row] = text

    def end(self) -> None:
        for row, side in enumerate(self.sides):
            text = visible_text(self.tokenizer, self.ids[row])
            if self.stops:
                cut = [text.find(stop) for stop in self.stops if stop in text]
                text = text[:min(cut)] if cut else text
            if len(text) > len(self.sent[row]):
                self.on_text(side, text[len(self.sent[row]):])
                self.sent[row] = text


class Server:
    def __init__(self, spec: Spec, sink: EventSink):
        self.spec, self.sink = spec, sink
        self.model = self.tokenizer = None
        self.context: int | None = None
        # The requests whose reply the user stopped: added by stdin's reader thread while a reply is generated.
        self.cancelled: set[str] = set()

    def load(self) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        for name in ("left", "right"):
            path = getattr(self.spec, name)
            if path and not (Path(path) / "adapter_config.json").is_file():
                raise SpecError({name: f"{path} holds no saved adapter (adapter_config.json is missing)"})
        total = 4 if self.spec.right else 3
        started = time.perf_counter()
        self.sink.emit("loading", stage="tokenizer", done=0, total=total)
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.sink.emit("loading", stage=f"base model {Path(self.spec.model).name}", done=1, total=total)
        on_gpu = torch.cuda.is_available()
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported()
                                  else torch.float32}
        if on_gpu:
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        model = AutoModelForCausalLM.from_pretrained(self.spec.model, **kwargs)
        self.sink.emit("loading", stage="adapter (left)", done=2, total=total)
        model = PeftModel.from_pretrained(model, self.spec.left, adapter_name="left")
        if self.spec.right:
            self.sink.emit("loading", stage="adapter (right)", done=3, total=total)
            model.load_adapter(self.spec.right, adapter_name="right")
        model.eval()
        self.model, self.context = model, context_length(model)
        self.sink.emit("ready", device=str(model.device), load_s=round(time.perf_counter() - started, 3),
                       context=self.context, done=total, total=total)

    def prompt_ids(self, request: Request) -> dict[str, list[int]]:
        """Each answering side's conversation (its history and the new prompt) rendered by render_chat, as token ids;
        a conversation the chat template refuses (a system message it does not take, say) is a SpecError."""
        try:
            return {side: self.tokenizer(render_chat(self.tokenizer, request.history.get(side, []), request.prompt,
                                                     request.system),
                                         add_special_tokens=False)["input_ids"] for side in request.sides}
        except (TemplateError, TemplateProblem) as exc:
            field = "system" if request.system else "history"
            raise SpecError({field: f"the model's chat template refuses this conversation: {exc}"}) from None

    def answer(self, request: Request) -> None:
        try:
            self._answer(request)
        finally:
            self.cancelled.discard(request.id)

    def _answer(self, request: Request) -> None:
        import torch
        from transformers import StoppingCriteriaList

        if request.id and request.id in self.cancelled:  # stopped while it waited behind another reply
            for side in request.sides:
                self.sink.emit("reply", request=request.id, side=side, text="", tokens=0, prompt_tokens=0,
                               seconds=0.0, finish_reason="cancelled", ttft_s=None)
            return
        try:
            ids = self.prompt_ids(request)
        except SpecError as exc:
            self.sink.emit("refused", request=request.id, errors=exc.errors)
            return
        sides = list(request.sides)
        longest = max(sides, key=lambda side: len(ids[side]))
        room = self.context - len(ids[longest]) if self.context else MAX_NEW_TOKENS
        max_new_tokens = request.max_new_tokens or max(1, min(MAX_NEW_TOKENS, room))
        if self.context and len(ids[longest]) + max_new_tokens > self.context:
            chat = any(request.history.get(side) for side in sides)
            what = f"the {longest} side's conversation with this prompt is" if chat else "the prompt is"
            self.sink.emit("refused", request=request.id, errors={
                "prompt": f"{what} {len(ids[longest])} tokens; with max_new_tokens {max_new_tokens} that "
                          f"exceeds the model's context of {self.context} tokens" + ("; start a new chat" if chat
                                                                                     else "")})
            return
        adapter_names = [side if side == "left" or self.spec.right else BASE_SIDE for side in sides]
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.update(end_of_turn_ids(self.tokenizer))  # the template's end of turn too: where answers stopped

        def on_text(side: str, text: str) -> None:
            self.sink.emit("token", request=request.id, side=side, text=text)

        streamer = SideStreamer(self.tokenizer, sides, eos_ids, on_text, request.stop)
        rows, mask = left_pad([ids[side] for side in sides], self.tokenizer.pad_token_id)
        inputs = torch.tensor(rows, device=self.model.device)
        attention_mask = torch.tensor(mask, device=self.model.device)
        sampling = ({"do_sample": True, "temperature": request.temperature, "top_p": request.top_p}
                    if request.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None})
        if request.stop:
            sampling.update(stop_strings=list(request.stop), tokenizer=self.tokenizer)
        cancelled = (lambda: request.id in self.cancelled) if request.id else (lambda: False)
        torch.manual_seed(request.seed)
        started = time.perf_counter()
        with torch.no_grad():
            self.model.generate(input_ids=inputs, attention_mask=attention_mask, streamer=streamer,
                                max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                eos_token_id=sorted(eos_ids) or None, adapter_names=adapter_names,
                                stopping_criteria=StoppingCriteriaList([Cancelled(cancelled)]), **sampling)
        seconds = time.perf_counter() - started
        stopped_by_user = cancelled()
        for row, side in enumerate(sides):
            first = streamer.first_at[row]
            reason = "stop" if streamer.done[row] else "cancelled" if stopped_by_user else "length"
            self.sink.emit("reply", request=request.id, side=side, text=streamer.sent[row],
                           tokens=len(streamer.ids[row]), prompt_tokens=len(ids[side]), seconds=round(seconds, 4),
                           finish_reason=reason, ttft_s=round(first - started, 4) if first is not None else None)

    def serve(self, lines: queue.Queue) -> str:
        """Answer requests until idle_s passes without one, a stop request, or stdin closes; the reason."""
        while True:
            try:
                line = lines.get(timeout=self.spec.idle_s)
            except queue.Empty:
                return "idle"
            if line is None:
                return "stdin closed"
            try:
                content = json.loads(line)
            except json.JSONDecodeError as exc:
                self.sink.emit("refused", request="", errors={"request": f"not JSON: {exc}"})
                continue
            if isinstance(content, dict) and content.get("type") == "stop":
                return str(content.get("reason") or "stop")
            try:
                request = parse_request(content)
            except SpecError as exc:
                request_id = content.get("id") if isinstance(content, dict) else ""
                self.sink.emit("refused", request=request_id if isinstance(request_id, str) else "",
                               errors=exc.errors)
                continue
            self.answer(request)


def cancel_of(line: str) -> str | None:
    """The request a {"type": "cancel", "request": id} line stops, or None for any other line."""
    if '"cancel"' not in line:
        return None
    try:
        content = json.loads(line)
    except json.JSONDecodeError:
        return None
    if isinstance(content, dict) and content.get("type") == "cancel" and isinstance(content.get("request"), str):
        return content["request"]
    return None


def read_lines(stream: IO[str], cancelled: set[str] | None = None) -> queue.Queue:
    """stdin's lines on a queue (None once it closes), so that waiting for one can time out; a cancel line goes
    straight into `cancelled`, where the reply being generated sees it at its next token."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            request = cancel_of(line) if cancelled is not None else None
            if request:
                cancelled.add(request)
            elif line.strip():
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, name="serve-stdin", daemon=True).start()
    return lines


def run(spec: Spec, sink: EventSink, stdin: IO[str] | None = None) -> int:
    """Load, then serve; 0 once released, 1 after a failed event."""
    try:
        server = Server(spec, sink)
        server.load()
        reason = server.serve(read_lines(stdin if stdin is not None else sys.stdin, server.cancelled))
        sink.emit("finished", step=0, reason=reason)
        return 0
    except Exception as exc:  # noqa: BLE001 - every outcome is an event
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc),
                  errors=getattr(exc, "errors", {}), traceback=traceback.format_exc(), oom=False)
        return 1
