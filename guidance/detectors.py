"""Symptom detectors: pure functions over a run's metric series that name what went wrong and which knobs to look at.

No Django here: the worker feeds a `Watcher` the engine's events as they arrive and stores the new `Finding`s it
returns; pages and tests can run `detect(series_from_events(events))` over a finished run and get the same
findings at the same steps, because every detector judges a step only from the points logged up to that step.

Statistics are robust on purpose (running medians, MAD, medians of a few points for a level): per-step loss of a
small batch is noisy, and a single odd batch must not raise a finding.
"""
from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Callable, Iterable, Mapping

from guidance import preflight

IMPACT = "Impact and symptoms"  # the guidance section that describes each parameter's symptoms
BIT8_OPTIMIZERS = frozenset({"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"})
_MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal noise


@dataclass(frozen=True)
class Thresholds:
    """Every number a detector compares against; override any of them with a dict (Django: settings)."""

    # Running statistics
    window: int = 50  # points in a running median (spikes), and in each of the two medians a stall compares
    min_history: int = 5  # points a running median needs before a spike (or an early loss jump) is judged on it
    level_points: int = 5  # points whose median stands for "the loss at" a step (run start, window end, an eval)
    spike_mad: float = 6.0  # a spike must also sit this many robust sigmas (1.4826 x MAD) above the running median

    # Instability
    early_steps: int = 25  # "the first steps": up to this step, or to the end of warmup if that is later
    early_grad_ratio: float = 5.0  # first steps: grad norm at or above this x the median of the points before it
    early_loss_ratio: float = 1.5  # first steps: loss at or above this x the median of the points before it
    loss_spike_ratio: float = 1.5  # after the first steps: loss at or above this x its running median
    grad_spike_ratio: float = 10.0  # after the first steps: grad norm at or above this x its running median

    # Not learning
    flat_steps: int = 20  # flat loss is judged this many steps after warmup ends (or at the last step if sooner)
    flat_min_drop: float = 0.03  # ...and fires if the loss moved less than this share of its starting level
    flat_patience: int = 5  # a run too noisy to tell at flat_steps is judged later, up to flat_patience x flat_steps
    stall_min_drop: float = 0.01  # stalled: the last window's median is less than this share below the median
    #                                 of the window that ended a window earlier
    peer_gap: float = 0.20  # plateau "far above" peers: at least this share above the best loss of comparable runs
    plateau_min_progress: float = 0.5  # ...judged once this share of the run is done (a run is above its end mid-way)
    lr_floor_frac: float = 0.10  # LR "near its floor": at most this share of the peak LR logged so far
    lr_steps_left_frac: float = 0.25  # ...with at least this share of the total steps still to go

    # Overfitting
    overfit_evals: int = 3  # eval loss rose on each of this many evaluations in a row (or has not improved for them)
    overfit_min_rise: float = 0.005  # ...by at least this share of its level in total
    gap_widen: float = 0.05  # eval minus train loss grew by at least this share of the best eval loss since that best

    # Throughput
    throughput_frac: float = 0.5  # tokens/s below this share of the packed estimate, with packing off

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "Thresholds":
        """Defaults overridden by `values`; an unknown key or a value that is not a positive number is refused."""
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown detector threshold(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
        for name, value in values.items():
            kind = int if fields[name].type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise ValueError(f"detector threshold {name} must be {'a whole number' if kind is int else 'a number'}"
                                 f", not {value!r}")
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"detector threshold {name} must be greater than 0, not {value!r}")
            values[name] = kind(value)
        return cls(**values)

    def pick(self, *names: str) -> dict[str, float]:
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class Finding:
    """A symptom seen in a run: what, where, the numbers behind it, and the guidance to read."""

    code: str
    severity: str
    step: int  # the step it was seen at; 0 for something about the config as a whole
    title: str
    message: str
    evidence: dict[str, Any]
    parameters: tuple[str, ...]
    sections: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        """What makes a finding new: repeating symptoms (spikes) are one per step, the rest once per run."""
        return f"{self.code}@{self.step}" if self.code in REPEATING else self.code

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "severity": self.severity, "step": self.step, "title": self.title,
            "message": self.message, "evidence": self.evidence, "parameters": list(self.parameters),
            "sections": [list(pair) for pair in self.sections],
        }


REPEATING = frozenset({"loss_spike", "grad_norm_spike"})


def _finding(code: str, severity: str, step: int, title: str, message: str, evidence: dict[str, Any],
             parameters: Iterable[str]) -> Finding:
    params = tuple(dict.fromkeys(parameters))
    return Finding(code=code, severity=severity, step=int(step), title=title, message=message, evidence=evidence,
                   parameters=params, sections=tuple((p, IMPACT) for p in params))


