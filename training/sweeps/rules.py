"""Decision rules: a phase's recorded results -> a Verdict that names the winner, the rule and its evidence. Pure.

A result is a plain dict per member (keys below, all optional until the member ends): status ("succeeded",
"diverged", "pruned", "failed"; anything else is still running or waiting to resume), final_eval_loss, best_eval_loss, train_loss, tokens_per_s,
peak_vram_gb, trainable_params, init_s, note (why a failed member failed, when the verdict should say it: "its run was
deleted"), findings (the detectors' codes, "loss_spike@120" counts as "loss_spike"),
and for the learning-rate range test curve: [[learning_rate, loss], ...] in step order. A rule never guesses: while
a member has no result, or a result lacks what the rule reads, the verdict is undecided and says why.

The seed's rules (../shared/seed/lora-sft-guidance.md, each parameter's "Tuning Process") unless a comment says
"ours".
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.sweeps.plan import TOLERANCE, Phase

TERMINAL = frozenset({"succeeded", "diverged", "pruned", "failed"})
UNSTABLE = frozenset({"loss_not_finite", "early_instability", "loss_spike", "grad_norm_spike"})  # the detectors'
UNDERFIT = frozenset({"flat_loss"})  # lora_dropout: "If neither train nor val improves": the flat-loss finding
OVERFIT = frozenset({"overfitting"})  # lora_dropout: "If train improves but val doesn't": the overfitting finding
NO_EFFECT = frozenset({"bias_no_effect"})  # bias: "Trainable parameter count (must differ if the setting is active)"
TIE = 5e-4  # ours: two losses that read the same at the three decimals a verdict shows are a tie
MIN_SPEEDUP = 0.10  # ours: packing's "materially improves tokens/sec" is at least 10% more tokens/s
BLOWUP_FACTOR = 4.0  # ours, after fastai's lr_find: the loss "blows up" past 4x its smoothed minimum
SMOOTHING = 0.9  # ours: the range test's loss is an exponential moving average (bias-corrected) before judging
NOUNS = {"r": "rank", "gradient_accumulation_steps": "accumulation", "warmup_steps": "warmup"}


@dataclass(frozen=True)
class Verdict:
    rule: str
    winner: str | None  # a member's name; None while undecided
    text: str
    ties: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()
    diverged: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    pruned: tuple[str, ...] = ()

    @property
    def decided(self) -> bool:
        return self.winner is not None

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "winner": self.winner, "text": self.text, "ties": list(self.ties),
                "invalid": list(self.invalid), "diverged": list(self.diverged), "failed": list(self.failed),
                "pruned": list(self.pruned), "details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(data["rule"], data.get("winner"), data.get("text", ""), tuple(data.get("ties") or ()),
                   tuple(data.get("invalid") or ()), tuple(data.get("diverged") or ()),
                   tuple(data.get("failed") or ()), dict(data.get("details") or {}), tuple(data.get("pruned") or ()))


def decide(phase: Phase, results: Mapping[str, Mapping[str, Any]], **overrides: Any) -> Verdict:
    """Judge `phase` by its own rule over `results` (member name -> result dict)."""
    entries = [{**(results.get(m.name) or {}), "name": m.name, "value": m.value} for m in phase.members]
    return RULES[phase.rule](entries, axis=phase.axis, **{**phase.rule_params, **overrides})


# ---- shared ---------------------------------------------------------------------------------------------------------

def _codes(e: Mapping[str, Any]) -> set[str]:
    return {str(c).split("@", 1)[0] for c in e.get("findings") or ()}


def _is_diverged(e: Mapping[str, Any]) -> bool:
    return e.get("status") == "diverged" or "loss_not_finite" in _codes(e)


def _shown(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _label(axis: str, e: Mapping[str, Any]) -> str:
    """"r = 16" for a member named after its value, else its own name ("standard", "loftq(4,4)")."""
    shown = _shown(e["value"])
    return f"{axis} = {shown}" if e["name"] == f"{axis}={shown}" else e["name"]


def _loss(x: float) -> str:
    return f"{x:.3f}"


@dataclass
class _Sorted:
    candidates: list[dict]
    diverged: list[str]
    failed: list[str]
    unstable: list[dict]  # diverged members and, where stability counts, those with an instability finding
    undecided: Verdict | None = None
    pruned: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # a failed member's note, shown beside its name

    def verdict(self, rule: str, winner: Mapping | None, text: str, **kw: Any) -> Verdict:
        notes = [text]
        if self.diverged:
            notes.append(f"diverged, not compared: {', '.join(self.diverged)}")
        if self.pruned:
            notes.append(f"pruned early by successive halving, not compared: {', '.join(self.pruned)}")
        if self.failed:
            shown = [f"{name} ({self.notes[name]})" if name in self.notes else name for name in self.failed]
            notes.append(f"failed, not compared: {', '.join(shown)}")
        return Verdict(rule, winner["name"] if winner else None, "; ".join(notes) + ".", diverged=tuple(self.diverged),
                       failed=tuple(self.failed), pruned=tuple(self.pruned), **kw)


def _sort(rule: str, entries: Sequence[dict], metric: str, *, stable_only: bool = False,
          needs: Sequence[str] = ()) -> _Sorted:
    pending = [e["name"] for e in entries if e.get("status") not in TERMINAL]
    diverged = [e["name"] for e in entries if _is_diverged(e)]
    failed = [e["name"] for e in entries if e.get("status") == "failed" and e["name"] not in diverged]
    pruned = [e["name"] for e in entries if e.get("status") == "pruned" and e["name"] not in diverged]
    done = [e for e in entries if e.get("status") == "succeeded" and e["name"] not in diverged]
    shaky = [e for e in done if stable_only and _codes(e) & UNSTABLE]
    out = _Sorted([e for e in done if e not in shaky], diverged, failed,
                  [e for e in entries if e["name"] in diverged] + shaky, pruned=pruned,
                  notes={e["name"]: str(e["note"]) for e in entries if e["name"] in failed and e.get("note")})
    missing = [f"{e['name']} ({k})" for e in out.candidates for k in (metric, *needs) if e.get(k) is None]
    reason = (f"waiting for {', '.join(pending)}: no result yet" if pending else
              f"finished without {', '.join(missing)}" if missing else
              "no member finished stable" if not out.candidates else None)
    if reason:
        out.undecided = out.verdict(rule, None, f"undecided: {reason}")
    return out


def _ties(winner: Mapping, candidates: Sequence[Mapping], metric: str) -> tuple[str, ...]:
    return tuple(e["name"] for e in candidates if e is not winner and abs(e[metric] - winner[metric]) <= TIE)


def _tie_note(ties: Sequence[str], broken: str) -> str:
    return f"; tied with {', '.join(ties)}, broken {broken}" if ties else ""


# ---- the rules --------------------------------------------------------------------------------------------------------

def lowest_eval(entries: Sequence[dict], *, axis: str, metric: str = "final_eval_loss", label: str = "eval loss") -> Verdict:
    """The lowest eval loss (learning_rate 3: "best validation metric / lowest val loss"; and every phase whose
    procedure says only "best validation")."""
    s = _sort("lowest_eval", entries, metric, stable_only=True)
    if s.undecided:
        return s.undecided
    ranked = sorted(s.candidates, key=lambda e: e[metric])  # stable: a tie goes to the member listed first
    winner = ranked[0]
    ties = _ties(winner, s.candidates, metric)
    runner = f" (next: {_label(axis, ranked[1])} at {_loss(ranked[1][metric])})" if len(ranked) > 1 else ""
    unstable = [e["name"] for e in s.unstable if e["name"] not in s.diverged]
    text = (f"{_label(axis, winner)}: the lowest {label}, {_loss(winner[metric])}{runner}"
            f"{_tie_note(ties, 'by the order listed')}"
            + (f"; unstable, not compared: {', '.join(unstable)}" if unstable else ""))
    return s.verdict("lowest_eval", winner, text, ties=ties, invalid=tuple(unstable))


def smallest_within_tolerance(entries: Sequence[dict], *, axis: str, tolerance: float = TOLERANCE,
                              metric: str = "final_eval_loss", label: str = "eval loss", stable_only: bool = False,
                              above_unstable: bool = False) -> Verdict:
    """The smallest value whose eval loss is within `tolerance` of the best. r: "pick the smallest that wins on
    validation"; gradient_accumulation_steps: "the smallest ... that gives stable training"; warmup_steps, with
    `above_unstable`: "If any run diverges or is noisy early: move upward", then "the smallest warmup that reaches
    the best eval"."""
    rule = "smallest_within_tolerance"
    s = _sort(rule, entries, metric, stable_only=stable_only)
    if s.undecided:
        return s.undecided
    noun = NOUNS.get(axis, "value")
    candidates = s.candidates
    unstable = [e["name"] for e in s.unstable if e["name"] not in s.diverged]
    floor_note = ""
    if above_unstable and s.unstable:
        floor = max(e["value"] for e in s.unstable)
        candidates = [e for e in candidates if e["value"] > floor]
        floor_note = f"; only values above the unstable {axis} = {_shown(floor)} considered"
        if not candidates:
            return s.verdict(rule, None, f"undecided: {axis} = {_shown(floor)}, the largest swept, was unstable: "
                                         "sweep higher")
    best = min(candidates, key=lambda e: e[metric])
    within = [e for e in candidates if e[metric] <= best[metric] * (1 + tolerance)]
    winner = min(within, key=lambda e: e["value"])
    if winner is best:
        text = (f"{_label(axis, winner)}: the best {label}, {_loss(winner[metric])}, with no smaller {noun} "
                f"within the {tolerance:.0%} tolerance of it")
    else:
        text = (f"{_label(axis, winner)}: {label} {_loss(winner[metric])} against the best "
                f"{_loss(best[metric])} ({_label(axis, best)}), within the {tolerance:.0%} tolerance, and the "
                f"smallest such {noun}")
    ties = _ties(winner, candidates, metric)
    text += _tie_note(ties, f"towards the smaller {noun}") + floor_note
    if unstable:
        text += f"; unstable, not compared: {', '.join(unstable)}"
    return s.verdict(rule, winner, text, ties=ties, invalid=tuple(unstable),
                     details={"best": best["name"], "within": [e["name"] for e in within]})


