"""A warm trainer process (`python -m training.engine warm`): the training stack imported once, then runs read from
stdin one after another, each trained as `run` would train it, with the last base model kept for the next run that
loads the same weights.

Protocol. The process prints a `warm-ready` event once its libraries are imported, then reads one JSON request per
line on stdin: {"config": PATH, "stop_file": PATH or null, "resume_from": PATH or null, "cwd": PATH or null,
"sent": unix time or null (when the request was written: a run's start-up counts from it)}. Each
request's events are exactly those of `run` (started ... one terminal event), followed, when the run finished, by
another `warm-ready`. A run that stopped or failed ends the process (exit code as `run`'s): what it leaves behind
(a half-trained state, a CUDA error) must never reach the next run. Closed stdin or SIGTERM while idle end it too.

Keeping a base model. A run changes its base model in more than its adapters: PEFT swaps LoRA layers in, Unsloth binds
fused forwards and hooks to the decoder's modules, the trainer flips training/checkpointing flags and config fields.
So the state of every module right after loading is recorded (BaseState) and, after the run, PEFT's unload() removes
the adapters and that state is put back: each module's attributes, children, parameters and buffers, the configs.
Then every weight is checked against the checksum taken at load; a difference (or a run that changes the base in
place: bias training, LoftQ) drops the base and the next run loads it again. Each run then gets fresh adapters (seeded
by random_state), a fresh tokenizer copy, trainer, optimizer and data order, and the random generators as a fresh
process has them, so its losses equal a cold run's.
"""
from __future__ import annotations

import copy
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig

READY = "warm-ready"
REQUEST_FIELDS = frozenset({"config", "stop_file", "resume_from", "cwd", "sent"})
BACKENDS = ("auto", "unsloth", "hf")


class RequestError(ValueError):
    """A request line the process cannot serve; `errors` maps each field to what is wrong."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass(frozen=True)
class Request:
    config: str
    stop_file: str | None = None
    resume_from: str | None = None
    cwd: str | None = None
    sent: float | None = None


def parse_request(line: str) -> Request:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RequestError({"request": f"not JSON: {exc}"}) from None
    if not isinstance(data, dict):
        raise RequestError({"request": "a JSON object with config, stop_file, resume_from and cwd"})
    errors = {k: f"unknown field; allowed: {', '.join(sorted(REQUEST_FIELDS))}" for k in data
              if k not in REQUEST_FIELDS}
    if not isinstance(data.get("config"), str) or not data.get("config"):
        errors["config"] = "the path of the run's JSON config is required"
    for field in ("stop_file", "resume_from", "cwd"):
        if data.get(field) is not None and not isinstance(data[field], str):
            errors[field] = "a path (string) or null"
    sent = data.get("sent")
    if sent is not None and (isinstance(sent, bool) or not isinstance(sent, (int, float))):
        errors["sent"] = "a unix time (number) or null"
    if errors:
        raise RequestError(errors)
    return Request(**{k: data.get(k) for k in REQUEST_FIELDS})


def base_fields(config: TrainConfig, backend: str, dtype: str) -> dict[str, Any] | None:
    """The config's fields that decide the base model's loaded weights and state, or None when the run changes its
    base in place (bias="lora_only"/"all" trains the base's own biases; LoftQ rewrites the base weights it
    initialises from), so that its base is never kept. `backend` and `dtype` are as the caller knows them: resolved
    in the engine, as the config says on the worker (the same machine resolves them the same way)."""
    if config.bias != "none" or config.loftq_config is not None:
        return None
    fields: dict[str, Any] = {"backend": backend, "model": config.model, "dtype": dtype,
                              "load_in_4bit": config.load_in_4bit}
    if backend != "hf":
        # Unsloth reads these when it loads (RoPE and kernels for the length, the tiled MLP's patch) and patches the
        # decoder for checkpointing when adapters are added; the hf backend loads the same weights whatever they are.
        fields.update(max_length=config.max_length, tiled_mlp=config.tiled_mlp,
                      tiled_mlp_target_gb=config.tiled_mlp_target_gb,
                      gradient_checkpointing=config.gradient_checkpointing)
    return fields


def model_stamp(path: str) -> list[tuple[str, int, int]] | str:
    """The model folder's files (name, size, mtime): a folder rewritten since the load is loaded again. A hub name
    stays the name."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())


