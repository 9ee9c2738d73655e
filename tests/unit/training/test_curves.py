"""A resumed run's curve as parts of its resume chain: each run up to the checkpoint its continuation loaded."""
from operator import itemgetter

from training.curves import CURVE_END, Part, curve_parts, joined


def test_a_run_that_resumed_nothing_is_one_part_of_all_its_points():
    assert curve_parts([(7, None)]) == [Part(7, -1, CURVE_END)]


def test_a_chain_of_two_resumes_takes_each_run_up_to_where_the_next_took_over():
    # Run 1 stopped after step 14 with a checkpoint at 10; run 2 resumed from 10, was lost after 26, checkpoint 20.
    parts = curve_parts([(1, None), (2, 10), (3, 20)])
    assert parts == [Part(1, -1, 10), Part(2, 10, 20), Part(3, 20, CURVE_END)]
    points = {1: [(s, "a") for s in range(1, 15)], 2: [(s, "b") for s in range(10, 27)],
              3: [(s, "c") for s in range(20, 31)]}
    curve = joined(parts, points, step=itemgetter(0))
    assert [s for s, _ in curve] == list(range(1, 31))  # each step once: the re-logged 10 and 20 are not doubled
    assert {s: who for s, who in curve}[10] == "a" and {s: who for s, who in curve}[11] == "b"
    assert {s: who for s, who in curve}[20] == "b" and {s: who for s, who in curve}[21] == "c"


def test_the_first_surviving_run_counts_from_its_first_point():
    # The run it resumed was deleted: what it has is all there is of the chain's start.
    assert curve_parts([(2, 10), (3, 20)]) == [Part(2, -1, 20), Part(3, 20, CURVE_END)]


def test_a_part_holds_steps_after_its_start_up_to_its_end():
    part = Part(2, 10, 20)
    assert [s for s in (9, 10, 11, 20, 21) if part.holds(s)] == [11, 20]
    assert joined([part], {}, step=itemgetter(0)) == []