def dropout_fit(entries: Sequence[dict], *, axis: str, tolerance: float = TOLERANCE,
                metric: str = "final_eval_loss", label: str = "eval loss") -> Verdict:
    """The rank sweep at dropout 0.05, then how the winner fits (lora_dropout: "If the winner overfits: rerun
    winner rank with dropout = 0.1; If all underfit: rerun best rank with dropout = 0.0-0.03")."""
    v = smallest_within_tolerance(entries, axis=axis, tolerance=tolerance, metric=metric, label=label)
    if not v.decided:
        return Verdict("dropout_fit", None, v.text, v.ties, v.invalid, v.diverged, v.failed)
    by_name = {e["name"]: e for e in entries}
    done = [e for e in entries if e.get("status") == "succeeded" and not _is_diverged(e)]
    if _codes(by_name[v.winner]) & OVERFIT:
        fit, note = "overfit", "it overfits (the overfitting finding): rerun it at dropout 0.1"
    elif all(_codes(e) & UNDERFIT for e in done):
        fit, note = "underfit", "every member underfits (the flat-loss finding): rerun it at dropout 0.0-0.03"
    else:
        fit, note = "ok", "no overfitting or underfitting finding: dropout stays"
    return Verdict("dropout_fit", v.winner, v.text.removesuffix(".") + f"; {note}.", v.ties, v.invalid, v.diverged,
                   v.failed, {**v.details, "fit": fit})


