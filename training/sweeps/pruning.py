"""Successive halving of a sweep's members at their eval steps, with Optuna's pruner (its study in PostgreSQL).

With Sweep.prune on, every member of a phase is a trial of the phase's study (studies.study_name). On the GPU
worker, MemberPruner reports each eval loss to the member's trial and asks Optuna's SuccessiveHalvingPruner whether
to stop it: its rungs are at the first eval step times 3^k, and at a rung a member goes on only if its eval loss is
in the best third (1/reduction_factor) of the members that reached that rung so far. Hyperband would split a
phase's few members (3 to 8, at one fixed step budget) into brackets too small to compare, so successive halving it
is. The sweep's advance tells each ended member's trial its end (tell_ended). A member is found by its index in the
phase (the trial's user attr), so a resumed member, its run repointed, keeps its trial.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from training.models import Run, SweepMember
from training.sweeps import rules, studies

log = logging.getLogger(__name__)

REDUCTION_FACTOR = 3  # keep the best third at each rung
MEMBER = "member_index"  # the trial's user attr naming its member (SweepMember.index in its phase)
NOT_PRUNED = frozenset({"confirm"})  # phases whose members must all finish: the confirmation reruns
FRACTIONS = {2: "half", 3: "third", 4: "quarter"}
# Optuna's SuccessiveHalvingPruner stores the value a trial had at rung k as this system attr: the evidence quotes
# exactly what it compared.
RUNG_ATTR = "completed_rung_{}"


def pruner(first_eval_step: int, reduction_factor: int = REDUCTION_FACTOR) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_eval_step, reduction_factor=reduction_factor,
                                                  min_early_stopping_rate=0)


# ---- pure ---------------------------------------------------------------------------------------------------------

def evidence(step: int, value: float, others: Sequence[float], reduction_factor: int = REDUCTION_FACTOR) -> str:
    """The rung's evidence for a pruned member: its eval loss and the others' at the rung, best first."""
    if not math.isfinite(value):
        return f"pruned at step {step}: eval loss not finite ({value})"
    n = len(others) + 1
    shown = ", ".join(f"{v:.3f}" for v in sorted(others)[:5]) + (", ..." if len(others) > 5 else "")
    if n < reduction_factor:  # Optuna's rule before a third exists: only the best so far goes on
        why = f"not the best of the {n} members that reached step {step}"
    else:
        fraction = FRACTIONS.get(reduction_factor, f"1/{reduction_factor}")
        why = f"not in the best {fraction} of the {n} members that reached step {step}"
    return f"pruned at step {step}: eval loss {value:.3f}, {why} (best {shown})"


def end_state(result: Mapping[str, Any]) -> tuple[TrialState, float | None]:
    """What a member's trial is told when the member ended (rules.TERMINAL). A diverged member is told pruned, not
    failed: TPE then learns that its region is bad (it ignores failed trials)."""
    status, loss = result.get("status"), result.get("final_eval_loss")
    if status == "succeeded" and loss is not None and math.isfinite(loss):
        return TrialState.COMPLETE, float(loss)
    if status in ("pruned", "diverged"):
        return TrialState.PRUNED, None
    return TrialState.FAIL, None


# ---- over a study (any storage) -----------------------------------------------------------------------------------

def trial_of(trials: Iterable[FrozenTrial], index: int) -> FrozenTrial | None:
    """The member's latest trial (one asked again after a refused config is newer)."""
    mine = [t for t in trials if t.user_attrs.get(MEMBER) == index]
    return max(mine, key=lambda t: t.number) if mine else None


def new_trial(study: optuna.Study, *, index: int, name: str, fixed: Mapping[str, Any] | None = None) -> optuna.Trial:
    trial = study.ask(dict(fixed) if fixed else None)
    trial.set_user_attr(MEMBER, index)
    trial.set_user_attr("member", name)
    return trial


def member_trial(study: optuna.Study, *, index: int, name: str) -> optuna.Trial | None:
    """The member's running trial, asked now if it has none; None if its trial has ended (a failed member resumed
    by the user: its trial stays failed, and the member is no longer pruned)."""
    found = trial_of(study.get_trials(deepcopy=False), index)
    if found is None:
        return new_trial(study, index=index, name=name)
    if found.state.is_finished():
        return None
    return optuna.Trial(study, found._trial_id)


