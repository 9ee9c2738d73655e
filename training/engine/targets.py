"""Which linear layers get LoRA adapters: target_modules resolved on a model's own layers, whatever their names.

"all-linear" is every linear layer but the output embedding, as PEFT's own "all-linear" (peft.tuners.tuners_utils.
_maybe_include_all_linear_layers), so fused projections (Phi-3's qkv_proj and gate_up_proj) are adapted like any
other; "attention" and "mlp" are the linear layers inside each decoder layer's attention or MLP block. PEFT resolves
"all-linear" only, and Unsloth passes names through, so the groups are resolved here, once, for both backends; a
list of names stays a list, checked against the model. The same resolution runs on a loaded model (the engine) and
on a model built from config.json on the meta device without a weight (the fit planner and the pre-flight review).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from .config import ConfigError

GROUPS = ("all-linear", "attention", "mlp")
# A decoder layer's child holding its attention (self_attn, attention, self_attention, attn) or its MLP (mlp,
# feed_forward, ffn): transformers' names across architectures.
ATTENTION_PARTS = ("attn", "attention")
MLP_PARTS = ("mlp", "feed_forward", "ffn")


@dataclass(frozen=True)
class Linear:
    name: str  # the module's path in the model
    group: str | None  # "attention", "mlp", or None outside a decoder layer's attention and MLP
    in_features: int
    out_features: int
    output_embedding: bool = False

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def block(self) -> str | None:
        """The decoder layer it sits in ("model.layers.3"), None outside the stacks of layers."""
        parts = self.name.split(".")
        index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        return ".".join(parts[:index + 1]) if index is not None else None


@dataclass(frozen=True)
class Layout:
    """A model's linear layers, and the weights in its attention and MLP blocks that no linear layer holds (which
    LoRA cannot adapt: a mixture of experts' 3-D expert tensors, a custom projection)."""
    linears: tuple[Linear, ...]
    other_weights: tuple[tuple[str, str], ...] = ()  # (module path, group)

    def linear_names(self) -> list[str]:
        return list(dict.fromkeys(x.leaf for x in self.linears))


@dataclass(frozen=True)
class Resolution:
    asked: str | tuple[str, ...]
    modules: tuple[Linear, ...]  # the linear layers that get adapters
    target_modules: tuple[str, ...]  # what PEFT / Unsloth are given: leaf names, or full paths where leaves are shared
    shortfalls: tuple[str, ...]  # where the adapters cover less than asked, in words

    def counts(self) -> dict[str, int]:
        """How many layers of each name get adapters, in the model's order."""
        out: dict[str, int] = {}
        for m in self.modules:
            out[m.leaf] = out.get(m.leaf, 0) + 1
        return out

    def lora_params(self, r: int) -> int:
        """LoRA's A (in x r) and B (r x out) of every adapted layer."""
        return sum(r * (m.in_features + m.out_features) for m in self.modules)


def _group(name: str) -> str | None:
    parts = name.split(".")
    index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if index is None or index + 1 >= len(parts) - 1:
        return None
    child = parts[index + 1].lower()
    if any(p in child for p in ATTENTION_PARTS):
        return "attention"
    if any(p in child for p in MLP_PARTS):
        return "mlp"
    return None


