"""On the worker, beside a sweep member's training: stop it early when it diverges (the detectors' non-finite loss,
spike and instability findings), and, with pruning on, when successive halving drops it at an eval step."""
from __future__ import annotations

import logging
from typing import Any

from guidance.models import Finding
from training.models import Run, Sweep, SweepMember
from training.runs.services import run_transition
from training.sweeps import pruning, rules

log = logging.getLogger(__name__)

# rules.UNSTABLE: what the seed calls divergence or instability ("If any run diverges or is noisy early").
DIVERGENCE = rules.UNSTABLE


def observers_for(run: Run) -> list:
    """What watches this run: a MemberWatch if it is a member of a sweep still running, else nothing."""
    if not run.sweep_id:
        return []
    member = (SweepMember.objects.filter(run=run).select_related("sweep", "phase").first())
    if member is None or member.sweep.is_terminal:
        return []
    return [MemberWatch(member, run)]


class MemberWatch:
    def __init__(self, member: SweepMember, run: Run):
        self.member, self.run = member, run
        self.sweep: Sweep = member.sweep
        self.ended = False
        self.pruner = pruning.MemberPruner(member, run) if self.sweep.prune else None

    def __repr__(self) -> str:
        return f"MemberWatch(sweep {self.sweep.id}, {self.member.name})"

    def __call__(self, event: dict[str, Any], findings: list[Finding]) -> bool:
        """True when this event ended the member and its run was asked to stop."""
        if self.ended:
            return False
        if self.sweep.early_stop:
            diverged = [f for f in findings if f.code in DIVERGENCE]
            if diverged:
                f = diverged[0]
                return self._end(SweepMember.Outcome.DIVERGED, f"{f.title} ({f.code} at step {f.step}): {f.message}")
        if self.pruner is not None and event.get("type") == "eval":
            note = self.pruner.report(event)
            if note:
                return self._end(SweepMember.Outcome.PRUNED, note)
        return False

    def _end(self, outcome: str, note: str) -> bool:
        """Mark the member (once) and ask its run to stop at its next step; the run's end advances the sweep."""
        self.ended = True
        marked = SweepMember.objects.filter(id=self.member.id, outcome="").update(outcome=outcome,
                                                                                 outcome_note=note[:2000])
        if not marked:
            return False
        log.info("sweep %s: %s %s: %s", self.sweep.id, self.member.name, outcome, note)
        return bool(run_transition(self.run, to=Run.Status.STOPPING,
                                   allowed_from=[Run.Status.STARTING, Run.Status.RUNNING]))
