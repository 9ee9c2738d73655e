"""Runs one SFT job from a TrainConfig, reporting everything as events; the one place that owns a job's outcome."""
from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

from . import backends, distributed, failures, targets
from .chat import end_of_turn_ids, generation_prompt, template_rules, visible_text
from .config import EXPONENTIAL_RANGE_START, ConfigError, TrainConfig, check_environment
from .data import answers_only, encode_chats, load_data, load_tokenizer, rendered_lengths
from .derived import derive, packed_attention_ratio
from .events import EventSink
from .warm import WarmRun

LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo")


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


class StopRequest:
    """Set by SIGTERM/SIGINT or by the appearance of a stop file; read at every step end."""

    def __init__(self, stop_file: str | None = None):
        self.stop_file = Path(stop_file) if stop_file else None
        self._event = threading.Event()
        self.reason = ""

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self.set(f"signal {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def set(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def requested(self) -> bool:
        if not self._event.is_set() and self.stop_file is not None and self.stop_file.exists():
            self.set("stop file")
        return self._event.is_set()


def sft_config(config: TrainConfig, fmt: str, dtype, has_eval: bool):
    """The TRL SFTConfig for a TrainConfig: every SFT field maps here, nowhere else."""
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        output_dir=str(Path(config.output_dir) / "checkpoints"),
        max_length=config.max_length,
        packing=config.packing,
        eval_packing=config.eval_packing,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        warmup_steps=config.warmup_steps,
        learning_rate=config.learning_rate,
        optim=config.optim,
        weight_decay=config.weight_decay,
        # exponential_range is not one of transformers' schedules: the trainer's own is replaced (_exponential_range).
        lr_scheduler_type="constant" if config.lr_scheduler_type == "exponential_range" else config.lr_scheduler_type,
        lr_scheduler_kwargs={} if config.lr_scheduler_type == "exponential_range" else dict(config.lr_scheduler_kwargs),
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps or -1,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        eval_strategy="steps" if has_eval and config.eval_steps else "no",
        eval_steps=config.eval_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        gradient_checkpointing=config.gradient_checkpointing and on_gpu,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=1,
    )
    # messages rows arrive tokenized with their assistant_masks (data.encode_chats): TRL's assistant_only_loss, which
    # needs {% generation %} markers, stays off
    if config.completion_only_loss is not None and fmt == "prompt_completion":
        kwargs["completion_only_loss"] = config.completion_only_loss
    if config.lr_scheduler_type == "reduce_lr_on_plateau":
        kwargs["metric_for_best_model"] = "eval_loss"
    if config.early_stopping_patience is not None and has_eval:
        # The best eval's checkpoint is loaded back at the end and saved as the adapter. Without a save cadence of
        # its own the run checkpoints at each new best eval only ("best"); with one, the config made sure it falls on
        # eval steps, as load_best_model_at_end requires.
        kwargs.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
        if not config.save_steps:
            kwargs["save_strategy"] = "best"
    kwargs.update(distributed.trainer_kwargs(config.devices, on_gpu))
    return SFTConfig(**kwargs)


def exponential_range_factor(step: int, total_steps: int, start_lr: float, end_lr: float) -> float:
    """The multiplier of learning_rate at `step` (0-based) of an exponential ramp from start_lr to end_lr that
    reaches end_lr at the last step."""
    last = max(1, total_steps - 1)
    return (start_lr / end_lr) ** (1 - min(step, last) / last)


def _exponential_range(trainer, config: TrainConfig) -> None:
    """Give the trainer the range test's schedule: transformers has none that rises exponentially, so its
    create_scheduler makes a LambdaLR instead (saved in checkpoints and restored on resume like any schedule)."""
    from torch.optim.lr_scheduler import LambdaLR

    start = float(config.lr_scheduler_kwargs.get("start_lr", EXPONENTIAL_RANGE_START))

    def create_scheduler(num_training_steps: int, optimizer=None):
        if trainer.lr_scheduler is None:
            trainer.lr_scheduler = LambdaLR(optimizer or trainer.optimizer, lambda step: exponential_range_factor(
                step, num_training_steps, start, config.learning_rate))
            trainer._created_lr_scheduler = True
        return trainer.lr_scheduler

    trainer.create_scheduler = create_scheduler


