"""The joint assignment: optimal, within every hard constraint, stable for incumbents."""

from __future__ import annotations

import itertools
from contextlib import ExitStack
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from services.matcher.domain import assignment
from services.matcher.domain.assignment import INCUMBENT_TOLERANCE, solve_assignment
from services.matcher.domain.network import min_cost_flow_assignment

Ints = NDArray[np.int_]


def none(n: int) -> Ints:
    return np.full(n, -1, dtype=np.int_)


def value(scores: NDArray[np.float64], chosen: Ints) -> tuple[int, float]:
    """(matched newcomers, total score) of an assignment."""
    rows = np.flatnonzero(chosen >= 0)
    return int(rows.size), float(scores[rows, chosen[rows]].sum())


def brute_force(
    scores: NDArray[np.float64],
    capacity: Ints,
    feasible: NDArray[np.bool_],
    incumbent: Ints,
    pinned: Ints,
) -> tuple[int, float, int]:
    """Best (matched, total, incumbents kept) over every assignment, by enumeration."""
    n, m = scores.shape
    options = [
        [int(pinned[i])] if pinned[i] >= 0 else [-1, *np.flatnonzero(feasible[i]).tolist()]
        for i in range(n)
    ]
    best = (-1, -1.0, -1)
    for choice in itertools.product(*options):
        load = np.bincount([j for j in choice if j >= 0], minlength=m)
        if (load > capacity).any():
            continue
        matched = sum(j >= 0 for j in choice)
        total = round(sum(scores[i, j] for i, j in enumerate(choice) if j >= 0), 9)
        kept = sum(j >= 0 and j == incumbent[i] for i, j in enumerate(choice))
        best = max(best, (matched, total, kept))
    return best


def shortlist_of(scores: NDArray[np.float64], feasible: NDArray[np.bool_], k: int) -> Ints:
    """Each row's k best feasible columns, best first, equal scores by column; -1 pads."""
    result = np.full((scores.shape[0], k), -1, dtype=np.int_)
    for i in range(scores.shape[0]):
        ranked = sorted(np.flatnonzero(feasible[i]).tolist(), key=lambda j: (-scores[i, j], j))
        result[i, : min(k, len(ranked))] = ranked[:k]
    return result


#: The solver's paths, forced by its size limits: the whole problem dense (what small inputs
#: take), candidate lists with a dense reduced problem, candidate lists with the sparse one,
#: lists per mentor.
PATHS = {
    "whole": {},
    "lists, dense": {"_WHOLE_DENSE_CELLS": -1},
    "lists, sparse": {"_WHOLE_DENSE_CELLS": -1, "_SMALL_REDUCED_CELLS": -1},
    # Lists per mentor (what crowded problems take), starting at one newcomer so that the
    # certificate fails and lists grow.
    "mentor lists": {
        "_WHOLE_DENSE_CELLS": -1,
        "_CROWDED_FACTOR": -1,
        "_COLUMN_FIRST_PER_SLOT": 0,
        "_COLUMN_FIRST_EXTRA": 1,
        "_COLUMN_DENSE_SHARE": float("inf"),
    },
    # The same, with the lists built by passes over whole rows (as the first lists of a
    # large problem are).
    "mentor lists, row passes": {
        "_WHOLE_DENSE_CELLS": -1,
        "_CROWDED_FACTOR": -1,
        "_COLUMN_FIRST_PER_SLOT": 0,
        "_COLUMN_FIRST_EXTRA": 1,
        "_COLUMN_DENSE_SHARE": float("inf"),
        "_COLUMN_CELLS": -1,
    },
}


def solve_on_path(path: str, *args: Any) -> Ints:
    with ExitStack() as stack:
        for name, limit in PATHS[path].items():
            stack.enter_context(patch.object(assignment, name, limit))
        return solve_assignment(*args)