def _num(value: Any) -> float | None:
    """A number from an event; the engine sends NaN/Inf as the strings "nan", "inf", "-inf"."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ok(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass
class RunSeries:
    """One run's metric series (aligned lists, one entry per logged step) and what is known about the run."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # NaN/Inf kept as float nan/inf
    grad_norm: list[float | None] = field(default_factory=list)
    learning_rate: list[float | None] = field(default_factory=list)
    tokens_per_s: list[float | None] = field(default_factory=list)
    padding_share: list[float | None] = field(default_factory=list)  # of the batches' token slots, so far
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    total_steps: int | None = None
    warmup_steps: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # the dtype in effect (the started event), which "auto" does not tell
    backend: str | None = None  # the backend in effect (the started event), which "auto" does not tell
    warnings: list[dict[str, Any]] = field(default_factory=list)  # the engine's warning events: code, field, message
    failure: dict[str, Any] | None = None  # the failed event: error_class, message, oom, step
    peer_best_loss: float | None = None  # the lowest loss_floor() of comparable runs, if the caller knows them
    packed_tokens_per_s_estimate: float | None = None  # tokens/s a packed run would reach on this hardware
    train_examples: int | None = None  # rows the run trains on (the started event), for the seed's rank buckets

    # Running maximum of the finite learning rates, filled as far as asked: a live run asks for one more point
    # each time, so the peak costs O(1) per point rather than a scan of the whole run.
    _lr_peaks: list[float] = field(default_factory=list, init=False, repr=False, compare=False)

    def lr_peak_before(self, index: int) -> float:
        """The highest finite learning rate logged before `index` (0.0 when none)."""
        peaks = self._lr_peaks
        for v in self.learning_rate[len(peaks):index]:
            last = peaks[-1] if peaks else 0.0
            peaks.append(max(last, v) if _ok(v) else last)
        return peaks[index - 1] if index > 0 else 0.0

    def add(self, event: Mapping[str, Any]) -> bool:
        """Take one engine event; False for one that changes nothing (a step already seen, an unrelated type)."""
        kind = event.get("type")
        if kind == "metrics":
            step, loss = event.get("step"), _num(event.get("loss"))
            if step is None or loss is None or (self.steps and step <= self.steps[-1]):
                return False  # a replayed or re-delivered point is drawn once
            self.steps.append(int(step))
            self.loss.append(loss)
            self.grad_norm.append(_num(event.get("grad_norm")))
            self.learning_rate.append(_num(event.get("learning_rate")))
            self.tokens_per_s.append(_num(event.get("tokens_per_s")))
            self.padding_share.append(_num(event.get("padding_share")))
            return True
        if kind == "eval":
            step, loss = event.get("step"), _num(event.get("eval_loss"))
            if step is None or loss is None or (self.eval_steps and step <= self.eval_steps[-1]):
                return False
            self.eval_steps.append(int(step))
            self.eval_loss.append(loss)
            return True
        if kind == "started":
            derived = event.get("derived") or {}
            self.config = dict(event.get("config") or self.config)
            self.train_examples = event.get("train_examples", self.train_examples)
            self.total_steps = derived.get("total_steps") or self.total_steps
            self.warmup_steps = int(derived.get("warmup_steps") or 0)
            self.dtype = event.get("dtype") or self.dtype
            self.backend = event.get("backend") or self.backend
            return True
        if kind == "warning":
            self.warnings.append({k: event.get(k) for k in ("code", "field", "message")})
            return True
        if kind == "failed":
            self.failure = {k: event.get(k) for k in ("step", "error_class", "message", "oom")}
            return True
        return False


def loss_floor(losses: Iterable[float | None], thresholds: Thresholds | None = None) -> float | None:
    """The lowest running median of a run's training loss: its best level, not its luckiest batch. Pass the
    minimum of this over comparable runs as `peer_best_loss`."""
    w = (thresholds or Thresholds()).window
    values = [v for v in losses if _ok(v)]
    if not values:
        return None
    if len(values) <= w:
        return median(values)
    return min(median(values[i - w:i]) for i in range(w, len(values) + 1))


def series_from_events(events: Iterable[Mapping[str, Any]], *, peer_best_loss: float | None = None,
                       packed_tokens_per_s_estimate: float | None = None,
                       config: Mapping[str, Any] | None = None) -> RunSeries:
    """A series from an event stream; `config` is the run's config until a started event brings the resolved one."""
    series = RunSeries(peer_best_loss=peer_best_loss, packed_tokens_per_s_estimate=packed_tokens_per_s_estimate,
                       config=dict(config or {}))
    for event in events:
        series.add(event)
    return series


# ---- statistics ------------------------------------------------------------------------------------------------

def _history(values: list[float | None], i: int, window: int) -> list[float]:
    return [v for v in values[max(0, i - window):i] if _ok(v)]


def _robust_sigma(values: list[float], centre: float) -> float:
    return _MAD_TO_SIGMA * median(abs(v - centre) for v in values)


def _jump(values: list[float | None], i: int, ratio: float, th: Thresholds, need: int,
          log: bool = False) -> dict[str, Any] | None:
    """Evidence if values[i] jumps to `ratio` x the running median of the points before it and, with enough
    history, `spike_mad` robust sigmas above it (in log space for a positive, multiplicative-noise series such as
    the grad norm); None otherwise."""
    value = values[i]
    hist = _history(values, i, th.window)
    if not _ok(value) or len(hist) < need:
        return None
    centre = median(hist)
    if centre <= 0 or value < ratio * centre:
        return None  # (a ratio to zero means nothing: a frozen run has its own finding)
    sigma = None
    if len(hist) >= th.min_history:
        if log:
            if min(hist) <= 0:
                return None
            logs = [math.log(v) for v in hist]
            sigma = _robust_sigma(logs, median(logs))
            if math.log(value) < median(logs) + th.spike_mad * sigma:
                return None
        else:
            sigma = _robust_sigma(hist, centre)
            if value < centre + th.spike_mad * sigma:
                return None
    return {"value": value, "running_median": centre, "ratio": value / centre, "recent_min": min(hist),
            "robust_sigma": sigma, "sigma_in_log_space": log, "history_points": len(hist)}