def _count_batch_slots(trainer, slots: dict) -> None:
    """Count the token slots of every training batch as it is collated: slots["seen"] (padding included) and
    slots["real"] (attention mask set; all of them in a padding-free packed batch). Their ratio tells how much of
    the compute goes to padding. Eval batches are not counted."""
    make_loader = trainer.get_train_dataloader

    def get_train_dataloader(*args, **kwargs):
        loader = make_loader(*args, **kwargs)
        # accelerate's prepared loader iterates the DataLoader it wraps (base_dataloader), with that one's collate_fn
        inner = getattr(loader, "base_dataloader", loader)
        collate = inner.collate_fn

        def counting_collate(features):
            batch = collate(features)
            ids = batch.get("input_ids") if hasattr(batch, "get") else None
            if ids is not None:
                mask = batch.get("attention_mask")
                slots["seen"] += int(ids.numel())
                slots["real"] += int(mask.sum()) if mask is not None else int(ids.numel())
            return batch

        inner.collate_fn = counting_collate
        return loader

    trainer.get_train_dataloader = get_train_dataloader


def _event_callback(sink: EventSink, stop: StopRequest, model, tokenizer, config: TrainConfig, state_box: dict,
                    slots: dict, here: distributed.World = distributed.World()):
    import torch
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        def __init__(self):
            self.last_time = None
            self.last_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            train_begin = state_box.pop("train_begin", None)
            if train_begin is not None:
                train_begin()
            self.last_time = time.perf_counter()
            self.last_tokens = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            state_box["step"] = state.global_step
            first_step = state_box.pop("first_step", None)
            if first_step is not None:
                first_step()
            # Every rank must stop at the same step (a rank that steps on waits for the others forever).
            if distributed.agree(stop.requested(), here):
                stop.reason = stop.reason or "a stop seen by another rank"
                control.should_save = True
                control.should_training_stop = True
                state_box["stopping"] = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                now = time.perf_counter()
                tokens = state.num_input_tokens_seen
                elapsed = now - self.last_time
                rate = (tokens - self.last_tokens) / elapsed if elapsed > 0 else None  # the whole job's tokens
                self.last_time, self.last_tokens = now, tokens
                per_gpu = distributed.peaks(here)  # every rank logs at the same steps: gathered from all
                state_box["peaks"] = per_gpu
                per_gpu_field = {"peak_vram_bytes_per_gpu": per_gpu} if here.size > 1 else {}
                sink.emit(
                    "metrics", step=state.global_step, epoch=logs.get("epoch", state.epoch), tokens_seen=tokens,
                    loss=float(logs["loss"]), grad_norm=_float(logs.get("grad_norm")),
                    learning_rate=_float(logs.get("learning_rate")), tokens_per_s=rate,
                    padding_share=_padding_share(slots["real"], slots["seen"]),
                    peak_vram_bytes=max(per_gpu) if per_gpu else None, **per_gpu_field,
                )
            if "eval_loss" in logs:
                sink.emit("eval", step=state.global_step, epoch=state.epoch, eval_loss=float(logs["eval_loss"]))

        def on_evaluate(self, args, state, control, **kwargs):
            if here.is_main:
                _emit_samples(sink, model, tokenizer, config, state.global_step)

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            state_box["checkpoint"] = str(path)
            sink.emit("checkpoint", step=state.global_step, path=str(path))

    return EventCallback()


def _float(value):
    return None if value is None else float(value)


def _padding_share(real: int, slots: int) -> float | None:
    """The share of the batches' token slots that held padding, this session so far (None before a batch)."""
    if slots <= 0:
        return None
    return min(max(1.0 - real / slots, 0.0), 1.0)


def _emit_samples(sink: EventSink, model, tokenizer, config: TrainConfig, step: int) -> None:
    if not config.sample_prompts:
        return
    import torch

    was_training = model.training
    model.eval()
    try:
        # formatted as the answers were trained (training.engine.chat), not by the template's generation prompt
        rules = template_rules(tokenizer) if tokenizer.chat_template else None
        for prompt in config.sample_prompts:
            text = generation_prompt(tokenizer, [{"role": "user", "content": prompt}], rules) if rules else prompt
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=config.sample_max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=end_of_turn_ids(tokenizer) or None)
            completion = visible_text(tokenizer, out[0][inputs["input_ids"].shape[1]:].tolist())
            sink.emit("sample", step=step, prompt=prompt, completion=completion)
    except Exception as exc:  # a sample is a nicety: it must never end a run
        sink.warning("sample_failed", "sample_prompts", f"generation failed: {type(exc).__name__}: {exc}")
    finally:
        if was_training:
            model.train()


