"""Peak VRAM, tokens/s and time to finish of a config on a GPU, from the model's shapes and fitted constants.

Memory (what torch.cuda.max_memory_allocated reports at the step's peak), in parts:
- weights: 16-bit, or 4-bit projections (NF4 with its quantization state) with 16-bit embeddings, lm_head, norms;
- adapters: the LoRA matrices in float32, their gradients, and the optimizer's state (Adam: two moments, float32
  or 8-bit);
- activations: per token of the micro-batch; every layer's with gradient checkpointing off, one layer's plus the
  checkpointed hidden states with it on (Unsloth offloads those to the CPU, the fitted constant says how much stays);
  the MLP's intermediate ones a shard at a time with the tiled MLP;
- logits: per token of the micro-batch and vocabulary entry;
- a constant: the allocator's rounding, cuBLAS workspaces, what the backend keeps;
- attention scores where the backend materializes them: the plain stack's SDPA with a mask (a packed micro-batch
  is one sequence with a block-diagonal mask: its square; unpacked, each row's); Unsloth's kernels never do.
Each part but the first two is a feature times a constant fitted per (GPU, backend, 4-bit) by calibrate.py.

Speed: an optimizer step takes GA x (micro-batch tokens x FLOPs per token / R + launch x layers + checkpointing
x layers) + an update cost per trainable parameter + one per LoRA matrix for the optimizers that update them one
by one (bitsandbytes' 8-bit and paged AdamW) + a constant, R being the FLOP rate the config reaches; FLOPs per token
count 4N without checkpointing and 6N with it (N the weights a token is multiplied by), and attention's own work.
Checkpointing costs more than its recompute's FLOPs: Unsloth's offloads each layer's input to the host and back
(on the lent H200 a 0.1B model ran 1.9x slower with it at the same 16k tokens a step, a 1.1B 1.28x).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from training.planner.shapes import LINEAR_MODULES, ModelShape

GiB = 1024 ** 3
TARGET_GROUPS = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj"),
                 "all-linear": LINEAR_MODULES}
# Optimizer state bytes per trainable parameter (Adam's two moments): float32, or bitsandbytes' 8-bit blocks.
OPTIMIZER_STATE_BYTES = {"adamw_torch_fused": 8.0, "adamw_torch": 8.0, "paged_adamw_32bit": 8.0,
                         "adamw_8bit": 2.0, "adamw_bnb_8bit": 2.0, "paged_adamw_8bit": 2.0}
NF4_BYTES_PER_PARAM = 0.5 + 4 / 64 / 4 + 4 / 256  # 4 bits, double-quantized absmax per 64, its own fp32 per 256
# Memory features and speed features, in the order of the constants' vectors.
MEMORY_TERMS = ("act_hidden", "act_inter", "checkpoints", "logits", "constant", "attention_scores")
SPEED_TERMS = ("per_flop", "per_layer_pass", "per_trainable", "per_step", "per_checkpointed_layer_pass",
               "per_optimizer_tensor")
# Optimizers that update tensor by tensor (bitsandbytes' 8-bit and paged AdamW: a kernel launch and Python per
# LoRA matrix); the fused and foreach ones update all of them in a few launches.
TENSOR_BY_TENSOR_OPTIMIZERS = frozenset({"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
                                         "paged_adamw", "adamw_8bit_paged"})
# The GPUs' dense bf16 peak (no sparsity), FLOP/s: scales a known GPU's calibration to an unknown one.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12,
                  "L40": 181e12, "A6000": 155e12, "A40": 150e12, "L4": 121e12, "A10G": 125e12, "A10": 125e12,
                  "4090": 165e12, "3090": 71e12, "T4": 65e12, "V100": 125e12}


def gpu_peak_flops(gpu_name: str) -> float | None:
    name = (gpu_name or "").upper()
    for key in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):  # "GH200" before "H200"
        if key in name:
            return GPU_PEAK_FLOPS[key]
    return None


@dataclass(frozen=True)
class Constants:
    """One (GPU, backend, 4-bit) group's fitted constants, and how far to trust them."""
    memory: tuple[float, ...]  # bytes per unit of each MEMORY_TERMS feature
    speed: tuple[float, ...]  # seconds per unit of each SPEED_TERMS feature
    memory_error: float  # relative error band (one side) of the peak
    speed_error: float  # relative error band of the step time
    calibrated: bool = False
    source: str = ""  # in words: which runs or figures they were fitted on
    samples: int = 0
    startup_s: float = 45.0  # a run's start to its first step (imports, load), measured where calibrated

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Setup:
    """What of a config the planner reads (engine TrainConfig field names), from a config dict."""
    micro_batch: int
    grad_accum: int
    max_length: int
    packing: bool
    load_in_4bit: bool
    gradient_checkpointing: bool
    r: int
    target_modules: str | tuple[str, ...]  # a group ("all-linear", "attention", "mlp") or layer names, as configured
    optim: str
    dtype_bytes: int
    tiled_mlp: bool = False
    tiled_mlp_target_gb: float | None = None
    backend: str = "unsloth"

    @classmethod
    def of(cls, config: Mapping[str, Any], backend: str | None = None) -> "Setup":
        targets = config.get("target_modules", "all-linear")
        dtype = config.get("dtype", "auto")
        return cls(micro_batch=int(config.get("per_device_train_batch_size", 2)),
                   grad_accum=int(config.get("gradient_accumulation_steps", 4)),
                   max_length=int(config.get("max_length", 2048)), packing=bool(config.get("packing", False)),
                   load_in_4bit=bool(config.get("load_in_4bit", False)),
                   gradient_checkpointing=bool(config.get("gradient_checkpointing", True)),
                   r=int(config.get("r", 16)),
                   target_modules=targets if isinstance(targets, str) else tuple(targets),
                   optim=str(config.get("optim", "adamw_torch_fused")), dtype_bytes=4 if dtype == "float32" else 2,
                   tiled_mlp=bool(config.get("tiled_mlp", False)),
                   tiled_mlp_target_gb=config.get("tiled_mlp_target_gb"),
                   backend=backend or resolved_backend(config))

    def changed(self, **changes) -> "Setup":
        return replace(self, **changes)


