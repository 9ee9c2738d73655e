"""What a change between two runs' configs amounts to, reasoned on the values that follow from the config (effective
batch, LoRA scale, tokens per step) rather than on one field alone, and whether their losses can be compared at all.

Pure: plain config dicts in, sentences out (Compare and the run page's "what this run changes" render them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from guidance import calculators, content
from training.engine import derived
from training.engine.config import TrainConfig


def _value(config: dict[str, Any], name: str) -> Any:
    """The config's value, or the engine's default for a field an older run did not store."""
    if name in config and config[name] is not None:
        return config[name]
    return TrainConfig.model_fields[name].default


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class DerivedValues:
    """The derived values a comparison reasons on, with the formula each came from (for the sentence)."""
    effective_batch: int
    batch_formula: str
    lora_scale: float
    scale_formula: str
    tokens_per_step: int
    tokens_exact: bool  # packed: every sequence is max_length tokens; else max_length is a ceiling

    @property
    def tokens_text(self) -> str:
        return f"{self.tokens_per_step:,}" if self.tokens_exact else f"up to {self.tokens_per_step:,}"


def derived_values(config: dict[str, Any]) -> DerivedValues:
    micro, accum = int(_value(config, "per_device_train_batch_size")), int(_value(config, "gradient_accumulation_steps"))
    devices = int(_value(config, "devices"))
    alpha, r, rslora = float(_value(config, "lora_alpha")), int(_value(config, "r")), bool(_value(config, "use_rslora"))
    packing, max_length = bool(_value(config, "packing")), int(_value(config, "max_length"))
    batch_formula = f"{micro}×{accum}" + (f"×{devices} GPUs" if devices > 1 else "")
    scale_formula = f"{_number(alpha)}/√{r}" if rslora else f"{_number(alpha)}/{r}"
    return DerivedValues(
        effective_batch=derived.effective_batch(micro, accum, devices), batch_formula=batch_formula,
        lora_scale=derived.lora_scale(alpha, r, rslora), scale_formula=scale_formula,
        tokens_per_step=derived.tokens_per_step(micro, accum, max_length, devices, packing=True),
        tokens_exact=packing)


def _scale_text(value: float) -> str:
    return f"{value:.3g}"


def _same_scale(old: DerivedValues, new: DerivedValues) -> bool:
    return abs(old.lora_scale - new.lora_scale) <= 1e-9 * max(old.lora_scale, new.lora_scale)


def _batch_reason(old: DerivedValues, new: DerivedValues) -> str:
    numbers = f"effective batch {old.effective_batch} ({old.batch_formula}) → {new.effective_batch} ({new.batch_formula})"
    if new.effective_batch == old.effective_batch:
        return (f"same effective batch, {new.effective_batch} ({old.batch_formula} and {new.batch_formula}): each "
                "optimizer update sees as many sequences, so the curves should match step for step; only memory "
                "and speed differ (a bigger micro-batch needs more memory and usually runs faster)")
    side = "up" if new.effective_batch > old.effective_batch else "down"
    return f"{content.get('gradient_accumulation_steps').predictions[side]} ({numbers})"


def _scale_reason(old: DerivedValues, new: DerivedValues) -> str:
    numbers = (f"LoRA scale {_scale_text(old.lora_scale)} ({old.scale_formula}) → "
               f"{_scale_text(new.lora_scale)} ({new.scale_formula})")
    if _same_scale(old, new):
        return (f"same LoRA scale, {_scale_text(new.lora_scale)} ({old.scale_formula} and {new.scale_formula}): the "
                "adapter's updates keep their gain")
    side = "up" if new.lora_scale > old.lora_scale else "down"
    return f"{content.get('lora_alpha').predictions[side]} ({numbers})"


# The parameters whose effect is a derived value: their prediction comes from how that value moved, not from the
# field's own direction (2×4 against 8×1 is fewer accumulation steps but the same effective batch).
def prediction_for_change(param: str, old_config: dict[str, Any], new_config: dict[str, Any], *,
                          total_steps: int | None = None) -> str:
    """The prediction for `param` moving from its value in old_config to the one in new_config; "" when it did not
    move. Batch and LoRA parameters are read through the effective batch and the LoRA scale."""
    old_value, new_value = _value(old_config, param), _value(new_config, param)
    own = calculators.prediction_for_change(param, old_value, new_value, total_steps=total_steps)
    if not own or param not in ("gradient_accumulation_steps", "lora_alpha", "r", "use_rslora"):
        return own
    old, new = derived_values(old_config), derived_values(new_config)
    if param == "gradient_accumulation_steps":
        return _batch_reason(old, new)
    if param == "lora_alpha":
        return _scale_reason(old, new)
    if param == "r":
        capacity = content.get("r").predictions["up" if new_value > old_value else "down"]
        return f"{capacity}; {_scale_reason(old, new)}"
    # use_rslora: the seed's prediction warns of a √r-fold jump "with alpha unchanged"; say whether alpha followed.
    if _same_scale(old, new):
        return (f"scale becomes {new.scale_formula} with alpha re-matched, so the gain is kept "
                f"({_scale_text(new.lora_scale)}); " + ("higher ranks become usable" if new_value else
                                                        "high ranks may learn slowly again"))
    return (f"{own}; LoRA scale {_scale_text(old.lora_scale)} ({old.scale_formula}) → "
            f"{_scale_text(new.lora_scale)} ({new.scale_formula})")


def derived_changes(old_config: dict[str, Any], new_config: dict[str, Any]) -> list[dict[str, str]]:
    """The derived values whose value or makeup differs between two configs: [{name, label, from, to, reason}]."""
    old, new = derived_values(old_config), derived_values(new_config)
    out = []
    if (old.effective_batch, old.batch_formula) != (new.effective_batch, new.batch_formula):
        out.append({"name": "effective_batch", "label": "Effective batch",
                    "from": f"{old.effective_batch} ({old.batch_formula})",
                    "to": f"{new.effective_batch} ({new.batch_formula})", "reason": _batch_reason(old, new)})
    if not _same_scale(old, new) or old.scale_formula != new.scale_formula:
        out.append({"name": "lora_scale", "label": "LoRA scale",
                    "from": f"{_scale_text(old.lora_scale)} ({old.scale_formula})",
                    "to": f"{_scale_text(new.lora_scale)} ({new.scale_formula})", "reason": _scale_reason(old, new)})
    if (old.tokens_per_step, old.tokens_exact) != (new.tokens_per_step, new.tokens_exact):
        out.append({"name": "tokens_per_step", "label": "Tokens per step", "from": old.tokens_text,
                    "to": new.tokens_text, "reason": _tokens_reason(old, new)})
    return out


def _tokens_reason(old: DerivedValues, new: DerivedValues) -> str:
    if not (old.tokens_exact and new.tokens_exact):
        exact = "packed runs fill every sequence to max_length; unpacked ones stop at each example's end, so "
        return exact + "the unpacked figure is a ceiling, not what each update saw"
    more = new.tokens_per_step > old.tokens_per_step
    return ("each update averages over more tokens: steadier updates, fewer of them per epoch" if more else
            "each update averages over fewer tokens: noisier updates, more of them per epoch")


@dataclass(frozen=True)
class TrainedRun:
    """What decides whether a run's loss can be set beside another's."""
    label: str  # how the sentence names the run, e.g. "#12"
    dataset_id: int
    dataset_name: str
    config: dict[str, Any]


def _eval_set(run: TrainedRun) -> str:
    eval_file, split = run.config.get("eval_file"), run.config.get("eval_split")
    if eval_file:
        return f"its own eval file ({str(eval_file).rsplit('/', 1)[-1]})"
    if split:
        return f"a {float(split):.0%} split"
    return "no eval set"


def _answers_only(run: TrainedRun) -> str:
    # None lets the trainer decide: it masks the prompts of prompt/completion and messages data.
    value = run.config.get("completion_only_loss")
    return {True: "the answers only", False: "every token"}.get(value, "what the data format decides")


def _groups(runs: Sequence[TrainedRun], key) -> str:
    groups: dict[str, list[str]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run.label)
    return "; ".join(f"{value}: {', '.join(labels)}" for value, labels in groups.items())


def not_comparable(runs: Sequence[TrainedRun]) -> list[str]:
    """Why the runs' losses cannot be set side by side, most basic first; [] when nothing stands in the way."""
    if len(runs) < 2:
        return []
    names: dict[str, set[int]] = {}
    for run in runs:
        names.setdefault(run.dataset_name, set()).add(run.dataset_id)

    def dataset(run: TrainedRun) -> str:
        # Two teams' or two uploads' datasets may share a name: then the id tells them apart.
        return run.dataset_name if len(names[run.dataset_name]) == 1 else f"{run.dataset_name} (#{run.dataset_id})"

    reasons = []
    if len({run.dataset_id for run in runs}) > 1:
        reasons.append("Losses not comparable: the runs trained on different datasets, so their losses measure "
                       f"different text ({_groups(runs, dataset)}).")
    if len({str(run.config.get("model")) for run in runs}) > 1:
        reasons.append("Losses not comparable: the runs trained different models, whose tokenizers and starting "
                       f"losses differ ({_groups(runs, lambda run: str(run.config.get('model')))}).")
    if len({_value(run.config, "max_length") for run in runs}) > 1:
        reasons.append("Losses not comparable: the runs cut examples at different max_length, so examples longer "
                       "than the shortest limit lose their ends in some runs and not others "
                       f"({_groups(runs, lambda run: str(_value(run.config, 'max_length')))}).")
    if len({_answers_only(run) for run in runs}) > 1:
        reasons.append("Losses not comparable: the runs count the loss over different tokens "
                       f"({_groups(runs, _answers_only)}).")
    if len({run.dataset_id for run in runs}) == 1 and len({_eval_set(run) for run in runs}) > 1:
        reasons.append("Eval losses not comparable: the runs held out different eval sets "
                       f"({_groups(runs, _eval_set)}).")
    return reasons