@st.composite
def instances(draw: st.DrawFn) -> tuple[NDArray[np.float64], Ints, NDArray[np.bool_], Ints, Ints]:
    """Small random instances; scores on a 0.05 grid so that ties happen often."""
    n = draw(st.integers(0, 4))
    m = draw(st.integers(0, 4))
    grid = st.integers(0, 20).map(lambda k: k / 20)
    scores = np.array(draw(st.lists(grid, min_size=n * m, max_size=n * m)), dtype=float)
    scores = scores.reshape(n, m)
    capacity = np.array(draw(st.lists(st.integers(0, 2), min_size=m, max_size=m)), dtype=np.int_)
    feasible = np.array(draw(st.lists(st.booleans(), min_size=n * m, max_size=n * m)), dtype=bool)
    feasible = feasible.reshape(n, m)
    incumbent = np.array(
        draw(st.lists(st.integers(-1, m - 1), min_size=n, max_size=n)), dtype=np.int_
    )
    # Pins: each row may pin one of its feasible mentors while capacity is left.
    pinned, load = none(n), np.zeros(m, dtype=np.int_)
    for i in range(n):
        open_cols = [j for j in np.flatnonzero(feasible[i]) if load[j] < capacity[j]]
        wants_pin = draw(st.integers(0, 3)) == 0
        if open_cols and wants_pin:
            j = draw(st.sampled_from(open_cols))
            pinned[i], load[j] = j, load[j] + 1
    return scores, capacity, feasible, incumbent, pinned


@settings(max_examples=300, deadline=None)
@given(instances(), st.integers(0, 5))
def test_solver_matches_brute_force_and_keeps_every_hard_constraint(
    instance: tuple[NDArray[np.float64], Ints, NDArray[np.bool_], Ints, Ints], listed: int
) -> None:
    # listed > 0: the first candidates come from a shortlist of that width, as the planner
    # passes it; 0: from the solver's own pass over the matrix. Every path finds the optimum.
    scores, capacity, feasible, incumbent, pinned = instance
    shortlist = shortlist_of(scores, feasible, listed) if listed else None
    best = brute_force(scores, capacity, feasible, incumbent, pinned)
    for path in PATHS:
        args = (scores, capacity, feasible, incumbent, pinned, shortlist)
        chosen = solve_on_path(path, *args)

        rows = np.flatnonzero(chosen >= 0)
        assert feasible[rows, chosen[rows]].all(), path
        assert (np.bincount(chosen[rows], minlength=capacity.size) <= capacity).all(), path
        assert (chosen[pinned >= 0] == pinned[pinned >= 0]).all(), path

        matched, total = value(scores, chosen)
        kept = int(((chosen == incumbent) & (chosen >= 0)).sum())
        assert (matched, round(total, 9)) == best[:2], path
        # Scores differ by at least 0.05 here, far above the tolerance: incumbents decide ties.
        assert kept == best[2], path

        again = solve_on_path(
            path, scores.copy(), capacity.copy(), feasible.copy(), incumbent, pinned, shortlist
        )
        assert (again == chosen).all(), path


@settings(max_examples=200, deadline=None)
@given(instances())
def test_solver_agrees_with_networkx_min_cost_flow(
    instance: tuple[NDArray[np.float64], Ints, NDArray[np.bool_], Ints, Ints],
) -> None:
    scores, capacity, feasible, _, _ = instance
    n = scores.shape[0]
    ours = solve_assignment(scores, capacity, feasible, none(n), none(n))
    flow = min_cost_flow_assignment(scores, capacity, feasible)
    assert value(scores, ours)[0] == value(scores, flow)[0]
    assert value(scores, ours)[1] == pytest.approx(value(scores, flow)[1], abs=1e-9)


def full_problem(
    scores: NDArray[np.float64], capacity: Ints, feasible: NDArray[np.bool_]
) -> tuple[int, float]:
    """The unreduced reference: every capacity slot a column, plus "unassigned" columns."""
    n, _ = scores.shape
    slots = np.repeat(np.arange(capacity.size), capacity)
    big = n + 1.0
    cost = np.where(feasible[:, slots], -(big + scores[:, slots]), np.inf)
    cost = np.hstack([cost, np.zeros((n, n))])
    rows, cols = linear_sum_assignment(cost)
    chosen = none(n)
    real = cols < slots.size
    chosen[rows[real]] = slots[cols[real]]
    return value(scores, chosen)


@pytest.mark.parametrize("path", ["lists, dense", "lists, sparse"])
@pytest.mark.parametrize("listed", [False, True])
@pytest.mark.parametrize("first", [1, 2, 8])
def test_column_reduction_is_exact_on_contested_instances(
    monkeypatch: pytest.MonkeyPatch, first: int, listed: bool, path: str
) -> None:
    # Popular mentors (a column effect) make rows compete, so short candidate lists fail the
    # certificate and must grow; the optimum must still be the full problem's.
    monkeypatch.setattr(assignment, "FIRST_CANDIDATES", first)
    rng = np.random.default_rng(first)
    for _ in range(40):
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 40))
        scores = np.clip(0.6 * rng.random((1, m)) + 0.4 * rng.random((n, m)), 0, 1).round(3)
        capacity = rng.integers(0, 3, m)
        feasible = rng.random((n, m)) < rng.uniform(0.2, 1.0)
        shortlist = shortlist_of(scores, feasible, first) if listed else None
        chosen = solve_on_path(path, scores, capacity, feasible, none(n), none(n), shortlist)
        matched, total = value(scores, chosen)
        expected = full_problem(scores, capacity, feasible)
        assert matched == expected[0]
        assert total == pytest.approx(expected[1], abs=1e-9)