def _adapters(model, config: TrainConfig, backend: str) -> tuple[dict, list[str]]:
    """The started event's `adapters`: what target_modules asked, and the layers that carry an adapter by name and
    count (read from the model, not from the request); with where they cover less than asked."""
    resolution = targets.resolve(targets.layout_of(model), config.target_modules)
    applied = targets.adapted_counts(model)
    shortfalls = list(resolution.shortfalls)
    expected = resolution.counts()
    if applied != expected:
        def text(counts):
            return ", ".join(f"{name} x{n}" for name, n in counts.items()) or "none"

        shortfalls.append(f"target_modules {config.target_modules!r} resolves to {text(expected)} on this model, "
                          f"but the {backend} backend put adapters on {text(applied)}")
    return {"target_modules": config.target_modules, "modules": applied, "layers": sum(applied.values())}, shortfalls


def _setting_warnings(sink: EventSink, config: TrainConfig, model, counts: dict, lengths: list[int], backend: str,
                      loftq_applied: bool) -> None:
    if config.bias != "none" and counts["trainable_bias_params"] == 0:
        sink.warning(
            "bias_no_effect", "bias",
            f'bias="{config.bias}" made no bias trainable: the targeted modules of this model have no bias '
            "parameters, so the trainable count is unchanged; this run is the same as bias=\"none\"",
        )
    if config.loftq_config is not None and not loftq_applied:
        sink.warning("loftq_not_applied", "loftq_config",
                     f"LoftQ was asked for but the {backend} backend did not initialise LoRA with it")
    if config.tiled_mlp and not backends.tiled_mlp_applied(model):
        sink.warning("tiled_mlp_not_applied", "tiled_mlp",
                     f"tiled_mlp was asked for but the {backend} backend runs no MLP tiled on this machine (Unsloth "
                     "tiles on GPUs only; the hf backend never does); peak memory is as without it")
    _unsloth_attention_warning(sink, config, backend)
    if lengths:
        near = sum(1 for n in lengths if n >= 0.5 * config.max_length) / len(lengths)
        truncated = sum(1 for n in lengths if n > config.max_length) / len(lengths)
        if config.packing and near >= 0.5:
            sink.warning("packing_no_gain", "packing",
                         f"{near:.0%} of examples are at least half of max_length ({config.max_length}); "
                         "packing gains little and costs memory")
        if truncated > 0:
            sink.warning("truncation", "max_length",
                         f"{truncated:.1%} of examples are longer than max_length ({config.max_length}) "
                         "and will be cut")
    _packed_attention_warning(sink, config, model, backend)


def _template_warnings(sink: EventSink, summary: dict, rows: int) -> None:
    """What the model's chat template changed in the rows (training.engine.chat): said once per reason."""
    for item in summary["changed"]:
        sink.warning("template_changed_rows", "train_file",
                     f"{item['rows']} of {rows} rows (row {', '.join(map(str, item['first_rows']))}...): "
                     f"{item['reason']}")
    if summary["injected"]:
        sink.warning("template_injected_text", "train_file",
                     f"the chat template adds text of its own to every row, and it trains where the loss covers "
                     f"it: {summary['injected'][:200]!r}")
    for item in summary["prompt_mismatch"][:1]:
        sink.warning("template_prompt_mismatch", "completion_only_loss", item["reason"])


def _unsloth_attention_warning(sink: EventSink, config: TrainConfig, backend: str) -> None:
    """Unsloth on a GPU whose torch predates varlen attention with grouped KV heads: every padding-free batch (all
    of Unsloth's, packed or not) costs one attention call per run of equal-length examples."""
    import torch

    if backend != "unsloth" or not torch.cuda.is_available():
        return
    old = backends.unsloth_varlen_missing()
    if old:
        sink.warning(
            "unsloth_attention_per_segment", "packing",
            f"torch {old} on this worker has no varlen attention for grouped KV heads (torch >= 2.12), so Unsloth "
            "attends to each run of equal-length examples in a batch with a call of its own; on an H100 that made "
            "packed 16-bit steps 3.1-3.7x slower and unpacked mixed-length QLoRA steps 1.4-1.7x slower "
            "(docs/benchmarks.md). Install torch 2.13 on this worker, as the Makefile and Dockerfile.gpu do",
        )


