"""The warm command's loop (`python -m training.engine warm`, protocol in training/engine/warm.py): import the
training stack once, then train one request after another, keeping the base model between them."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import IO

from .config import ConfigError, parse_config
from .events import EventSink
from .runner import StopRequest, run
from .warm import READY, RequestError, WarmBase, WarmRun, parse_request


def fresh_random_state(torch_seed: int) -> None:
    """The random generators as a new process has them: torch's default seed (the one it started with), Python's and
    numpy's from the OS. Seeds a run sets (random_state, seed) then apply exactly as in a cold process."""
    import random

    import numpy
    import torch

    torch.manual_seed(torch_seed)
    random.seed()
    numpy.random.seed()


def import_stack(backend: str) -> str:
    """Import what a run needs, Unsloth first where the backend is unsloth (as `run` does: it must patch
    transformers and TRL before they are used); returns the backend that `auto` resolves to here."""
    from . import backends

    backends.prepare_process_for(backend)  # before torch is imported
    import importlib.util

    resolved = backend
    if backend == "auto":
        import torch

        resolved = "unsloth" if torch.cuda.is_available() and importlib.util.find_spec("unsloth") else "hf"
    if resolved == "unsloth":
        import unsloth  # noqa: F401
        from unsloth import FastLanguageModel  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401
    return resolved


def serve(backend: str, requests: IO[str], events_out: IO[str]) -> int:
    """The warm command's loop; returns the process's exit code."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        resolved = import_stack(backend)
    import torch

    from .backends import freeze_heap

    freeze_heap()  # the libraries' objects stay for the process's life: no garbage collection walks them again

    torch_seed = torch.initial_seed()  # before anything seeds it: what a fresh process starts from
    holder = WarmBase()
    current: dict[str, StopRequest | None] = {"stop": None}

    def on_signal(signum, _frame):
        stop = current["stop"]
        if stop is None:
            raise SystemExit(0)  # idle: nothing to save
        stop.set(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    served = 0
    ready = EventSink(events_out)
    ready_at = time.time()
    ready.emit(READY, pid=os.getpid(), backend=resolved, requested_backend=backend, runs=0, base=None,
               import_s=round(time.perf_counter() - started, 3))
    for line in requests:
        if not line.strip():
            continue
        read_at = time.time()
        sink = EventSink(events_out)
        try:
            request = parse_request(line)
            if request.cwd:
                os.chdir(request.cwd)
            with open(request.config) as handle:
                config = parse_config(json.load(handle))
        except (RequestError, ConfigError, ValueError, OSError) as exc:
            sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc),
                      errors=getattr(exc, "errors", {"config": str(exc)}), traceback="", oom=False)
            return 2
        fresh_random_state(torch_seed)
        stop = current["stop"] = StopRequest(request.stop_file)
        with contextlib.redirect_stdout(sys.stderr):
            code = run(config, sink, stop=stop, resume_from=request.resume_from,
                       warm=WarmRun(holder=holder, backend=resolved, received=min(request.sent or read_at, read_at),
                                    ready_at=ready_at, runs_before=served))
        current["stop"] = None
        served += 1
        if (sink.terminal or {}).get("type") != "finished":
            return code  # stopped or failed: never reused
        releasing = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            holder.release()
        memory = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
        ready = EventSink(events_out)
        ready.emit(READY, pid=os.getpid(), backend=resolved, requested_backend=backend, runs=served,
                   base=holder.describe(), note=holder.note, release_s=round(time.perf_counter() - releasing, 3),
                   memory_allocated=memory)
    return 0
