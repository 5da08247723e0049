"""The joint assignment: full re-solves next to ``linear_sum_assignment`` alone, and baselines.

* Re-solve: ``plan_tandems`` as the matcher runs it (eligibility, scoring of every pair, the
  joint assignment, alternatives, German reasons), against ``linear_sum_assignment`` alone on
  the same precomputed score matrix (mentors expanded into one column per capacity slot), and
  our solver alone (``solve_assignment``) on that same matrix. The runs alternate, so a noisy
  moment hits all of them.
* Baselines at one size, all on the same score matrix and capacities: our solver
  (``solve_assignment``), networkx ``max_weight_matching`` (maximum cardinality first, as ours)
  on the graph of newcomers and mentor slots, and the arrival-order greedy (each newcomer in the
  order it joined takes its best mentor with capacity left). networkx runs once: it takes about
  a minute at 100 x 500.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from services.bench.harness import median
from services.bench.synthetic import generate
from services.matcher.domain.assignment import solve_assignment
from services.matcher.domain.model import Member
from services.matcher.domain.planning import plan_tandems
from services.matcher.domain.score_engine import score_matrix
from services.matcher.domain.scoring import Weights

#: The day the synthetic network is solved on (fixed, so that every run solves the same problem).
TODAY = dt.date(2025, 1, 15)
WEIGHTS = Weights()


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def _network(newcomers: int, mentors: int) -> tuple[list[Member], list[Member]]:
    new = [x.domain() for x in generate(newcomers, newcomers=True, prefix="newcomer")]
    old = [x.domain() for x in generate(mentors, newcomers=False, prefix="mentor")]
    return new, old


def _scores(new: Sequence[Member], old: Sequence[Member]) -> NDArray[np.float64]:
    return np.ascontiguousarray(score_matrix(new, old, WEIGHTS, TODAY, None).total)


def resolve_size(newcomers: int, mentors: int, repeat: int) -> dict[str, Any]:
    """Median seconds of a full re-solve, of our solver alone and of ``linear_sum_assignment``
    alone at one size; the last two on the same precomputed score matrix."""
    new, old = _network(newcomers, mentors)
    members = [*new, *old]
    capacity = np.array([x.mentor_capacity for x in old])
    scores = _scores(new, old)
    cost = -np.repeat(scores, capacity, axis=1)  # one column per capacity slot
    feasible = np.ones(scores.shape, dtype=bool)  # every mentor joined before the newcomers
    none = np.full(newcomers, -1, dtype=np.int_)

    def plan() -> int:
        return len(plan_tandems(members, [], {}, set(), set(), {}, WEIGHTS, TODAY).proposals)

    def solver() -> NDArray[np.int_]:
        return solve_assignment(scores, capacity, feasible, none, none)

    # One untimed run of each first (warm caches, as in a running matcher); cheap sizes get
    # more runs, so that their medians are not a handful of milliseconds of noise.
    runs = repeat if newcomers * mentors >= 1_000_000 else 5 * repeat
    proposals = plan()
    solver()
    linear_sum_assignment(cost)
    ours: list[float] = []
    alone: list[float] = []
    solved: list[float] = []
    for _ in range(runs):  # interleaved, so that a noisy moment hits all three
        ours.append(_timed(plan)[0])
        solved.append(_timed(solver)[0])
        alone.append(_timed(lambda: linear_sum_assignment(cost))[0])
    seconds, lsa, solver_seconds = median(ours), median(alone), median(solved)
    return {
        "newcomers": newcomers,
        "mentors": mentors,
        "slots": int(capacity.sum()),
        "proposals": proposals,
        "seconds": seconds,
        "solver_seconds": solver_seconds,
        "lsa_only_seconds": lsa,
        "ratio_to_lsa": seconds / lsa if lsa > 0 else 0.0,
        "solver_ratio_to_lsa": solver_seconds / lsa if lsa > 0 else 0.0,
        "runs": runs,
    }


def greedy(scores: NDArray[np.float64], capacity: NDArray[np.int_]) -> NDArray[np.int_]:
    """Arrival order: each row (in order) takes its best column with capacity left."""
    left = capacity.copy()
    chosen = np.full(scores.shape[0], -1, dtype=np.int_)
    for row in range(scores.shape[0]):
        key = np.where(left > 0, scores[row], -np.inf)
        best = int(np.argmax(key))
        if key[best] > -np.inf:
            chosen[row] = best
            left[best] -= 1
    return chosen


def networkx_matching(
    scores: NDArray[np.float64], capacity: NDArray[np.int_]
) -> tuple[float, NDArray[np.int_]]:
    """networkx ``max_weight_matching`` (max cardinality) on newcomers x mentor slots; the
    seconds of the matching itself (not of building the graph) and the column per row."""
    graph = nx.Graph()
    rows, cols = scores.shape
    for j in range(cols):
        for slot in range(int(capacity[j])):
            graph.add_weighted_edges_from(
                (("n", i), ("m", j, slot), float(scores[i, j])) for i in range(rows)
            )
    seconds, matching = _timed(lambda: nx.max_weight_matching(graph, maxcardinality=True))
    chosen = np.full(rows, -1, dtype=np.int_)
    for a, b in matching:
        newcomer, mentor = (a, b) if a[0] == "n" else (b, a)
        chosen[newcomer[1]] = mentor[1]
    return seconds, chosen


def _total(scores: NDArray[np.float64], chosen: NDArray[np.int_]) -> float:
    rows = np.flatnonzero(chosen >= 0)
    return float(scores[rows, chosen[rows]].sum())


def baselines(newcomers: int, mentors: int, repeat: int) -> dict[str, Any]:
    """Our solver, networkx and the arrival-order greedy on the same problem."""
    new, old = _network(newcomers, mentors)
    # Arrival order: by joining date (ties by id); rows of the score matrix in that order.
    new = sorted(new, key=lambda x: (x.joined, x.id))
    scores = _scores(new, old)
    capacity = np.array([x.mentor_capacity for x in old], dtype=np.int_)
    feasible = np.ones(scores.shape, dtype=bool)  # every mentor joined before 2024
    none = np.full(newcomers, -1, dtype=np.int_)

    def ours() -> NDArray[np.int_]:
        return solve_assignment(scores, capacity, feasible, none, none)

    ours(), greedy(scores, capacity)  # warm-up, untimed
    runs = 5 * repeat
    ours_runs = [_timed(ours) for _ in range(runs)]
    greedy_runs = [_timed(lambda: greedy(scores, capacity)) for _ in range(runs)]
    nx_seconds, nx_chosen = networkx_matching(scores, capacity)
    ours_chosen, greedy_chosen = ours_runs[0][1], greedy_runs[0][1]
    return {
        "newcomers": newcomers,
        "mentors": mentors,
        "ours_seconds": median([s for s, _ in ours_runs]),
        "ours_total": _total(scores, ours_chosen),
        "ours_matched": int((ours_chosen >= 0).sum()),
        "networkx_seconds": nx_seconds,
        "networkx_total": _total(scores, nx_chosen),
        "networkx_matched": int((nx_chosen >= 0).sum()),
        "greedy_seconds": median([s for s, _ in greedy_runs]),
        "greedy_total": _total(scores, greedy_chosen),
        "greedy_matched": int((greedy_chosen >= 0).sum()),
        "runs": runs,
        "networkx_runs": 1,
    }
