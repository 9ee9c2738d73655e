"""What would make a config fit a GPU, and the fastest config that fits at the same effective batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from training.planner.estimate import Constants, Prediction, Setup, human_bytes, predict
from training.planner.shapes import ModelShape

GiB = 1024 ** 3
CUDA_CONTEXT_BYTES = 0.5 * GiB  # what a process holds outside PyTorch's allocator (nvidia-smi counts it)
SAFETY = 0.05  # of the GPU's memory, for the allocator's fragmentation and what nvidia-smi counts that we don't

ConstantsOf = Callable[[Setup], Constants]


def needed_bytes(prediction: Prediction) -> float:
    """What a run needs of a GPU: the upper end of its peak's band and a process's CUDA context."""
    return prediction.peak_high + CUDA_CONTEXT_BYTES


def fits(prediction: Prediction, gpu_bytes: float) -> bool:
    return needed_bytes(prediction) <= gpu_bytes * (1 - SAFETY)


@dataclass(frozen=True)
class Lever:
    label: str
    changes: dict[str, Any]  # engine config fields
    prediction: Prediction
    fits: bool
    same_problem: bool = True  # False: it changes what is learned (shorter rows), not only how

    def as_dict(self) -> dict:
        p = self.prediction
        return {"label": self.label, "changes": self.changes, "peak_bytes": p.peak_bytes, "peak_high": p.peak_high,
                "tokens_per_s": p.tokens_per_s, "fits": self.fits, "same_problem": self.same_problem,
                "text": f"{self.label}: peak ≈ {human_bytes(p.peak_bytes)}"}


def _predict(shape, setup, constants_of, **kw) -> Prediction:
    return predict(shape, setup, constants_of(setup), **kw)


def levers(shape: ModelShape, setup: Setup, constants_of: ConstantsOf, gpu_bytes: float, *,
           gpu_name: str = "") -> list[Lever]:
    """Each single change that lowers the peak, with its predicted peak: 4-bit, a smaller micro-batch with more
    accumulation (same effective batch), gradient checkpointing, the tiled MLP, a shorter max_length."""
    out: list[Lever] = []

    def add(label, changes, new_setup, same_problem=True):
        p = _predict(shape, new_setup, constants_of, gpu_name=gpu_name)
        out.append(Lever(label, changes, p, fits(p, gpu_bytes), same_problem))

    if not setup.load_in_4bit:
        add("load_in_4bit on (QLoRA)", {"load_in_4bit": True}, setup.changed(load_in_4bit=True))
    effective = setup.micro_batch * setup.grad_accum
    for mb in _smaller_divisors(setup.micro_batch, effective):
        ga = effective // mb
        new = setup.changed(micro_batch=mb, grad_accum=ga)
        p = _predict(shape, new, constants_of, gpu_name=gpu_name)
        if fits(p, gpu_bytes) or mb == 1:
            out.append(Lever(f"per_device_train_batch_size {mb} × gradient_accumulation_steps {ga} "
                             f"(same effective batch {effective})",
                             {"per_device_train_batch_size": mb, "gradient_accumulation_steps": ga}, p,
                             fits(p, gpu_bytes)))
            break
    if not setup.gradient_checkpointing:
        add("gradient_checkpointing on", {"gradient_checkpointing": True}, setup.changed(gradient_checkpointing=True))
    if not setup.tiled_mlp and setup.backend == "unsloth":
        add("tiled_mlp on", {"tiled_mlp": True}, setup.changed(tiled_mlp=True))
    length = setup.max_length // 2
    while length >= 256:
        new = setup.changed(max_length=length)
        p = _predict(shape, new, constants_of, gpu_name=gpu_name)
        if fits(p, gpu_bytes) or length // 2 < 256:
            out.append(Lever(f"max_length {length} (rows cut shorter: a different learning problem)",
                             {"max_length": length}, p, fits(p, gpu_bytes), same_problem=False))
            break
        length //= 2
    return out


def _smaller_divisors(micro_batch: int, effective: int) -> list[int]:
    return [d for d in range(micro_batch - 1, 0, -1) if effective % d == 0]


# AdamW however its state is kept: the fastest fit may trade a memory-saving variant for the fused one (the seed's
# default for adapters: "default to fused AdamW for speed unless you're memory bound"). The same update rule; the
# 8-bit variants round the moments to 8 bits, so the losses move by that rounding (on the lent H200, 1.1B, 30 steps:
# at most 9.0e-4, where two runs of one config differed by 4.8e-4; docs/benchmarks.md).
ADAMW_VARIANTS = frozenset({"adamw_torch", "adamw_torch_fused", "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit",
                            "paged_adamw_32bit", "paged_adamw"})
FUSED_ADAMW = "adamw_torch_fused"


def fastest_fit(shape: ModelShape, setup: Setup, constants_of: ConstantsOf, gpu_bytes: float, *, gpu_name: str = "",
                total_steps: int | None = None) -> tuple[dict[str, Any], Prediction] | None:
    """The fastest config at the same effective batch, precision, backend, rows and update rule (the same learning
    problem): every micro-batch that divides the effective batch, checkpointing and the tiled MLP on or off, an
    AdamW variant's state fused in float32; the changes from `setup` and the prediction, or None when nothing
    fits."""
    effective = setup.micro_batch * setup.grad_accum
    optimizers = {setup.optim, FUSED_ADAMW} if setup.optim in ADAMW_VARIANTS else {setup.optim}
    best: tuple[dict[str, Any], Prediction] | None = None
    for mb in (d for d in range(1, effective + 1) if effective % d == 0):
        for checkpointing in (False, True):
            for tiled in ({False, setup.tiled_mlp} if setup.backend == "unsloth" else {setup.tiled_mlp}):
                for optim in sorted(optimizers):
                    new = setup.changed(micro_batch=mb, grad_accum=effective // mb,
                                        gradient_checkpointing=checkpointing, tiled_mlp=tiled, optim=optim)
                    p = _predict(shape, new, constants_of, gpu_name=gpu_name, total_steps=total_steps)
                    if fits(p, gpu_bytes) and (best is None or p.tokens_per_s > best[1].tokens_per_s * 1.001):
                        best = (_changes(setup, new), p)
    return best


def _changes(old: Setup, new: Setup) -> dict[str, Any]:
    fields = {"micro_batch": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
              "gradient_checkpointing": "gradient_checkpointing", "tiled_mlp": "tiled_mlp", "optim": "optim"}
    return {name: getattr(new, attr) for attr, name in fields.items() if getattr(new, attr) != getattr(old, attr)}
