"""Where an engine run's GPU memory goes, and what each backend actually trains with (diagnostics for issue 2).

Runs the engine's own `runner.run` on a config (as `python -m training.engine run` does), with read-only hooks:
- model setup (backends.load): peak and resident memory, tied or untied embeddings, dtypes of the big tensors,
  parameter bytes by dtype / trainable, attention implementation;
- the trainer: packing / padding-free as resolved, the collator, rows after packing, checkpointing in effect;
- training: memory at each step's start (resident) and each step's peak (reset at every step start), reserved,
  the first batches' shapes and token counts as the model receives them;
- what bounds a step (steps 6-8 under torch.profiler): the GPU's kernel time per step against the step's wall time
  (taken from the unprofiled steps) and the process's CPU time per step: a GPU busy for a small share of the step
  while the CPU is busy all of it means the step is bound by Python and kernel launches, not by the GPU.

    python bench/gpu_memory_probe.py CONFIG.json OUT.json      (gpu_throughput.py --probe runs it per case)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GiB = 2**30


def _gib(n) -> float:
    return round(n / GiB, 3)


def describe_model(model) -> dict:
    import torch

    facts: dict = {}
    inner = model
    for attr in ("get_base_model",):
        if hasattr(inner, attr):
            inner = getattr(inner, attr)()
    emb, out = inner.get_input_embeddings(), inner.get_output_embeddings()
    facts["embed"] = dict(dtype=str(emb.weight.dtype), shape=list(emb.weight.shape), requires_grad=emb.weight.requires_grad)
    if out is not None:
        w = out.weight
        facts["lm_head"] = dict(dtype=str(w.dtype), shape=list(w.shape), requires_grad=w.requires_grad,
                                cls=type(out).__name__)
        facts["tied"] = w.data_ptr() == emb.weight.data_ptr()
    facts["config_tie_word_embeddings"] = getattr(inner.config, "tie_word_embeddings", None)
    facts["attn_implementation"] = getattr(inner.config, "_attn_implementation", None)
    by: dict[str, int] = {}
    seen = set()  # a tied weight (embedding = lm_head) counts once
    kinds = [(f"{p.dtype}|{'train' if p.requires_grad else 'frozen'}|{p.device.type}|{type(p).__name__}", p)
             for p in model.parameters()] + [(f"buffer {b.dtype}|{b.device.type}", b) for b in model.buffers()]
    for key, tensor in kinds:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            by[key] = by.get(key, 0) + tensor.numel() * tensor.element_size()
    facts["bytes_by_kind_gib"] = {k: _gib(v) for k, v in sorted(by.items(), key=lambda kv: -kv[1])}
    norms = [(n, str(p.dtype)) for n, p in model.named_parameters() if "norm" in n][:2]
    facts["norm_dtypes"] = norms
    facts["model_cls"] = [type(model).__name__, type(inner).__name__]
    return facts


def describe_checkpointing(model) -> dict:
    import torch

    facts = {"torch_checkpoint": getattr(torch.utils.checkpoint.checkpoint, "__name__", None)}
    try:
        import transformers.modeling_utils as mu

        facts["transformers_checkpoint"] = getattr(getattr(mu, "checkpoint", None), "__name__", None)
    except Exception:
        pass
    found = {}
    for name, module in model.named_modules():
        if hasattr(module, "gradient_checkpointing"):
            func = getattr(module, "_gradient_checkpointing_func", None)
            desc = repr(func)[:160] if func is not None else None
            key = f"{type(module).__name__}: on={module.gradient_checkpointing} func={desc}"
            found[key] = found.get(key, 0) + 1
    facts["modules"] = found
    facts["is_gradient_checkpointing"] = getattr(model, "is_gradient_checkpointing", None)
    return facts


def describe_inputs(args, kwargs, pad_id) -> dict:
    import torch

    out = {}
    items = list(kwargs.items()) + [(f"arg{i}", a) for i, a in enumerate(args)]
    for k, v in items:
        if isinstance(v, torch.Tensor):
            out[k] = dict(shape=list(v.shape), dtype=str(v.dtype))
            if k == "input_ids" and pad_id is not None:
                out[k]["non_pad"] = int((v != pad_id).sum())
            if k == "labels":
                out[k]["labelled"] = int((v != -100).sum())
            if k == "attention_mask" and v.dtype in (torch.int64, torch.int32, torch.bool) and v.dim() == 2:
                out[k]["ones"] = int(v.sum())
            if k == "position_ids":
                out[k]["sequences"] = int((v == 0).sum())
        elif v is not None and k not in ("return_dict", "use_cache"):
            out[k] = repr(v)[:80]
    return out


FRAMEWORK = ("/torch/", "/accelerate/", "/transformers/trainer", "/trl/trainer", "/contextlib.py", "/functools.py")


def _where(frames: list) -> str:
    """The innermost frame that says what the memory is for (not the framework machinery around it)."""
    for f in frames:
        name = f.get("filename", "")
        if not any(part in name for part in FRAMEWORK) and not name.startswith("<"):
            short = "/".join(name.split("/")[-2:])
            return f"{short}:{f.get('line')} {f.get('name')}"
    f = frames[0] if frames else {}
    return f"{'/'.join(f.get('filename', '?').split('/')[-2:])}:{f.get('line')} {f.get('name')}"


def peak_breakdown(snapshot: dict, resident: int, top: int = 14) -> dict:
    """Replay one step's allocator trace; at its peak, group the blocks allocated in the step by where they were made."""
    device = torch_device_index()
    trace = snapshot["device_traces"][device]
    cur = best = 0
    best_i = -1
    sizes: dict[int, int] = {}
    for i, ev in enumerate(trace):
        if ev["action"] == "alloc":
            sizes[ev["addr"]] = ev["size"]
            cur += ev["size"]
            if cur > best:
                best, best_i = cur, i
        elif ev["action"] == "free_completed":
            cur -= sizes.pop(ev["addr"], ev["size"])
    live: dict[int, tuple[int, list]] = {}
    freed_before = 0
    for ev in trace[:best_i + 1]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = (ev["size"], ev.get("frames", []))
        elif ev["action"] == "free_completed":
            if ev["addr"] in live:
                live.pop(ev["addr"])
            else:
                freed_before += ev["size"]
    groups: dict[str, list[int]] = {}
    for size, frames in live.values():
        g = groups.setdefault(_where(frames), [0, 0])
        g[0] += size
        g[1] += 1
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])
    return dict(resident_at_step_start_gib=_gib(resident), step_allocations_live_at_peak_gib=_gib(best),
                freed_from_resident_before_peak_gib=_gib(freed_before), events=len(trace),
                top=[dict(where=k, gib=_gib(v[0]), blocks=v[1]) for k, v in ranked[:top]],
                rest_gib=_gib(sum(v[0] for _, v in ranked[top:])))


