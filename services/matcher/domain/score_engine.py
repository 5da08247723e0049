"""The tuned engine behind ``score_matrix``: the formulas of ``scoring`` over all newcomer x
mentor pairs at once, with numpy.

The n x m work runs in blocks of rows that stay in the CPU cache, on several threads for large
matrices (``_WeightedTerms`` folds the weighted criteria into as few numpy passes as possible);
each row's shortlist of best columns is found with a float32 pass and exact rescoring of its
candidates. The per-member features it works on are in ``score_features``.
``scoring.score_pair`` is the plain-Python reference of the same formulas (tests assert they
agree).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from schemas.geo import EARTH_RADIUS_KM
from services.matcher.domain.model import Member
from services.matcher.domain.score_features import (
    Matrix,
    Vector,
    _Cells,
    _Criteria,
    _LazyParts,
    _rows_per_block,
)
from services.matcher.domain.scoring import (
    CRITERIA,
    GEOGRAPHY_ZERO_KM,
    NO_INTERESTS_TOPIC_SCORE,
    POPULATION_ZERO_DECADES,
    UNCONNECTED_SCORE,
    Weights,
)


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
        return self._exact.rows(index)

    @cached_property
    def _fast(self) -> _WeightedTerms:
        return _WeightedTerms.of(self.criteria, self.weights, np.float32)

    def rows_approx(self, index: NDArray[np.int_]) -> tuple[NDArray[np.float32], float]:
        """``rows`` in float32 (about twice as fast) and the margin: every value lies within
        half of it of the exact total. For finding candidate cells that are then scored
        exactly (``cells``)."""
        return self._fast.rows(np.asarray(index, dtype=np.int_)), _FLOAT32_MARGIN

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

    def list_best(
        self, rows: NDArray[np.int_], k: int, feasible: NDArray[np.bool_] | None = None
    ) -> None:
        """Set ``shortlist`` (and ``shortlist_scores``) for ``rows`` alone, exactly: their
        ``k`` best feasible columns, best first, ties by column; every other row lists none.
        For a plan that needs the lists of its planned newcomers only (a crowded network,
        where most newcomers wait): a pass over those rows instead of over all."""
        n, m = self.shape
        best = np.full((n, k), -1, dtype=np.int_)
        values = np.full((n, k), np.nan)
        rows = np.asarray(rows, dtype=np.int_)
        step = _rows_per_block(m)
        for start in range(0, rows.size if m else 0, step):
            index = rows[start : start + step]
            block = self.rows(index)
            top = _best_columns(block, None if feasible is None else feasible[index], k)
            best[index] = top
            listed = np.take_along_axis(block, np.maximum(top, 0), axis=1)
            values[index] = np.where(top >= 0, listed, np.nan)
        self.shortlist, self.shortlist_scores = best, values

    def breakdown(self, row: int, column: int) -> dict[str, float]:
        """Per-criterion scores of one pair."""
        parts = self.breakdowns(np.array([row]), np.array([column]))
        return {name: float(values[0]) for name, values in parts.items()}


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

    def rows(self, index: NDArray[np.int_]) -> NDArray[Any]:
        """The totals of the rows ``index`` (len(index) x m, in ``dtype``), block by block."""
        m = self.criteria.m
        out = np.empty((index.size, m), dtype=self.dtype)
        step = _rows_per_block(m, itemsize=out.itemsize)
        scratch = np.empty((min(step, index.size), m), dtype=self.dtype)
        for start in range(0, index.size, step):
            block = out[start : start + step]
            self.write(index[start : start + step], block, scratch[: block.shape[0]])
        return out

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