def report(study: optuna.Study, trial: optuna.Trial, *, step: int, value: float, last_step: int | None,
           reduction_factor: int = REDUCTION_FACTOR) -> str | None:
    """Report the eval loss at `step`; the rung's evidence if the pruner drops the trial there. Never at the last
    step: the member has spent its budget, pruning it would only hide its result."""
    trial.report(value, step)
    if (last_step is not None and step >= last_step) or not trial.should_prune():
        return None
    if not math.isfinite(value):
        return evidence(step, value, (), reduction_factor)
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == trial.number)
    rung = max((k for k in range(64) if RUNG_ATTR.format(k) in me.system_attrs), default=None)
    if rung is None:  # cannot happen with successive halving; say what is known
        return f"pruned at step {step}: eval loss {value:.3f}"
    key = RUNG_ATTR.format(rung)
    others = [t.system_attrs[key] for t in trials if t.number != trial.number and key in t.system_attrs]
    return evidence(step, me.system_attrs[key], others, reduction_factor)


def tell(study: optuna.Study, ended: Iterable[tuple[int, str, Mapping[str, Any]]]) -> int:
    """Tell each ended member's trial (index, name, result) its end, once: a trial already finished is left alone,
    so a duplicate advance tells nothing. A member that never reported (it ended before its first eval) gets its
    trial now, so the study has one per member."""
    trials = study.get_trials(deepcopy=False)
    told = 0
    for index, name, result in ended:
        found = trial_of(trials, index)
        if found is not None and found.state.is_finished():
            continue
        trial = optuna.Trial(study, found._trial_id) if found else new_trial(study, index=index, name=name)
        state, value = end_state(result)
        trial.set_user_attr("outcome", str(result.get("status")))
        study.tell(trial, value, state=state, skip_if_finished=True)
        told += 1
    return told


# ---- the Django side ----------------------------------------------------------------------------------------------

def phase_study(*, sweep_id: int, phase_index: int, first_eval_step: int | None,
                reduction_factor: int = REDUCTION_FACTOR, sampler: optuna.samplers.BaseSampler | None = None
                ) -> optuna.Study:
    return studies.open_study(
        studies.study_name(sweep_id, phase_index), sampler=sampler,
        pruner=pruner(first_eval_step, reduction_factor) if first_eval_step else optuna.pruners.NopPruner())


def reduction_factor_of(params: Mapping[str, Any]) -> int:
    return int(params.get("reduction_factor") or REDUCTION_FACTOR)


def tell_ended(*, sweep_id: int, phase_index: int, phase_key: str, params: Mapping[str, Any],
               first_eval_step: int | None, members: Sequence[SweepMember],
               results: Mapping[str, Mapping[str, Any]]) -> int:
    """In the sweep's advance (the sweep row locked): tell the trials of the phase's ended members their end."""
    if phase_key in NOT_PRUNED:
        return 0
    ended = [(m.index, m.name, results[m.name]) for m in members if results[m.name]["status"] in rules.TERMINAL]
    if not ended:
        return 0
    study = phase_study(sweep_id=sweep_id, phase_index=phase_index, first_eval_step=first_eval_step,
                        reduction_factor=reduction_factor_of(params))
    return tell(study, ended)


class MemberPruner:
    """One member's trial in its phase's study: report(eval event) -> the rung's evidence when the member is pruned.
    Opens the study at the member's first eval, not before: the worker's run starts without waiting on it."""

    def __init__(self, member: SweepMember, run: Run):
        self.member, self.run = member, run
        self.first_eval_step = run.config.get("eval_steps")
        self.last_step = run.config.get("max_steps")
        # A phase at a token budget (members at different step counts) is not compared step for step.
        self.active = (bool(self.first_eval_step) and member.phase.key not in NOT_PRUNED
                       and "tokens" not in (member.phase.budget or {}))
        self.reduction_factor = reduction_factor_of(member.sweep.params)
        self._study: optuna.Study | None = None
        self._trial: optuna.Trial | None = None

    def report(self, event: dict[str, Any]) -> str | None:
        if not self.active or event.get("eval_loss") is None:
            return None
        if self._trial is None:
            self._study = phase_study(sweep_id=self.member.sweep_id, phase_index=self.member.phase.index,
                                      first_eval_step=self.first_eval_step, reduction_factor=self.reduction_factor)
            self._trial = member_trial(self._study, index=self.member.index, name=self.member.name)
            if self._trial is None:
                log.info("sweep %s: %s's trial has ended; not pruned", self.member.sweep_id, self.member.name)
                self.active = False
                return None
        return report(self._study, self._trial, step=int(event["step"]), value=float(event["eval_loss"]),
                      last_step=self.last_step, reduction_factor=self.reduction_factor)