PROFILED = (6, 7, 8)  # warm steps


def step_bound(profiler, steps: list[dict]) -> dict:
    """GPU time per profiled step (the union of its kernels' intervals; copies apart) against the unprofiled
    steps' wall and CPU time (the profiler slows the CPU side down, so those come from the steps around it)."""
    device = [e for e in profiler.events() if e.device_type.name == "CUDA"]
    kernels = [e for e in device if not e.name.startswith(("Memcpy", "Memset"))]
    busy, end = 0.0, float("-inf")
    for start, stop in sorted((e.time_range.start, e.time_range.end) for e in kernels):
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    per_step = busy / 1e6 / len(PROFILED)
    copies = sum(e.time_range.elapsed_us() for e in device if e.name.startswith("Memcpy")) / 1e6 / len(PROFILED)
    plain = [s for s in steps if s["step"] > 3 and s["step"] not in PROFILED]  # step 3: the memory trace
    wall = sorted(s["seconds"] for s in plain)[len(plain) // 2]
    cpu = sorted(s["cpu_seconds"] for s in plain)[len(plain) // 2]
    top: dict[str, float] = {}
    for e in kernels:
        top[e.name[:80]] = top.get(e.name[:80], 0) + e.time_range.elapsed_us() / 1e6 / len(PROFILED)
    return dict(kernels_per_step=len(kernels) // len(PROFILED), gpu_kernel_seconds_per_step=round(per_step, 4),
                copy_seconds_per_step=round(copies, 4), median_step_seconds=wall, median_step_cpu_seconds=cpu,
                gpu_busy_share=round(per_step / wall, 3),
                top_kernels={k: round(v, 4) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]})


def torch_device_index() -> int:
    import torch

    return torch.cuda.current_device()


def main(cfg_path: str, out_path: str, trace_path: bool = True) -> None:
    import unsloth_varlen  # bench/, beside this script

    emulated = unsloth_varlen.apply()  # a +varlen case only: before Unsloth is imported
    import torch

    from training.engine import backends, runner
    from training.engine.config import parse_config
    from training.engine.events import EventSink

    facts: dict = {"batches": [], "steps": [], "unsloth_varlen_emulated": emulated}
    box: dict = {}
    orig_load = backends.load

    def load(config, backend, dtype):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.time()
        model, tokenizer = orig_load(config, backend, dtype)
        torch.cuda.synchronize()
        facts["load"] = dict(seconds=round(time.time() - t0, 1), allocated_before_gib=_gib(before),
                             allocated_after_gib=_gib(torch.cuda.memory_allocated()),
                             peak_gib=_gib(torch.cuda.max_memory_allocated()),
                             reserved_gib=_gib(torch.cuda.memory_reserved()))
        facts["model"] = describe_model(model)
        box["model"], box["tokenizer"] = model, tokenizer
        return model, tokenizer

    backends.load = load
    orig_trainer_class = runner._trainer_class

    def trainer_class(backend):
        cls = orig_trainer_class(backend)

        def make(**kwargs):
            torch.cuda.reset_peak_memory_stats()
            trainer = cls(**kwargs)
            torch.cuda.synchronize()
            a = trainer.args
            coll = trainer.data_collator
            facts["trainer"] = dict(
                cls=[c.__name__ for c in type(trainer).__mro__[:3]], packing=a.packing,
                packing_strategy=getattr(a, "packing_strategy", None), padding_free=getattr(a, "padding_free", None),
                trainer_padding_free=getattr(trainer, "padding_free", None),
                collator=type(coll).__name__, collator_padding_free=getattr(coll, "padding_free", None),
                pad_to_multiple_of=getattr(coll, "pad_to_multiple_of", None),
                rows=len(trainer.train_dataset), columns=list(trainer.train_dataset.column_names),
                gradient_checkpointing=a.gradient_checkpointing,
                gradient_checkpointing_kwargs=a.gradient_checkpointing_kwargs,
                init_peak_gib=_gib(torch.cuda.max_memory_allocated()),
                allocated_after_init_gib=_gib(torch.cuda.memory_allocated()))
            try:
                ds = trainer.train_dataset
                lengths = [len(x) for x in ds.select(range(min(2000, len(ds))))["input_ids"]]
                facts["trainer"]["row_len"] = dict(mean=sum(lengths) / len(lengths), max=max(lengths),
                                                   min=min(lengths))
            except Exception as exc:  # diagnostics only
                facts["trainer"]["row_len"] = repr(exc)
            trainable: dict[str, int] = {}
            for p in trainer.model.parameters():
                if p.requires_grad:
                    trainable[str(p.dtype)] = trainable.get(str(p.dtype), 0) + p.numel()
            facts["trainer"]["trainable_dtypes_after_init"] = trainable
            box["trainer"] = trainer
            return trainer

        return make

    runner._trainer_class = trainer_class
    orig_callback = runner._event_callback

    def event_callback(sink, stop, model, tokenizer, *rest):
        inner_cb = orig_callback(sink, stop, model, tokenizer, *rest)
        pad_id = tokenizer.pad_token_id

        class Probe(type(inner_cb)):  # the engine's callback (its events), plus the probe's readings
            def on_train_begin(self, args, state, control, **kw):
                torch.cuda.synchronize()
                trainable: dict[str, int] = {}
                for p in (kw.get("model") or model).parameters():
                    if p.requires_grad:
                        trainable[str(p.dtype)] = trainable.get(str(p.dtype), 0) + p.numel()
                facts["trainable_dtypes_at_train_begin"] = trainable
                facts["train_begin"] = dict(allocated_gib=_gib(torch.cuda.memory_allocated()),
                                            setup_peak_gib=_gib(torch.cuda.max_memory_allocated()),
                                            reserved_gib=_gib(torch.cuda.memory_reserved()))
                m = kw.get("model") or model
                targets = [("outer", m)]
                inner = m.get_base_model() if hasattr(m, "get_base_model") else m
                if hasattr(inner, "model"):
                    targets.append(("decoder", inner.model))

                for label, mod in targets:
                    def hook(module, args_, kwargs_, label=label):
                        if len(facts["batches"]) < 6:
                            facts["batches"].append({"at": label, **describe_inputs(args_, kwargs_, pad_id)})
                    mod.register_forward_pre_hook(hook, with_kwargs=True)
                super().on_train_begin(args, state, control, **kw)

            def on_step_begin(self, args, state, control, **kw):
                torch.cuda.synchronize()
                self.resident = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                if state.global_step == PROFILED[0] - 1:
                    self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                                       torch.profiler.ProfilerActivity.CUDA])
                    self.profiler.__enter__()
                if state.global_step == 2 and trace_path:  # step 3: warm, compiled
                    try:
                        torch.cuda.memory._record_memory_history(max_entries=400000, stacks="python")
                    except Exception as exc:  # diagnostics only
                        facts["peak_breakdown_step3"] = repr(exc)
                self.t = time.perf_counter()
                self.cpu = time.process_time()

            def on_step_end(self, args, state, control, **kw):
                super().on_step_end(args, state, control, **kw)
                torch.cuda.synchronize()
                step = dict(step=state.global_step, seconds=round(time.perf_counter() - self.t, 3),
                            resident_gib=_gib(self.resident), peak_gib=_gib(torch.cuda.max_memory_allocated()),
                            reserved_peak_gib=_gib(torch.cuda.max_memory_reserved()),
                            cpu_seconds=round(time.process_time() - self.cpu, 3),
                            tokens_seen=state.num_input_tokens_seen)
                facts["steps"].append(step)
                if state.global_step == PROFILED[-1]:
                    self.profiler.__exit__(None, None, None)
                    box["profiler"] = self.profiler
                if state.global_step == 1:
                    facts["checkpointing"] = describe_checkpointing(kw.get("model") or model)
                if state.global_step == 3 and trace_path:
                    try:
                        snap = torch.cuda.memory._snapshot()
                        torch.cuda.memory._record_memory_history(enabled=None)
                        facts["peak_breakdown_step3"] = peak_breakdown(snap, self.resident)
                    except Exception as exc:  # diagnostics only
                        facts["peak_breakdown_step3"] = repr(exc)
                if state.global_step == 3:
                    s = torch.cuda.memory_stats()
                    facts["memory_stats_step3"] = {k: _gib(v) if "bytes" in k else v for k, v in s.items()
                                                   if k.endswith(".peak") and ".all." in k or k == "num_alloc_retries"}

        return Probe()

    runner._event_callback = event_callback
    events = []
    sink = EventSink(sys.stderr, callback=events.append)
    config = parse_config(json.load(open(cfg_path)))
    # The probe callback is added in place of the engine's; metrics events then come from the probe's step list.
    rc = runner.run(config, sink)
    facts["rc"] = rc
    if "profiler" in box:
        try:
            facts["step_bound"] = step_bound(box["profiler"], facts["steps"])
        except Exception as exc:  # diagnostics only
            facts["step_bound"] = repr(exc)
    facts["terminal"] = {k: v for k, v in events[-1].items() if k != "traceback"} if events else None
    if events and events[-1]["type"] == "failed":
        facts["traceback"] = events[-1].get("traceback", "")[-3000:]
    losses = [e for e in events if e["type"] == "metrics"]
    facts["losses"] = [round(e["loss"], 4) for e in losses]
    Path(out_path).write_text(json.dumps(facts, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