# --- putting a base model back as it was loaded ---

def _copied(value):
    """Containers are copied (a hook dict a run adds to must not change the record; the copy keeps the type, an
    OrderedDict, and the entries' objects); everything else is kept."""
    if isinstance(value, (dict, list, set)):
        return copy.copy(value)
    return value


def tensor_checksum(tensor) -> tuple[int, int]:
    """Two integer sums over a tensor's bytes (plain and position-weighted, wrapping in int64): exact, independent
    of summation order, and changed by any changed or moved value."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return (0, 0)
    words = flat.view(torch.uint8)
    if words.numel() % 4 == 0:
        try:
            words = words.view(torch.int32)
        except RuntimeError:  # a view whose start is not 4-byte aligned: count bytes
            pass
    total = weighted = 0
    chunk = 1 << 24
    for start in range(0, words.numel(), chunk):
        part = words[start:start + chunk].to(torch.int64)
        position = torch.arange(start, start + part.numel(), device=part.device, dtype=torch.int64) % 65521 + 1
        total += int(part.sum())
        weighted += int((part * position).sum())
    return (total & 0xFFFFFFFFFFFFFFFF, weighted & 0xFFFFFFFFFFFFFFFF)


def _tensor_facts(model) -> dict[str, tuple]:
    facts = {}
    for kind, named in (("param", model.named_parameters(remove_duplicate=False)),
                        ("buffer", model.named_buffers(remove_duplicate=False))):
        for name, tensor in named:
            facts[f"{kind}:{name}"] = (id(tensor), tensor.dtype, tuple(tensor.shape), str(tensor.device),
                                       tensor.data_ptr(), tensor_checksum(tensor))
    return facts


class BaseChanged(Exception):
    """The base model is not as it was loaded after a run; the message says what differs."""


class BaseState:
    """A base model's state right after loading: each module's attributes (its children, parameters and buffers
    by identity), the model's configs, every weight's identity, place and checksum, and the tokenizer."""

    def __init__(self, model, tokenizer):
        # The loaded tokenizer is recorded by identity: restore() points the modules that held it at a run's copy.
        self.modules = [(module, {k: v if v is tokenizer else _copied(v) for k, v in module.__dict__.items()})
                        for module in model.modules()]
        self.requires_grad = {id(p): p.requires_grad for p in model.parameters()}
        # Each weight's data as loaded, kept alive: a library that casts or moves a frozen weight in place
        # (param.data = ...) leaves the loaded data here, and restore() puts it back.
        self.data = {id(p): p.data for p in model.parameters()}
        self.configs = [(c, copy.deepcopy(c.__dict__)) for c in (getattr(model, "config", None),
                                                                  getattr(model, "generation_config", None))
                        if c is not None]
        self.tensors = _tensor_facts(model)
        self.tokenizer = tokenizer
        self.pristine_tokenizer = copy.deepcopy(tokenizer)

    def fresh_tokenizer(self):
        return copy.deepcopy(self.pristine_tokenizer)

    def restore(self, model, tokenizer) -> None:
        """Put every module back as it was loaded (dropping what a run added: adapters, patched forwards, hooks,
        flags), pointing the modules that held the loaded tokenizer at `tokenizer`; then check every weight.
        Raises BaseChanged when a weight is not the one loaded."""
        for module, state in self.modules:
            module.__dict__.clear()
            module.__dict__.update({k: tokenizer if v is self.tokenizer else _copied(v) for k, v in state.items()})
        for config, state in self.configs:
            config.__dict__.clear()
            config.__dict__.update(copy.deepcopy(state))
        for param in model.parameters():
            loaded = self.data.get(id(param))
            if loaded is not None and (param.data_ptr(), param.dtype, param.device) != (
                    loaded.data_ptr(), loaded.dtype, loaded.device):
                param.data = loaded
            param.requires_grad_(self.requires_grad.get(id(param), False))
            param.grad = None
        now = _tensor_facts(model)
        if now.keys() != self.tensors.keys():
            added, missing = sorted(now.keys() - self.tensors.keys()), sorted(self.tensors.keys() - now.keys())
            raise BaseChanged(f"the model's tensors differ from those loaded: {len(added)} added "
                              f"{added[:3]}, {len(missing)} missing {missing[:3]}")
        what = ("object", "dtype", "shape", "device", "storage", "contents")
        for name, facts in self.tensors.items():
            for label, before, after in zip(what, facts, now[name]):
                if before != after:
                    raise BaseChanged(f"{name.split(':', 1)[1]}: its {label} changed during the run "
                                      f"({before} -> {after})")


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class WarmBase:
    """What a warm process holds between runs: at most one loaded base model, with its state as loaded. The runner
    calls load() for a run's model and the serve loop calls release() after it."""

    def __init__(self):
        self.key: str | None = None
        self.model = None
        self.state: BaseState | None = None
        self.peft_model = None
        self.tokenizer = None  # the tokenizer copy the kept base points at, for its next run
        self.kept = False  # whether the current run's base was already loaded
        self.note = ""  # why the last base was dropped, for the ready event

    def load(self, config: TrainConfig, backend: str, dtype):
        """The run's model with fresh adapters and its tokenizer, on the kept base when it is the same."""
        from . import backends

        self.note = ""
        fields = base_fields(config, backend, str(dtype).removeprefix("torch."))
        key = None if fields is None else json.dumps({**fields, "stamp": model_stamp(config.model)}, default=str)
        self.kept = key is not None and key == self.key and self.model is not None
        if self.kept:
            model, tokenizer = self.model, self.tokenizer
        else:
            self.drop()
            model, tokenizer = backends.load_base(config, backend, dtype)
            if key is not None:
                try:
                    state = BaseState(model, tokenizer)
                except Exception as exc:  # noqa: BLE001 - a state that cannot be recorded: load it each run
                    self.note = f"base model not kept: its state could not be recorded ({type(exc).__name__}: {exc})"
                else:
                    self.key, self.model, self.state = key, model, state
                    backends.freeze_heap()  # kept until dropped: adding adapters walks only what is new
        self.peft_model = backends.add_adapters(model, config, backend)
        return self.peft_model, tokenizer

    def release(self) -> None:
        """After a finished run: remove its adapters and put the base back as loaded, or drop it if it is not."""
        peft_model, self.peft_model = self.peft_model, None
        if self.model is not None and peft_model is not None:
            try:
                if hasattr(peft_model, "unload"):
                    peft_model.unload()  # PEFT swaps each LoRA layer back for the base layer it wrapped
                self.tokenizer = self.state.fresh_tokenizer()
                self.state.restore(self.model, self.tokenizer)
                self.note = ""
            except BaseChanged as exc:
                self.note = f"base model dropped: {exc}"
                self.drop()
            except Exception as exc:  # noqa: BLE001 - a base that cannot be put back is loaded again, not reused
                self.note = f"base model dropped: {type(exc).__name__}: {exc}"
                self.drop()
        del peft_model
        _free_memory()

    def drop(self) -> None:
        from . import backends

        had_base = self.model is not None
        self.key = self.model = self.state = self.tokenizer = None
        if not had_base:  # no base was kept, so none was frozen: no whole-heap walk for nothing
            _free_memory()
            return
        backends.unfreeze_heap()  # the dropped model's cycles (frozen when it loaded) are collected too
        _free_memory()
        backends.freeze_heap()

    def describe(self) -> str | None:
        return None if self.key is None else json.loads(self.key)["model"]


@dataclass
class WarmRun:
    """What the runner needs to know of a run in a warm process."""

    holder: WarmBase
    backend: str  # the backend this process imported for
    received: float  # unix time the request was sent (or read)
    ready_at: float  # unix time the libraries were imported
    runs_before: int

    @property
    def warm_process(self) -> bool:
        """Whether the libraries were imported before the request came: a process started for this very run only
        finished importing after it, and the run waited as a cold one would."""
        return self.runs_before > 0 or self.received >= self.ready_at

    def check_backend(self, config: TrainConfig, backend: str) -> None:
        """A warm process trains on one device, with the libraries of the backend it imported."""
        if getattr(config, "devices", 1) > 1:
            raise ConfigError({"devices": "a run on several GPUs launches its ranks from a process of its own, not "
                                          "a warm one"})
        if backend != self.backend:
            raise ConfigError({"backend": f"this warm process imported the {self.backend} backend's libraries; a "
                                          f"{backend} run needs a process of its own"})