def preferred_unless_better(entries: Sequence[dict], *, axis: str, order: Sequence[Any], margin: float = TOLERANCE,
                            metric: str = "final_eval_loss", label: str = "eval loss", check_trainable: bool = False) -> Verdict:
    """The first of `order` unless a later one is clearly better: lower eval loss by more than `margin`. bias: "If
    none of them differ meaningfully, default to none", "If lora_only is clearly better on validation, keep it",
    "If all is only marginally better (or worse), prefer lora_only or none"; use_rslora: "If rsLoRA wins or ties,
    lock it on". With `check_trainable`, a member whose trainable count equals the first's is invalid."""
    rule = "preferred_unless_better"
    s = _sort(rule, entries, metric, needs=("trainable_params",) if check_trainable else ())
    if s.undecided:
        return s.undecided
    ranked = sorted(s.candidates, key=lambda e: list(order).index(e["value"]))
    invalid, notes = [], []
    if check_trainable:
        ref = next((e for e in ranked if e["value"] == order[0]), None)
        if ref is None:
            return s.verdict(rule, None, f"undecided: the reference {axis} = {order[0]} has no result to check "
                                         "trainable counts against")
        for e in ranked[1:]:
            if e["trainable_params"] == ref["trainable_params"] or _codes(e) & NO_EFFECT:
                invalid.append(e["name"])
                notes.append(f"{e['name']} invalid: trainable count {e['trainable_params']:,} unchanged from "
                             f"{ref['name']}, so the setting had no effect")
        ranked = [e for e in ranked if e["name"] not in invalid]
    current = ranked[0]
    for e in ranked[1:]:
        if e[metric] < current[metric] * (1 - margin):
            current = e
    others = ", ".join(f"{_label(axis, e)} {_loss(e[metric])}" for e in ranked if e is not current)
    if current is ranked[0]:
        text = (f"{_label(axis, current)}: {label} {_loss(current[metric])}, and no other is clearly better "
                f"(more than {margin:.0%} lower)" + (f": {others}" if others else ""))
    else:
        base = ranked[0]
        drop = 1 - current[metric] / base[metric]
        text = (f"{_label(axis, current)}: {label} {_loss(current[metric])}, {drop:.1%} below "
                f"{_label(axis, base)}'s {_loss(base[metric])}, more than the {margin:.0%} margin")
    ties = _ties(current, ranked, metric)
    text += _tie_note(ties, "towards the preferred") + "".join(f"; {n}" for n in notes)
    return s.verdict(rule, current, text, ties=ties, invalid=tuple(invalid))


