"""What the pages show of a plan (training.planner.services.plan_config's dict): the run form's figures, parts, MFU,
levers and fastest fit with their changes as the form's values, and a run's prediction against what it measured.
Pure: plain dicts in, plain dicts and text out."""
from __future__ import annotations

from typing import Any, Mapping

from training.planner.estimate import human_bytes, human_rate, human_seconds
from training.planner.shapes import ShapeError, shape_from_dict

PART_LABELS = {"weights": "weights", "adapters": "adapters, their gradients and the optimizer's state",
               "activations": "activations", "logits": "logits", "overhead": "allocator and workspaces"}
# How a lever's or the fastest fit's changes read (engine field -> words); the form's inputs carry the field names.
WORDS = {"per_device_train_batch_size": "micro-batch", "gradient_accumulation_steps": "accumulation",
         "gradient_checkpointing": "checkpointing", "tiled_mlp": "tiled MLP", "load_in_4bit": "4-bit",
         "optim": "optimizer"}


def form_value(value: Any) -> str:
    """A change as the run form's input takes it (its select offers "true"/"false")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def changes_text(changes: Mapping[str, Any]) -> str:
    """{'per_device_train_batch_size': 8, 'gradient_accumulation_steps': 1, 'gradient_checkpointing': False} ->
    'micro-batch 8 × accumulation 1, checkpointing off'."""
    parts = []
    mb, ga = changes.get("per_device_train_batch_size"), changes.get("gradient_accumulation_steps")
    if mb is not None and ga is not None:
        parts.append(f"micro-batch {mb} × accumulation {ga}")
    for name, value in changes.items():
        if name in ("per_device_train_batch_size", "gradient_accumulation_steps") and mb is not None and ga is not None:
            continue
        word = WORDS.get(name, name)
        parts.append(f"{word} {'on' if value else 'off'}" if isinstance(value, bool) else f"{word} {value}")
    return ", ".join(parts)


def human_flops(flops: float) -> str:
    return f"{flops / 1e9:.2f} GFLOP" if flops >= 1e8 else f"{flops / 1e6:.2f} MFLOP"


def range_text(low: float, high: float) -> str:
    """'2.7–4.1 GiB' (one unit where both ends share it)."""
    a, b = human_bytes(low), human_bytes(high)
    if a.split()[1] == b.split()[1]:
        return f"{a.split()[0]}–{b}"
    return f"{a}–{b}"


def flops_text(plan: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The FLOPs a token really costs: 4N without checkpointing, 6N with it (its forward is recomputed), attention
    included; N the weights a token is multiplied by."""
    fpt = plan["flops_per_token"]
    checkpointing = bool(config.get("gradient_checkpointing", True))
    try:
        n = shape_from_dict(plan.get("model_shape") or {}).matmul_params
    except ShapeError:
        return f"{human_flops(fpt)} a token"
    passes = 3 if checkpointing else 2
    attention = max(fpt - 2 * n * passes, 0.0)
    why = "checkpointing recomputes the forward" if checkpointing else "no checkpointing"
    return (f"{human_flops(fpt)} a token: {2 * passes}N ({why}; N = {n / 1e6:,.1f}M weights a token passes through) "
            f"+ {human_flops(attention)} of attention")


