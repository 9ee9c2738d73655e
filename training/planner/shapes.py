"""A model's shapes, read from its config.json without loading a weight: what the fit planner counts with."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from training.engine.targets import layout_from_config

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ShapeError(ValueError):
    """The model's shapes cannot be read; the message says which file or key."""


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    # The model's own linear layers but the output embedding, as the engine resolves target_modules on them
    # (training/engine/targets.py): (name, group "attention" / "mlp" / "", in, out, how many). Empty where the
    # architecture was not built here (a shape recorded by a run): then Llama's seven projections per layer.
    linears: tuple[tuple[str, str, int, int, int], ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def attention_width(self) -> int:
        return self.num_heads * self.head_dim

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's projections as (in_features, out_features), by PEFT's target-module names."""
        h, q, kv, i = self.hidden_size, self.attention_width, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_modules().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def norm_params(self) -> int:
        return (2 * self.num_layers + 1) * self.hidden_size

    @property
    def linear_params(self) -> int:
        """The decoder's projections: what 4-bit quantizes (embeddings, lm_head and norms stay 16-bit)."""
        return self.num_layers * self.layer_linear_params

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.lm_head_params + self.norm_params

    @property
    def matmul_params(self) -> int:
        """The weights a token is multiplied by in a forward pass: the projections and the lm_head (tied or not);
        the embedding is a lookup. The N of the 2N-FLOPs-per-token rule."""
        return self.linear_params + self.vocab_size * self.hidden_size


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    # A multimodal model keeps its language model's shapes under text_config.
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) and "hidden_size" in inner else config


def shape_from_config(config: Mapping[str, Any]) -> ModelShape:
    """From a transformers config.json's dict; ShapeError names the first key missing."""
    c = _text_config(config)
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if not isinstance(c.get(k), int) or c.get(k) <= 0]
    if missing:
        raise ShapeError(f"config.json has no positive integer {missing[0]}")
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    tied = c.get("tie_word_embeddings", config.get("tie_word_embeddings", True))
    return ModelShape(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                      intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
                      num_heads=heads, num_kv_heads=int(kv), head_dim=int(head_dim), tie_word_embeddings=bool(tied),
                      linears=linears_of(config))


def linears_of(config: Mapping[str, Any]) -> tuple[tuple[str, str, int, int, int], ...]:
    """ModelShape.linears from a config.json, built on the meta device (no weight); () where it cannot be built."""
    layout = layout_from_config(config)
    if layout is None:
        return ()
    counts: dict[tuple[str, str, int, int], int] = {}
    for x in layout.linears:
        if not x.output_embedding:
            key = (x.leaf, x.group or "", x.in_features, x.out_features)
            counts[key] = counts.get(key, 0) + 1
    return tuple((*key, n) for key, n in counts.items())


def shape_from_dict(data: Mapping[str, Any]) -> ModelShape:
    """From ModelShape.as_dict() (as a run's `started` event or a bench line records it)."""
    fields = {f: data[f] for f in ModelShape.__dataclass_fields__ if f in data}
    if "linears" in fields:  # JSON gives lists back; the shape stays hashable
        fields["linears"] = tuple(tuple(row) for row in fields["linears"])
    try:
        return ModelShape(**fields)
    except TypeError as exc:
        raise ShapeError(f"incomplete model shape: {exc}") from None


def read_shape(model_dir: str | Path) -> ModelShape:
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShapeError(f"no config.json in {model_dir}") from None
    except (OSError, ValueError) as exc:
        raise ShapeError(f"{path} cannot be read: {exc}") from None
    if not isinstance(config, dict):
        raise ShapeError(f"{path} is not a JSON object")
    return shape_from_config(config)
