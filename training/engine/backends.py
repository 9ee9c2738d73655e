"""Loading a model with LoRA adapters: the unsloth backend (FastLanguageModel) or the hf one (transformers + PEFT).

Both take the same TrainConfig and return (model, tokenizer) ready for TRL's SFTTrainer. unsloth is imported only
inside load_unsloth: importing it patches transformers/TRL for the whole process.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

from . import targets
from .config import ConfigError, TrainConfig


def resolve_backend(config: TrainConfig) -> str:
    if config.backend != "auto":
        return config.backend
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None:
        return "unsloth"
    return "hf"


ALLOC_CONF = "PYTORCH_ALLOC_CONF"


def prepare_process(config: TrainConfig) -> None:
    prepare_process_for(config.backend)


def prepare_process_for(backend: str) -> None:
    """What the unsloth backend needs set before torch is imported. Unsloth, when imported, asks PyTorch's allocator
    for expandable segments (less fragmentation: 1.62 instead of 2.10 GiB reserved for the same 1.5 GiB allocated,
    docs/benchmarks.md), but the allocator reads its configuration once, and the runner imports torch (backend and
    environment checks) before Unsloth. So it is set here, where Unsloth would set it, unless the worker's
    environment already says how to allocate. On a CPU-only machine (auto then resolves to hf) it changes nothing.
    Unsloth leaves it off on Windows/WSL and on Tegra (ARM) boards, where expandable segments fail; this sets it on
    x86-64 Linux only and leaves the rest to Unsloth."""
    may_be_unsloth = backend == "unsloth" or (backend == "auto" and importlib.util.find_spec("unsloth") is not None)
    if not may_be_unsloth or ALLOC_CONF in os.environ or "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    linux_x86 = sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")
    wsl = bool(os.environ.get("WSL_DISTRO_NAME") or os.environ.get("WSL_INTEROP")) or \
        "microsoft" in platform.release().lower()
    if linux_x86 and not wsl:
        os.environ[ALLOC_CONF] = "expandable_segments:True"


COMPILE_OFF = "UNSLOTH_COMPILE_DISABLE"
# Architectures whose layers Unsloth's compiler fails to build: Gemma 2 (InductorError, on an H100 with torch 2.11,
# twice); with its compile off the same run trained (docs/benchmarks.md).
COMPILE_FAILS = frozenset({"gemma2"})


def model_type_of(model: str) -> str | None:
    """model_type from a model folder's config.json; None for a hub id or an unreadable file."""
    try:
        data = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("model_type") if isinstance(data, dict) and isinstance(data.get("model_type"), str) else None


def needs_compile_off(model: str, backend: str) -> bool:
    """Whether a run of this model on this backend ("auto" counted as Unsloth where it is installed) must start with
    Unsloth's compile off: it is read when unsloth is imported, so a process that imported it without cannot."""
    may_be_unsloth = backend == "unsloth" or (backend == "auto" and importlib.util.find_spec("unsloth") is not None)
    return may_be_unsloth and model_type_of(model) in COMPILE_FAILS


def compile_lever(config: TrainConfig, environ=os.environ) -> str | None:
    """Turn Unsloth's compile off for an architecture whose compiled layers fail to build, before unsloth is
    imported; returns the run's warning saying so, or None. On every torch: no version has been seen to build
    Gemma 2's, and a run that trains uncompiled (slower, same numbers) beats one that fails at its first step. A
    worker whose environment sets the variable itself (to 0: compile on) is left as it says."""
    if not needs_compile_off(config.model, config.backend) or COMPILE_OFF in environ:
        return None
    environ[COMPILE_OFF] = "1"
    return (f"Unsloth's compiled {model_type_of(config.model)} layers fail to build (InductorError on torch 2.11), "
            f"so this run trains them uncompiled ({COMPILE_OFF}=1): slower steps, the same numbers. Set "
            f"{COMPILE_OFF}=0 in the worker's environment to try the compiler")


def resolve_dtype(config: TrainConfig):
    """auto: bf16 where the GPU supports it, else fp16 on GPU; fp32 on CPU."""
    import torch

    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _loftq_kwargs(config: TrainConfig) -> dict:
    if config.loftq_config is None:
        return {}
    from peft import LoftQConfig

    return {"init_lora_weights": "loftq", "loftq_config": LoftQConfig(**config.loftq_config.model_dump())}


