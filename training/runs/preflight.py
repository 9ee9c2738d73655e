"""The pre-flight review on the Django side: the facts it needs (the dataset's size and token lengths, whether the
model has bias parameters) read once from rows and files, and the notes as the pages and the run keep them."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from guidance import preflight
from guidance.links import guidance_url
from training.engine import targets
from training.engine.config import ConfigError, parse_config
from training.model_source import model_source_error
from training.models import Dataset
from training.run_config import PRESET_PLACEHOLDERS, model_policy, value_text

log = logging.getLogger(__name__)

# Architectures whose attention or MLP layers carry bias terms by design (transformers' own configs say so only for
# some: Llama-likes have attention_bias / mlp_bias flags, Qwen2 has q/k/v biases without a flag).
BIASED_MODEL_TYPES = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "gpt2", "gpt_neox", "gptj", "opt", "bloom", "phi",
                                "starcoder2", "falcon"})


def model_facts(model: str, target_modules: Any = "all-linear") -> dict[str, Any]:
    """What the review needs of a model, from its config.json when it is a folder this deployment may read; a hub
    id (not fetched here) or a missing file gives no facts, and the rules that need them stay silent."""
    if not isinstance(model, str) or not model.startswith("/") or model_source_error(model, model_policy()):
        return {}
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    flags = [config.get(key) for key in ("attention_bias", "mlp_bias", "qkv_bias", "bias", "use_bias")]
    facts: dict[str, Any] = {
        "has_bias_params": any(bool(flag) for flag in flags) or config.get("model_type") in BIASED_MODEL_TYPES}
    return {**facts, **target_facts(config, target_modules)}


def target_facts(config: dict[str, Any], target_modules: Any) -> dict[str, Any]:
    """The model's linear layers (built from config.json on the meta device, as the engine resolves
    target_modules) and the names of target_modules that are none of them; {} where it cannot be built."""
    layout = targets.layout_from_config(config)
    if layout is None:
        return {}
    facts: dict[str, Any] = {"linear_layers": list(dict.fromkeys(x.leaf for x in layout.linears
                                                                 if not x.output_embedding))}
    if isinstance(target_modules, list):
        try:
            targets.resolve(layout, target_modules)
        except ConfigError:
            known = {x.leaf for x in layout.linears} | {x.name for x in layout.linears}
            facts["unknown_targets"] = [n for n in target_modules if n not in known]
    return facts


def dataset_facts(dataset: Dataset | None, model: str) -> dict[str, Any]:
    """Rows, and the token lengths when the dataset's statistics were computed with this model's tokenizer."""
    if dataset is None:
        return {}
    facts: dict[str, Any] = {"rows": dataset.rows}
    profile = (dataset.stats or {}).get("profile") or {}
    result = profile.get("result") or {}
    if profile.get("state") == "done" and (profile.get("params") or {}).get("model") == model:
        facts.update(p50_tokens=result.get("p50"), p95_tokens=result.get("p95"), max_tokens=result.get("max"))
    return facts


def note_dict(note: preflight.Note) -> dict[str, Any]:
    """A note as the run keeps it and the pages show it: its guidance link, and its fix as the form's text."""
    param, anchor = note.section
    return {**note.as_dict(), "guidance_url": guidance_url(param, anchor),
            "fix_text": {field: value_text(value) for field, value in note.fix.items()} if note.fix else None}


def review(config: dict[str, Any], *, dataset: Dataset | None) -> list[dict[str, Any]]:
    """The pre-flight notes of a full run config; [] (and a log line) if a rule fails: a note must never stop a run."""
    try:
        model = str(config.get("model") or "")
        notes = preflight.review(config, model_facts=model_facts(model, config.get("target_modules")),
                                 dataset_facts=dataset_facts(dataset, model))
    except Exception:  # noqa: BLE001 - the review advises; its bug must not refuse a config
        log.exception("pre-flight review failed")
        return []
    return [note_dict(note) for note in notes]


def preset_review(preset) -> list[dict[str, Any]]:
    """A preset's notes: its fields over the engine's defaults (placeholders for the model and data it lacks)."""
    try:
        config = parse_config({**PRESET_PLACEHOLDERS, **preset.config}).model_dump(mode="json")
    except ConfigError:
        return []  # refused by the preset's own validation already
    return review(config, dataset=None)
