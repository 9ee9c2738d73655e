"""The engine's event stream: one JSON object per line, each with the schema version `v` and a `type`.

Schema (v = 1). Every event has: v, type, time (unix seconds, float).
- started:    config (the resolved config), derived (effective_batch, steps_per_epoch, total_steps, warmup_steps,
              lora_scale, tokens_per_step, devices), versions {library: version}, backend, device (name),
              dtype (in effect), trainable_params, total_params, trainable_bias_params, lora_scale (read from a
              LoRA layer), train_examples, eval_examples, resumed_from_step; adapters {target_modules (as asked),
              modules {layer name: how many carry an adapter}, layers (their total)}; warm_process (the libraries were
              imported before the run came: a warm process, training/engine/warm.py), base_kept (its base model
              was kept loaded from the previous run), start_s (seconds from the process's start, or in a warm
              process from the request, to this event); a run of several ranks (config devices > 1,
              training/engine/distributed.py) also ranks [{rank, pid}] and launcher_pid (pid is rank 0's)
- metrics:    step, epoch, tokens_seen, loss, grad_norm, learning_rate, tokens_per_s, peak_vram_bytes,
              padding_share (of the training batches' token slots since this process started, the share that
              held padding: 0 when packed; null before the first batch). With several ranks: tokens_seen and
              tokens_per_s are the whole job's, loss the mean over every rank's tokens, peak_vram_bytes the largest
              of the GPUs' and peak_vram_bytes_per_gpu each rank's (null on a CPU), padding_share rank 0's batches'.
- eval:       step, epoch, eval_loss
- sample:     step, prompt, completion
- warning:    code (bias_no_effect, loftq_not_applied, packing_no_gain, truncation, packed_attention_cost,
              tiled_mlp_not_applied, unsloth_attention_per_segment, sample_failed, target_modules_partial,
              unsloth_compile_off),
              field (the config field it is about), message
- log:        message; at the end of the first step also first_step_s (seconds from the process's start, or the
              warm request, to it), warm_process, base_kept, phases (seconds of each start-up stage in this
              process: data, model, lengths, trainer, train_setup, first_step; runner.Phases)
- checkpoint: step, path
- finished:   step, adapter_path, merged_path (or null), train_loss, runtime_s
- stopped:    step, checkpoint (path or null), reason
- failed:     step, error_class, message, traceback, oom (bool); cause (compiler, chat_template or
              unsupported_architecture, training/engine/failures.py) where the message was written for it
              With several ranks, finished and stopped also carry peak_vram_bytes_per_gpu, and failed the rank
              whose failure it is (its own error; message "rank R of N: ...") and other_ranks [{rank, error_class,
              message}] (what the others reported after it); error_class ProcessDied: a rank died unreported.
Exactly one of finished / stopped / failed ends a stream.
- warm-ready: a warm process has imported its libraries, or has put its base back after a finished run, and reads
              the next request: pid, backend (imported for), requested_backend, runs (served so far), base (the
              kept model, or null), import_s (first) or release_s, note (why a base was dropped), memory_allocated
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import IO, Any, Callable

SCHEMA_VERSION = 1
TERMINAL = frozenset({"finished", "stopped", "failed"})
# output: one generated answer of an evaluation (training/engine/evaluate.py): index, output, tokens
# loading, ready, token, reply, refused: a playground's serving process (training/engine/serve.py)
# warm-ready: a warm trainer process between runs (training/engine/warm.py)
# export-stage, export-file: a GGUF export (training/engine/gguf_export.py): its stages, and each file written
TYPES = frozenset({"started", "metrics", "eval", "sample", "warning", "log", "checkpoint", "output", "loading", "ready",
                   "token", "reply", "refused", "warm-ready", "export-stage", "export-file"}) | TERMINAL


def json_safe(value: Any) -> Any:
    """Non-finite floats as the strings "nan"/"inf"/"-inf": JSON has none, and a reader must still see a NaN loss."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def make_event(type_: str, **fields: Any) -> dict[str, Any]:
    if type_ not in TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    return {"v": SCHEMA_VERSION, "type": type_, "time": time.time(), **json_safe(fields)}


def parse_float(value: Any) -> float | None:
    """Read a number from an event, turning the 'nan'/'inf' strings back into floats."""
    if value is None:
        return None
    return float(value)


class EventSink:
    """Writes events as JSON lines (stdout by default) and, optionally, hands each to a callback."""

    def __init__(self, stream: IO[str] | None = None, callback: Callable[[dict], None] | None = None):
        self._stream = stream if stream is not None else sys.stdout
        self._callback = callback
        self._lock = threading.Lock()
        self.terminal: dict | None = None

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = make_event(type_, **fields)
        with self._lock:
            if self.terminal is not None:
                return event  # a stream ends with exactly one terminal event
            if type_ in TERMINAL:
                self.terminal = event
            self._stream.write(json.dumps(event, default=str) + "\n")
            self._stream.flush()
        if self._callback:
            self._callback(event)
        return event

    def warning(self, code: str, field: str, message: str) -> None:
        self.emit("warning", code=code, field=field, message=message)

    def log(self, message: str) -> None:
        self.emit("log", message=message)
