"""Serving a run's adapter for the playground: one process loads the base model and its adapters once, then answers
prompts read as JSON lines on stdin with tokens streamed as events on stdout, until it has been idle for idle_s.

`python -m training.engine serve SPEC.json`. SPEC (plain JSON, validated by `parse_spec`):
    model     the base model (a local folder or hub id)
    left      the adapter folder of the side on the left (a run's final adapter or a checkpoint)
    right     the adapter folder of the side on the right (another run of the same base model), or null for the
              base model itself: the same loaded weights with the adapters off (peft's "__base__")
    idle_s    seconds without a request after which the process ends (default 300)
Both sides answer each prompt in one batched generate (peft's mixed-adapter batches: one row per side), so they share
the prompt, the decoding settings and the forward passes. A request is {"id": str, "prompt": str, "temperature",
"top_p", "max_new_tokens", "seed"} (checked by `parse_request`), or {"type": "stop", "reason": str}.

Events: loading (stage, done, total) while loading; ready (device, load_s, context); per request either refused
(request, errors {field: message}) or token (request, side, text) as each side's text grows, then one reply per side
(request, side, text, tokens, ttft_s, seconds); finished (reason: idle, stop or stdin closed) or failed ends it.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .evaluate import context_length, prompt_text
from .events import EventSink

SIDES = ("left", "right")
BASE_SIDE = "__base__"  # peft's adapter name for a batch row that runs with the adapters off
MAX_PROMPT_CHARS = 100_000


class SpecError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


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
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


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


def _number(content: dict, name: str, default: Any, low: float, high: float, errors: dict[str, str], *,
            integer: bool = False, low_open: bool = False) -> Any:
    value = content.get(name, default)
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer())
    if bad or value < low or value > high or (low_open and value == low):
        kind = "an integer" if integer else "a number"
        errors[name] = f"{kind} {'above' if low_open else 'from'} {low:g} to {high:g}, not {value!r}"
        return default
    return int(value) if integer else float(value)


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
        "max_new_tokens": _number(content, "max_new_tokens", 64, 1, 4096, errors, integer=True),
        "temperature": _number(content, "temperature", 0.7, 0, 2, errors),
        "top_p": _number(content, "top_p", 0.95, 0, 1, errors, low_open=True),
        "seed": _number(content, "seed", 0, 0, 2 ** 32 - 1, errors, integer=True),
    }
    request_id = content.get("id", "")
    if not isinstance(request_id, str) or len(request_id) > 64:
        errors["id"] = "a string of at most 64 characters"
    for name in sorted(set(content) - {"type", "id", "prompt", *values}):
        errors[name] = "not a field of a prompt; allowed: prompt, max_new_tokens, temperature, top_p, seed"
    if errors:
        raise SpecError(errors)
    return Request(id=request_id, prompt=prompt, **values)


class SideStreamer:
    """generate()'s streamer for a batch of one row per side: each row's new text as it grows (held back while it
    ends inside a multi-byte character), nothing after the row's end-of-sequence token."""

    def __init__(self, tokenizer, sides: list[str], eos_ids: set[int], on_text):
        self.tokenizer, self.sides, self.eos_ids, self.on_text = tokenizer, sides, eos_ids, on_text
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
            text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
            if text.endswith("\ufffd") or len(text) <= len(self.sent[row]):
                continue
            self.on_text(self.sides[row], text[len(self.sent[row]):])
            self.sent[row] = text

    def end(self) -> None:
        for row, side in enumerate(self.sides):
            text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
            if len(text) > len(self.sent[row]):
                self.on_text(side, text[len(self.sent[row]):])
                self.sent[row] = text


class Server:
    def __init__(self, spec: Spec, sink: EventSink):
        self.spec, self.sink = spec, sink
        self.model = self.tokenizer = None
        self.context: int | None = None

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

    def prompt_ids(self, request: Request) -> list[int]:
        """The prompt as one user turn through the model's chat template (the way chat runs trained), or as it is."""
        row = {"messages": [{"role": "user", "content": request.prompt}]} if self.tokenizer.chat_template else {
            "prompt": request.prompt}
        return self.tokenizer(prompt_text(self.tokenizer, row), add_special_tokens=False)["input_ids"]

    def answer(self, request: Request) -> None:
        import torch

        ids = self.prompt_ids(request)
        if self.context and len(ids) + request.max_new_tokens > self.context:
            self.sink.emit("refused", request=request.id, errors={
                "prompt": f"the prompt is {len(ids)} tokens; with max_new_tokens {request.max_new_tokens} that "
                          f"exceeds the model's context of {self.context} tokens"})
            return
        adapter_names = ["left", "right" if self.spec.right else BASE_SIDE]
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)

        def on_text(side: str, text: str) -> None:
            self.sink.emit("token", request=request.id, side=side, text=text)

        streamer = SideStreamer(self.tokenizer, list(SIDES), eos_ids, on_text)
        inputs = torch.tensor([ids, ids], device=self.model.device)
        sampling = ({"do_sample": True, "temperature": request.temperature, "top_p": request.top_p}
                    if request.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None})
        torch.manual_seed(request.seed)
        started = time.perf_counter()
        with torch.no_grad():
            self.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), streamer=streamer,
                                max_new_tokens=request.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                adapter_names=adapter_names, **sampling)
        seconds = time.perf_counter() - started
        for row, side in enumerate(SIDES):
            first = streamer.first_at[row]
            self.sink.emit("reply", request=request.id, side=side, text=streamer.sent[row],
                           tokens=len(streamer.ids[row]), prompt_tokens=len(ids), seconds=round(seconds, 4),
                           ttft_s=round(first - started, 4) if first is not None else None)

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


def read_lines(stream: IO[str]) -> queue.Queue:
    """stdin's lines on a queue (None once it closes), so that waiting for one can time out."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            if line.strip():
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, name="serve-stdin", daemon=True).start()
    return lines


def run(spec: Spec, sink: EventSink, stdin: IO[str] | None = None) -> int:
    """Load, then serve; 0 once released, 1 after a failed event."""
    try:
        server = Server(spec, sink)
        server.load()
        reason = server.serve(read_lines(stdin if stdin is not None else sys.stdin))
        sink.emit("finished", step=0, reason=reason)
        return 0
    except Exception as exc:  # noqa: BLE001 - every outcome is an event
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc),
                  errors=getattr(exc, "errors", {}), traceback=traceback.format_exc(), oom=False)
        return 1
