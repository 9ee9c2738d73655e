"""A resumed run's curve as plain data: which run of its resume chain each stretch of steps comes from."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, NamedTuple, Sequence, TypeVar

CURVE_END = 2**31 - 1  # "up to its last step" for the last part of a curve

Point = TypeVar("Point")


class Part(NamedTuple):
    """A stretch of a curve: the points of run `run` after step `after` (-1: from its first) up to step `upto`
    (CURVE_END: to its last)."""

    run: int
    after: int
    upto: int

    def holds(self, step: int) -> bool:
        return self.after < step <= self.upto


def curve_parts(lineage: Sequence[tuple[int, int | None]]) -> list[Part]:
    """The parts of a curve from its lineage: (run id, the step it resumed from) from the first run of the chain to
    this one. Each run counts up to the step its continuation resumed from (the checkpoint it loaded: what the
    earlier run did after it was trained again), and from the step it resumed from itself; the first run from its
    first point, whatever it resumed (a deleted run leaves no points to join)."""
    parts = []
    for index, (run, resumed_from_step) in enumerate(lineage):
        after = -1 if index == 0 or resumed_from_step is None else resumed_from_step
        upto = CURVE_END
        if index + 1 < len(lineage):
            upto = lineage[index + 1][1] or 0
        parts.append(Part(run, after, upto))
    return parts


def joined(parts: Sequence[Part], points: Mapping[int, Iterable[Point]], step: Callable[[Point], int]) -> list[Point]:
    """The curve: each part's points (points[run], in step order) within its steps, part after part."""
    return [point for part in parts for point in points.get(part.run, ()) if part.holds(step(point))]