def loftq_score(entries: Sequence[dict], *, axis: str, lam: float, metric: str = "final_eval_loss", label: str = "eval loss") -> Verdict:
    """loftq_config Step 4: "(final validation score at fixed compute) - λ x (init_time)"; with a loss, the lowest
    eval loss + λ x init seconds."""
    s = _sort("loftq_score", entries, metric, needs=("init_s",))
    if s.undecided:
        return s.undecided

    def score(e: Mapping) -> float:
        return e[metric] + lam * e["init_s"]

    ranked = sorted(s.candidates, key=score)
    winner = ranked[0]

    def shown(e: Mapping) -> str:
        return f"{_loss(e[metric])} + {lam:g} x {e['init_s']:g} s init = {score(e):.4f}"

    others = "; ".join(f"{e['name']} {shown(e)}" for e in ranked[1:])
    ties = tuple(e["name"] for e in ranked[1:] if abs(score(e) - score(winner)) <= TIE)
    text = (f"{winner['name']}: {label} {shown(winner)}, the lowest score" + (f" ({others})" if others else "")
            + _tie_note(ties, "by the order listed"))
    return s.verdict("loftq_score", winner, text, ties=ties, details={"scores": {e["name"]: score(e) for e in ranked}})


def packing(entries: Sequence[dict], *, axis: str, tolerance: float = TOLERANCE, min_speedup: float = MIN_SPEEDUP,
            max_vram_gb: float | None = None, metric: str = "final_eval_loss", label: str = "eval loss") -> Verdict:
    """packing 5: choose packing=True when it "materially improves tokens/sec" and "keeps eval quality within
    tolerance" (and, given a limit, fits in memory); else packing=False."""
    s = _sort("packing", entries, metric, needs=("tokens_per_s", "peak_vram_gb"))
    if s.undecided:
        return s.undecided
    by = {e["value"]: e for e in s.candidates}
    off, on = by.get(False), by.get(True)
    if on is None:
        return s.verdict("packing", off, "packing = False: packing on did not finish")
    if off is None:
        return s.verdict("packing", on, "packing = True: packing off did not finish")
    speedup = on["tokens_per_s"] / off["tokens_per_s"] - 1
    eval_ok = on[metric] <= off[metric] * (1 + tolerance)
    vram_ok = max_vram_gb is None or on["peak_vram_gb"] <= max_vram_gb
    evidence = (f"{on['tokens_per_s']:,.0f} against {off['tokens_per_s']:,.0f} tokens/s ({speedup:+.0%}), peak VRAM "
                f"{on['peak_vram_gb']:.1f} against {off['peak_vram_gb']:.1f} GB, {label} {_loss(on[metric])} "
                f"against {_loss(off[metric])}")
    if speedup >= min_speedup and eval_ok and vram_ok:
        return s.verdict("packing", on, f"packing = True: {evidence}: at least {min_speedup:.0%} faster with eval "
                                        f"loss within the {tolerance:.0%} tolerance")
    why = ("not materially faster" if speedup < min_speedup else
           f"{label} more than {tolerance:.0%} worse" if not eval_ok else f"over the {max_vram_gb:g} GB limit")
    return s.verdict("packing", off, f"packing = False: packed is {why}: {evidence}")