def tiled_mlp_option(config: TrainConfig) -> str:
    """The value of UNSLOTH_TILED_MLP, which FastLanguageModel.from_pretrained reads: "0" (off), "arctic" (shards of
    hidden-size tokens) or "target:GB" (as few shards as keep one MLP's activations near GB)."""
    if not config.tiled_mlp:
        return "0"
    return "arctic" if config.tiled_mlp_target_gb is None else f"target:{config.tiled_mlp_target_gb:g}"


def tiled_mlp_applied(model) -> bool:
    """Whether any MLP runs tiled: unsloth_zoo.tiled_mlp.patch_mlp gives the module its own tiled_forward_*."""
    return any(getattr(module.__dict__.get("forward"), "__name__", "").startswith("tiled_forward")
               for module in model.modules())


def unsloth_varlen_missing() -> str | None:
    """torch's version where Unsloth cannot attend to a padding-free batch in one varlen call, else None. Unsloth
    2026.10.9 takes that path only when torch's varlen_attn has enable_gqa (torch >= 2.12); before, it makes one
    attention call per run of equal-length examples (measured on an H100: packed 16-bit steps 3.1-3.7x slower)."""
    import inspect

    import torch

    try:
        from torch.nn.attention.varlen import varlen_attn

        if "enable_gqa" in inspect.signature(varlen_attn).parameters:
            return None
    except (ImportError, TypeError, ValueError):
        pass
    return torch.__version__


def load_unsloth(config: TrainConfig, dtype):
    import unsloth  # noqa: F401  (must come before transformers/TRL are used)
    from unsloth import FastLanguageModel

    # The config decides, not whatever UNSLOTH_TILED_MLP the worker was started with; set only for this load.
    previous = os.environ.get("UNSLOTH_TILED_MLP")
    os.environ["UNSLOTH_TILED_MLP"] = tiled_mlp_option(config)
    try:
        return FastLanguageModel.from_pretrained(
            model_name=config.model, max_seq_length=config.max_length, dtype=dtype, load_in_4bit=config.load_in_4bit,
        )
    finally:
        if previous is None:
            os.environ.pop("UNSLOTH_TILED_MLP", None)
        else:
            os.environ["UNSLOTH_TILED_MLP"] = previous


def adapters_unsloth(model, config: TrainConfig, target_modules: list[str]):
    from unsloth import FastLanguageModel

    loftq = _loftq_kwargs(config)
    return FastLanguageModel.get_peft_model(
        model,
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias=config.bias,
        target_modules=target_modules,
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        random_state=config.random_state,
        use_rslora=config.use_rslora,
        max_seq_length=config.max_length,
        **({"init_lora_weights": loftq["init_lora_weights"], "loftq_config": loftq["loftq_config"]} if loftq else {}),
    )


def lora_config(config: TrainConfig, target_modules: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias=config.bias,
        use_rslora=config.use_rslora,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
        **_loftq_kwargs(config),
    )


