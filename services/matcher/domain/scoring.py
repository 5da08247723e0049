"""How well an experienced member (mentor) fits a newcomer: five criteria, each in [0, 1].

The total is the weighted mean of the criteria (weights normalised to sum 1), so it is in [0, 1]:

* ``topics``: share of the newcomer's interests the mentor offers as strengths, plus
  ``SHARED_INTEREST_CREDIT`` (0.25) per shared interest (both want to work on it), relative to
  the number of the newcomer's interests, capped at 1. A newcomer without interests gets the
  neutral ``NO_INTERESTS_TOPIC_SCORE`` (0.5) for every mentor.
* ``population``: ``max(0, 1 - |log10(p_newcomer / p_mentor)|)``: equal size 1, one town twice
  the other 0.70, three times 0.52, five times 0.30, ten times or more 0.
* ``geography``: with both coordinates ``max(0, 1 - d / 600 km)`` (great-circle distance ``d``):
  37 km 0.94, 150 km 0.75, 300 km 0.5, 600 km or more 0. Without coordinates: same state 0.8,
  same region (north/east/south/west) 0.5, otherwise 0.1, matching typical distances.
* ``experience``: the mentor's years in the network at ``today``, ``min(1, years / 5)``.
* ``network``: from the graph of past and running tandems: 0 for former partners (avoid
  re-pairing), 0.25 when they share a former partner, 0.5 when otherwise connected, 1 when not
  connected at all (a new link for the network).

``score_matrix`` computes all newcomer x mentor pairs at once with numpy; ``score_pair`` is the
plain-Python reference of the same formulas (tests assert they agree).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from schemas.geo import EARTH_RADIUS_KM, great_circle_km
from services.matcher.domain.model import Member
from services.matcher.domain.network import component_labels

#: The criteria in the order they are reported.
CRITERIA: tuple[str, ...] = ("topics", "population", "geography", "experience", "network")

SHARED_INTEREST_CREDIT = 0.25
NO_INTERESTS_TOPIC_SCORE = 0.5
#: A size ratio of 10^POPULATION_ZERO_DECADES (10x) scores 0.
POPULATION_ZERO_DECADES = 1.0
#: Distance at which geography reaches 0.
GEOGRAPHY_ZERO_KM = 600.0
SAME_STATE_SCORE = 0.8
SAME_REGION_SCORE = 0.5
OTHER_REGION_SCORE = 0.1
#: Years in the network after which experience counts fully.
FULL_EXPERIENCE_YEARS = 5.0
FORMER_PARTNERS_SCORE = 0.0
COMMON_PARTNER_SCORE = 0.25
CONNECTED_SCORE = 0.5
UNCONNECTED_SCORE = 1.0

Matrix = NDArray[np.float64]
Vector = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Weights:
    """Relative weight of each criterion; normalised to sum 1 when scoring.

    Defaults: topics 0.35 (what the tandem works on is the programme's point: "experience with
    what the newcomer wants to work on"), population 0.25 and geography 0.25 ("similar
    conditions", and visits need short trips), experience 0.10 (eligibility already requires an
    earlier cohort; this only prefers long-standing members among those), network 0.05 (a gentle
    nudge towards new links that must not outweigh content).
    """

    topics: float = 0.35
    population: float = 0.25
    geography: float = 0.25
    experience: float = 0.10
    network: float = 0.05

    def __post_init__(self) -> None:
        for name in CRITERIA:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"weight {name!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"weight {name!r} must be a finite number >= 0, got {value!r}")
        if self.total <= 0:
            raise ValueError("at least one weight must be > 0 (all weights are 0)")

    @property
    def total(self) -> float:
        """Sum of the weights."""
        return float(sum(getattr(self, name) for name in CRITERIA))

    def as_dict(self) -> dict[str, float]:
        """The weights by criterion name, as given."""
        return {name: float(getattr(self, name)) for name in CRITERIA}

    def normalised(self) -> dict[str, float]:
        """The weights by criterion name, scaled to sum 1."""
        total = self.total
        return {name: float(getattr(self, name)) / total for name in CRITERIA}

    @classmethod
    def parse(cls, text: str) -> Weights:
        """Weights from ``"topics=0.4,population=0.2,..."`` (the ``TANDEM_WEIGHTS`` format).

        Criteria not mentioned keep their default; an empty text gives the defaults. Raises
        ``ValueError`` naming the offending item on unknown criteria, repeats, missing ``=``,
        non-numbers, negative or non-finite values, and when all weights end up 0.
        """
        values: dict[str, float] = {}
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            name, sep, number = (part.strip() for part in item.partition("="))
            if not sep:
                raise ValueError(f"weight item {item!r} must look like name=number")
            if name not in CRITERIA:
                raise ValueError(
                    f"unknown criterion {name!r} in weights; known: {', '.join(CRITERIA)}"
                )
            if name in values:
                raise ValueError(f"criterion {name!r} is given twice in weights")
            try:
                values[name] = float(number)
            except ValueError:
                raise ValueError(f"weight {name!r} must be a number, got {number!r}") from None
        return cls(**values)


DEFAULT_WEIGHTS = Weights()


@dataclass(frozen=True, slots=True)
class PairScore:
    """The total score of one newcomer/mentor pair and its per-criterion scores."""

    total: float
    breakdown: dict[str, float]


class ScoreMatrix:
    """Scores of all newcomers (rows) against all mentors (columns), computed on demand.

    ``total`` is the n x m float64 array in [0, 1], computed on first access; ``rows`` and
    ``cells`` give parts of it without the whole (the planner never needs the whole).
    ``parts`` maps each criterion to its n x m array, also on first access (read-only; uniform
    parts are broadcast views); ``breakdowns`` gives the criteria of a few cells.
    ``shortlist`` is n x k: per row its k best feasible columns (see ``score_matrix``), -1
    where a row has fewer; ``shortlist_scores`` their totals (NaN where -1).
    """

    def __init__(self, criteria: _Criteria, weights: Weights) -> None:
        self.criteria = criteria
        self.weights = weights
        self.parts: Mapping[str, Matrix] = _LazyParts(criteria)
        self.shortlist: NDArray[np.int_] = np.full((criteria.n, 0), -1, dtype=np.int_)
        self.shortlist_scores: Matrix = np.empty((criteria.n, 0))
        self._share = weights.normalised()
        self._total: Matrix | None = None

    @cached_property
    def _exact(self) -> _WeightedTerms:
        """The float64 block scorer, built only when rows or the whole matrix are asked for
        (the planner's large path needs neither)."""
        return _WeightedTerms.of(self.criteria, self.weights, np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        """(newcomers, mentors)."""
        return self.criteria.n, self.criteria.m

    @property
    def total(self) -> Matrix:
        """All totals (n x m float64, in [0, 1]); computed once, on first access."""
        if self._total is None:
            n, m = self.shape
            total = np.empty((n, m))
            self._exact.score_blocks(total, lambda rows, out: None)
            self._total = total
        return self._total

    def rows(self, index: NDArray[np.int_]) -> Matrix:
        """The totals of the rows ``index`` against every mentor (len(index) x m)."""
        index = np.asarray(index, dtype=np.int_)
        if self._total is not None:
            return self._total[index]
        out = np.empty((index.size, self.criteria.m))
        step = _rows_per_block(self.criteria.m)
        scratch = np.empty((min(step, index.size), self.criteria.m))
        for start in range(0, index.size, step):
            block = out[start : start + step]
            self._exact.write(index[start : start + step], block, scratch[: block.shape[0]])
        return out

    def cells(self, rows: NDArray[np.int_], cols: NDArray[np.int_]) -> Vector:
        """The totals of the cells ``(rows[k], cols[k])``: the weighted sum of their criteria,
        as ``breakdowns`` reports them."""
        if self._total is not None:
            return self._total[rows, cols]
        return self.weighted(self.breakdowns(rows, cols))

    def weighted(self, parts: Mapping[str, Vector]) -> Vector:
        """Totals from per-criterion scores (as ``breakdowns`` returns them)."""
        share = self._share
        total = np.zeros(len(parts[CRITERIA[0]]))
        for name in CRITERIA:
            if share[name] > 0:
                total += share[name] * parts[name]
        return np.clip(total, 0.0, 1.0, out=total)

    def breakdowns(self, rows: NDArray[np.int_], cols: NDArray[np.int_]) -> dict[str, Vector]:
        """Per-criterion scores of the cells ``(rows[k], cols[k])``, without full parts."""
        cells = _Cells(np.asarray(rows, dtype=np.int_), np.asarray(cols, dtype=np.int_))
        return {name: self.criteria.compute(name, cells, np.empty(cells.size)) for name in CRITERIA}

    def breakdown(self, row: int, column: int) -> dict[str, float]:
        """Per-criterion scores of one pair."""
        parts = self.breakdowns(np.array([row]), np.array([column]))
        return {name: float(values[0]) for name, values in parts.items()}


# --- the reference formulas, one pair at a time -------------------------------------------


def topic_score(newcomer: Member, mentor: Member) -> float:
    """Topic fit: offered interests plus a smaller credit for shared interests, capped at 1."""
    if not newcomer.interests:
        return NO_INTERESTS_TOPIC_SCORE
    offered = len(newcomer.interests & mentor.strengths)
    shared = len(newcomer.interests & mentor.interests)
    return min(1.0, (offered + SHARED_INTEREST_CREDIT * shared) / len(newcomer.interests))


def population_score(newcomer: Member, mentor: Member) -> float:
    """Size similarity on a log scale: 1 for equal size, 0 from a factor of ten."""
    decades = abs(math.log10(newcomer.population) - math.log10(mentor.population))
    return max(0.0, 1.0 - decades / POPULATION_ZERO_DECADES)


def distance_km(a: Member, b: Member) -> float | None:
    """Great-circle (haversine) distance in km, or ``None`` when a location is unknown."""
    if a.lat is None or a.lon is None or b.lat is None or b.lon is None:
        return None
    return great_circle_km(a.lat, a.lon, b.lat, b.lon)


def geography_score(newcomer: Member, mentor: Member) -> float:
    """Closeness: linear in distance when located, else same state / region / elsewhere."""
    distance = distance_km(newcomer, mentor)
    if distance is not None:
        return max(0.0, 1.0 - distance / GEOGRAPHY_ZERO_KM)
    if newcomer.state == mentor.state:
        return SAME_STATE_SCORE
    if newcomer.region == mentor.region:
        return SAME_REGION_SCORE
    return OTHER_REGION_SCORE


def years_in_network(member: Member, today: dt.date) -> float:
    """Years since the member joined (negative if it joins in the future)."""
    return (today - member.joined).days / 365.25


def experience_score(mentor: Member, today: dt.date) -> float:
    """The mentor's years in the network, full credit from ``FULL_EXPERIENCE_YEARS``."""
    return min(1.0, max(0.0, years_in_network(mentor, today) / FULL_EXPERIENCE_YEARS))


def network_score(newcomer_id: str, mentor_id: str, graph: nx.Graph | None) -> float:
    """How new the link would be: 0 for former partners up to 1 for unconnected members."""
    if graph is None or newcomer_id not in graph or mentor_id not in graph:
        return UNCONNECTED_SCORE
    if graph.has_edge(newcomer_id, mentor_id):
        return FORMER_PARTNERS_SCORE
    if set(graph[newcomer_id]) & set(graph[mentor_id]):
        return COMMON_PARTNER_SCORE
    if nx.has_path(graph, newcomer_id, mentor_id):
        return CONNECTED_SCORE
    return UNCONNECTED_SCORE


def score_pair(
    newcomer: Member,
    mentor: Member,
    weights: Weights,
    today: dt.date,
    graph: nx.Graph | None = None,
) -> PairScore:
    """Score one pair with the plain formulas; equals the matching ``score_matrix`` entry."""
    breakdown = {
        "topics": topic_score(newcomer, mentor),
        "population": population_score(newcomer, mentor),
        "geography": geography_score(newcomer, mentor),
        "experience": experience_score(mentor, today),
        "network": network_score(newcomer.id, mentor.id, graph),
    }
    share = weights.normalised()
    total = sum(share[name] * breakdown[name] for name in CRITERIA)
    return PairScore(total=min(1.0, max(0.0, total)), breakdown=breakdown)


# --- the same formulas over the whole matrix -----------------------------------------------


def score_matrix(
    newcomers: Sequence[Member],
    mentors: Sequence[Member],
    weights: Weights,
    today: dt.date,
    graph: nx.Graph | None = None,
    *,
    shortlist: int = 0,
    feasible: NDArray[np.bool_] | None = None,
) -> ScoreMatrix:
    """Score every newcomer (row) against every mentor (column), vectorised.

    Per-member feature arrays are built once (O(n + m)); the n x m work is numpy arithmetic in
    blocks of rows that stay in the CPU cache, split between the CPU cores (numpy releases the
    GIL in its loops). The totals themselves are computed when asked (``ScoreMatrix``).

    ``shortlist`` > 0 lists each row's ``shortlist`` best columns (``ScoreMatrix.shortlist``):
    best first, equal scores by column, only cells where ``feasible`` (n x m booleans; all
    cells when ``None``) holds, -1 where a row has fewer. On large matrices this needs no
    float64 matrix at all: a float32 pass over the blocks finds, per row, every cell that can
    be among the best (``_FLOAT32_MARGIN``), and only those cells are scored exactly.
    """
    criteria = _Criteria.of(newcomers, mentors, today, graph)
    n, m = len(newcomers), len(mentors)
    if feasible is not None and feasible.shape != (n, m):
        raise ValueError(f"feasible has shape {feasible.shape}, expected {(n, m)}")
    scores = ScoreMatrix(criteria, weights)
    if shortlist <= 0:
        return scores
    if n * m >= _FLOAT32_CELLS:
        rows, cols = _shortlist_candidates(criteria, weights, feasible, shortlist)
        scores.shortlist, scores.shortlist_scores = _rank_cells(
            rows, cols, scores.cells(rows, cols), n, shortlist
        )
        return scores
    # Small: the exact matrix is cheap, select from it directly.
    best = np.full((n, shortlist), -1, dtype=np.int_)

    def select(rows: slice, out: Matrix) -> None:
        best[rows] = _best_columns(out, None if feasible is None else feasible[rows], shortlist)

    total = np.empty((n, m))
    scores._exact.score_blocks(total, select)
    scores._total = total
    scores.shortlist = best
    if m:
        listed = np.take_along_axis(total, np.maximum(best, 0), axis=1)
        scores.shortlist_scores = np.where(best >= 0, listed, np.nan)
    else:  # no mentors: nothing listed
        scores.shortlist_scores = np.full(best.shape, np.nan)
    return scores


#: Cells per block of rows (512 KiB of float64): large enough to amortise Python overhead,
#: small enough for the few such blocks of a worker to stay in the CPU's L2 cache.
_BLOCK_CELLS = 1 << 16
#: Matrices smaller than this are scored on one thread (threads cost more than they save).
_THREADED_CELLS = 1 << 20
#: From this size the shortlist is found with a float32 pass (see ``_shortlist_candidates``).
_FLOAT32_CELLS = 1 << 18
#: How far below a row's k-th best float32 score a cell may lie and still be among its k best
#: in float64: twice the float32 error allowed. The error is a few 1e-7 in practice: inputs
#: are rounded to float32 (relative 6e-8), the haversine terms lose about 5e-8 to
#: cancellation, the few sums and products add a few 1e-7; the largest measured (worldwide
#: coordinates, geography weight only) is 1.2e-6, and a test keeps it below 5e-5.
_FLOAT32_MARGIN = 1e-4


def _rows_per_block(columns: int, itemsize: int = 8) -> int:
    return max(1, _BLOCK_CELLS * 8 // itemsize // max(columns, 1))


def _worker_count(cells: int) -> int:
    if cells < _THREADED_CELLS:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def _in_threads(rows: int, step: int, work: Callable[[int, int], None], cells: int) -> None:
    """Run ``work(first, stop)`` over row ranges, on several cores when ``cells`` is large."""
    workers = _worker_count(cells)
    if workers == 1:
        work(0, rows)
        return
    # More chunks than workers, so that a worker slowed by other load gets fewer.
    chunk = max(step, -(-rows // (4 * workers)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done in [pool.submit(work, a, min(a + chunk, rows)) for a in range(0, rows, chunk)]:
            done.result()


def _shortlist_candidates(
    criteria: _Criteria, weights: Weights, feasible: NDArray[np.bool_] | None, k: int
) -> tuple[NDArray[np.int_], NDArray[np.int_]]:
    """Cells (rows, cols) that include every row's k best feasible cells, found in float32.

    Per row the threshold ``t`` is the k-th largest of the maxima of ``_SHORTLIST_CHUNKS``
    runs of columns (float32): k cells score at least ``t`` in float32, so at least
    ``t - margin/2`` exactly, so the k-th best exact score is at least that, and every cell
    among the k best scores at least ``t - margin`` in float32. Those cells are the
    candidates: a few more than k per row.
    """
    n, m = criteria.n, criteria.m
    fast = _WeightedTerms.of(criteria, weights, np.float32)
    step = _rows_per_block(m, itemsize=4)
    found_rows: list[NDArray[np.int_]] = []
    found_cols: list[NDArray[np.int_]] = []

    def work(first: int, stop: int) -> None:
        out = np.empty((min(step, stop - first), m), dtype=np.float32)
        scratch = np.empty_like(out)
        for start in range(first, stop, step):
            index = np.arange(start, min(start + step, stop))
            block = out[: index.size]
            fast.write(index, block, scratch[: index.size], clip=False)
            usable = None if feasible is None else feasible[start : start + index.size]
            cells = _above_threshold(block, usable, k, _FLOAT32_MARGIN)
            row, col = np.divmod(cells, m)
            found_rows.append(row + start)  # list.append is atomic under the GIL
            found_cols.append(col)

    _in_threads(n, step, work, n * m)
    if not found_rows:
        return np.empty(0, dtype=np.int_), np.empty(0, dtype=np.int_)
    return np.concatenate(found_rows), np.concatenate(found_cols)


def _above_threshold(
    block: NDArray[np.floating[Any]], feasible: NDArray[np.bool_] | None, k: int, margin: float
) -> NDArray[np.int_]:
    """Flat indices of the feasible cells of ``block`` that reach their row's threshold
    (the k-th largest of the runs' maxima) minus ``margin``; all feasible cells when a row
    is too short for runs."""
    rows, m = block.shape
    key = block if feasible is None or feasible.all() else np.where(feasible, block, -np.inf)
    run = m // _SHORTLIST_CHUNKS
    if k <= _SHORTLIST_CHUNKS and run >= 2:
        maxima = key[:, : run * _SHORTLIST_CHUNKS].reshape(rows, _SHORTLIST_CHUNKS, run)
        maxima = maxima.max(axis=2)
        threshold = np.partition(maxima, _SHORTLIST_CHUNKS - k, axis=1)[:, _SHORTLIST_CHUNKS - k]
        cells = np.flatnonzero(key >= (threshold - margin)[:, None])
    else:
        cells = np.arange(rows * m)
    finite: NDArray[np.int_] = cells[key.ravel()[cells] > -np.inf]
    return finite


def _rank_cells(
    rows: NDArray[np.int_], cols: NDArray[np.int_], values: Vector, n: int, k: int
) -> tuple[NDArray[np.int_], Matrix]:
    """Per row its k best cells among the given ones, best first (ties by column), and their
    values; -1 and NaN pad."""
    best = np.full((n, k), -1, dtype=np.int_)
    best_values = np.full((n, k), np.nan)
    order = np.lexsort((cols, -values, rows))  # by row, then best first, then by column
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(rows.size) - starts[rows]
    keep = rank < k
    best[rows[keep], rank[keep]] = cols[keep]
    best_values[rows[keep], rank[keep]] = values[keep]
    return best, best_values


def _best_columns(block: Matrix, feasible: NDArray[np.bool_] | None, k: int) -> NDArray[np.int_]:
    """Per row of ``block`` its ``k`` best feasible columns, best first (ties by column);
    -1 pads rows with fewer.

    Short rows are sorted whole. Long rows are selected by threshold, cheaper than a partition
    of every row: split each row into ``_SHORTLIST_CHUNKS`` runs of columns and take the k-th
    largest of the runs' maxima. Those k maxima are k distinct cells at least that high, so the
    row's k best are all at or above it; only the few cells that reach it are sorted.
    """
    rows, m = block.shape
    if k == 0 or m == 0 or rows == 0:
        return np.full((rows, k), -1, dtype=np.int_)
    if m < 8 * _SHORTLIST_CHUNKS:  # short rows: sort them whole (stable: ties by column)
        key = block if feasible is None else np.where(feasible, block, -np.inf)
        order = np.argsort(-key, axis=1, kind="stable")[:, :k]
        best = np.where(np.take_along_axis(key, order, axis=1) > -np.inf, order, -1)
        if best.shape[1] < k:
            best = np.hstack([best, np.full((rows, k - best.shape[1]), -1, dtype=np.int_)])
        return best.astype(np.int_, copy=False)
    cells = _above_threshold(block, feasible, k, 0.0)
    row, column = np.divmod(cells, m)
    return _rank_cells(row, column, block.ravel()[cells], rows, k)[0]


#: Runs of columns per row whose maxima give the shortlist its threshold.
_SHORTLIST_CHUNKS = 64


@dataclass(frozen=True, slots=True)
class _WeightedTerms:
    """The total score of a block of rows in as few numpy passes as possible, in float64
    (exact) or float32 (to find the shortlist's candidates).

    Each criterion is folded into its weight: ``w * max(0, 1 - |d|)`` is written as
    ``w - w * min(1, |d|)``; the topic score of a row is the sum of the mentors' offer rows
    of its interests, pre-scaled by weight / interest count; every term that does not depend
    on the row (experience, the constant parts of population and geography, a uniform network
    score) is one row vector added once. Geography clamps the haversine at the 600 km value
    before ``arcsin``, so no clip is needed after it. In float64 the results equal
    ``_Criteria.compute`` to rounding (the tests check 1e-12).
    """

    criteria: _Criteria
    share: dict[str, float]
    dtype: type[np.floating[Any]]
    base: NDArray[np.floating[Any]]  # per mentor: all that does not depend on the newcomer
    log_size_n: NDArray[np.floating[Any]]
    log_size_m: NDArray[np.floating[Any]]
    lat_n: NDArray[np.floating[Any]]
    lat_m: NDArray[np.floating[Any]]
    lon_n: NDArray[np.floating[Any]]
    lon_m: NDArray[np.floating[Any]]
    interests: list[list[int]]  # per newcomer: its topic rows
    offers: dict[int, NDArray[np.floating[Any]]]  # interest count -> topics x m, scaled
    silent: NDArray[np.floating[Any]]  # per newcomer: topic term without interests, else 0
    any_silent: bool
    haversine_cap: float
    everyone_located: bool

    @staticmethod
    def of(criteria: _Criteria, weights: Weights, dtype: type[np.floating[Any]]) -> _WeightedTerms:
        c, share = criteria, weights.normalised()
        base = share["experience"] * c.experience + share["population"] + share["geography"]
        if c.network_is_uniform:
            base = base + share["network"] * UNCONNECTED_SCORE
        counts = c.interest_count.astype(np.int_)
        interests = c.wanted
        offers = {
            int(count): (c.offers * (share["topics"] / count)).astype(dtype)
            for count in np.unique(counts[counts > 0])
        }
        silent = np.where(counts == 0, share["topics"] * NO_INTERESTS_TOPIC_SCORE, 0.0)
        cap = math.sin(GEOGRAPHY_ZERO_KM / (2.0 * EARTH_RADIUS_KM)) ** 2
        return _WeightedTerms(
            criteria=c,
            share=share,
            dtype=dtype,
            base=np.asarray(base, dtype=dtype),
            log_size_n=c.log_size_n.astype(dtype),
            log_size_m=c.log_size_m.astype(dtype),
            lat_n=c.lat_n.astype(dtype),
            lat_m=c.lat_m.astype(dtype),
            lon_n=c.lon_n.astype(dtype),
            lon_m=c.lon_m.astype(dtype),
            interests=interests,
            offers=offers,
            silent=silent.astype(dtype),
            any_silent=bool(silent.any()),
            haversine_cap=cap,
            everyone_located=bool(c.located_n.all() and c.located_m.all()),
        )

    def score_blocks(self, total: Matrix, each: Callable[[slice, Matrix], None]) -> None:
        """Write every row's totals into ``total`` (n x m), calling ``each(rows, block)`` while
        the block is still in the cache."""
        n, m = total.shape
        step = _rows_per_block(m)

        def work(first: int, stop: int) -> None:
            scratch = np.empty((min(step, stop - first), m))
            for start in range(first, stop, step):
                rows = slice(start, min(start + step, stop))
                out = total[rows]
                self.write(np.arange(rows.start, rows.stop), out, scratch[: out.shape[0]])
                each(rows, out)

        _in_threads(n, step, work, n * m)

    def write(
        self,
        rows: NDArray[np.int_],
        out: NDArray[np.floating[Any]],
        scratch: NDArray[np.floating[Any]],
        clip: bool = True,
    ) -> None:
        """Total scores of newcomer ``rows`` against every mentor into ``out``."""
        share = self.share
        # One scratch block besides ``out``: the two stay in the CPU's L2 cache together.
        if share["geography"] > 0:
            self._geography(rows, out, scratch)
            out += self.base
        else:
            out[:] = self.base
        if share["population"] > 0:
            # w - w * min(1, |log n - log m| / decades); the constant w is in ``base``.
            np.subtract(self.log_size_n[rows, None], self.log_size_m[None, :], out=scratch)
            np.abs(scratch, out=scratch)
            np.clip(scratch, -np.inf, POPULATION_ZERO_DECADES, out=scratch)  # faster than minimum
            scratch *= self.dtype(-share["population"] / POPULATION_ZERO_DECADES)
            out += scratch
        if share["topics"] > 0:
            self._topics(rows, out, scratch)
        if share["network"] > 0 and not self.criteria.network_is_uniform:
            exact = np.empty(scratch.shape)
            self.criteria.compute("network", _Cells(rows), exact)
            exact *= share["network"]
            out += exact
        if clip:
            np.clip(out, 0.0, 1.0, out=out)

    def _topics(
        self,
        rows: NDArray[np.int_],
        out: NDArray[np.floating[Any]],
        scratch: NDArray[np.floating[Any]],
    ) -> None:
        """Add ``w * min(1, offered / interests)``: per row the sum of 1 to a few offer rows
        (cheaper than a matrix product with the whole topic vocabulary)."""
        for local, row in enumerate(rows.tolist()):
            wanted = self.interests[row]
            if not wanted:
                scratch[local] = 0.0
                continue
            offers = self.offers[len(wanted)]
            if len(wanted) == 1:
                scratch[local] = offers[wanted[0]]
                continue
            target = scratch[local]
            np.add(offers[wanted[0]], offers[wanted[1]], out=target)
            for topic in wanted[2:]:
                target += offers[topic]
        np.clip(scratch, -np.inf, self.share["topics"], out=scratch)
        out += scratch
        if self.any_silent:
            out += self.silent[rows, None]

    def _geography(
        self,
        rows: NDArray[np.int_],
        out: NDArray[np.floating[Any]],
        lon: NDArray[np.floating[Any]],
    ) -> None:
        """``w * (geography - 1)`` (the constant ``w`` is in ``base``)."""
        c, weight = self.criteria, self.share["geography"]
        np.matmul(self.lat_n[rows], self.lat_m, out=out)
        np.square(out, out=out)
        np.matmul(self.lon_n[rows], self.lon_m, out=lon)
        np.square(lon, out=lon)
        out += lon  # the haversine of the central angle
        np.clip(out, -np.inf, self.haversine_cap, out=out)  # 600 km or more all score 0
        np.sqrt(out, out=out)
        np.arcsin(out, out=out)
        out *= self.dtype(-2.0 * EARTH_RADIUS_KM / GEOGRAPHY_ZERO_KM * weight)
        if self.everyone_located:
            return
        blind_rows = np.flatnonzero(~c.located_n[rows])
        blind_cols = np.flatnonzero(~c.located_m)
        everyone = np.arange(c.m)
        for local in blind_rows.tolist():
            out[local] = (c._regions(int(rows[local]), everyone) - 1.0) * weight
        if blind_cols.size:
            out[:, blind_cols] = (c._regions(rows[:, None], blind_cols[None, :]) - 1.0) * weight


@dataclass(frozen=True, slots=True)
class _Cells:
    """Which pairs to compute: ``rows`` x all mentors (a block), or the pairs
    ``(rows[k], cols[k])`` when ``cols`` is given. The criteria are written once for both:
    ``row``/``col`` shape per-member arrays so that they broadcast to the result."""

    rows: NDArray[np.int_]
    cols: NDArray[np.int_] | None = None

    @property
    def size(self) -> int:
        return int(self.rows.size)

    def row(self, values: NDArray[Any]) -> NDArray[Any]:
        return values[self.rows] if self.cols is not None else values[self.rows, None]

    def col(self, values: NDArray[Any]) -> NDArray[Any]:
        return values[self.cols] if self.cols is not None else values[None, :]

    def dot(self, left: Matrix, right: Matrix, out: Matrix) -> Matrix:
        """Products of the rows' factors (members x d) and the columns' (d x members)."""
        if self.cols is None:
            return np.matmul(left[self.rows], right, out=out)
        out[:] = np.einsum("kd,dk->k", left[self.rows], right[:, self.cols])
        return out


class _LazyParts(Mapping[str, Matrix]):
    """Criterion name -> n x m scores, each computed on first access (writing five more
    n x m arrays would cost more than scoring itself, and few callers need them)."""

    def __init__(self, criteria: _Criteria) -> None:
        self._criteria = criteria
        self._done: dict[str, Matrix] = {}

    def __getitem__(self, name: str) -> Matrix:
        if name not in CRITERIA:
            raise KeyError(name)
        if name not in self._done:
            self._done[name] = self._criteria.full(name)
        return self._done[name]

    def __iter__(self) -> Iterator[str]:
        return iter(CRITERIA)

    def __len__(self) -> int:
        return len(CRITERIA)


@dataclass(frozen=True, slots=True)
class _Criteria:
    """Per-member feature arrays of newcomers (``_n``, rows) and mentors (``_m``, columns),
    built once, and the vectorised criteria over them."""

    n: int
    m: int
    log_size_n: Vector
    log_size_m: Vector
    # Haversine via products: rows . cols gives sin(dlat/2) and, with sqrt(cos lat) folded
    # into both sides, sqrt(cos lat1 cos lat2) sin(dlon/2); no cancellation at short range.
    lat_n: Matrix  # n x 2
    lat_m: Matrix  # 2 x m
    lon_n: Matrix  # n x 2
    lon_m: Matrix  # 2 x m
    located_n: NDArray[np.bool_]
    located_m: NDArray[np.bool_]
    state_n: NDArray[np.int64]
    state_m: NDArray[np.int64]
    region_n: NDArray[np.int64]
    region_m: NDArray[np.int64]
    wants: Matrix  # n x topics: 1 where the newcomer is interested
    wanted: list[list[int]]  # per newcomer: the topic columns of its interests
    offers: Matrix  # topics x m: 1 per strength plus the shared-interest credit per interest
    interest_count: Vector
    experience: Vector
    component_n: NDArray[np.int64]  # -1 outside the graph
    component_m: NDArray[np.int64]
    # Newcomer row -> (sorted mentor columns, their score) for former and common partners.
    close: dict[int, tuple[NDArray[np.int_], Vector]]

    @staticmethod
    def of(
        newcomers: Sequence[Member],
        mentors: Sequence[Member],
        today: dt.date,
        graph: nx.Graph | None,
    ) -> _Criteria:
        side_n, side_m = _side_of(newcomers), _side_of(mentors)
        width = len(_TOPICS)
        wants = side_n.topics(side_n.interests, width)
        offers = side_m.topics(side_m.strengths, width)
        offers += SHARED_INTEREST_CREDIT * side_m.topics(side_m.interests, width)
        lat_n, lon_n = side_n.row_angles
        lat_m, lon_m = side_m.column_angles
        component_n, component_m, close = _network_features(newcomers, mentors, graph)
        years = (today.toordinal() - side_m.joined) / 365.25
        return _Criteria(
            n=len(newcomers),
            m=len(mentors),
            log_size_n=side_n.log_size,
            log_size_m=side_m.log_size,
            lat_n=lat_n,
            lat_m=lat_m,
            lon_n=lon_n,
            lon_m=lon_m,
            located_n=side_n.located,
            located_m=side_m.located,
            state_n=side_n.state,
            state_m=side_m.state,
            region_n=side_n.region,
            region_m=side_m.region,
            wants=wants,
            wanted=side_n.interest_codes,
            offers=np.ascontiguousarray(offers.T),
            interest_count=wants.sum(axis=1),
            experience=np.clip(years / FULL_EXPERIENCE_YEARS, 0.0, 1.0),
            component_n=component_n,
            component_m=component_m,
            close=close,
        )

    @property
    def network_is_uniform(self) -> bool:
        """Whether no newcomer is in the tandem graph, so every link would be new."""
        return not self.close and not bool((self.component_n >= 0).any())

    def full(self, name: str) -> Matrix:
        """One criterion for all pairs (read-only; a broadcast view where it is uniform)."""
        if name == "experience":
            return np.broadcast_to(self.experience, (self.n, self.m))
        if name == "network" and self.network_is_uniform:
            return np.broadcast_to(np.float64(UNCONNECTED_SCORE), (self.n, self.m))
        result = np.empty((self.n, self.m))
        step = _rows_per_block(self.m)
        for start in range(0, self.n, step):
            cells = _Cells(np.arange(start, min(start + step, self.n)))
            self.compute(name, cells, result[start : start + cells.size])
        result.flags.writeable = False
        return result

    def compute(self, name: str, cells: _Cells, out: Matrix) -> Matrix:
        """One criterion for ``cells``, written into ``out`` (shaped like the cells)."""
        if name == "topics":
            return self._topics(cells, out)
        if name == "population":
            return self._population(cells, out)
        if name == "geography":
            return self._geography(cells, out)
        if name == "experience":
            out[:] = cells.col(self.experience)
            return out
        return self._network(cells, out)

    def _topics(self, cells: _Cells, out: Matrix) -> Matrix:
        # Entries are sums of 1 and 0.25, exact in binary: after the division they equal the
        # scalar formula bit for bit.
        cells.dot(self.wants, self.offers, out)
        counts = cells.row(self.interest_count)
        silent = counts == 0
        out /= np.where(silent, 1.0, counts)
        np.clip(out, 0.0, 1.0, out=out)
        np.copyto(out, NO_INTERESTS_TOPIC_SCORE, where=silent)
        return out

    def _population(self, cells: _Cells, out: Matrix) -> Matrix:
        np.subtract(cells.row(self.log_size_n), cells.col(self.log_size_m), out=out)
        np.abs(out, out=out)
        out *= -1.0 / POPULATION_ZERO_DECADES
        out += 1.0
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def _geography(self, cells: _Cells, out: Matrix) -> Matrix:
        cells.dot(self.lat_n, self.lat_m, out)
        np.square(out, out=out)
        lon = cells.dot(self.lon_n, self.lon_m, np.empty_like(out))
        np.square(lon, out=lon)
        out += lon  # the haversine of the central angle
        np.sqrt(out, out=out)
        np.clip(out, 0.0, 1.0, out=out)
        np.arcsin(out, out=out)
        out *= -2.0 * EARTH_RADIUS_KM / GEOGRAPHY_ZERO_KM  # distance as a share of the range
        out += 1.0
        np.clip(out, 0.0, 1.0, out=out)
        if cells.cols is not None:
            blind = ~(self.located_n[cells.rows] & self.located_m[cells.cols])
            out[blind] = self._regions(cells.rows[blind], cells.cols[blind])
            return out
        # A block: whole rows and whole columns lack coordinates.
        blind_rows = np.flatnonzero(~self.located_n[cells.rows])
        blind_cols = np.flatnonzero(~self.located_m)
        everyone = np.arange(self.m)
        for row in blind_rows:
            out[row] = self._regions(cells.rows[row], everyone)
        if blind_cols.size:
            out[:, blind_cols] = self._regions(cells.rows[:, None], blind_cols[None, :])
        return out

    def _regions(self, rows: NDArray[np.int_] | int, cols: NDArray[np.int_]) -> Matrix:
        """Geography without coordinates: same state, same region, or elsewhere."""
        same_state = self.state_n[rows] == self.state_m[cols]
        same_region = self.region_n[rows] == self.region_m[cols]
        return np.where(
            same_state,
            SAME_STATE_SCORE,
            np.where(same_region, SAME_REGION_SCORE, OTHER_REGION_SCORE),
        )

    def _network(self, cells: _Cells, out: Matrix) -> Matrix:
        component = cells.row(self.component_n)
        linked = (component == cells.col(self.component_m)) & (component >= 0)
        np.copyto(out, np.where(linked, CONNECTED_SCORE, UNCONNECTED_SCORE))
        if not self.close:
            return out
        if cells.cols is None:
            for local, row in enumerate(cells.rows.tolist()):
                if row in self.close:
                    out[local, self.close[row][0]] = self.close[row][1]
            return out
        close = np.flatnonzero(np.isin(cells.rows, list(self.close)))
        for k, row, col in zip(
            close.tolist(), cells.rows[close].tolist(), cells.cols[close].tolist(), strict=True
        ):
            cols, values = self.close[row]
            at = int(np.searchsorted(cols, col))
            if at < cols.size and cols[at] == col:
                out[k] = values[at]
        return out


class _Codes:
    """Stable small integers for strings (states, regions, topics), shared by every solve, so
    that one side's features do not depend on the other side's."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._codes)

    def of(self, values: Sequence[str]) -> list[int]:
        """The codes of ``values`` (new strings get the next free codes)."""
        codes = self._codes
        if not all(value in codes for value in set(values)):
            with self._lock:
                for value in values:
                    codes.setdefault(value, len(codes))
        return [codes[value] for value in values]


_PLACES = _Codes()
_TOPICS = _Codes()


@dataclass(frozen=True, slots=True)
class _Side:
    """The per-member features of one side (newcomers or mentors) as arrays.

    Built from a list of members and cached by the identity of those members (``_side_of``):
    members are immutable, and a matcher re-solves over the same member objects (its member
    cache), so an unchanged side costs nothing the next time.
    """

    members: tuple[Member, ...]  # held, so that the ids in the cache key stay theirs
    log_size: Vector
    located: NDArray[np.bool_]
    joined: Vector  # proleptic ordinal of the joining date
    state: NDArray[np.int64]
    region: NDArray[np.int64]
    interests: NDArray[np.bool_]  # members x topics known when built
    strengths: NDArray[np.bool_]
    interest_codes: list[list[int]]  # per member: the topic columns of its interests
    row_angles: tuple[Matrix, Matrix]  # haversine factors as rows (newcomers)
    column_angles: tuple[Matrix, Matrix]  # and as columns (mentors)

    @staticmethod
    def of(members: Sequence[Member]) -> _Side:
        # One list comprehension per attribute (the fastest loop over slotted dataclasses);
        # np.array turns a None coordinate into NaN.
        lat = np.array([x.lat for x in members], dtype=float)
        lon = np.array([x.lon for x in members], dtype=float)
        located = ~(np.isnan(lat) | np.isnan(lon))
        lat = np.radians(np.where(located, lat, 0.0))
        lon = np.radians(np.where(located, lon, 0.0))
        return _Side(
            members=tuple(members),
            log_size=np.log10(np.array([x.population for x in members], dtype=float)),
            located=located,
            joined=np.array([x.joined.toordinal() for x in members], dtype=float),
            state=np.array(_PLACES.of([x.state for x in members]), dtype=np.int64),
            region=np.array(_PLACES.of([x.region for x in members]), dtype=np.int64),
            interests=(interests := _indicator([x.interests for x in members])),
            strengths=_indicator([x.strengths for x in members]),
            interest_codes=[np.flatnonzero(row).tolist() for row in interests],
            row_angles=_half_angles(lat, lon, rows=True),
            column_angles=_half_angles(lat, lon, rows=False),
        )

    @staticmethod
    def topics(flags: NDArray[np.bool_], width: int) -> Matrix:
        """Topic indicator as float64 with ``width`` topic columns (topics registered since
        the side was built are columns of zeros)."""
        table = np.zeros((flags.shape[0], width))
        table[:, : flags.shape[1]] = flags
        return table


def _half_angles(lat: Vector, lon: Vector, rows: bool) -> tuple[Matrix, Matrix]:
    """Factors whose row . column products give the haversine terms (see ``_Criteria``)."""
    root_cos = np.sqrt(np.cos(lat))
    if rows:  # sin(a/2)cos(b/2) - cos(a/2)sin(b/2) = sin((a - b)/2)
        lat_terms = np.stack([np.sin(lat / 2), -np.cos(lat / 2)], axis=1)
        lon_terms = np.stack([np.sin(lon / 2), -np.cos(lon / 2)], axis=1)
        return lat_terms, lon_terms * root_cos[:, None]
    lat_terms = np.stack([np.cos(lat / 2), np.sin(lat / 2)])
    lon_terms = np.stack([np.cos(lon / 2), np.sin(lon / 2)])
    return lat_terms, lon_terms * root_cos[None, :]


#: Sides kept by ``_side_of`` (newcomers and mentors of the last few solves).
_SIDE_CACHE_SIZE = 4
_SIDES: OrderedDict[tuple[int, ...], _Side] = OrderedDict()
_SIDES_LOCK = threading.Lock()


def _side_of(members: Sequence[Member]) -> _Side:
    """``_Side.of(members)``, reused while the very same member objects come again."""
    key = tuple(map(id, members))
    with _SIDES_LOCK:
        side = _SIDES.get(key)
        if side is not None:
            _SIDES.move_to_end(key)
            return side
    side = _Side.of(members)
    with _SIDES_LOCK:
        _SIDES[key] = side
        while len(_SIDES) > _SIDE_CACHE_SIZE:
            _SIDES.popitem(last=False)
    return side


def _indicator(topic_sets: Sequence[frozenset[str]]) -> NDArray[np.bool_]:
    """Members x topics (``_TOPICS`` codes), True where the member's set holds the topic.
    Members share few distinct sets (a frozenset caches its hash): each is spelled out once."""
    distinct = {topics: k for k, topics in enumerate(dict.fromkeys(topic_sets))}
    which = np.fromiter(map(distinct.__getitem__, topic_sets), np.int_, len(topic_sets))
    rows = [k for topics, k in distinct.items() for _ in topics]
    cols = _TOPICS.of([t for topics in distinct for t in topics])
    table = np.zeros((len(distinct), len(_TOPICS)), dtype=bool)
    table[rows, cols] = True
    return table[which]


def _network_features(
    newcomers: Sequence[Member], mentors: Sequence[Member], graph: nx.Graph | None
) -> tuple[NDArray[np.int64], NDArray[np.int64], dict[int, tuple[NDArray[np.int_], Vector]]]:
    """Component labels (computed once) and the few former/common-partner cells."""
    outside_n = np.full(len(newcomers), -1, dtype=np.int64)
    outside_m = np.full(len(mentors), -1, dtype=np.int64)
    inside = [] if graph is None else [i for i, x in enumerate(newcomers) if x.id in graph]
    if graph is None or not inside:
        # Usual case: newcomers have no tandem yet, so every link would be new.
        return outside_n, outside_m, {}
    labels = component_labels(graph)
    component_n = np.array([labels.get(x.id, -1) for x in newcomers], dtype=np.int64)
    component_m = np.array([labels.get(x.id, -1) for x in mentors], dtype=np.int64)
    column = {x.id: j for j, x in enumerate(mentors)}
    close: dict[int, tuple[NDArray[np.int_], Vector]] = {}
    for i in inside:
        me = newcomers[i].id
        partners = set(graph[me])
        seconds = set().union(*(graph[p] for p in partners)) - partners - {me}
        scores = {column[x]: COMMON_PARTNER_SCORE for x in seconds if x in column}
        scores.update({column[x]: FORMER_PARTNERS_SCORE for x in partners if x in column})
        if scores:
            cols = np.array(sorted(scores), dtype=np.int_)
            close[i] = (cols, np.array([scores[j] for j in cols], dtype=float))
    return component_n, component_m, close