def _level(values: list[float], lo: int, hi: int) -> float | None:
    """Median of the finite values in values[lo:hi]."""
    pts = [v for v in values[max(0, lo):hi] if _ok(v)]
    return median(pts) if pts else None


def _early_end(s: RunSeries, th: Thresholds) -> int:
    return max(th.early_steps, s.warmup_steps)


def _stall(s: RunSeries, i: int, th: Thresholds) -> dict[str, Any] | None:
    """Evidence that progress stalled at index i: the median of the last `window` points is less than
    stall_min_drop below the median of the `window` points that ended `window` points earlier. (The gap between
    the two doubles the drop a slowly improving run shows, while the noise of two medians stays the same.)"""
    w = th.window
    if i + 1 < 3 * w or s.steps[i - 3 * w + 1] <= s.warmup_steps:
        return None
    before, now = _level(s.loss, i - 3 * w + 1, i - 2 * w + 1), _level(s.loss, i - w + 1, i + 1)
    if before is None or now is None or before <= 0:
        return None
    drop = (before - now) / before
    if drop >= th.stall_min_drop:
        return None
    return {"window_steps": [s.steps[i - 3 * w + 1], s.steps[i - 2 * w], s.steps[i - w + 1], s.steps[i]],
            "median_before": before, "median_now": now, "relative_drop": drop}


def _fp16(s: RunSeries) -> bool:
    return (s.dtype or s.config.get("dtype")) == "float16"


# ---- causes, ranked against the seed's ranges -----------------------------------------------------------------

@dataclass(frozen=True)
class Cause:
    """A knob that would explain a symptom: `direction` is the side of the seed's range ("up": set too high, "down":
    too low) that explains it, and `advice` moves the knob back the other way."""

    parameter: str
    direction: str
    advice: str
    only_when_out: bool = False  # a cause only when the config sits outside the range on that side


def _ranking_config(s: RunSeries) -> dict[str, Any]:
    """The run's config, with what the series itself knows where the config is silent (the logged peak learning
    rate, the resolved warmup)."""
    cfg = dict(s.config)
    if "learning_rate" not in cfg:
        peak = max((v for v in s.learning_rate if _ok(v)), default=0.0)
        if peak > 0:
            cfg["learning_rate"] = peak
    if "warmup_steps" not in cfg and s.warmup_steps:
        cfg["warmup_steps"] = s.warmup_steps
    return cfg


def _ranked(s: RunSeries, causes: Iterable[Cause]) -> tuple[list[Cause], dict[str, Any]]:
    """The causes that apply, the furthest outside the seed's range (on the side that explains the symptom) first,
    ties in the order given; a cause whose advice would push its knob out of the range, or further out, is dropped.
    Also the evidence: the config values each named knob was judged on, and its distance (doublings past the edge
    of the seed's range; guidance.preflight.distance). A knob already at its range's edge on the side the advice
    would move it is dropped too: one more step that way leaves the range."""
    cfg = _ranking_config(s)
    facts = {"rows": s.train_examples, "total": s.total_steps}
    kept: list[tuple[float, int, Cause]] = []
    for order, cause in enumerate(causes):
        back = "down" if cause.direction == "up" else "up"
        if preflight.at_edge_or_past(cfg, cause.parameter, back, **facts):
            continue  # the advice would move it out of range, or further out
        d = preflight.distance(cfg, cause.parameter, cause.direction, **facts)
        if cause.only_when_out and d == 0:
            continue
        kept.append((d, order, cause))
    kept.sort(key=lambda t: (-t[0], t[1]))
    used: dict[str, Any] = {}
    for _, _, cause in kept:
        m = preflight.measure(cfg, cause.parameter, **facts)
        if m is not None:
            used.update(m.used)
        elif cause.parameter in cfg:
            used[cause.parameter] = cfg[cause.parameter]
    distances = {c.parameter: (round(d, 3) if math.isfinite(d) else None) for d, _, c in kept}
    return [c for _, _, c in kept], {"config": used, "distance_from_seed": distances}


def _advice(causes: Iterable[Cause], *, before: Iterable[str] = (), after: Iterable[str] = (),
            joiner: str = "or") -> str:
    """The causes' advice in their order as one clause: 'a', 'a or b', 'a, b, or c' (`before` and `after` are
    advice that names no ranked knob)."""
    texts = list(dict.fromkeys([*before, *(c.advice for c in causes), *after]))
    if len(texts) <= 2:
        return f" {joiner} ".join(texts)
    return ", ".join(texts[:-1]) + f", {joiner} " + texts[-1]


def _overshoot(s: RunSeries) -> bool:
    """The learning rate sits far above the seed's range: a stalled loss is overshoot, not too small a step."""
    return preflight.far_outside(_ranking_config(s), "learning_rate", "up")


def _underfit_causes(s: RunSeries, grad_evidence: str) -> list[Cause]:
    """Why a loss stops moving: too small an update (learning rate, gain, heavy decay or dropout), unless the
    learning rate is far too high, where the updates overshoot into a flat region."""
    if _overshoot(s):
        lr = _ranking_config(s)["learning_rate"]
        return [Cause("learning_rate", "up", f"lower the learning rate: at {lr:.3g}, "
                      f"{lr / preflight.LORA_LEARNING_RATE:,.0f}x the recommended "
                      f"{preflight.LORA_LEARNING_RATE:g}, the updates overshoot into a flat region{grad_evidence}"),
                Cause("lora_alpha", "up", "lower lora_alpha relative to r", only_when_out=True)]
    return [Cause("learning_rate", "down", "raise the learning rate"),
            Cause("lora_alpha", "down", "raise lora_alpha relative to r"),
            Cause("weight_decay", "up", "lower a heavy weight decay"),
            Cause("lora_dropout", "up", "lower lora_dropout", only_when_out=True)]