def resolved_backend(config: Mapping[str, Any]) -> str:
    """'auto' trains with Unsloth on a GPU worker (the engine's choice where unsloth imports)."""
    backend = config.get("backend", "auto")
    return "unsloth" if backend == "auto" else backend


# ---- memory ---------------------------------------------------------------------------------------------------

def adapted_layers(shape: ModelShape, targets: str | tuple[str, ...]) -> list[tuple[int, int, int]]:
    """(in, out, how many) of the linear layers target_modules adapts: the model's own where its config was built
    (ModelShape.linears, grouped as the engine groups them), else Llama's projections in every layer."""
    if shape.linears:
        if isinstance(targets, str):
            return [(i, o, n) for _, group, i, o, n in shape.linears if targets == "all-linear" or group == targets]
        return [(i, o, n) for name, _, i, o, n in shape.linears if name in targets]
    names = TARGET_GROUPS.get(targets, LINEAR_MODULES) if isinstance(targets, str) else targets
    modules = shape.linear_modules()
    return [(*modules[m], shape.num_layers) for m in names if m in modules]


def lora_params(shape: ModelShape, setup: Setup) -> int:
    return sum(setup.r * (i + o) * n for i, o, n in adapted_layers(shape, setup.target_modules))


def weight_bytes(shape: ModelShape, setup: Setup) -> float:
    rest = shape.embedding_params + shape.lm_head_params + shape.norm_params
    if setup.load_in_4bit:
        return shape.linear_params * NF4_BYTES_PER_PARAM + rest * 2
    return (shape.linear_params + rest) * setup.dtype_bytes