def lr_range(entries: Sequence[dict], *, axis: str, bound_fraction: float, blowup_factor: float = BLOWUP_FACTOR,
             smoothing: float = SMOOTHING) -> Verdict:
    """learning_rate 1: "Find the LR where loss starts to blow up; take ~10-30% of that as an upper bound." The
    blow-up is the first rate after the smoothed loss's minimum where the loss is not finite or the smoothed loss
    exceeds `blowup_factor` x that minimum. A diverged range test is expected: its curve still counts."""
    rule = "lr_range"
    e = entries[0]
    if e.get("status") not in TERMINAL:
        return Verdict(rule, None, f"undecided: waiting for {e['name']}: no result yet.")
    curve = [(float(lr), float(loss)) for lr, loss in e.get("curve") or ()]
    if len(curve) < 3:
        return Verdict(rule, None, f"undecided: {e['name']} recorded {len(curve)} points of its loss curve; the "
                                   "range test needs its (learning rate, loss) curve.")
    blowup, lowest, avg = None, math.inf, 0.0
    for i, (lr, loss) in enumerate(curve):
        if not math.isfinite(loss):
            blowup = lr
            break
        avg = smoothing * avg + (1 - smoothing) * loss
        smooth = avg / (1 - smoothing ** (i + 1))
        if smooth > blowup_factor * lowest:
            blowup = lr
            break
        lowest = min(lowest, smooth)
    if blowup is None:
        return Verdict(rule, e["name"], f"no blow-up up to {curve[-1][0]:.3g}: the loss stayed below "
                                        f"{blowup_factor:g}x its minimum, so the coarse sweep is not clipped.",
                       details={"blowup_lr": None, "upper_bound": None})
    bound = float(f"{bound_fraction * blowup:.3g}")
    return Verdict(rule, e["name"], f"the loss blew up at learning rate {blowup:.3g} (past {blowup_factor:g}x its "
                                    f"smoothed minimum, or not finite); upper bound {bound:.3g}, {bound_fraction:.0%} "
                                    "of it.", details={"blowup_lr": blowup, "upper_bound": bound})


def confirm(entries: Sequence[dict], *, axis: str, first: Mapping[str, float], origin: Mapping[str, str],
            metric: str = "final_eval_loss", label: str = "eval loss") -> Verdict:
    """The confirmation phase (ours, after the seed's "same seed" comparisons): the top candidates rerun at a second
    seed; the winner has the lowest mean eval loss over both seeds. `first` holds each candidate's first-seed loss
    by its original member's name, `origin` maps a rerun's name to that name."""
    s = _sort("confirm", entries, metric)
    if s.undecided:
        return s.undecided

    def mean(e: Mapping) -> float:
        return (first[origin[e["name"]]] + e[metric]) / 2

    ranked = sorted(s.candidates, key=mean)
    winner = ranked[0]
    first_best = min(origin.values(), key=lambda name: first[name])

    def shown(e: Mapping) -> str:
        return f"{mean(e):.3f} ({_loss(first[origin[e['name']]])} then {_loss(e[metric])})"

    others = "; ".join(f"{origin[e['name']]} {shown(e)}" for e in ranked[1:])
    held = origin[winner["name"]] == first_best
    ties = tuple(e["name"] for e in ranked[1:] if abs(mean(e) - mean(winner)) <= TIE)
    text = (f"{origin[winner['name']]}: the lowest mean {label} over both seeds, {shown(winner)}"
            + (f", against {others}" if others else "")
            + ("; the first seed's winner held" if held else f"; the first seed had picked {first_best}")
            + _tie_note(ties, "by the order listed"))
    return s.verdict("confirm", winner, text, ties=ties, details={"held": held, "origin": origin[winner["name"]],
                                                                  "means": {e["name"]: mean(e) for e in ranked}})


RULES: dict[str, Callable[..., Verdict]] = {
    "lowest_eval": lowest_eval,
    "smallest_within_tolerance": smallest_within_tolerance,
    "dropout_fit": dropout_fit,
    "preferred_unless_better": preferred_unless_better,
    "loftq_score": loftq_score,
    "packing": packing,
    "lr_range": lr_range,
    "confirm": confirm,
}