def test_joint_solve_beats_arrival_order_greedy() -> None:
    # Newcomer 0 likes both mentors; newcomer 1 only fits mentor 0. Greedy in arrival order
    # gives mentor 0 to newcomer 0 and leaves newcomer 1 with a poor partner.
    scores = np.array([[0.90, 0.80], [0.85, 0.10]])
    capacity = np.array([1, 1])
    feasible = np.ones((2, 2), dtype=bool)

    greedy = none(2)
    for i in range(2):
        free = [j for j in range(2) if j not in greedy]
        greedy[i] = max(free, key=lambda j: scores[i, j])
    chosen = solve_assignment(scores, capacity, feasible, none(2), none(2))

    assert greedy.tolist() == [0, 1]
    assert chosen.tolist() == [1, 0]
    assert value(scores, chosen)[1] == pytest.approx(1.65)
    assert value(scores, chosen)[1] > value(scores, greedy)[1] + 0.5


def test_matching_more_newcomers_comes_before_a_higher_total() -> None:
    # Newcomer 1 can only take mentor 0. Highest total alone would give mentor 0 to newcomer 0
    # (0.9) and leave newcomer 1 out; matching both (0.1 + 0.5) is preferred.
    scores = np.array([[0.9, 0.1], [0.5, 0.0]])
    feasible = np.array([[True, True], [True, False]])
    chosen = solve_assignment(scores, np.array([1, 1]), feasible, none(2), none(2))
    assert chosen.tolist() == [1, 0]


def test_capacity_two_takes_two_newcomers() -> None:
    scores = np.array([[0.9, 0.2], [0.8, 0.3], [0.7, 0.4]])
    chosen = solve_assignment(scores, np.array([2, 0]), np.ones((3, 2), bool), none(3), none(3))
    assert sorted(chosen.tolist()) == [-1, 0, 0]
    assert chosen[0] == 0 and chosen[1] == 0


def test_incumbent_kept_when_tied_and_replaced_only_by_a_real_improvement() -> None:
    feasible = np.ones((1, 2), dtype=bool)
    capacity = np.array([1, 1])
    tied = np.array([[0.6, 0.6]])
    assert solve_assignment(tied, capacity, feasible, np.array([1]), none(1)).tolist() == [1]
    assert solve_assignment(tied, capacity, feasible, np.array([0]), none(1)).tolist() == [0]

    within = np.array([[0.6 + INCUMBENT_TOLERANCE / 10, 0.6]])
    assert solve_assignment(within, capacity, feasible, np.array([1]), none(1)).tolist() == [1]
    better = np.array([[0.61, 0.6]])
    assert solve_assignment(better, capacity, feasible, np.array([1]), none(1)).tolist() == [0]


def test_incumbent_that_became_infeasible_is_ignored() -> None:
    feasible = np.array([[True, False]])
    chosen = solve_assignment(
        np.array([[0.2, 0.9]]), np.array([1, 1]), feasible, np.array([1]), none(1)
    )
    assert chosen.tolist() == [0]


def test_pins_are_honoured_even_against_the_score() -> None:
    scores = np.array([[0.9, 0.1], [0.8, 0.7]])
    chosen = solve_assignment(
        scores, np.array([1, 1]), np.ones((2, 2), bool), none(2), np.array([1, -1])
    )
    assert chosen.tolist() == [1, 0]


def test_pins_beyond_capacity_are_refused() -> None:
    with pytest.raises(ValueError, match=r"pins exceed mentor capacity.*column 0: 2 pins"):
        solve_assignment(
            np.full((2, 1), 0.5), np.array([1]), np.ones((2, 1), bool), none(2), np.array([0, 0])
        )


def test_infeasible_pin_is_refused() -> None:
    with pytest.raises(ValueError, match="not feasible: row 0 -> column 0"):
        solve_assignment(
            np.full((1, 1), 0.5), np.array([1]), np.zeros((1, 1), bool), none(1), np.array([0])
        )


