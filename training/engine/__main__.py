"""Command line: `python -m training.engine run CONFIG.json` prints the job's events as JSON lines on stdout."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from .tiny import ARCH_WIDTHS, ARCHITECTURES, SIZES  # light: the heavy imports are inside the builders

    parser = argparse.ArgumentParser(prog="python -m training.engine")
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run one SFT job; events go to stdout, library chatter to stderr")
    run_p.add_argument("config", help="path of a JSON config file, or - for stdin")
    run_p.add_argument("--stop-file", help="the job stops (checkpoint, then `stopped`) once this file exists")
    run_p.add_argument("--resume-from", help="a checkpoint-N directory to continue from")

    warm_p = sub.add_parser("warm", help="a warm trainer: libraries imported once, then one run per stdin line "
                                          "(training/engine/warm.py); events to stdout")
    warm_p.add_argument("--backend", choices=["auto", "unsloth", "hf"], default="auto",
                        help="the backend whose libraries to import (runs of another backend are refused)")

    eval_p = sub.add_parser("evaluate", help="generate an eval suite's outputs; events go to stdout")
    eval_p.add_argument("spec", help="path of a JSON spec (training/engine/evaluate.py), or - for stdin")

    harness_p = sub.add_parser("harness", help="an lm-evaluation-harness task from local files; events to stdout")
    harness_p.add_argument("spec", help="path of a JSON spec (training/engine/harness.py)")

    loftq_p = sub.add_parser("loftq-check", help="4-bit logits against full precision, standard init vs LoftQ")
    loftq_p.add_argument("spec", help="path of a JSON spec (training/engine/loftq_check.py)")

    gguf_p = sub.add_parser("gguf", help="export a run as GGUF files and Ollama Modelfiles (llama.cpp's converters)")
    gguf_p.add_argument("spec", help="path of a JSON spec (training/engine/gguf_export.py)")

    serve_p = sub.add_parser("serve", help="serve a run's adapter to the playground: prompts on stdin, tokens out")
    serve_p.add_argument("spec", help="path of a JSON spec (training/engine/serve.py)")

    check_p = sub.add_parser("check", help="validate a config; print its errors or derived values as JSON")
    check_p.add_argument("config")
    check_p.add_argument("--examples", type=int, help="dataset size, for steps per epoch and total steps")

    tiny_p = sub.add_parser("tiny-model", help="build a random model with a locally trained tokenizer")
    tiny_p.add_argument("out_dir")
    tiny_p.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    tiny_p.add_argument("--size", choices=list(SIZES), default="tiny")

    arch_p = sub.add_parser("tiny-arch", help="build a random model of one architecture at small widths (the same "
                                             "for every architecture) with the tiny tokenizer or a given one")
    arch_p.add_argument("out_dir")
    arch_p.add_argument("--arch", choices=list(ARCHITECTURES), required=True)
    arch_p.add_argument("--size", choices=list(ARCH_WIDTHS), default="tiny")
    arch_p.add_argument("--tokenizer-from", help="a model folder whose tokenizer (and chat template) to save with it")

    data_p = sub.add_parser("tiny-dataset", help="write a small learnable JSONL dataset")
    data_p.add_argument("path")
    data_p.add_argument("--rows", type=int, default=64)
    data_p.add_argument("--format", choices=["text", "prompt_completion", "messages"], default="messages")

    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "warm":
        return _warm(args)
    if args.command == "check":
        return _check(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "loftq-check":
        return _loftq_check(args)
    if args.command == "harness":
        return _harness(args)
    if args.command == "gguf":
        return _gguf(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "tiny-model":
        from .tiny import build_tiny_model

        print(build_tiny_model(args.out_dir, arch=args.arch, size=args.size))
        return 0
    if args.command == "tiny-arch":
        from .tiny import build_tiny_arch

        print(build_tiny_arch(args.out_dir, args.arch, tokenizer_from=args.tokenizer_from, size=args.size))
        return 0
    from .tiny import write_dataset

    print(write_dataset(args.path, n=args.rows, fmt=args.format))
    return 0


def _read(path: str) -> dict:
    return json.load(sys.stdin) if path == "-" else json.load(open(path))


def _check(args) -> int:
    from .config import ConfigError, parse_config
    from .derived import derive

    try:
        config = parse_config(_read(args.config))
        adapters = _check_targets(config)
        data = _check_data(config)
    except ConfigError as exc:
        print(json.dumps({"ok": False, "errors": exc.errors}))
        return 2
    derived = derive(config, args.examples or data.get("rows")).as_dict()
    print(json.dumps({"ok": True, "derived": derived, **adapters, **data}))
    return 0


def _check_targets(config) -> dict:
    """target_modules resolved on the model's layers, built from its folder's config.json without a weight: the
    layers that would get adapters ({} where the model's layers cannot be known here: a hub id, remote code)."""
    from pathlib import Path

    from . import targets

    try:
        data = json.loads((Path(config.model) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    layout = targets.layout_from_config(data)
    if layout is None:
        return {}
    resolution = targets.resolve(layout, config.target_modules)
    return {"adapters": {"modules": resolution.counts(), "trainable_params": resolution.lora_params(config.r)},
            "warnings": list(resolution.shortfalls)}


def _check_data(config) -> dict:
    """Where the training file is here: its rows read, and a messages dataset checked against the model's chat
    template (the tokenizer alone loads, no weights), so that a pairing that cannot train as asked is refused here,
    before a GPU is touched. Returns the training rows and what the template changes ({} when the file is not on this
    machine)."""
    from pathlib import Path

    from .data import answers_only, encode_chats, load_data, load_tokenizer

    if not Path(config.train_file).is_file():
        return {}
    train, evaluation, fmt = load_data(config)
    found = {"rows": len(train), "data_format": fmt}
    if fmt == "messages":
        _, plan = encode_chats(train, load_tokenizer(config.model), answers_only=answers_only(config, fmt))
        found["template"] = plan.summary()
    return found


def _run(args) -> int:
    from . import distributed
    from .config import ConfigError, parse_config
    from .events import EventSink
    from .runner import StopRequest, run

    # Events own stdout; libraries print progress and banners there too, so point fd 1 at stderr for them.
    events_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    here = distributed.world()
    sink = EventSink(events_out) if here.is_main else distributed.TerminalOnlySink(events_out)
    try:
        data = _read(args.config)
        config = parse_config(data)
    except (ConfigError, ValueError, OSError) as exc:
        errors = getattr(exc, "errors", {"config": str(exc)})
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc), errors=errors, traceback="",
                  oom=False)
        return 2
    if config.devices > 1 and here.size == 1:
        return _launch(config, data, args, sink, events_out)
    stop = StopRequest(args.stop_file)
    stop.install_signal_handlers()
    with contextlib.redirect_stdout(sys.stderr):
        return run(config, sink, stop=stop, resume_from=args.resume_from)


def _launch(config, data: dict, args, sink, events_out) -> int:
    """A run of several ranks: the machine is checked once, here, then the ranks are launched and followed."""
    from . import distributed
    from .backends import prepare_process
    from .config import ConfigError, check_environment

    prepare_process(config)  # before torch is imported: the ranks inherit the allocator's setting
    try:
        check_environment(config)
    except ConfigError as exc:
        sink.emit("failed", step=0, error_class="ConfigError", message=str(exc), errors=exc.errors, traceback="",
                  oom=False)
        return 1
    path = distributed.config_for_ranks(args.config, data, config.output_dir)
    command = distributed.rank_command(path, stop_file=args.stop_file, resume_from=args.resume_from)
    with contextlib.redirect_stdout(sys.stderr):
        return distributed.launch(config.devices, command, events_out)


def _warm(args) -> int:
    from .warm_serve import serve

    events_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return serve(args.backend, sys.stdin, events_out)


def _evaluate(args) -> int:
    from .evaluate import SpecError, generate, parse_spec
    from .events import EventSink

    events_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sink = EventSink(events_out)
    try:
        spec = parse_spec(_read(args.spec))
    except (SpecError, ValueError, OSError) as exc:
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc),
                  errors=getattr(exc, "errors", {"spec": str(exc)}), traceback="", oom=False)
        return 2
    with contextlib.redirect_stdout(sys.stderr):
        return generate(spec, sink)


def _loftq_check(args) -> int:
    from .events import EventSink
    from .loftq_check import check

    events_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.redirect_stdout(sys.stderr):
        return check(_read(args.spec), EventSink(events_out))


def _gguf(args) -> int:
    from .events import EventSink
    from .gguf_export import run

    events_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.redirect_stdout(sys.stderr):
        return run(_read(args.spec), EventSink(events_out))


def _harness(args) -> int:
    from . import harness
    from .events import EventSink

    events_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.redirect_stdout(sys.stderr):
        return harness.run(_read(args.spec), EventSink(events_out))



def _serve(args) -> int:
    from . import serve
    from .events import EventSink

    events_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sink = EventSink(events_out)
    try:
        spec = serve.parse_spec(_read(args.spec))
    except (serve.SpecError, ValueError, OSError) as exc:
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc),
                  errors=getattr(exc, "errors", {"spec": str(exc)}), traceback="", oom=False)
        return 2
    with contextlib.redirect_stdout(sys.stderr):
        return serve.run(spec, sink)


if __name__ == "__main__":
    sys.exit(main())