def mfu_text(plan: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    flops = flops_text(plan, config)
    if plan.get("mfu") is None:
        return f"MFU unknown ({plan['gpu']}'s peak FLOP rate is not in the planner's table); {flops}"
    return f"MFU ≈ {plan['mfu']:.0%} of {plan['gpu']}'s dense 16-bit peak; {flops}"


def worker_text(worker: Mapping[str, Any]) -> str:
    if worker["fits"] is None:
        return f"{worker['worker']}: no GPU"
    size = f"{worker['gpu']}, {human_bytes(worker['memory_total'])}"
    if worker["fits"]:
        return f"{worker['worker']} ({size}): fits, needs {human_bytes(worker['needs'])} with the CUDA context"
    return f"{worker['worker']} ({size}): too small, needs {human_bytes(worker['needs'])} with the CUDA context"


def fastest_text(plan: Mapping[str, Any]) -> str:
    f = plan["fastest"]
    return (f"Fastest on {plan['gpu']}: {changes_text(f['changes'])}: ≈ {human_rate(f['tokens_per_s'])} tokens/s "
            f"({f['speedup']:.2f}×), peak ≈ {human_bytes(f['peak_bytes'])}")


def refusal_text(plan: Mapping[str, Any]) -> str | None:
    """Why the form would be refused at launch, in one line (its levers listed beside it), or None when it fits."""
    if plan.get("fits_any") is not False:
        return None
    biggest = max((w for w in plan["workers"] if w["fits"] is not None), key=lambda w: w["memory_total"])
    return (f"Fits no live GPU worker on this queue: predicted peak {human_bytes(plan['peak_bytes'])}, up to "
            f"{human_bytes(plan['peak_high'])}; the largest GPU, {biggest['worker']}'s "
            f"{human_bytes(biggest['memory_total'])}, would need {human_bytes(biggest['needs'])}. Launching is "
            f"refused until it fits; each lever below alone, with its predicted peak:")


def form_plan(plan: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """What the run form shows of a plan, as the user types: the line, whether it is calibrated (and on what), the
    parts, the time's parts, the MFU, each worker, the refusal with each lever, and the fastest fit; each lever and
    the fastest fit carry `apply`: the form's inputs and the text to put in them."""
    if plan.get("error"):
        return {"error": plan["error"], "text": plan.get("text") or f"No prediction: {plan['error']}."}
    total = plan["peak_bytes"] or 1.0
    return {
        "text": plan["text"], "calibrated": plan["calibrated"], "source": plan["source"], "gpu": plan["gpu"],
        "peak": f"{human_bytes(plan['peak_bytes'])} ({range_text(plan['peak_low'], plan['peak_high'])})",
        "parts": [{"label": PART_LABELS.get(k, k), "bytes": v, "text": f"{human_bytes(v)} ({v / total:.0%})"}
                  for k, v in plan["parts"].items()],
        "time_parts": [{"label": k, "text": human_seconds(v)} for k, v in (plan.get("time_parts") or {}).items()],
        "rate": (f"≈ {human_rate(plan['tokens_per_s'])} tokens/s ({human_rate(plan['tokens_per_s_low'])}–"
                 f"{human_rate(plan['tokens_per_s_high'])}) on {plan['gpu']}, {plan['step_s']:.3g} s a step"),
        "time": (f"≈ {human_seconds(plan['seconds'])} ({human_seconds(plan['seconds_low'])}–"
                 f"{human_seconds(plan['seconds_high'])}) for {plan['total_steps']} steps" if plan.get("seconds")
                 else "time: known once the step count is (set max_steps, or packing off with a dataset chosen)"),
        "mfu": mfu_text(plan, config),
        "workers": [worker_text(w) for w in plan["workers"]],
        "fits_any": plan["fits_any"],
        "refusal": refusal_text(plan),
        "levers": [{"text": f"{lv['text']}, up to {human_bytes(lv['peak_high'])}", "fits": lv["fits"],
                    "same_problem": lv["same_problem"],
                    "apply": {k: form_value(v) for k, v in lv["changes"].items()}} for lv in plan["levers"]],
        "fastest": ({"text": fastest_text(plan), "apply": {k: form_value(v) for k, v in
                                                           plan["fastest"]["changes"].items()}}
                    if plan.get("fastest") else None),
    }


# ---- a run's prediction against what it measured ----------------------------------------------------------------

def relative_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured: +0.12 predicted 12% high."""
    if predicted is None or not measured:
        return None
    return predicted / measured - 1


def error_text(error: float | None) -> str:
    if error is None:
        return ""
    return "exact" if abs(error) < 0.005 else f"{abs(error):.0%} {'high' if error > 0 else 'low'}"


def _row(what: str, predicted: str, band: str, low: float, high: float, p: float, m: float | None,
         measured: str | None) -> dict[str, Any]:
    error = relative_error(p, m)
    return {"what": what, "predicted": predicted, "band": band, "measured": measured or "—", "error": error,
            "error_text": error_text(error), "within_band": None if error is None else low <= m <= high}


def predicted_vs_measured(plan: Mapping[str, Any], measured: Mapping[str, Any]) -> dict[str, Any] | None:
    """The plan kept at creation beside what the run measured: peak VRAM (the highest the metrics reported),
    tokens/s (the median after the first steps) and the time from its start to its end, each with the relative
    error and whether it fell in the predicted band, and notes on what is not compared (another device than the
    one predicted for, a run that did not run all its steps). None for a run without a plan (created before the
    planner, or no prediction could be made). `measured`: peak_bytes, tokens_per_s, seconds (None where not
    measured), device (what the run trained on), finished (it ran all its steps)."""
    if not plan or plan.get("error") or plan.get("peak_bytes") is None:
        return None
    device = measured.get("device") or ""
    other_device = bool(device) and device.strip().lower() != str(plan.get("gpu") or "").strip().lower()
    peak, rate, seconds = measured.get("peak_bytes"), measured.get("tokens_per_s"), measured.get("seconds")
    finished = bool(measured.get("finished"))
    notes = []
    if device.startswith("cpu"):
        notes.append("A CPU run reports no VRAM.")
    if other_device:
        notes.append(f"Predicted for {plan['gpu']}; it trained on {device}: its tokens/s and time are not compared.")
        rate_compared = seconds_compared = None
    else:
        rate_compared, seconds_compared = rate, (seconds if finished else None)
    rows = [_row("Peak VRAM", human_bytes(plan["peak_bytes"]), range_text(plan["peak_low"], plan["peak_high"]),
                 plan["peak_low"], plan["peak_high"], plan["peak_bytes"], peak, human_bytes(peak) if peak else None),
            _row("Tokens/s", human_rate(plan["tokens_per_s"]),
                 f"{human_rate(plan['tokens_per_s_low'])}–{human_rate(plan['tokens_per_s_high'])}",
                 plan["tokens_per_s_low"], plan["tokens_per_s_high"], plan["tokens_per_s"], rate_compared,
                 human_rate(rate) if rate else None)]
    if plan.get("seconds"):
        rows.append(_row("Time to finish", human_seconds(plan["seconds"]),
                         f"{human_seconds(plan['seconds_low'])}–{human_seconds(plan['seconds_high'])}",
                         plan["seconds_low"], plan["seconds_high"], plan["seconds"], seconds_compared,
                         human_seconds(seconds) if seconds else None))
        if seconds and not finished:
            notes.append("It did not run all its steps: its time is not compared.")
    return {"gpu": plan["gpu"], "device": device, "calibrated": plan["calibrated"], "source": plan["source"],
            "rows": rows, "notes": notes}
