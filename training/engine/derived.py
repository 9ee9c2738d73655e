"""Values that follow from a config (and a dataset size): pure functions, shown in the UI and the `started` event."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def effective_batch(micro_batch: int, grad_accum: int, devices: int = 1) -> int:
    return micro_batch * grad_accum * devices


def steps_per_epoch(num_examples: int, micro_batch: int, grad_accum: int, devices: int = 1) -> int:
    """Optimizer steps in one pass, as transformers 5 counts them: a last partial accumulation still steps."""
    if num_examples <= 0:
        return 0
    micro_batches = math.ceil(num_examples / (micro_batch * devices))
    return max(math.ceil(micro_batches / grad_accum), 1)


def total_steps(
    num_examples: int, micro_batch: int, grad_accum: int, epochs: float, max_steps: int | None = None, devices: int = 1
) -> int:
    if max_steps:
        return max_steps
    return math.ceil(epochs * steps_per_epoch(num_examples, micro_batch, grad_accum, devices))


def warmup_steps_resolved(warmup: int | float, total: int) -> int:
    """An int is a step count; a float in [0, 1) is a share of the total (rounded up, as transformers does)."""
    if isinstance(warmup, float):
        return math.ceil(warmup * total)
    return int(warmup)


def warmup_steps_recommended(total: int, ratio: float = 0.03, floor: int = 10) -> int:
    """The seed's rule: 3% of the steps, with an integer floor of 10–25 for runs under ~500 steps."""
    steps = round(ratio * total)
    if total < 500:
        steps = max(steps, min(floor, total))
    return steps


def lora_scale(lora_alpha: float, r: int, use_rslora: bool) -> float:
    """What the adapter's output is multiplied by: alpha/r, or alpha/√r with rsLoRA."""
    return lora_alpha / (math.sqrt(r) if use_rslora else r)


def gain_matched_alpha(gain: float, r: int, use_rslora: bool) -> int:
    """The alpha that keeps the same effective gain g: g·√r with rsLoRA, g·r without (rounded to an integer)."""
    return max(1, round(gain * (math.sqrt(r) if use_rslora else r)))


def alpha_when_switching_rslora(lora_alpha: float, r: int, *, to_rslora: bool) -> int:
    """Keep the current gain when turning rsLoRA on (to_rslora=True) or off."""
    gain = lora_scale(lora_alpha, r, use_rslora=not to_rslora)
    return gain_matched_alpha(gain, r, use_rslora=to_rslora)


def grad_accum_for_target(target_effective_batch: int, micro_batch: int, devices: int = 1) -> int:
    return max(1, math.ceil(target_effective_batch / (micro_batch * devices)))


def tokens_per_step(micro_batch: int, grad_accum: int, max_length: int, devices: int = 1, packing: bool = True,
                    mean_tokens: float | None = None) -> int:
    """Tokens per optimizer step: full blocks when packed, else the mean example length (capped) when known."""
    per_sequence = max_length if packing or mean_tokens is None else min(mean_tokens, max_length)
    return round(effective_batch(micro_batch, grad_accum, devices) * per_sequence)


def packed_attention_ratio(micro_batch: int, max_length: int, attention_width: int, layer_linear_params: int) -> float:
    """Attention work over linear-layer work per token, when a packed micro-batch is attended as one sequence.

    A padding-free packed micro-batch holds up to micro_batch × max_length tokens. An attention kernel that takes it
    as one sequence with a block-diagonal mask (transformers' SDPA and eager paths) scores every token against all
    of them: 4·T·width FLOPs per token and layer (QKᵀ and the weighted sum of V, T tokens, width = heads × head_dim),
    against 2 FLOPs per weight of the layer's linear projections. Above 1, attention costs more than the model's
    weights; with 2 or more rows in the micro-batch, at least half of it is masked away across example boundaries.
    """
    return 4 * micro_batch * max_length * attention_width / (2 * layer_linear_params)


@dataclass(frozen=True)
class Derived:
    effective_batch: int
    steps_per_epoch: int | None
    total_steps: int | None
    warmup_steps: int | None
    lora_scale: float
    tokens_per_step: int
    devices: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


def derive(config, num_examples: int | None = None, devices: int | None = None) -> Derived:
    """All derived values of a TrainConfig; those that need the dataset size are None without it. `devices`: the
    data-parallel ranks, by default the config's own."""
    devices = devices or getattr(config, "devices", None) or 1
    eb = effective_batch(config.per_device_train_batch_size, config.gradient_accumulation_steps, devices)
    spe = total = warm = None
    if num_examples is not None:
        spe = steps_per_epoch(num_examples, config.per_device_train_batch_size, config.gradient_accumulation_steps,
                              devices)
    if config.max_steps or num_examples is not None:
        total = total_steps(num_examples or 0, config.per_device_train_batch_size, config.gradient_accumulation_steps,
                            config.num_train_epochs, config.max_steps, devices)
        warm = warmup_steps_resolved(config.warmup_steps, total)
    return Derived(
        effective_batch=eb,
        steps_per_epoch=spe,
        total_steps=total,
        warmup_steps=warm,
        lora_scale=lora_scale(config.lora_alpha, config.r, config.use_rslora),
        tokens_per_step=tokens_per_step(config.per_device_train_batch_size, config.gradient_accumulation_steps,
                                        config.max_length, devices, packing=config.packing),
        devices=devices,
    )


def rank_range_for_dataset(rows: int) -> tuple[int, int]:
    """The seed's rank buckets by example count."""
    if rows < 500:
        return (4, 8)
    if rows < 2_000:
        return (8, 16)
    if rows < 10_000:
        return (16, 32)
    if rows < 50_000:
        return (32, 64)
    if rows < 200_000:
        return (64, 64)
    return (64, 128)
