"""Successive halving of a sweep's members at their eval steps, with Optuna's pruner (its study in PostgreSQL)."""
from __future__ import annotations

from typing import Any

from training.models import Run, SweepMember


class MemberPruner:
    """One member's trial in its phase's study: report(eval event) -> the rung's evidence when the member is pruned."""

    def __init__(self, member: SweepMember, run: Run):
        self.member, self.run = member, run

    def report(self, event: dict[str, Any]) -> str | None:
        return None