def _packed_attention_warning(sink: EventSink, config: TrainConfig, model, backend: str) -> None:
    """Packing on a backend whose attention takes the packed micro-batch as one masked sequence (see
    derived.packed_attention_ratio). The unsloth backend attends per example; flash-attention kernels do too."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not config.packing or backend != "hf" or impl not in ("sdpa", "eager"):
        return
    width, layer_params = backends.attention_width(model), backends.layer_linear_params(model)
    if not width or not layer_params:
        return
    b, length = config.per_device_train_batch_size, config.max_length
    ratio = packed_attention_ratio(b, length, width, layer_params)
    if ratio <= 1:
        return
    sink.warning(
        "packed_attention_cost", "packing",
        f"packing on the hf backend ({impl} attention): each micro-batch of up to {b} x {length} = {b * length} "
        f"tokens is attended as one masked sequence, so attention does {ratio:.1f}x the work of the linear layers "
        "per token, most of it masked away across example boundaries. A smaller per_device_train_batch_size with "
        "more gradient_accumulation_steps (same effective batch) or the unsloth backend (it attends per example) "
        "avoids it: on an H100 with a 1B Llama at max_length 2048, micro-batch 8 -> 4 x 2 ran 17-41% faster with "
        "35% less peak memory.",
    )


def _save_outputs(config: TrainConfig, trainer, tokenizer, dtype) -> tuple[str, str | None]:
    adapter_dir = Path(config.output_dir) / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    merged = None
    if config.merge_16bit:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        # Merge into a fresh 16-bit copy of the base: merging into 4-bit weights would round the adapter away.
        merge_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else torch.float16
        base = AutoModelForCausalLM.from_pretrained(config.model, dtype=merge_dtype)
        merged_model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged = Path(config.output_dir) / "merged"
        merged_model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        merged = str(merged)
    return str(adapter_dir), merged


# What torch's CPU allocator says when an allocation is refused (a worker's per-slot address-space limit, or a host
# out of memory): "DefaultCPUAllocator: can't allocate memory" / "not enough memory".
CPU_OOM_TEXT = ("can't allocate memory", "not enough memory", "cannot allocate memory")


def _is_oom(exc: BaseException) -> bool:
    if exc.__class__.__name__ in ("OutOfMemoryError", "MemoryError"):
        return True
    text = str(exc).lower()
    return "out of memory" in text or any(part in text for part in CPU_OOM_TEXT)


def run(config: TrainConfig, sink: EventSink, *, stop: StopRequest | None = None, resume_from: str | None = None,
        warm: WarmRun | None = None) -> int:
    """Run the job; every outcome ends in exactly one terminal event. Returns 0 finished/stopped, 1 failed.
    `warm`: the run is a warm process's request (training/engine/warm.py), whose base model it may keep."""
    stop = stop or StopRequest()
    state_box: dict = {"step": 0, "checkpoint": None, "stopping": False, "peaks": None}
    here = distributed.world()
    origin = warm.received if warm else process_started_at()
    backend = None
    try:
        backends.prepare_process(config)  # before anything imports torch
        lever = backends.compile_lever(config)  # before anything imports unsloth
        check_environment(config)
        wrong_world = distributed.world_error(config.devices, here)
        if wrong_world:
            raise ConfigError({"devices": wrong_world})
        distributed.bind_device(here)  # before anything loads: this rank's own GPU
        phases = Phases()
        train, evaluation, fmt = load_data(config)
        plan = None
        if fmt == "messages":  # the template's rules checked on every row before any model loads
            chat_tokenizer = load_tokenizer(config.model)
            train, plan = encode_chats(train, chat_tokenizer, answers_only=answers_only(config, fmt))
            if evaluation is not None:
                evaluation, _ = encode_chats(evaluation, chat_tokenizer, answers_only=answers_only(config, fmt),
                                             field="eval_file" if config.eval_file else "train_file")
        phases.mark("data")
        backend = backends.resolve_backend(config)
        if warm:
            warm.check_backend(config, backend)
        dtype = backends.resolve_dtype(config)
        loading = time.perf_counter()
        # LoftQ's initialisation happens in here
        model, tokenizer = warm.holder.load(config, backend, dtype) if warm else backends.load(config, backend, dtype)
        load_s = time.perf_counter() - loading
        phases.mark("model")
        trainer_class = _trainer_class(backend)  # after backends.load: unsloth must patch TRL first
        counts = backends.parameter_counts(model)
        adapters, shortfalls = _adapters(model, config, backend)
        lengths = rendered_lengths(train, tokenizer, fmt)
        phases.mark("lengths")
        args = sft_config(config, fmt, dtype, evaluation is not None)
        trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                             processing_class=tokenizer)
        phases.mark("trainer")  # TRL tokenizes and packs the rows here
        if backend == "hf":
            backends.keep_adapters_float32(trainer.model)  # as the unsloth backend trains them
        if config.lr_scheduler_type == "exponential_range":
            _exponential_range(trainer, config)
        slots = {"seen": 0, "real": 0}
        _count_batch_slots(trainer, slots)
        trainer.add_callback(_event_callback(sink, stop, model, tokenizer, config, state_box, slots, here))
        early_stopping = _early_stopping(trainer, config, evaluation is not None)
        # Count what the trainer will iterate: after packing, rows are blocks of max_length, not examples.
        derived = derive(config, num_examples=len(trainer.train_dataset)).as_dict()
        loftq_applied = config.loftq_config is not None and _has_loftq(model)
        resumed_step = None
        if resume_from:
            resumed_step = _checkpoint_step(resume_from)
        start_up = _start_up(warm, origin)
        state_box["train_begin"] = lambda: phases.mark("train_setup")  # optimizer, accelerate, data loader
        state_box["first_step"] = lambda: sink.emit("log", **_first_step(start_up, origin, warm is not None),
                                                    phases=phases.mark("first_step"))
        sink.emit(
            "started", **start_up, config=config.model_dump(mode="json"), derived=derived, versions=library_versions(),
            backend=backend, device=_device_name(), dtype=str(dtype).removeprefix("torch."),
            lora_scale=backends.lora_scale_in_effect(model), train_examples=len(train),
            eval_examples=len(evaluation) if evaluation is not None else 0, data_format=fmt,
            resumed_from_step=resumed_step, pid=os.getpid(), load_s=round(load_s, 3), **counts, adapters=adapters,
            # What the fit planner calibrates on (training.planner): the shapes, the GPU's size, the rows' mean.
            model_config=_shape_fields(model), gpu_memory_total=_gpu_memory_total(),
            mean_tokens=round(sum(min(n, config.max_length) for n in lengths) / len(lengths), 1) if lengths else None,
        )
        _setting_warnings(sink, config, model, counts, lengths, backend, loftq_applied)
        for shortfall in shortfalls:
            sink.warning("target_modules_partial", "target_modules", shortfall)
        if lever:
            sink.warning("unsloth_compile_off", "backend", lever)
        if plan is not None:
            _template_warnings(sink, plan.summary(), len(plan.rows))
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume_from)
        step = trainer.state.global_step
        # The run's peak per GPU, where there are several: what each rank held at its last logged step.
        per_gpu = {"peak_vram_bytes_per_gpu": state_box["peaks"]} if here.size > 1 else {}
        if state_box["stopping"]:
            sink.emit("stopped", step=step, checkpoint=state_box["checkpoint"], reason=stop.reason, **per_gpu)
            return 0
        if not here.is_main:  # rank 0 alone writes the outputs; the launcher needs this rank's outcome only
            sink.emit("finished", step=step, adapter_path=None, merged_path=None,
                      train_loss=float(result.training_loss), runtime_s=time.perf_counter() - started)
            return 0
        if evaluation is None:
            _emit_samples(sink, model, tokenizer, config, step)
        adapter, merged = _save_outputs(config, trainer, tokenizer, dtype)
        sink.emit("finished", step=step, adapter_path=adapter, merged_path=merged,
                  train_loss=float(result.training_loss), runtime_s=time.perf_counter() - started, **per_gpu,
                  **_best_point(trainer, early_stopping))
        return 0
    except ConfigError as exc:
        sink.emit("failed", step=state_box["step"], error_class="ConfigError", message=str(exc), errors=exc.errors,
                  traceback="", oom=False)
        return 1
    except BaseException as exc:  # noqa: BLE001 - every outcome becomes an event, even KeyboardInterrupt
        oom = _is_oom(exc)
        # A compiler's, a template's or an unsupported architecture's failure says its cause and what to change.
        known = None if oom else failures.explain(exc, backend=backend or config.backend,
                                                  model_type=backends.model_type_of(config.model))
        # One name for running out of memory, on a GPU or a CPU (torch's CPU allocator raises a RuntimeError), so
        # the planner's calibration and the findings read it alike; the traceback keeps the original class.
        sink.emit("failed", step=state_box["step"], error_class="OutOfMemoryError" if oom else type(exc).__name__,
                  message=known[1] if known else str(exc), traceback=traceback.format_exc(), oom=oom,
                  **({"cause": known[0]} if known else {}))
        return 1