def adapter_bytes(shape: ModelShape, setup: Setup) -> float:
    """float32 LoRA weights (both backends train them in float32), their gradients, the optimizer's state."""
    state = OPTIMIZER_STATE_BYTES.get(setup.optim, 8.0)
    return lora_params(shape, setup) * (4 + 4 + state)


def micro_batch_tokens(setup: Setup) -> int:
    """The tokens of the largest micro-batch: the peak comes with the longest rows (packed: full blocks)."""
    return setup.micro_batch * setup.max_length


def mlp_shard_tokens(shape: ModelShape, setup: Setup) -> int:
    """Tokens whose MLP intermediates are on the GPU at once: all of the micro-batch, or one tiled shard
    (hidden-size tokens, or as many as keep one MLP's intermediates near the target)."""
    tokens = micro_batch_tokens(setup)
    if not setup.tiled_mlp or setup.backend != "unsloth":
        return tokens
    if setup.tiled_mlp_target_gb:
        per_token = 3 * shape.intermediate_size * setup.dtype_bytes
        return max(1, min(tokens, int(setup.tiled_mlp_target_gb * 1e9 / per_token)))
    return min(tokens, shape.hidden_size)


def memory_features(shape: ModelShape, setup: Setup) -> tuple[float, ...]:
    """The MEMORY_TERMS features: what each fitted constant multiplies."""
    tokens = micro_batch_tokens(setup)
    layers_live = 1 if setup.gradient_checkpointing else shape.num_layers
    if setup.backend == "unsloth":
        scores = 0.0
    elif setup.packing:
        scores = float(tokens) ** 2
    else:
        scores = setup.micro_batch * float(setup.max_length) ** 2
    return (tokens * shape.hidden_size * layers_live,
            mlp_shard_tokens(shape, setup) * shape.intermediate_size * layers_live,
            tokens * shape.hidden_size * shape.num_layers if setup.gradient_checkpointing else 0.0,
            tokens * shape.vocab_size,
            1.0,
            scores)


def memory_parts(shape: ModelShape, setup: Setup, constants: Constants) -> dict[str, float]:
    f = memory_features(shape, setup)
    k = constants.memory
    return {"weights": weight_bytes(shape, setup), "adapters": adapter_bytes(shape, setup),
            "activations": f[0] * k[0] + f[1] * k[1] + f[2] * k[2] + f[5] * k[5], "logits": f[3] * k[3],
            "overhead": f[4] * k[4]}


def static_bytes(shape: ModelShape, setup: Setup) -> float:
    return weight_bytes(shape, setup) + adapter_bytes(shape, setup)


# ---- speed ----------------------------------------------------------------------------------------------------

def flops_per_token(shape: ModelShape, setup: Setup, mean_tokens: float | None = None) -> float:
    """Training FLOPs per token: 2N forward, 2N backward through the frozen weights (their own gradients are not
    needed, only the adapters'), 2N more when checkpointing recomputes the forward; plus attention's scores and
    weighted sums, 4·context·width per layer forward, twice that backward, once more recomputed. Context: the mean
    position attended to under the causal mask, half the sequence (documents attended one by one when packed)."""
    passes = 3 if setup.gradient_checkpointing else 2
    return 2 * shape.matmul_params * passes + _attention_forward(shape, setup, mean_tokens) * (passes + 1)


def forward_flops_per_token(shape: ModelShape, setup: Setup, mean_tokens: float | None = None) -> float:
    """An eval pass: the forward alone."""
    return 2 * shape.matmul_params + _attention_forward(shape, setup, mean_tokens)


def _attention_forward(shape: ModelShape, setup: Setup, mean_tokens: float | None) -> float:
    seq = min(mean_tokens, setup.max_length) if mean_tokens else setup.max_length
    return 4 * (seq / 2) * shape.attention_width * shape.num_layers