def load_hf(config: TrainConfig, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs = {"dtype": dtype}
    if config.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(config.model, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # No peft.prepare_model_for_kbit_training: it casts every non-4-bit weight (embeddings, the tied lm_head, norms)
    # to float32, 0.5 GiB more for a 1B model with a 128k vocabulary, and a different computation from the unsloth backend,
    # which keeps them in the compute dtype. TRL's own QLoRA path leaves them as loaded too; it makes the inputs
    # require grad for gradient checkpointing itself (SFTTrainer: enable_input_require_grads).
    return model, tokenizer


def adapters_hf(model, config: TrainConfig, target_modules: list[str]):
    import torch
    from peft import get_peft_model

    torch.manual_seed(config.random_state)
    return get_peft_model(model, lora_config(config, target_modules))


def keep_adapters_float32(model) -> int:
    """Cast trainable weights that TRL's SFTTrainer put in bfloat16 back to float32; returns how many it cast.

    For a quantized model, SFTTrainer.__init__ casts every trainable parameter to bfloat16 (the QLoRA paper's
    choice). The unsloth backend's trainer removes that cast, and the hf backend keeps float32 adapters in 16-bit
    training, so without this the same QLoRA config would train bfloat16 master weights on the hf backend only
    (updates smaller than bfloat16's 8-bit mantissa resolves would round away, and fp16 runs break GradScaler).
    Call it after the trainer is built and before train() creates the optimizer.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not (getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)):
        return 0
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.to(torch.float32)
            cast += 1
    return cast


def load(config: TrainConfig, backend: str, dtype):
    model, tokenizer = load_base(config, backend, dtype)
    freeze_heap()  # the process ends with the run: the base stays to the end, adding adapters walks only what is new
    return add_adapters(model, config, backend), tokenizer


def load_base(config: TrainConfig, backend: str, dtype):
    """The base model and its tokenizer as loaded, before any adapter (what a warm process keeps between runs)."""
    return load_unsloth(config, dtype) if backend == "unsloth" else load_hf(config, dtype)


def freeze_heap() -> None:
    """Collect once, then put every object alive out of the cyclic garbage collector's walks (gc.freeze).

    Unsloth calls gc.collect() a dozen times while it adds adapters (three at a time around each offload and patch);
    each walks every object the imports and the base model made. On the lent H200 that was
    4.35 s of a warm run's 7.4 s from request to first step (1.1B, base kept). Frozen objects are still freed when
    nothing refers to them; only cycles among them wait. So it is called only where what is alive stays: in a run's
    own process, and in a warm one after its imports and when it keeps a base (WarmBase.load), which it unfreezes
    before dropping (WarmBase.drop) so that the model's cycles are collected. Numerics are untouched."""
    gc.collect()
    gc.freeze()


def unfreeze_heap() -> None:
    """Undo freeze_heap (the next gc.collect() walks everything again)."""
    gc.unfreeze()


def add_adapters(model, config: TrainConfig, backend: str):
    """Fresh LoRA adapters on a loaded base model (LoftQ's initialisation happens here), seeded by random_state,
    then the saved adapter's weights when the run starts from one. target_modules is resolved on this model's own
    linear layers (training/engine/targets.py); a name it lacks is a ConfigError before any adapter is added."""
    names = list(targets.resolve(targets.layout_of(model), config.target_modules).target_modules)
    model = adapters_unsloth(model, config, names) if backend == "unsloth" else adapters_hf(model, config, names)
    if config.init_adapter:
        start_from_adapter(model, config.init_adapter)
    return model


def start_from_adapter(model, path: str) -> int:
    """Copy a saved adapter's weights into the model's fresh adapters; returns how many tensors it copied. Every
    adapter tensor must be matched, in name and shape: a different rank, set of target modules or bias is an error
    that names the difference, never a silent partial start."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    if not (Path(path) / "adapter_config.json").is_file():
        raise ConfigError({"init_adapter": f"{path} holds no saved adapter (adapter_config.json is missing)"})
    weights = load_peft_weights(path, device="cpu")
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # size mismatch: another rank
        raise ConfigError({"init_adapter": f"the saved adapter's shapes differ from this run's (another r?): "
                                           f"{str(exc).splitlines()[-1].strip()}"}) from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        names = (result.unexpected_keys or missing)[:3]
        raise ConfigError({"init_adapter": f"the saved adapter does not match this run's adapters (other target "
                                           f"modules or bias?): {len(result.unexpected_keys)} of its tensors have no "
                                           f"place here and {len(missing)} adapters here have no saved tensor, e.g. "
                                           f"{', '.join(names)}"})
    return len(weights)


def lora_scale_in_effect(model) -> float | None:
    """The scaling factor stored on the first LoRA layer: alpha/r, or alpha/√r under rsLoRA."""
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and scaling:
            return float(next(iter(scaling.values())))
    return None


def parameter_counts(model) -> dict[str, int]:
    trainable = total = trainable_bias = 0
    for name, param in model.named_parameters():
        n = param.numel()
        # 4-bit weights are packed two to a byte: count what they stand for.
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
            if name.endswith(".bias"):
                trainable_bias += n
    return {"trainable_params": trainable, "total_params": total, "trainable_bias_params": trainable_bias}


def model_bias_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))


def attention_width(model) -> int | None:
    """Query heads x head dimension, from the model's config."""
    cfg = getattr(model, "config", None)
    heads, hidden = getattr(cfg, "num_attention_heads", None), getattr(cfg, "hidden_size", None)
    if not heads or not hidden:
        return None
    return heads * (getattr(cfg, "head_dim", None) or hidden // heads)


def layer_linear_params(model) -> int | None:
    """Weights in the first decoder layer's linear projections, by shape (so 4-bit ones count in full; LoRA's
    left out)."""
    import torch

    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            return sum(m.in_features * m.out_features for name, m in module.named_modules()
                       if isinstance(m, torch.nn.Linear) and "lora_" not in name) or None
    return None
