"""What a failed run says where its exception's class says nothing to a user: a compiler that could not build the
model's layers, an architecture a library does not support, a chat template that refused a row. Each becomes a
message naming the cause and what to change; other failures keep their own message."""
from __future__ import annotations

import re
from typing import Iterator

COMPILER_CLASSES = frozenset({"InductorError", "BackendCompilerFailed", "CompilationError", "LoweringException",
                              "CUDACompileError", "CppCompileError"})
COMPILER_MODULES = ("torch._inductor", "torch._dynamo", "triton")
UNSUPPORTED = re.compile(r"not (yet )?supported|unsupported|does not support|doesn't support|unrecognized "
                         r"configuration class|not recognized", re.IGNORECASE)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what it was raised from or while handling, to the first one."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _said(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__


def explain(exc: BaseException, *, backend: str | None, model_type: str | None) -> tuple[str, str] | None:
    """(cause, message) for a failure of a known kind (cause: compiler, chat_template, unsupported_architecture),
    else None."""
    import torch

    chain = list(_chain(exc))
    arch = model_type or "this model's"
    for e in chain:
        name, module = type(e).__name__, type(e).__module__ or ""
        if name in COMPILER_CLASSES or module.startswith(COMPILER_MODULES):
            who = "Unsloth's compiled" if backend == "unsloth" else "torch.compile's"
            return "compiler", (
                f"{who} {arch} layers failed to build on torch {torch.__version__} ({_said(e)}). To train: set "
                "UNSLOTH_COMPILE_DISABLE=1 in the worker's environment (its layers then run uncompiled: slower, same "
                "numbers), or choose backend hf")
    for e in chain:
        if type(e).__name__ == "TemplateError" or (type(e).__module__ or "").startswith("jinja2"):
            return "chat_template", (
                f"the model's chat template refused a row while the data was formatted ({_said(e)}). A template "
                "sets rules the rows must keep (Gemma's refuses a system turn; many need user and assistant turns "
                "to alternate): fix those rows (for a system turn, join its text to the first user turn), or "
                "choose a model whose template accepts them")
    for e in chain:
        if isinstance(e, (ValueError, NotImplementedError, KeyError, RuntimeError, TypeError)) and \
                UNSUPPORTED.search(str(e)):
            what = f"the {model_type} architecture" if model_type else "this model's architecture"
            lever = ("choose backend hf (transformers + PEFT), or install an Unsloth that supports it"
                     if backend == "unsloth" else "install a transformers version that supports it")
            return "unsupported_architecture", (
                f"{'Unsloth' if backend == 'unsloth' else 'transformers'} cannot train {what} here ({_said(e)}). "
                f"To train: {lever} (the run's versions say which it had)")
    return None