def _early_stopping(trainer, config: TrainConfig, has_eval: bool):
    """transformers' EarlyStoppingCallback on eval loss, when the config asks for it (None otherwise)."""
    if config.early_stopping_patience is None or not has_eval:
        return None
    from transformers import EarlyStoppingCallback

    callback = EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience,
                                     early_stopping_threshold=config.early_stopping_threshold)
    trainer.add_callback(callback)
    return callback


def _best_point(trainer, early_stopping) -> dict:
    """With early stopping, where the adapter came from: the best eval's step and loss (its checkpoint was loaded
    back before the adapter was saved), and whether patience ran out before the planned end."""
    if early_stopping is None:
        return {}
    state = trainer.state
    return {"best_step": state.best_global_step, "best_eval_loss": _float(state.best_metric),
            "stopped_early": early_stopping.early_stopping_patience_counter >= early_stopping.early_stopping_patience}


class Phases:
    """Where a run's start-up goes: seconds of each stage from the run's hand-over in this process to its first
    step's end (data: the rows read; model: base loaded or kept, adapters added; lengths: the rows' token counts;
    trainer: TRL's tokenizing and packing; train_setup: optimizer, accelerate, data loader; first_step)."""

    def __init__(self):
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> dict[str, float]:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now
        return dict(self.seconds)