@pytest.mark.parametrize(
    ("scores", "capacity", "feasible", "message"),
    [
        (np.full((2, 2), 0.5), np.array([1]), np.ones((2, 2), bool), "capacity must have"),
        (np.full((2, 2), 0.5), np.array([1, 1]), np.ones((2, 3), bool), "feasible has shape"),
        (np.full((2, 2), 1.5), np.array([1, 1]), np.ones((2, 2), bool), "within \\[0, 1\\]"),
        (np.full((2, 2), np.nan), np.array([1, 1]), np.ones((2, 2), bool), "finite"),
        (np.full((2, 2), 0.5), np.array([1, -1]), np.ones((2, 2), bool), "capacity must be >= 0"),
    ],
)
def test_inconsistent_input_is_refused(
    scores: NDArray[np.float64], capacity: Ints, feasible: NDArray[np.bool_], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        solve_assignment(scores, capacity, feasible, none(2), none(2))


@pytest.mark.parametrize(
    "shortlist", [np.zeros((3, 2), np.int_), np.full((2, 2), 2), np.full((2, 2), -2), np.zeros(2)]
)
def test_malformed_shortlist_is_refused(shortlist: Ints) -> None:
    with pytest.raises(ValueError, match="shortlist must be"):
        solve_assignment(
            np.full((2, 2), 0.5), np.array([1, 1]), np.ones((2, 2), bool), none(2), none(2),
            shortlist.astype(np.int_),
        )  # fmt: skip


def test_scores_read_through_a_shortlist_are_checked() -> None:
    scores = np.array([[0.5, np.nan], [0.5, 0.4]])
    with pytest.raises(ValueError, match="finite"):
        solve_assignment(
            scores, np.array([1, 1]), np.ones((2, 2), bool), none(2), none(2),
            np.array([[1, 0], [0, 1]]),
        )  # fmt: skip


def test_empty_instances() -> None:
    assert (
        solve_assignment(
            np.zeros((0, 3)), np.ones(3, np.int_), np.ones((0, 3), bool), none(0), none(0)
        ).size
        == 0
    )
    assert solve_assignment(
        np.zeros((2, 0)), np.ones(0, np.int_), np.ones((2, 0), bool), none(2), none(2)
    ).tolist() == [-1, -1]


class RoughScores(assignment._Dense):
    """A score source whose ``rows_approx`` errs by up to half its margin, every cell in the
    direction ``noise`` draws (as the planner's float32 pass may, only far less)."""

    def __init__(self, scores: NDArray[np.float64], margin: float, seed: int) -> None:
        super().__init__(scores)
        rng = np.random.default_rng(seed)
        self.margin = margin
        self.noise = rng.choice([-0.5, 0.0, 0.5], scores.shape) * margin

    def rows_approx(self, index: Ints) -> tuple[NDArray[np.float32], float]:
        return (self.scores[index] + self.noise[index]).astype(np.float32), self.margin


@pytest.mark.parametrize("seed", range(6))
def test_crowded_problems_solved_by_mentor_lists_reach_the_whole_optimum(seed: int) -> None:
    # Many more newcomers than places (a burst of joins), sizes where lists must grow: the
    # lists per mentor reach the optimum of the whole dense problem.
    rng = np.random.default_rng(seed)
    n, m = 400, 40
    scores = np.round(rng.random((n, m)) ** 3, 2)  # many ties, most cells low
    capacity = rng.integers(0, 3, m)
    feasible = rng.random((n, m)) < 0.6
    incumbent = np.where(rng.random(n) < 0.2, rng.integers(0, m, n), -1)
    args = (scores, capacity, feasible, incumbent, none(n))
    with patch.object(assignment, "_WHOLE_DENSE_CELLS", 1 << 40):
        whole = solve_assignment(*args)
    with patch.object(assignment, "_WHOLE_DENSE_CELLS", -1):
        listed = solve_assignment(*args)  # crowded: the mentor lists
        with patch.object(assignment, "_COLUMN_CELLS", -1):
            assert (solve_assignment(*args) == listed).all()  # built by passes over rows
            for margin in (1e-4, 0.02):  # over rough scores, as the planner's float32 ones
                rough = RoughScores(scores, margin, seed)
                assert (solve_assignment(rough, *args[1:]) == listed).all()
    rows = np.flatnonzero(listed >= 0)
    assert feasible[rows, listed[rows]].all()
    assert (np.bincount(listed[rows], minlength=m) <= capacity).all()

    def objective(chosen: Ints) -> tuple[int, float]:
        matched, total = value(scores, chosen)
        kept = int(((chosen == incumbent) & (chosen >= 0)).sum())
        return matched, round(total + kept * INCUMBENT_TOLERANCE, 9)

    assert objective(listed) == objective(whole)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4)), min_size=0, max_size=60),
    st.lists(st.integers(0, 3), min_size=6, max_size=6),
    st.integers(1, 4),
)
def test_each_column_keeps_its_best_cells_ties_by_row_as_the_scan_gathers_them(
    cells: list[tuple[int, int]], sizes: list[int], blocks: int
) -> None:
    # Cells of rows 0, 1, 2, ... with keys on a coarse grid (ties everywhere), gathered as
    # ``_scan`` does: in blocks of rows, cut back to each column's best after the first.
    size = np.array(sizes, dtype=np.int_)
    row = np.arange(len(cells), dtype=np.int_) // 3  # a few cells per row, rows ascending
    col = np.array([c for c, _ in cells], dtype=np.int_)
    key = np.array([k / 4 for _, k in cells], dtype=float)
    cut = len(cells) // blocks
    first = assignment._best_per_column([row[:cut]], [col[:cut]], [key[:cut]], size)
    got = assignment._best_per_column(
        [first[0], row[cut:]], [first[1], col[cut:]], [first[2], key[cut:]], size
    )
    order = np.lexsort((row, -key, col))  # the reference: column, key descending, row
    want_rows, want_cols = row[order], col[order]
    rank = np.array([np.count_nonzero(want_cols[:k] == c) for k, c in enumerate(want_cols)])
    keep = rank < size[want_cols] if cells else np.zeros(0, dtype=bool)
    assert got[0].tolist() == want_rows[keep].tolist()
    assert got[1].tolist() == want_cols[keep].tolist()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 6).flatmap(
        lambda rows: st.tuples(
            st.lists(
                st.lists(st.sampled_from([-np.inf, 0.0, 0.25, 0.5, 1.0]), min_size=3, max_size=3),
                min_size=rows,
                max_size=rows,
            ),
            st.lists(st.integers(0, 8), min_size=3, max_size=3),
        )
    )
)
def test_a_first_block_sets_each_column_s_threshold_to_its_size_th_best_key(
    case: tuple[list[list[float]], list[int]],
) -> None:
    cells, sizes = case
    keys = np.array(cells, dtype=float).reshape(len(cells), 3)
    got = assignment._kth_best(keys, np.array(sizes, dtype=np.int_))
    for j, size in enumerate(sizes):
        finite = sorted((k for k in keys[:, j].tolist() if k > -np.inf), reverse=True)
        want = finite[size - 1] if 1 <= size <= len(finite) else -np.inf
        assert got[j] == want


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("margin", [1e-4, 0.02, 0.1])
def test_a_pass_over_rough_scores_lists_the_exact_best_of_every_mentor(
    seed: int, margin: float
) -> None:
    # Each mentor's list (its size best newcomers by exact key, ties by row) is the same from
    # rough scores as from exact ones, however the rough ones err within half the margin; the
    # blocks are small, so thresholds rise and cuts happen along the way.
    rng = np.random.default_rng(seed)
    n, m = 300, 12
    scores = np.round(rng.random((n, m)), 2)
    feasible = rng.random((n, m)) < 0.8
    remaining = rng.integers(0, 3, m)
    incumbent = np.where(rng.random(n) < 0.3, rng.integers(0, m, n), -1)
    free = np.flatnonzero(rng.random(n) < 0.9)
    columns = np.flatnonzero(remaining > 0)
    size = remaining[columns] * 2 + 1

    def lists(source: Any) -> tuple[list[int], list[int], list[float]]:
        with (
            patch.object(assignment, "_COLUMN_CELLS", -1),
            patch.object(assignment, "_BLOCK_CELLS", 5 * m),
        ):
            listed = assignment._ColumnLists(source, feasible, remaining, incumbent, free)
            listed.select(columns, size)
        return listed.rows.tolist(), listed.cols.tolist(), listed.keys.tolist()

    assert lists(RoughScores(scores, margin, seed)) == lists(assignment._Dense(scores))


def test_a_pass_that_gathered_no_cell_keeps_none_and_sets_no_threshold() -> None:
    # Mentors none of the scanned newcomers may have: nothing within reach, no threshold.
    empty = np.empty(0, dtype=np.int_)
    rows, cols, keys, kth = assignment._within_reach(
        [empty], [empty], [np.empty(0)], np.array([2, 3]), 1e-4
    )
    assert rows.size == cols.size == keys.size == 0
    assert kth.tolist() == [-np.inf, -np.inf]