def _grad_fall(s: RunSeries, i: int, th: Thresholds) -> tuple[str, dict[str, Any]]:
    """How the gradient norm went from the first points to the last ones up to index i (the overshoot's evidence)."""
    grads = [v for v in s.grad_norm[:i + 1] if _ok(v)]
    if len(grads) < 2 * th.level_points:
        return "", {}
    first, last = median(grads[:th.level_points]), median(grads[-th.level_points:])
    text = f", where the gradient norm collapses (median {first:.3g} at the start, {last:.3g} now)" if last < first \
        else ""
    return text, {"grad_norm_start": first, "grad_norm_now": last}


# ---- detectors -------------------------------------------------------------------------------------------------
# Each takes (series, thresholds, start, eval_start) and judges only metric points from index `start` and eval
# points from `eval_start` on, using whatever came before as history: a Watcher passes the new points only.

Detector = Callable[[RunSeries, Thresholds, int, int], list[Finding]]
_DETECTORS: list[tuple[Detector, frozenset[str]]] = []


def _detector(*codes: str) -> Callable[[Detector], Detector]:
    def register(fn: Detector) -> Detector:
        _DETECTORS.append((fn, frozenset(codes)))
        return fn
    return register


@_detector("loss_not_finite")
def detect_loss_not_finite(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """Loss became NaN or Inf: the weights are ruined from here on (too high LR, no warmup, fp16 overflow)."""
    for i in range(start, len(s.loss)):
        if not math.isfinite(s.loss[i]):
            step, what = s.steps[i], "NaN" if math.isnan(s.loss[i]) else "Inf"
            last_ok = next((s.loss[k] for k in range(i - 1, -1, -1) if math.isfinite(s.loss[k])), None)
            phase = "during warmup" if step <= s.warmup_steps else "after warmup"
            causes = [Cause("learning_rate", "up", "lower the learning rate"),
                      Cause("warmup_steps", "down", "add or lengthen warmup")]
            hint = ""
            if _fp16(s):
                hint = (" The run trains in float16, whose range overflows easily: bfloat16 avoids that where the "
                        "GPU has it.")
            rslora = bool(s.config.get("use_rslora"))
            if rslora:
                causes.append(Cause("lora_alpha", "up", "lower lora_alpha"))
                hint += " rsLoRA is on: an alpha tuned for standard LoRA gives a much larger gain (alpha/sqrt(r))."
            ranked, used = _ranked(s, causes)
            advice = _advice(ranked, after=["check the precision"], joiner="and")
            params = [c.parameter for c in ranked] + ["dtype"] + (["use_rslora", "lora_alpha"] if rslora else [])
            return [_finding(
                "loss_not_finite", "error", step, f"Loss became {what} at step {step}",
                f"The training loss is {what} at step {step} ({phase}; last finite loss {last_ok}). "
                f"{advice[:1].upper()}{advice[1:]}.{hint}",
                {"steps": [step], "values": [str(s.loss[i])], "last_finite_loss": last_ok,
                 "warmup_steps": s.warmup_steps, "dtype": s.dtype, **used, "thresholds": {}},
                params)]
    return []


@_detector("early_instability")
def detect_early_instability(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """Loss or grad norm jumps in the first steps: the update is too big before the adapter settles (warmup, LR)."""
    end = _early_end(s, th)
    for i in range(max(start, 1), len(s.steps)):
        if s.steps[i] > end:
            break
        # The grad norm is judged from the second step: LoRA starts from B = 0, so its first steps are smooth. A
        # single batch's loss is noisier: it needs min_history points before it.
        for name, values, ratio_name, need in (("grad_norm", s.grad_norm, "early_grad_ratio", 1),
                                               ("loss", s.loss, "early_loss_ratio", th.min_history)):
            jump = _jump(values, i, getattr(th, ratio_name), th, need=need, log=name == "grad_norm")
            if jump is None:
                continue
            step = s.steps[i]
            hint = " float16 overflows easily here; bfloat16 avoids it where the GPU has it." if _fp16(s) else ""
            label = "Grad norm" if name == "grad_norm" else "Loss"
            ranked, used = _ranked(s, [Cause("warmup_steps", "down", "lengthen warmup"),
                                       Cause("learning_rate", "up", "lower the learning rate")])
            return [_finding(
                "early_instability", "warning", step, f"Unstable start: {label.lower()} jumped at step {step}",
                f"{label} jumped to {jump['value']:.4g} at step {step}, {jump['ratio']:.1f}x the median of the steps "
                f"before it ({jump['running_median']:.4g}); the first {end} steps should be smooth. Warmup is "
                f"{s.warmup_steps} steps: {_advice(ranked) or 'check the precision'}.{hint}",
                {"signal": name, "steps": [step], "values": [jump["value"]], **jump, "early_end_step": end,
                 "warmup_steps": s.warmup_steps, **used,
                 "thresholds": th.pick(ratio_name, "early_steps", "window", "min_history", "spike_mad")},
                [c.parameter for c in ranked] + ["dtype"])]
    return []


def _spikes(s: RunSeries, th: Thresholds, start: int, values: list[float | None], ratio_name: str, log: bool,
            build: Callable[[int, dict[str, Any]], Finding]) -> list[Finding]:
    """One finding per burst: a spike after the first steps with no spike in the `window` points before it."""
    end, ratio = _early_end(s, th), getattr(th, ratio_name)
    cache: dict[int, dict[str, Any] | None] = {}

    def spike(k: int) -> dict[str, Any] | None:
        if k not in cache:
            cache[k] = _jump(values, k, ratio, th, need=th.min_history, log=log) if s.steps[k] > end else None
        return cache[k]

    found = []
    for i in range(start, len(s.steps)):
        jump = spike(i)
        if jump is not None and not any(spike(k) for k in range(max(0, i - th.window), i)):
            found.append(build(i, jump))
    return found


@_detector("loss_spike")
def detect_loss_spike(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """Loss jumps far above its running median after warmup: an overshoot (LR or adapter gain too high)."""
    def build(i: int, jump: dict[str, Any]) -> Finding:
        step = s.steps[i]
        ranked, used = _ranked(s, [
            Cause("learning_rate", "up", "lower the learning rate"),
            Cause("gradient_accumulation_steps", "down",
                  "smooth them with a larger effective batch (more gradient accumulation)"),
            Cause("lora_alpha", "up", "lower lora_alpha relative to r")])
        return _finding(
            "loss_spike", "warning", step, f"Loss spike at step {step}",
            f"Loss jumped to {jump['value']:.4g} at step {step}, {jump['ratio']:.1f}x its running median "
            f"({jump['running_median']:.4g}; recent low {jump['recent_min']:.4g}). Sudden jumps after warmup mean "
            f"the updates overshoot: {_advice(ranked) or 'look at the data around this step'}.",
            {"steps": [step], "values": [jump["value"]], **jump, **used,
             "thresholds": th.pick("loss_spike_ratio", "spike_mad", "window", "min_history", "early_steps")},
            [c.parameter for c in ranked])
    return _spikes(s, th, start, s.loss, "loss_spike_ratio", False, build)


@_detector("grad_norm_spike")
def detect_grad_norm_spike(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """Grad norm jumps far above its running median: an erratic update (LR too high, effective batch too small)."""
    def build(i: int, jump: dict[str, Any]) -> Finding:
        step = s.steps[i]
        ranked, used = _ranked(s, [
            Cause("learning_rate", "up", "lower the learning rate"),
            Cause("gradient_accumulation_steps", "down", "raise the effective batch (more gradient accumulation)"),
            Cause("warmup_steps", "down", "lengthen warmup")])
        return _finding(
            "grad_norm_spike", "warning", step, f"Grad-norm spike at step {step}",
            f"The gradient norm jumped to {jump['value']:.4g} at step {step}, {jump['ratio']:.1f}x its running "
            f"median ({jump['running_median']:.4g}). Erratic gradient norms come from a learning rate that is too "
            f"high for the schedule or an effective batch that is too small: {_advice(ranked) or 'look at the data'}.",
            {"steps": [step], "values": [jump["value"]], **jump, **used,
             "thresholds": th.pick("grad_spike_ratio", "spike_mad", "window", "min_history", "early_steps")},
            [c.parameter for c in ranked])
    return _spikes(s, th, start, s.grad_norm, "grad_spike_ratio", True, build)


@_detector("flat_loss")
def detect_flat_loss(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """Loss hardly moved from the start: the adapter is not learning (LR too low or 0, alpha too low, no grads)."""
    due = s.warmup_steps + th.flat_steps
    if s.total_steps:
        due = min(due, s.total_steps)
    # Judged at the first step from `due` on where the change is measured precisely enough: a noisy run is judged
    # later, on more points, but no later than flat_patience x flat_steps after warmup.
    first_check = bisect_left(s.steps, due)
    last_check = bisect_right(s.steps, due + (th.flat_patience - 1) * th.flat_steps) - 1
    for i in range(max(first_check, start), min(last_check, len(s.steps) - 1) + 1):
        change = _loss_change(s, i, th)
        if change is None:
            continue
        lrs = [v for v in s.learning_rate[:i + 1] if _ok(v)]
        lr_zero = bool(lrs) and max(lrs) == 0
        if not lr_zero and change["precision"] >= th.flat_min_drop:
            continue  # too noisy to tell yet
        if lr_zero or abs(change["relative_drop"]) < th.flat_min_drop:
            return [_flat_finding(s, i, th, change, lrs, lr_zero)]
        return []  # it moved
    return []


def _loss_change(s: RunSeries, i: int, th: Thresholds) -> dict[str, Any] | None:
    """How far the loss fell from the start to index i (median of the first third of the points against the last
    third), with the standard error of that share from the step-to-step noise."""
    pts = [v for v in s.loss[:i + 1] if _ok(v)]
    k = max(th.level_points, len(pts) // 3)
    if len(pts) < 2 * k:
        return None
    first, last = median(pts[:k]), median(pts[-k:])
    if first <= 0:
        return None
    diffs = [b - a for a, b in zip(pts, pts[1:])]
    noise = _robust_sigma(diffs, median(diffs)) / math.sqrt(2) / first  # differences remove the trend
    return {"first": first, "last": last, "relative_drop": (first - last) / first, "points_per_level": k,
            "noise": noise, "precision": 1.2533 * noise * math.sqrt(2 / k)}


def _flat_finding(s: RunSeries, i: int, th: Thresholds, change: dict[str, Any], lrs: list[float],
                  lr_zero: bool) -> Finding:
    grads = [v for v in s.grad_norm[:i + 1] if _ok(v)]
    grad_median = median(grads) if grads else None
    step, first, last, drop = s.steps[i], change["first"], change["last"], change["relative_drop"]
    grad_text, grad_fall = _grad_fall(s, i, th)
    if lr_zero:
        why = "The learning rate was 0 at every logged step, so nothing was updated: check the schedule and warmup."
        params = ["learning_rate", "lr_scheduler_type", "warmup_steps"]
        used = {}
    elif grad_median == 0:
        why = ("The gradient norm is 0: no gradient reaches the adapter. Check that the targeted modules exist and "
               "train, and whether an earlier blow-up left the adapter dead (see the findings before this one).")
        params = ["learning_rate", "lora_alpha"]
        used = {}
    else:
        ranked, used = _ranked(s, _underfit_causes(s, grad_text))
        params = [c.parameter for c in ranked]
        advice = _advice(ranked)
        why = (f"The highest learning rate logged was {max(lrs):.3g}. " if lrs else "") + (
            "A healthy run falls clearly in its first steps after warmup" + (
                f". {advice[:1].upper()}{advice[1:]}." if _overshoot(s) else f": {advice}."))
    return _finding(
        "flat_loss", "warning", step, "Loss is flat: the adapter is not learning",
        f"Loss moved {-drop:+.1%} from the start ({first:.4g}) to step {step} ({last:.4g}). {why}",
        {"steps": [s.steps[0], step], "values": [first, last], **change,
         "learning_rate_max": max(lrs) if lrs else None, "learning_rate_all_zero": lr_zero,
         "grad_norm_median": grad_median, **grad_fall, "warmup_steps": s.warmup_steps, **used,
         "thresholds": th.pick("flat_steps", "flat_min_drop", "flat_patience", "level_points")},
        params)


@_detector("plateau_above_peers")
def detect_plateau_above_peers(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """Loss stopped improving well above what comparable runs reached: underfitting (LR, r, alpha, decay)."""
    peer = s.peer_best_loss
    if not _ok(peer) or peer <= 0:
        return []
    for i in range(start, len(s.steps)):
        if s.total_steps and s.steps[i] < th.plateau_min_progress * s.total_steps:
            continue
        stall = _stall(s, i, th)
        if stall is None or stall["median_now"] < peer * (1 + th.peer_gap):
            continue
        step, now = s.steps[i], stall["median_now"]
        grad_text, grad_fall = _grad_fall(s, i, th)
        causes = _underfit_causes(s, grad_text)
        if not _overshoot(s):
            causes.insert(1, Cause("r", "down", "raise r"))
        ranked, used = _ranked(s, causes)
        what = ("The updates overshoot" if _overshoot(s) else
                "This adapter underfits") + f": {_advice(ranked)} lets it reach what the others did."
        return [_finding(
            "plateau_above_peers", "warning", step, f"Plateau {now / peer - 1:.0%} above comparable runs",
            f"Loss has stopped improving at {now:.4g} (step {step}), {now / peer - 1:.0%} above the best loss of "
            f"comparable runs ({peer:.4g}). {what}",
            {"steps": [step], "values": [now], "peer_best_loss": peer, **stall, **grad_fall, **used,
             "thresholds": th.pick("peer_gap", "plateau_min_progress", "stall_min_drop", "window")},
            [c.parameter for c in ranked])]
    return []


def _train_level_at(s: RunSeries, step: int, th: Thresholds) -> float | None:
    hi = bisect_right(s.steps, step)
    return _level(s.loss, hi - th.level_points, hi) if hi else None


@_detector("overfitting")
def detect_overfitting(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """Eval loss rises (or stalls with a widening gap) while train loss falls: memorising the training set."""
    k = th.overfit_evals
    ev = s.eval_loss
    for j in range(max(eval_start, k), len(ev)):
        step = s.eval_steps[j]
        train_now = _train_level_at(s, step, th)
        if train_now is None:
            continue
        trigger = None
        base = j - k
        rising = all(ev[m] > ev[m - 1] for m in range(base + 1, j + 1))
        train_then = _train_level_at(s, s.eval_steps[base], th)
        if (rising and ev[base] > 0 and (ev[j] - ev[base]) / ev[base] >= th.overfit_min_rise
                and train_then is not None and train_now < train_then):
            trigger = "eval_rising"
        best = min(range(j + 1), key=lambda m: ev[m])
        train_best = _train_level_at(s, s.eval_steps[best], th)
        gap_best = ev[best] - train_best if train_best is not None else None
        gap_now = ev[j] - train_now
        widened = gap_best is not None and ev[best] > 0 and (gap_now - gap_best) / ev[best] >= th.gap_widen
        if trigger is None and j - best >= k and widened and train_now < train_best:
            trigger = "gap_widening"
        if trigger is None:
            continue
        first = base if trigger == "eval_rising" else best
        ranked, used = _ranked(s, [Cause("lora_dropout", "down", "add lora_dropout"),
                                   Cause("weight_decay", "down", "add weight decay"),
                                   Cause("r", "up", "lower r"),
                                   Cause("lora_alpha", "up", "lower lora_alpha relative to r", only_when_out=True)])
        params = [c.parameter for c in ranked]
        if s.config.get("bias", "none") != "none":
            params.append("bias")
        gap_text = f" from {gap_best:.4g} at the best eval" if gap_best is not None else ""
        what = (f"Eval loss rose at each of the last {k} evaluations" if trigger == "eval_rising" else
                f"Eval loss has not improved on its best ({ev[best]:.4g} at step {s.eval_steps[best]}) for {j - best} "
                "evaluations")
        return [_finding(
            "overfitting", "warning", step, f"Overfitting from step {s.eval_steps[first]}",
            f"{what} (now {ev[j]:.4g}) while the training loss kept falling (to {train_now:.4g}); the train-eval gap "
            f"went{gap_text} to {gap_now:.4g}. The adapter is memorising the training "
            f"set: {_advice(ranked, before=['train fewer epochs (keep the best checkpoint)'])}.",
            {"trigger": trigger, "steps": s.eval_steps[first:j + 1], "values": ev[first:j + 1],
             "best_eval_step": s.eval_steps[best], "best_eval_loss": ev[best], "gap_at_best": gap_best,
             "gap_now": gap_now, "train_loss_now": train_now, **used,
             "thresholds": th.pick("overfit_evals", "overfit_min_rise", "gap_widen", "level_points")},
            params)]
    return []


@_detector("lr_decayed_early")
def detect_lr_decayed_early(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """LR already near its floor with much of the run left, and progress stalled: the schedule ran out of LR."""
    total = s.total_steps
    if not total:
        return []
    peak = s.lr_peak_before(start)
    for i in range(start, len(s.steps)):
        if _ok(s.learning_rate[i]):
            peak = max(peak, s.learning_rate[i])
        if peak <= 0:
            continue
        step = s.steps[i]
        left = total - step
        if left < th.lr_steps_left_frac * total:
            break
        recent = s.learning_rate[max(0, i - th.window + 1):i + 1]
        if len(recent) < th.window or not all(_ok(v) and v <= th.lr_floor_frac * peak for v in recent):
            continue
        stall = _stall(s, i, th)
        if stall is None:
            continue
        ranked, used = _ranked(s, [Cause("lr_scheduler_type", "down", "pick a schedule that fits the run length"),
                                   Cause("warmup_steps", "up", "check that warmup is not eating the run")])
        return [_finding(
            "lr_decayed_early", "warning", step, "Learning rate ran out with much of the run left",
            f"At step {step} of {total} the learning rate is {s.learning_rate[i]:.3g}, under "
            f"{th.lr_floor_frac:.0%} of its peak ({peak:.3g}), and the loss has stopped improving (median "
            f"{stall['median_before']:.4g} at steps {stall['window_steps'][0]}-{stall['window_steps'][1]}, "
            f"{stall['median_now']:.4g} at steps {stall['window_steps'][2]}-{step}) with {left} steps to go. Pick a "
            "schedule that fits the run length (linear or cosine over all steps, or one with a floor such as "
            "cosine_with_min_lr), and check that warmup is not eating the run.",
            {"steps": [step], "values": [s.learning_rate[i]], "peak_learning_rate": peak, "steps_left": left,
             "total_steps": total, **stall, **used,
             "thresholds": th.pick("lr_floor_frac", "lr_steps_left_frac", "stall_min_drop", "window")},
            [c.parameter for c in ranked])]
    return []


@_detector("throughput_below_packed")
def detect_throughput_below_packed(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """Tokens/s far below what packing would reach: short examples padded to the batch's longest (packing off).

    The packed estimate is the caller's measured one (a packed run on the same hardware) if given; otherwise the
    run's own tokens/s scaled by its padding: packed, every token slot holds a real token, at the same time per slot
    (attention's cost per slot grows with the sequence, so this is an optimistic estimate)."""
    if s.config.get("packing"):
        return []
    measured = s.packed_tokens_per_s_estimate if _ok(s.packed_tokens_per_s_estimate) else None
    for i in range(max(start, 1), len(s.steps)):
        # The first point carries the start-up time: leave it out.
        lo = max(1, i - th.window + 1)
        rates = [v for v in s.tokens_per_s[lo:i + 1] if _ok(v)]
        if len(rates) < th.min_history:
            continue
        rate = median(rates)
        share = None
        if measured is not None and measured > 0:
            estimate = measured
        else:
            shares = [v for v in s.padding_share[lo:i + 1] if _ok(v) and 0 <= v < 1]
            if len(shares) < th.min_history:
                continue
            share = median(shares)
            estimate = rate / (1 - share)
        if rate >= th.throughput_frac * estimate:
            continue
        step = s.steps[i]
        why = (f"{share:.0%} of each batch's token slots are padding (a batch pads to its longest example), so "
               if share is not None else "")
        return [_finding(
            "throughput_below_packed", "info", step, f"Throughput {rate / estimate:.0%} of the packed estimate",
            f"The run processes {rate:,.0f} tokens/s (median of the last {len(rates)} points); {why}"
            f"a packed run would reach about {estimate:,.0f} tokens/s. With short examples most of each batch is "
            "padding: turn packing on.",
            {"steps": [step], "values": [rate], "estimate": estimate, "ratio": rate / estimate,
             "estimate_from": "padding" if share is not None else "measured packed run", "padding_share": share,
             "thresholds": th.pick("throughput_frac", "window", "min_history")},
            ["packing"])]
    return []


@_detector("out_of_memory")
def detect_out_of_memory(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """The run died out of memory: shrink the micro-batch (keep the effective batch), 4-bit, 8-bit optimizer."""
    f = s.failure
    if not f:
        return []
    text = f"{f.get('error_class') or ''} {f.get('message') or ''}".lower()
    if not (f.get("oom") or "outofmemory" in text or "out of memory" in text):
        return []
    cfg = s.config
    micro, accum = cfg.get("per_device_train_batch_size"), cfg.get("gradient_accumulation_steps")
    tips, params = [], ["gradient_accumulation_steps"]
    if isinstance(micro, int) and isinstance(accum, int) and micro > 1:
        smaller = micro // 2 if micro % 2 == 0 else 1
        tips.append(f"set per_device_train_batch_size to {smaller} and gradient_accumulation_steps to "
                    f"{micro * accum // smaller} (same effective batch, {micro * accum})")
    else:
        tips.append("use a smaller micro-batch with more gradient accumulation steps, or a shorter max_length")
    if not cfg.get("load_in_4bit"):
        params.append("load_in_4bit")
        tips.append("load the model in 4-bit")
    if cfg.get("optim") not in BIT8_OPTIMIZERS:
        params.append("optim")
        tips.append("use an 8-bit or paged optimizer (adamw_8bit, paged_adamw_8bit)")
    if cfg.get("gradient_checkpointing") is False:
        tips.append("turn gradient_checkpointing on (only each layer's input is kept; the rest is recomputed)")
    if s.backend == "unsloth" and not cfg.get("tiled_mlp"):
        tips.append("turn tiled_mlp on (Unsloth's tiled MLP; on a 1B Llama with 8 packed rows of 2,048 tokens: 11% "
                    "less peak memory for 0-20% of the speed with tiled_mlp_target_gb 0.5, 14% less for 31-44% "
                    "without a target)")
    if cfg.get("packing", not cfg):  # an unknown config may have had packing on
        params.append("packing")
        tips.append("turn packing off (packed rows always fill max_length)")
    step = int(f.get("step") or 0)
    return [_finding(
        "out_of_memory", "error", step, f"Out of memory at step {step}",
        f"The run ran out of GPU memory at step {step}. To fit: {'; '.join(tips)}.",
        {"steps": [step], "values": [], "error_class": f.get("error_class"), "error": f.get("message"),
         "per_device_train_batch_size": micro, "gradient_accumulation_steps": accum, "thresholds": {}},
        params)]


# The engine's warnings about settings that did not do what they say, and the parameter each is about.
SETTING_WARNINGS = {
    "bias_no_effect": ("bias", "warning", "bias had no effect"),
    "loftq_not_applied": ("loftq_config", "warning", "LoftQ was not applied"),
    "packing_no_gain": ("packing", "info", "Packing gains little here"),
    "packed_attention_cost": ("packing", "info", "Packed micro-batch attended as one sequence"),
    "unsloth_attention_per_segment": ("packing", "warning", "Unsloth attends per segment on this torch"),
}


@_detector(*SETTING_WARNINGS)
def detect_setting_no_effect(s: RunSeries, th: Thresholds, start: int, eval_start: int) -> list[Finding]:
    """A setting did not take effect (engine warning): results that vary it compare identical runs."""
    found = []
    for w in s.warnings:
        code = w.get("code")
        if code not in SETTING_WARNINGS:
            continue
        param, severity, title = SETTING_WARNINGS[code]
        found.append(_finding(
            code, severity, 0, title, str(w.get("message") or title),
            {"steps": [], "values": [], "warning": code, "field": w.get("field"), "thresholds": {}}, [param]))
    return found


def detect(series: RunSeries, thresholds: Thresholds | None = None) -> list[Finding]:
    """Every finding over a whole series, in step order."""
    th = thresholds or Thresholds()
    found = [f for fn, _ in _DETECTORS for f in fn(series, th, 0, 0)]
    return sorted(found, key=lambda f: (f.step, f.code))


class Watcher:
    """Watches a live run: feed it events as they arrive; each call returns only findings not returned before."""

    def __init__(self, thresholds: Thresholds | Mapping[str, Any] | None = None, *,
                 peer_best_loss: float | None = None, packed_tokens_per_s_estimate: float | None = None,
                 config: Mapping[str, Any] | None = None):
        # `config`: the run's config, for a run that fails before its started event brings the resolved one.
        self.thresholds = thresholds if isinstance(thresholds, Thresholds) else Thresholds.from_dict(thresholds)
        self.series = RunSeries(peer_best_loss=peer_best_loss,
                                packed_tokens_per_s_estimate=packed_tokens_per_s_estimate, config=dict(config or {}))
        self.findings: list[Finding] = []
        self._keys: set[str] = set()
        self._codes: set[str] = set()
        self._done, self._eval_done = 0, 0

    def feed(self, event: Mapping[str, Any]) -> list[Finding]:
        if not self.series.add(event):
            return []
        return self._run()

    def feed_many(self, events: Iterable[Mapping[str, Any]]) -> list[Finding]:
        changed = [self.series.add(e) for e in events]
        return self._run() if any(changed) else []

    def _run(self) -> list[Finding]:
        s = self.series
        new = []
        for fn, codes in _DETECTORS:
            if codes <= self._codes and not codes & REPEATING:
                continue  # once-per-run symptoms already reported: nothing left to look for
            for f in fn(s, self.thresholds, self._done, self._eval_done):
                if f.key not in self._keys:
                    self._keys.add(f.key)
                    self._codes.add(f.code)
                    new.append(f)
        self._done, self._eval_done = len(s.steps), len(s.eval_steps)
        self.findings.extend(new)
        return new