def layout_of(model) -> Layout:
    """The linear layers of a model as loaded: torch Linear and what subclasses it (bitsandbytes' Linear4bit and
    Linear8bitLt), transformers' Conv1D (GPT-2's), and layers PEFT already wrapped (their base layer counts once)."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears, other, wrapped = [], [], []
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(module, "lora_A"):  # a PEFT LoRA layer around the original one
            wrapped.append(name)
            module = base
        if isinstance(module, torch.nn.Linear):
            shape = (module.in_features, module.out_features)
        elif type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
            shape = tuple(module.weight.shape)  # Conv1D keeps its weight as (in, out)
        else:
            group = _group(name)
            own = [p for p in module.parameters(recurse=False) if p.dim() >= 2]
            if group and own and not isinstance(module, torch.nn.Embedding):
                other.append((name, group))
            continue
        linears.append(Linear(name=name, group=_group(name), in_features=int(shape[0]), out_features=int(shape[1]),
                              output_embedding=module is output or base is not None and base is output))
    return Layout(linears=tuple(linears), other_weights=tuple(other))


def resolve(layout: Layout, target_modules: str | list[str] | tuple[str, ...]) -> Resolution:
    """The linear layers target_modules names on this layout; ConfigError (on target_modules) for a name that is not
    a linear layer of the model, or a group that finds none."""
    linears = [x for x in layout.linears if not x.output_embedding]
    names_text = ", ".join(layout.linear_names()) or "none"
    shortfalls: list[str] = []
    if isinstance(target_modules, str):
        if target_modules not in GROUPS:
            raise ConfigError({"target_modules": f"{target_modules!r} is not a group; allowed: "
                                                 f"{', '.join(GROUPS)}, or a list of this model's linear layers: "
                                                 f"{names_text}"})
        chosen = linears if target_modules == "all-linear" else [x for x in linears if x.group == target_modules]
        if not chosen:
            raise ConfigError({"target_modules": f"{target_modules!r} finds no linear layer in this model's "
                                                 f"{target_modules} blocks; its linear layers: {names_text}"})
        missed = [n for n, g in layout.other_weights if target_modules == "all-linear" or g == target_modules]
        if missed:
            shortfalls.append(
                f"target_modules {target_modules!r}: {len(missed)} weight(s) in the model's attention/MLP blocks "
                f"are not linear layers and get no adapter (e.g. {', '.join(missed[:3])})")
        asked: str | tuple[str, ...] = target_modules
    else:
        asked = tuple(dict.fromkeys(target_modules))
        known = {x.leaf for x in layout.linears} | {x.name for x in layout.linears}
        unknown = [n for n in asked if n not in known]
        if unknown:
            raise ConfigError({"target_modules": f"{', '.join(unknown)}: not a linear layer of this model; its "
                                                 f"linear layers: {names_text} (or a group: {', '.join(GROUPS)})"})
        chosen = [x for x in layout.linears if x.leaf in asked or x.name in asked]
        shortfalls += _partial_names(layout, asked)
    chosen_names = {x.name for x in chosen}
    leaves = tuple(dict.fromkeys(x.leaf for x in chosen))
    # PEFT and Unsloth match a name against the end of each module's path: leaves alone are exact when no other
    # linear layer shares them, else the full paths are given.
    by_leaf = {x.name for x in layout.linears if x.leaf in leaves}
    targets = leaves if by_leaf == chosen_names else tuple(x.name for x in chosen)
    return Resolution(asked=asked, modules=tuple(chosen), target_modules=targets, shortfalls=tuple(shortfalls))


def _partial_names(layout: Layout, asked: tuple[str, ...]) -> list[str]:
    """Named layers found in some decoder layers of a stack and not in others (a hybrid model's attention-free
    layers, a layer list that differs by depth)."""
    stacks: dict[str, set[str]] = {}
    for x in layout.linears:
        if x.block:
            stacks.setdefault(x.block.rsplit(".", 1)[0], set()).add(x.block)
    out = []
    for name in asked:
        for stack, blocks in stacks.items():
            having = {x.block for x in layout.linears if x.block in blocks and name in (x.leaf, x.name)}
            if having and len(having) < len(blocks):
                out.append(f"target_modules names {name}, which {len(having)} of the {len(blocks)} layers of "
                           f"{stack} have: the other {len(blocks) - len(having)} get no adapter for it")
    return out


def adapted_counts(model) -> dict[str, int]:
    """How many layers of each name carry a LoRA adapter in a PEFT model (what was applied, not what was asked)."""
    out: dict[str, int] = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and getattr(module, "base_layer", None) is not None:
            leaf = name.rsplit(".", 1)[-1]
            out[leaf] = out.get(leaf, 0) + 1
    return out


def layout_from_config(config: Mapping[str, Any]) -> Layout | None:
    """The layout of the causal LM a config.json describes, built on the meta device (no weight allocated, none
    read); None where transformers cannot build it here (no model_type, an architecture it lacks, remote code)."""
    if not isinstance(config, Mapping) or not isinstance(config.get("model_type"), str):
        return None
    try:
        key = json.dumps(config, sort_keys=True)
    except (TypeError, ValueError):
        return None
    return _layout_cached(key)


@lru_cache(maxsize=64)
def _layout_cached(key: str) -> Layout | None:
    try:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        data = json.loads(key)
        data.pop("quantization_config", None)  # a pre-quantized checkpoint: the same layers, built unquantized
        config = CONFIG_MAPPING[data["model_type"]].from_dict(data)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - any failure to build means "unknown here"; the callers fall back
        return None
    return layout_of(model)