def step_tokens(setup: Setup, mean_tokens: float | None = None) -> float:
    """Tokens trained per optimizer step: full blocks when packed, else the mean example length (capped)."""
    per_row = setup.max_length if setup.packing or not mean_tokens else min(mean_tokens, setup.max_length)
    return setup.micro_batch * setup.grad_accum * per_row


def speed_features(shape: ModelShape, setup: Setup, mean_tokens: float | None = None) -> tuple[float, ...]:
    tokens = step_tokens(setup, mean_tokens)
    layer_passes = setup.grad_accum * shape.num_layers
    lora_matrices = 2 * sum(n for _, _, n in adapted_layers(shape, setup.target_modules))
    return (tokens * flops_per_token(shape, setup, mean_tokens), layer_passes, float(lora_params(shape, setup)), 1.0,
            layer_passes if setup.gradient_checkpointing else 0.0,
            lora_matrices if setup.optim in TENSOR_BY_TENSOR_OPTIMIZERS else 0.0)


def step_seconds(shape: ModelShape, setup: Setup, constants: Constants, mean_tokens: float | None = None) -> float:
    return sum(f * k for f, k in zip(speed_features(shape, setup, mean_tokens), constants.speed))


# ---- the prediction -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    peak_bytes: float
    peak_low: float
    peak_high: float
    parts: dict[str, float]
    tokens_per_s: float
    tokens_per_s_low: float
    tokens_per_s_high: float
    step_s: float
    flops_per_token: float
    mfu: float | None  # the FLOPs the config really does over the GPU's peak
    calibrated: bool
    source: str
    seconds: float | None = None  # to finish: start-up, steps, evals, checkpoints
    seconds_low: float | None = None
    seconds_high: float | None = None
    time_parts: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def predict(shape: ModelShape, setup: Setup, constants: Constants, *, gpu_name: str = "",
            total_steps: int | None = None, mean_tokens: float | None = None, eval_tokens: float = 0,
            evals: int = 0, saves: int = 0) -> Prediction:
    parts = memory_parts(shape, setup, constants)
    peak = max(sum(parts.values()), 0.0)
    band = constants.memory_error
    step = max(step_seconds(shape, setup, constants, mean_tokens), 1e-6)
    tokens = step_tokens(setup, mean_tokens)
    rate = tokens / step
    speed_band = constants.speed_error
    fpt = flops_per_token(shape, setup, mean_tokens)
    peak_flops = gpu_peak_flops(gpu_name)
    seconds = low_s = high_s = None
    time_parts: dict[str, float] = {}
    if total_steps:
        # An eval pass is a forward over the eval tokens at the FLOP rate training reaches; a checkpoint writes the
        # adapters and the optimizer's state (about a second each on the tiny and 1B runs).
        flop_rate = rate * fpt
        eval_s = evals * eval_tokens * forward_flops_per_token(shape, setup, mean_tokens) / flop_rate
        time_parts = {"start-up": constants.startup_s, "training": total_steps * step, "evaluation": eval_s,
                      "checkpoints": float(saves)}
        seconds = sum(time_parts.values())
        varying = seconds - constants.startup_s
        low_s = constants.startup_s * 0.8 + varying / (1 + speed_band)
        high_s = constants.startup_s * 1.5 + varying / max(1 - speed_band, 0.2)
    return Prediction(
        peak_bytes=peak, peak_low=peak * (1 - band), peak_high=peak * (1 + band), parts=parts,
        tokens_per_s=rate, tokens_per_s_low=rate / (1 + speed_band), tokens_per_s_high=rate / max(1 - speed_band, 0.2),
        step_s=step, flops_per_token=fpt, mfu=(rate * fpt / peak_flops) if peak_flops else None,
        calibrated=constants.calibrated, source=constants.source, seconds=seconds, seconds_low=low_s,
        seconds_high=high_s, time_parts=time_parts)


def human_bytes(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= 0.1 * GiB else f"{n / 1024 ** 2:.0f} MiB"


def human_rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1000:.1f}k" if tokens_per_s >= 1000 else f"{tokens_per_s:.0f}"


def human_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
