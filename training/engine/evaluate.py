"""Generating an eval suite's outputs: a base model, optionally with a trained adapter (or with its adapters
disabled, for the bias check's base drift), over a JSONL of prompts, in batches, with the suite's decoding settings.

`python -m training.engine evaluate SPEC.json` prints events like `run`: started, output (one per example, in
order), then finished or failed. SPEC (plain JSON, validated by `parse_spec`):
    model            a local folder or hub id (the run's base model)
    adapter          a saved adapter folder, or null for the base model alone
    adapters         "on" (default) or "off": the adapter loaded, then disabled for generation (peft's
                     disable_adapter), which must give the base model's outputs when no bias was trained
    examples_file    JSONL rows {"index": int, "prompt": str} or {"index": int, "messages": [...]} (no final answer)
    max_new_tokens   1..4096 (default 64)
    temperature      0 (greedy, the default) .. 2
    top_p            (0, 1]
    batch_size       1..256 (default 8)
    seed             the sampling seed (default 0)
A prompt whose tokens plus max_new_tokens exceed the model's context fails the job before anything is generated,
naming its row. Scoring is the Django side's (training/evaluation/metrics.py): this only generates.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chat import TemplateProblem, end_of_turn_ids, generation_prompt, template_rules, visible_text
from .events import EventSink


class SpecError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Spec:
    model: str
    adapter: str | None
    adapters: str
    examples_file: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0


def check_number(content: dict, name: str, default: Any, low: float, high: float, errors: dict[str, str], *,
                 integer: bool = False, low_open: bool = False) -> Any:
    """content[name] (default when absent) if it is a number in range, else `default` with errors[name] saying what
    is allowed. Shared by the evaluation spec and the playground's requests (serve.py)."""
    value = content.get(name, default)
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer())
    if bad or value < low or value > high or (low_open and value == low):
        kind = "an integer" if integer else "a number"
        errors[name] = f"{kind} {'above' if low_open else 'from'} {low:g} to {high:g}, not {value!r}"
        return default
    return int(value) if integer else float(value)


def parse_spec(spec: dict[str, Any]) -> Spec:
    if not isinstance(spec, dict):
        raise SpecError({"spec": "must be a JSON object"})
    errors: dict[str, str] = {}
    for name in ("model", "examples_file"):
        if not isinstance(spec.get(name), str) or not spec.get(name):
            errors[name] = "required: a path"
    adapter = spec.get("adapter")
    if adapter is not None and (not isinstance(adapter, str) or not adapter):
        errors["adapter"] = "a saved adapter folder, or null"
    adapters = spec.get("adapters", "on")
    if adapters not in ("on", "off"):
        errors["adapters"] = "on or off"
    elif adapters == "off" and adapter is None:
        errors["adapters"] = "off disables a loaded adapter; name the adapter"
    values = {
        "max_new_tokens": check_number(spec, "max_new_tokens", 64, 1, 4096, integer=True, errors=errors),
        "temperature": check_number(spec, "temperature", 0.0, 0, 2, errors=errors),
        "top_p": check_number(spec, "top_p", 1.0, 0, 1, low_open=True, errors=errors),
        "batch_size": check_number(spec, "batch_size", 8, 1, 256, integer=True, errors=errors),
        "seed": check_number(spec, "seed", 0, 0, 2 ** 32 - 1, integer=True, errors=errors),
    }
    unknown = set(spec) - {"model", "adapter", "adapters", "examples_file", *values}
    for name in sorted(unknown):
        errors[name] = "not a field of an evaluation"
    if errors:
        raise SpecError(errors)
    return Spec(model=spec["model"], adapter=adapter, adapters=adapters, examples_file=spec["examples_file"],
                **values)


def read_examples(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict) or not ("prompt" in row or "messages" in row):
                    raise SpecError({"examples_file": f"row {number}: needs prompt or messages"})
                rows.append(row)
    return rows


def prompt_text(tokenizer, row: dict[str, Any]) -> str:
    """The text generation continues: a chat prompt through the model's chat template (as training rendered it),
    a plain prompt as it is (prompt/completion rows train on the raw concatenation)."""
    if "messages" in row:
        if not tokenizer.chat_template:
            raise SpecError({"examples_file": f"example {row.get('index')}: chat messages, but the model's "
                                              "tokenizer has no chat template"})
        try:  # formatted as the answers were trained (training.engine.chat)
            return generation_prompt(tokenizer, row["messages"], template_rules(tokenizer))
        except TemplateProblem as exc:
            raise SpecError({"examples_file": f"example {row.get('index')}: {exc}"}) from None
    return row["prompt"]


def context_length(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load(spec: Spec):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if on_gpu:
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(spec.model, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    tokenizer.padding_side = "left"  # batched generation continues every prompt from its own last token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.adapter:
        from peft import PeftModel

        if not (Path(spec.adapter) / "adapter_config.json").is_file():
            raise SpecError({"adapter": f"{spec.adapter} holds no saved adapter (adapter_config.json is missing)"})
        model = PeftModel.from_pretrained(model, spec.adapter)
    model.eval()
    return model, tokenizer


def generate(spec: Spec, sink: EventSink) -> int:
    """Generate every example's output; 0 on success, 1 after a failed event."""
    import contextlib

    import torch

    try:
        examples = read_examples(spec.examples_file)
        started = time.perf_counter()
        model, tokenizer = load(spec)
        load_s = time.perf_counter() - started
        texts = [prompt_text(tokenizer, row) for row in examples]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        limit = context_length(model)
        if limit:
            for row, n in zip(examples, lengths):
                if n + spec.max_new_tokens > limit:
                    raise SpecError({"examples_file": f"example {row.get('index')}: its prompt is {n} tokens; with "
                                                      f"max_new_tokens {spec.max_new_tokens} that exceeds the model's "
                                                      f"context of {limit} tokens"})
        sink.emit("started", examples=len(examples), model=spec.model, adapter=spec.adapter, adapters=spec.adapters,
                  device=str(model.device), load_s=round(load_s, 3), context=limit)
        torch.manual_seed(spec.seed)
        disabled = model.disable_adapter() if spec.adapters == "off" else contextlib.nullcontext()
        began, new_tokens = time.perf_counter(), 0
        stop_ids = end_of_turn_ids(tokenizer)  # answers stop where the trained ones did
        with torch.no_grad(), disabled:
            for start in range(0, len(examples), spec.batch_size):
                batch = texts[start:start + spec.batch_size]
                inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                sampling = {"do_sample": True, "temperature": spec.temperature, "top_p": spec.top_p} if (
                    spec.temperature > 0) else {"do_sample": False}
                out = model.generate(**inputs, max_new_tokens=spec.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=stop_ids or None, **sampling)
                width = inputs["input_ids"].shape[1]
                for row, ids in zip(examples[start:start + spec.batch_size], out[:, width:]):
                    kept = [t for t in ids.tolist() if t != tokenizer.pad_token_id]
                    new_tokens += len(kept)
                    sink.emit("output", index=row.get("index"), output=visible_text(tokenizer, kept),
                              tokens=len(kept))
        seconds = time.perf_counter() - began
        sink.emit("finished", step=0, examples=len(examples), runtime_s=round(seconds, 3),
                  examples_per_s=round(len(examples) / seconds, 3) if seconds else None, new_tokens=new_tokens,
                  adapter_path=spec.adapter)
        return 0
    except Exception as exc:  # noqa: BLE001 - every outcome is an event
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc),
                  errors=getattr(exc, "errors", {}), traceback=traceback.format_exc(), oom=False)
        return 1