def process_started_at() -> float:
    """Unix time this process started (Linux's /proc, to 10 ms), so that a cold run's start-up counts the
    interpreter and every import; elsewhere the time this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


def _start_up(warm: WarmRun | None, origin: float) -> dict:
    """How the run started, for its started event: in a warm process (libraries imported before the request) or
    not, on a base model kept from the previous run or loaded for it, and the seconds from the request (warm) or
    the process's start (cold) to this event."""
    return {"warm_process": warm is not None and warm.warm_process,
            "base_kept": bool(warm and warm.holder.kept), "start_s": round(time.time() - origin, 3)}


def _first_step(start_up: dict, origin: float, in_warm_process: bool) -> dict:
    """The log event at the first step's end: how long the run took to get there, and why."""
    seconds = time.time() - origin
    how = (("warm process (libraries imported before the request), " if start_up["warm_process"] else
            "cold process, ") + ("base model kept from the previous run" if start_up["base_kept"] else
                                 "base model loaded for this run"))
    since = "the request" if in_warm_process else "the process started"
    return {"message": f"first step {seconds:.1f} s after {since}: {how}", "first_step_s": round(seconds, 3),
            "warm_process": start_up["warm_process"], "base_kept": start_up["base_kept"]}


def _trainer_class(backend: str):
    """TRL's SFTTrainer; on a CPU with the hf backend, one whose loss is transformers' own.

    TRL 1.15 computes the SFT loss with a Triton kernel that needs a GPU. Unsloth's CPU fallback patches that away;
    plain TRL does not, so on CPU the hf backend takes the model's standard causal-LM loss (same value: mean token
    cross-entropy over the labels TRL's collator built).
    """
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    if backend == "unsloth" or torch.cuda.is_available():
        return SFTTrainer

    class CPUSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels",
                                                             "position_ids")}
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return CPUSFTTrainer


def _has_loftq(model) -> bool:
    cfg = getattr(model, "peft_config", {}).get("default")
    return getattr(cfg, "init_lora_weights", None) == "loftq"


def _checkpoint_step(path: str) -> int | None:
    name = Path(path).name
    return int(name.rsplit("-", 1)[1]) if name.startswith("checkpoint-") else None


SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "tie_word_embeddings")


def _shape_fields(model) -> dict:
    """The model config's shape fields (of its language model, for a multimodal one)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    return {k: getattr(config, k) for k in SHAPE_FIELDS if isinstance(getattr(config, k, None), (int, bool))}


def _gpu_memory_total() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
