"""The bias check's base drift, judged: the base model's outputs (1) against the run's with its adapters disabled (3).
bias, Detailed Configuration: with "none" the base weights are untouched, so (3) equals (1) token for token (greedy
decoding, same prompts); with "lora_only" or "all" the trained biases belong to the base model and stay when the
adapters are disabled, so (3) drifts from (1)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.evaluation.metrics import rouge_l
from training.models import EvalExample, Evaluation, EvalSuite, Run

Status = Evaluation.Status


def judge(base: Mapping[int, str], disabled: Mapping[int, str], *, bias: str) -> dict[str, Any]:
    """Compare the outputs by example index. Pure. drift: the share of prompts whose output changed; distance: the
    mean 1 - ROUGE-L between the two outputs (how far they moved, 0-1)."""
    shared = sorted(set(base) & set(disabled))
    changed = [i for i in shared if base[i] != disabled[i]]
    n = len(shared)
    drift = len(changed) / n if n else None
    distance = sum(1 - rouge_l(disabled[i], base[i]) for i in shared) / n if n else None
    expected_equal = bias == "none"
    if not n:
        text = "no prompts to compare"
    elif not changed:
        text = (f"with the adapters disabled, the outputs equal the base model's on all {n} prompts"
                + (": bias \"none\" left the base weights untouched, as it should" if expected_equal else
                   f": bias \"{bias}\" trained biases, yet nothing drifted (they may have stayed near their start)"))
    else:
        text = (f"with the adapters disabled, {len(changed)} of {n} outputs differ from the base model's (drift "
                f"{drift:.2f}, distance {distance:.2f})"
                + (f": bias \"{bias}\" trained the base model's own biases, which stay when the adapters are off"
                   if not expected_equal else
                   ": unexpected with bias \"none\" (the base weights should be untouched): check the decoding is "
                   "greedy and the same for both"))
    return {"prompts": n, "changed": changed, "drift": drift, "distance": distance, "bias": bias,
            "as_expected": (not changed) == expected_equal if n else None, "text": text}


def drift_for(run: Run, suite: EvalSuite) -> dict[str, Any] | None:
    """The judged check for the run's latest greedy evaluations on the suite, or None until (1) and (3) succeeded."""
    disabled = (Evaluation.objects.filter(run=run, suite=suite, adapters="off", checkpoint_step=None,
                                          decoding__temperature=0.0, status=Status.SUCCEEDED).order_by("-id").first())
    if disabled is None:
        return None
    base = (Evaluation.objects.filter(run__isnull=True, team=run.team, suite=suite, model=run.config.get("model"),
                                      decoding=disabled.decoding, status=Status.SUCCEEDED).order_by("-id").first())
    if base is None:
        return None

    def outputs(evaluation: Evaluation) -> dict[int, str]:
        return dict(EvalExample.objects.filter(evaluation=evaluation).values_list("index", "output"))

    return {**judge(outputs(base), outputs(disabled), bias=run.config.get("bias", "none")),
            "base_evaluation": base.id, "disabled_evaluation": disabled.id}
