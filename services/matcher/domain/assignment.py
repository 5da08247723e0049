"""The joint assignment of newcomers to mentors with capacity.

Problem solved by ``solve_assignment`` (newcomers are rows i, mentors columns j):

    maximise   first  the number of matched newcomers,
               then   sum of scores[i, j] over the chosen pairs
               then   the number of newcomers that keep their incumbent (current) mentor
    subject to each newcomer gets at most one mentor, and only a feasible one;
               mentor j gets at most capacity[j] newcomers;
               a pinned newcomer gets exactly its pinned mentor.

Incumbents win ties: an incumbent gets a bonus of ``INCUMBENT_TOLERANCE`` (1e-6, a millionth of
a score point), so another solution replaces it only when its total is higher by more than that
per displaced incumbent. Scores closer than that count as equal (they are then numerical noise,
not a real difference), so a re-solve does not flip-flop between equal optima. Remaining ties go
to the first optimum the solver finds: deterministic for the same input.

Method: mentors are expanded into one column per capacity slot and the rectangular problem is
solved with ``scipy.optimize.linear_sum_assignment`` (cost = -score). "Matched first" is exact,
not a big-M weight: a maximum matching (Hopcroft-Karp, ``maximum_bipartite_matching``) says how
many newcomers can be matched at most, and the solver gets exactly as many "unassigned" columns
as newcomers that must stay unmatched, so every complete assignment it can return matches as
many as possible and it only weighs scores among those.

Column reduction (exact): the full problem has n x (sum of capacities + n) cells, but few matter.

* Exchange argument: with r free newcomers, newcomer i never needs a mentor outside its r best
  feasible mentors. If it were matched outside them, the other r - 1 newcomers occupy at most
  r - 1 of those r mentors, so one of them is unused; moving i there loses nothing.
* Dual certificate (sharper in practice): solve with each newcomer's k best mentors only
  (k = 16 first). If every newcomer whose list was cut has a listed mentor with capacity left over,
  the solution is optimal for the full problem: that mentor's capacity constraint is slack, so
  its dual price is 0, the newcomer's dual value is at least its score there, which is at least
  any score it was cut from, so every cut cell satisfies the dual constraint. Newcomers failing
  the check get 4k candidates and the reduced problem is solved again; a list of r mentors needs
  no check (exchange argument).

* Private mentors: a mentor listed by a single newcomer has no competitor, so of such mentors
  a newcomer only needs its best one.

* Crowded problems (more free newcomers than usable slots, a burst of joins): most newcomers
  must wait, and the lists are kept per mentor instead (``_solve_crowded``): each mentor lists
  its best newcomers, the slots are the solver's rows. A mentor that lists a newcomer left
  unmatched is certified (that newcomer's dual value is 0, so the mentor's price covers every
  newcomer it did not list); the others get longer lists. Neither the f x s matrix nor the
  f x m score matrix is ever built: a float32 pass finds each mentor's candidates, which are
  then scored exactly.

Complexity: building the lists is a few O(n m) numpy passes (``np.argpartition``, in row blocks
that stay in the CPU cache); the solver runs on n x (slots of the listed mentors + unmatchable
newcomers) instead of n x (all slots + n). For 2,000 x 10,000 that is about 2,000 x 6,500
instead of 2,000 x 17,000 columns, solved in a single round.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

#: Score bonus of keeping a newcomer's current mentor; see the module docstring.
INCUMBENT_TOLERANCE = 1e-6
#: Candidate mentors per newcomer in the first reduced solve.
FIRST_CANDIDATES = 16
#: Factor by which a newcomer's candidate list grows when the certificate fails.
CANDIDATE_GROWTH = 4
#: Rows handled per numpy block while selecting candidates: keeps temporaries in the CPU cache
#: instead of materialising further n x m arrays.
_BLOCK_CELLS = 1 << 17
#: Problems up to this many cells (free newcomers x free slots) are solved whole and dense:
#: for them candidate lists and certificates cost more than they save.
_WHOLE_DENSE_CELLS = 1 << 14
#: Reduced problems up to this many cells are solved densely (less overhead than sparse).
_SMALL_REDUCED_CELLS = 1 << 17
#: Above this many dummy cells per listed cell the reduced problem is solved densely.
_SPARSE_DUMMY_FACTOR = 4
#: Crowded (more free newcomers than usable slots): with more than this many times the slots,
#: or more than ``_CROWDED_DENSE_CELLS`` cells, the lists are kept per mentor (its best
#: newcomers, ``_solve_crowded``); otherwise the whole problem is solved dense.
_CROWDED_FACTOR = 2.0
_CROWDED_DENSE_CELLS = 1 << 22
#: Mentor lists of up to this many cells (free newcomers x mentors) are built from their
#: cells alone; more (the first lists of all mentors) by a pass over whole rows.
_COLUMN_CELLS = 1 << 21
#: A mentor's first list in a crowded problem: this many newcomers per free slot, plus
#: ``_COLUMN_FIRST_EXTRA``; a list that fails its certificate grows by ``CANDIDATE_GROWTH``.
_COLUMN_FIRST_PER_SLOT = 4
_COLUMN_FIRST_EXTRA = 4
#: A crowded problem whose lists grow beyond this share of all its cells is solved whole.
_COLUMN_DENSE_SHARE = 0.25

IntArray = NDArray[np.int_]
FloatArray = NDArray[np.float64]


class ScoreSource(Protocol):
    """Scores computed on demand (``score_engine.ScoreMatrix``): the solver reads only a few rows
    and cells of the n x m matrix, so it need never exist as a whole."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def rows(self, index: IntArray) -> FloatArray:
        """The scores of the rows ``index`` against every mentor (a new array)."""
        ...

    def cells(self, rows: IntArray, cols: IntArray) -> FloatArray:
        """The scores of the cells ``(rows[k], cols[k])``."""
        ...


class _Dense:
    """A score matrix in memory as a ``ScoreSource``."""

    def __init__(self, scores: FloatArray) -> None:
        self.scores = scores

    @property
    def shape(self) -> tuple[int, int]:
        n, m = self.scores.shape
        return n, m

    def rows(self, index: IntArray) -> FloatArray:
        return self.scores[index]

    def cells(self, rows: IntArray, cols: IntArray) -> FloatArray:
        return self.scores[rows, cols]


def solve_assignment(
    scores: FloatArray | ScoreSource,
    capacity: IntArray,
    feasible: NDArray[np.bool_],
    incumbent: IntArray,
    pinned: IntArray,
    shortlist: IntArray | None = None,
) -> IntArray:
    """Assign newcomers (rows) to mentors (columns); returns the mentor column or -1 per row.

    ``scores``: n x m in [0, 1], an array or a ``ScoreSource`` (then only the rows and cells
    the solver reads are computed and checked). ``capacity``: m integers >= 0. ``feasible``:
    n x m booleans.
    ``incumbent``: per row the column of its current pending mentor or -1. ``pinned``: per row
    the column it must get or -1. See the module docstring for objective, tie-breaking and the
    exact column reduction.

    ``shortlist`` (optional, n x k): per row its k best feasible columns by score, -1 where it
    has fewer, as ``score_matrix(..., shortlist=k)`` lists them. The first candidate lists are
    then taken from it instead of from a pass over the whole matrix.

    Raises ``ValueError`` on inconsistent shapes or values, a pinned pair that is infeasible, or
    pins that exceed a mentor's capacity.
    """
    if isinstance(scores, np.ndarray):
        if scores.ndim != 2:
            raise ValueError(
                f"scores must be a 2-d array (newcomers x mentors), got {scores.shape}"
            )
        _check_scores(scores)
        scores = _Dense(scores)
    n, m = _check_shapes(scores.shape, capacity, feasible, incumbent, pinned)
    if shortlist is not None and (
        shortlist.ndim != 2
        or shortlist.shape[0] != n
        or (shortlist.size and (shortlist.min() < -1 or shortlist.max() >= m))
    ):
        raise ValueError(f"shortlist must be n x k columns or -1 (n = {n}), got {shortlist.shape}")
    result = np.full(n, -1, dtype=np.int_)
    remaining = _apply_pins(pinned, capacity, feasible, result)
    free = np.flatnonzero(pinned < 0)
    if free.size == 0 or m == 0 or not remaining.any():
        return result
    # Only mentors some waiting newcomer may have count (newcomers of the same year have
    # capacity too, but nobody can pair with them yet).
    waiting = feasible if free.size == n else feasible[free]  # no copy without pins
    usable = np.where(waiting.any(axis=0), remaining, 0)
    slots = int(usable.sum())
    if free.size * slots <= _WHOLE_DENSE_CELLS:
        result[free] = _solve_by_slots(scores, feasible, usable, incumbent, free)
        return result
    if free.size > slots:
        # Crowded. Mentor lists certify quickly when most newcomers must wait; near the
        # balance most are matched, lists keep growing, and the whole problem is cheaper
        # while its dense matrix is small.
        if free.size > _CROWDED_FACTOR * slots or free.size * slots > _CROWDED_DENSE_CELLS:
            result[free] = _solve_crowded(scores, feasible, usable, incumbent, free)
        else:
            result[free] = _solve_by_slots(scores, feasible, usable, incumbent, free)
        return result
    lists = _CandidateLists(scores, feasible, remaining, incumbent, free, shortlist)
    while True:
        chosen = lists.solve()
        failing = lists.uncertified(chosen)
        if failing.size == 0:
            break
        lists.grow(failing)
    result[free] = chosen
    return result


def _solve_by_slots(
    scores: ScoreSource,
    feasible: NDArray[np.bool_],
    remaining: IntArray,
    incumbent: IntArray,
    free: IntArray,
) -> IntArray:
    """The same optimum, directly on the whole problem: used when newcomers outnumber the free
    mentor slots (a burst of joins) and when the problem is small.

    One dense s x f ``linear_sum_assignment`` of the s free slots and the f newcomers: it
    assigns min(s, f) pairs, so no "unassigned" columns are needed. A feasible pair is worth
    ``s + 1`` plus its score (plus the incumbent bonus), an infeasible one 0 (meaning
    unassigned), so the solver first maximises the number of feasible pairs (one more pair
    outweighs any loss of score, which is at most min(s, f)) and then the total score, exactly
    as the candidate-list path. O(min(s, f)^2 max(s, f)) time and s x f memory.
    """
    slot_mentor = np.repeat(np.arange(remaining.size), remaining)
    sub_scores = scores.rows(free)[:, slot_mentor]
    _check_scores(sub_scores)
    sub_feasible = feasible[np.ix_(free, slot_mentor)]
    value = sub_scores + (slot_mentor[None, :] == incumbent[free][:, None]) * INCUMBENT_TOLERANCE
    value += slot_mentor.size + 1.0
    value[~sub_feasible] = 0.0
    slots, rows = linear_sum_assignment(value.T, maximize=True)
    chosen = np.full(free.size, -1, dtype=np.int_)
    kept = sub_feasible[rows, slots]
    chosen[rows[kept]] = slot_mentor[slots[kept]]
    return chosen


def _solve_crowded(
    scores: ScoreSource,
    feasible: NDArray[np.bool_],
    remaining: IntArray,
    incumbent: IntArray,
    free: IntArray,
) -> IntArray:
    """The same optimum when newcomers outnumber the free slots (a burst of joins), without
    the dense f x s matrix of ``_solve_by_slots``: each mentor lists its best newcomers.

    Exactness (a dual certificate from the mentors' side): solve the problem restricted to
    the listed cells. In an optimum of it, a newcomer left unmatched has dual value 0, so a
    mentor that lists an unmatched newcomer ``i'`` has every slot priced at least at
    ``key(i', j)``, which is at least the key of every newcomer it did not list (lists hold
    a mentor's best). Every cell left out then satisfies its dual constraint, and the
    restricted optimum is optimal for the whole problem. A mentor whose listed newcomers are
    all matched (and that left some out) gets a longer list and the restricted problem is
    solved again. Lists start at ``_COLUMN_FIRST_PER_SLOT`` newcomers per free slot (plus
    ``_COLUMN_FIRST_EXTRA``); if they grow past ``_COLUMN_DENSE_SHARE`` of all cells, the
    problem is solved whole by ``_solve_by_slots``.
    """
    columns = np.flatnonzero(remaining > 0)
    size = np.minimum(remaining[columns] * _COLUMN_FIRST_PER_SLOT + _COLUMN_FIRST_EXTRA, free.size)
    lists = _ColumnLists(scores, feasible, remaining, incumbent, free)
    lists.select(columns, size)
    limit = _COLUMN_DENSE_SHARE * free.size * int(remaining.sum())
    while True:
        chosen = lists.solve()
        failing = lists.uncertified(chosen)
        if failing.size == 0:
            return chosen
        grown = np.minimum(lists.size[failing] * CANDIDATE_GROWTH, free.size)
        if lists.cells() - lists.size[failing].sum() + grown.sum() > limit:
            return _solve_by_slots(scores, feasible, remaining, incumbent, free)
        lists.select(failing, grown)


class _ColumnLists:
    """Per mentor (column) with free slots its best free newcomers by key (score plus the
    incumbent bonus; infeasible cells never listed), as flat cells. ``size[j]`` is how many
    a column asked for, ``usable[j]`` how many feasible newcomers it has at all."""

    def __init__(
        self,
        scores: ScoreSource,
        feasible: NDArray[np.bool_],
        remaining: IntArray,
        incumbent: IntArray,
        free: IntArray,
    ) -> None:
        self.scores, self.feasible, self.free = scores, feasible, free
        self.remaining, self.incumbent = remaining, incumbent
        m = remaining.size
        self.size = np.zeros(m, dtype=np.int_)
        self.usable = np.zeros(m, dtype=np.int_)
        self.rows = np.empty(0, dtype=np.int_)  # index into ``free``
        self.cols = np.empty(0, dtype=np.int_)
        self.keys = np.empty(0)

    def cells(self) -> int:
        return int(self.rows.size)

    def select(self, columns: IntArray, size: IntArray) -> None:
        """(Re)build the lists of ``columns`` with their ``size`` best newcomers: a pass over
        the free rows (``_scan``)."""
        if columns.size == 0:
            return
        if self.free.size * columns.size <= _COLUMN_CELLS:
            # A few columns (lists that grow): score just their cells, not whole rows.
            self._select_cells(columns, size)
            return
        step = max(1, _BLOCK_CELLS // max(self.remaining.size, 1))
        rows, cols, keys, usable = self._scan(0, self.free.size, step, columns, size)
        self._replace(columns, size, (rows, cols, keys))
        self.usable[columns] = usable

    def _scan(
        self, first: int, stop: int, step: int, columns: IntArray, size: IntArray
    ) -> tuple[IntArray, IntArray, FloatArray, IntArray]:
        """Of the free rows ``first`` to ``stop``, each column's ``size`` best cells (rows,
        column positions, keys) and its number of feasible rows: a pass in blocks of ``step``
        rows over rough scores (float32 where the scores offer them: ``rows_approx``, within
        half a margin of the exact ones).

        Per column a threshold, its ``size``-th best rough key so far, rejects most cells of a
        block at once: a cell among the ``size`` best by exact key lies at most a margin
        (plus the incumbent bonus) below the final threshold, which only rises. The first
        block sets the thresholds; the cells that pass are gathered and, when they pile up,
        cut back to those within reach of the raised thresholds. Only the cells left at the
        end are scored exactly."""
        width = columns.size
        every = width == self.remaining.size  # all columns: no copies of their subset
        approx = getattr(self.scores, "rows_approx", None)
        threshold = np.full(width, -np.inf)
        slack = INCUMBENT_TOLERANCE
        found_rows: list[IntArray] = []
        found_cols: list[IntArray] = []
        found_keys: list[FloatArray] = []
        gathered = 0
        cut_at = 4 * int(size.sum()) + width
        usable_count = np.zeros(width, dtype=np.int_)
        for start in range(first, stop, step):
            source = self.free[start : min(start + step, stop)]
            usable = self.feasible[source] if every else self.feasible[source][:, columns]
            usable_count += usable.sum(axis=0)
            if approx is not None:
                rough, margin = approx(source)
                slack = margin + INCUMBENT_TOLERANCE
            else:
                rough = self.scores.rows(source)
            block = rough if every else rough[:, columns]
            if start == first:
                threshold = _kth_best(np.where(usable, block, -np.inf), size)
            # The limit in the block's precision, rounded down (never above what it admits).
            limit = np.nextafter((threshold - slack).astype(block.dtype), -np.inf)
            near = block >= limit
            np.logical_and(near, usable, out=near)
            row, col = np.nonzero(near)
            found_rows.append(row + start)
            found_cols.append(col)
            found_keys.append(block[row, col].astype(np.float64))
            gathered += row.size
            if gathered > cut_at:
                rows, cols, keys, threshold = _within_reach(
                    found_rows, found_cols, found_keys, size, slack
                )
                found_rows, found_cols, found_keys = [rows], [cols], [keys]
                gathered = rows.size
                cut_at = max(cut_at, 2 * gathered)  # many near-ties: cut less often
        rows, cols, _, _ = _within_reach(found_rows, found_cols, found_keys, size, slack)
        rows, cols = _in_row_order(rows, cols)
        exact = self.scores.cells(self.free[rows], columns[cols])
        _check_scores(exact)
        bonus = self.incumbent[self.free[rows]] == columns[cols]
        keys = exact + np.where(bonus, INCUMBENT_TOLERANCE, 0.0)
        best_rows, best_cols, best_keys = _best_per_column([rows], [cols], [keys], size)
        return best_rows, best_cols, best_keys, usable_count

    def _select_cells(self, columns: IntArray, size: IntArray) -> None:
        """``select`` for few columns: every free row's cell in them, scored exactly."""
        width = columns.size
        rows = np.repeat(np.arange(self.free.size), width)
        cols = np.tile(np.arange(width), self.free.size)
        usable = self.feasible[self.free[rows], columns[cols]]
        rows, cols = rows[usable], cols[usable]
        keys = self.scores.cells(self.free[rows], columns[cols])
        _check_scores(keys)
        keys = keys + np.where(
            self.incumbent[self.free[rows]] == columns[cols], INCUMBENT_TOLERANCE, 0.0
        )
        self._replace(columns, size, _best_per_column([rows], [cols], [keys], size))
        self.usable[columns] = np.bincount(cols, minlength=width)

    def _replace(
        self, columns: IntArray, size: IntArray, best: tuple[IntArray, IntArray, FloatArray]
    ) -> None:
        """The lists of ``columns`` become ``best`` (rows, column positions, keys)."""
        rows, cols, keys = best
        stay = np.ones(self.remaining.size, dtype=bool)
        stay[columns] = False
        kept = stay[self.cols]
        self.rows = np.concatenate([self.rows[kept], rows])
        self.cols = np.concatenate([self.cols[kept], columns[cols]])
        self.keys = np.concatenate([self.keys[kept], keys])
        self.size[columns] = size

    def solve(self) -> IntArray:
        """Optimal assignment of the listed cells: mentor column per free row or -1. Slots
        are the rows of the solver (there are fewer of them than newcomers), every listed
        newcomer a column, plus as many shared "unassigned" columns as slots that cannot be
        matched (Hopcroft-Karp), so the solver maximises the number of pairs first."""
        chosen = np.full(self.free.size, -1, dtype=np.int_)
        if self.cols.size == 0:
            return chosen
        mentors, local = np.unique(self.cols, return_inverse=True)
        slots = np.minimum(self.remaining[mentors], np.bincount(local))
        first = np.cumsum(slots) - slots
        real = int(slots.sum())
        newcomers, row_of = np.unique(self.rows, return_inverse=True)
        cell_newcomers, cell_slots = _cells_to_slots(row_of, first[local], slots[local])
        values = np.repeat(self.keys, slots[local])
        dummies = real - _matchable(cell_slots, cell_newcomers, real, newcomers.size)
        got_slots, got_newcomers = _sparse_assignment(
            cell_slots, cell_newcomers, values, real, newcomers.size, dummies
        )
        matched = got_newcomers < newcomers.size
        slot_owner = np.repeat(mentors, slots)
        chosen[newcomers[got_newcomers[matched]]] = slot_owner[got_slots[matched]]
        return chosen

    def uncertified(self, chosen: IntArray) -> IntArray:
        """Columns that left some feasible newcomer out and list no unmatched newcomer."""
        unmatched = (chosen < 0).astype(np.float64)
        m = self.remaining.size
        has_unmatched = np.bincount(self.cols, weights=unmatched[self.rows], minlength=m) > 0
        listed = np.bincount(self.cols, minlength=m)
        failing: IntArray = np.flatnonzero(
            (self.remaining > 0) & ~has_unmatched & (listed < self.usable)
        )
        return failing


def _within_reach(
    rows: list[IntArray],
    cols: list[IntArray],
    keys: list[FloatArray],
    size: IntArray,
    slack: float,
) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
    """Of gathered cells with rough keys, those within ``slack`` of their column's
    ``size``-th best (all of a column that has fewer), and those thresholds."""
    row, col, key = np.concatenate(rows), np.concatenate(cols), np.concatenate(keys)
    if key.size == 0:
        return row, col, key, np.full(size.size, -np.inf)
    order = _by_column_and_key(col, key)
    row, col, key = row[order], col[order], key[order]
    starts = np.searchsorted(col, np.arange(size.size))
    counts = np.bincount(col, minlength=size.size)
    enough = (size >= 1) & (counts >= size)
    kth = np.where(enough, key[np.minimum(starts + size - 1, key.size - 1)], -np.inf)
    keep = key >= kth[col] - slack
    return row[keep], col[keep], key[keep], kth


def _in_row_order(rows: IntArray, cols: IntArray) -> tuple[IntArray, IntArray]:
    """The cells sorted by row (stable), as ``_best_per_column`` needs them for ties."""
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]


def _by_column_and_key(col: IntArray, key: FloatArray) -> IntArray:
    """The order of cells by column, then key from the best (stable: equal cells keep
    their order). Two stable sorts, the second a radix sort of 16-bit columns where they
    fit: 40 % faster than ``np.lexsort`` (which sorts both keys by merging)."""
    if col.size == 0 or int(col.max()) <= np.iinfo(np.uint16).max:
        by_key = np.argsort(-key, kind="stable")
        ordered: IntArray = by_key[np.argsort(col[by_key].astype(np.uint16), kind="stable")]
        return ordered
    return np.lexsort((-key, col))


def _kth_best(keys: FloatArray, size: IntArray) -> FloatArray:
    """Per column of ``keys`` its ``size``-th largest value (-inf where it has fewer finite
    ones): a threshold that ``size`` of its cells reach. Keys without the incumbent bonus are
    at most the keys with it, so the threshold never rises above what the cells reach."""
    if keys.shape[0] == 0:
        return np.full(keys.shape[1], -np.inf)
    ranked = -np.sort(-keys, axis=0)
    kth = np.clip(size - 1, 0, keys.shape[0] - 1)
    found = ranked[kth, np.arange(keys.shape[1])]
    enough = (size >= 1) & (size <= keys.shape[0]) & np.isfinite(found)
    return np.where(enough, found, -np.inf)


def _best_per_column(
    rows: list[IntArray], cols: list[IntArray], keys: list[FloatArray], size: IntArray
) -> tuple[IntArray, IntArray, FloatArray]:
    """Of the gathered cells, each column's ``size[col]`` best by key (ties by row).

    The cells must come so that of two with the same column and key the one with the smaller
    row comes first, as ``_scan`` and ``_select_cells`` gather them (blocks in row order, a
    block's cells in row order, the cells kept by an earlier cut, sorted so, before the rows
    after them): then a stable sort by column and key breaks ties by row, without sorting by
    row as well."""
    row, col, key = np.concatenate(rows), np.concatenate(cols), np.concatenate(keys)
    order = _by_column_and_key(col, key)
    row, col, key = row[order], col[order], key[order]
    starts = np.searchsorted(col, np.arange(size.size))
    rank = np.arange(col.size) - starts[col]
    keep = rank < size[col]
    return row[keep].astype(np.int_), col[keep].astype(np.int_), key[keep]


def _check_shapes(
    shape: tuple[int, int],
    capacity: IntArray,
    feasible: NDArray[np.bool_],
    incumbent: IntArray,
    pinned: IntArray,
) -> tuple[int, int]:
    n, m = shape
    if feasible.shape != (n, m):
        raise ValueError(f"feasible has shape {feasible.shape}, scores {shape}")
    if capacity.shape != (m,):
        raise ValueError(f"capacity must have one entry per mentor ({m}), got {capacity.shape}")
    for name, rows in (("incumbent", incumbent), ("pinned", pinned)):
        if rows.shape != (n,):
            raise ValueError(f"{name} must have one entry per newcomer ({n}), got {rows.shape}")
        if n and (rows.min() < -1 or rows.max() >= m):
            raise ValueError(f"{name} entries must be -1 or a mentor column 0..{m - 1}")
    if m and capacity.min() < 0:
        raise ValueError("capacity must be >= 0 for every mentor")
    return n, m


def _check_scores(scores: FloatArray) -> None:
    # min/max propagate NaN, and NaN fails both comparisons.
    if scores.size and not (scores.min() >= 0.0 and scores.max() <= 1.0):
        raise ValueError("scores must be finite and within [0, 1]")


def _apply_pins(
    pinned: IntArray, capacity: IntArray, feasible: NDArray[np.bool_], result: IntArray
) -> IntArray:
    """Fix pinned rows in ``result``; return the capacity left for everybody else."""
    rows = np.flatnonzero(pinned >= 0)
    cols = pinned[rows]
    bad = rows[~feasible[rows, cols]]
    if bad.size:
        pairs = ", ".join(f"row {i} -> column {pinned[i]}" for i in bad[:5])
        raise ValueError(f"pinned pair(s) are not feasible: {pairs}")
    load = np.bincount(cols, minlength=capacity.size)
    over = np.flatnonzero(load > capacity)
    if over.size:
        detail = ", ".join(f"column {j}: {load[j]} pins, capacity {capacity[j]}" for j in over[:5])
        raise ValueError(f"pins exceed mentor capacity ({detail})")
    result[rows] = cols
    return (capacity - load).astype(np.int_)


class _CandidateLists:
    """Each free row's candidate mentors: its best ``size[row]`` by key.

    The key of a cell is its score plus the incumbent bonus, -inf where the mentor cannot be
    chosen (infeasible or no capacity left). Candidates are kept as flat arrays of cells
    (row, column, key), not one array per row, so that every step stays vectorised.
    """

    def __init__(
        self,
        scores: ScoreSource,
        feasible: NDArray[np.bool_],
        remaining: IntArray,
        incumbent: IntArray,
        free: IntArray,
        shortlist: IntArray | None,
    ) -> None:
        self.scores, self.feasible, self.free = scores, feasible, free
        self.remaining = remaining
        self.open = remaining > 0
        self.incumbent = incumbent
        rows = free.size
        self.limit = rows  # lists this long need no certificate (exchange argument)
        # size[row]: the list holds the row's size[row] best open cells (by key), or all.
        self.size = np.zeros(rows, dtype=np.int_)
        self.rows = np.empty(0, dtype=np.int_)
        self.cols = np.empty(0, dtype=np.int_)
        self.keys = np.empty(0)
        if shortlist is None:
            self._select(np.arange(rows), FIRST_CANDIDATES, first=True)
        else:
            self._take(shortlist[free])

    def _take(self, shortlist: IntArray) -> None:
        """Lists from each row's best feasible columns by score (``shortlist``, -1 pads).

        The open columns among a row's k best feasible are its k' best open ones (every open
        column left out scores no higher), so the list holds the k' best cells by score. By key
        (score plus the incumbent bonus) that still holds unless the incumbent was left out
        while within the bonus of the lowest listed score: it is then added, so that every cell
        left out keys no higher than any listed one, which the certificate needs.
        """
        listed = shortlist >= 0
        listed[listed] = self.open[shortlist[listed]]
        self.size = np.count_nonzero(listed, axis=1)
        rows = np.repeat(np.arange(self.free.size), self.size)
        cols = shortlist[listed]
        raw = self.scores.cells(self.free[rows], cols)
        _check_scores(raw)
        keys = raw + np.where(self.incumbent[self.free[rows]] == cols, INCUMBENT_TOLERANCE, 0.0)
        lowest = np.full(self.free.size, np.inf)
        np.minimum.at(lowest, rows, raw)
        held = np.flatnonzero((self.incumbent[self.free] >= 0) & (self.size > 0))
        held_cols = self.incumbent[self.free][held]
        usable = self.feasible[self.free[held], held_cols] & self.open[held_cols]
        held, held_cols = held[usable], held_cols[usable]
        held_raw = self.scores.cells(self.free[held], held_cols)
        _check_scores(held_raw)
        missing = ~(shortlist[held] == held_cols[:, None]).any(axis=1)
        added = missing & (held_raw + INCUMBENT_TOLERANCE > lowest[held])
        self.rows = np.concatenate([rows, held[added]])
        self.cols = np.concatenate([cols, held_cols[added]])
        self.keys = np.concatenate([keys, held_raw[added] + INCUMBENT_TOLERANCE])

    def _select(self, rows: IntArray, k: int, first: bool = False) -> None:
        """(Re)build the lists of ``rows`` with their ``k`` best cells."""
        m = self.scores.shape[1]
        k = min(k, m)
        step = max(1, _BLOCK_CELLS // max(m, 1))
        found_rows, found_cols, found_keys = [], [], []
        for start in range(0, rows.size, step):
            block = rows[start : start + step]
            source = self.free[block]
            key = self.scores.rows(source)
            _check_scores(key)
            usable = self.feasible[source] & self.open[None, :]
            np.copyto(key, -np.inf, where=~usable)
            holders = np.flatnonzero(self.incumbent[source] >= 0)
            held = self.incumbent[source][holders]
            key[holders, held] += np.where(usable[holders, held], INCUMBENT_TOLERANCE, 0.0)
            if k < m:
                # The k best per row, in no particular order; cells left out score no higher
                # than any listed one, which is all the exactness arguments need.
                top = np.argpartition(key, m - k, axis=1)[:, m - k :]
            else:
                top = np.broadcast_to(np.arange(m), key.shape)
            top_keys = np.take_along_axis(key, top, axis=1)
            keep = top_keys > -np.inf
            found_rows.append(np.repeat(block, keep.sum(axis=1)))
            found_cols.append(top[keep])
            found_keys.append(top_keys[keep])
        if not first:
            stay = np.ones(self.size.size, dtype=bool)
            stay[rows] = False
            kept = stay[self.rows]
            found_rows.insert(0, self.rows[kept])
            found_cols.insert(0, self.cols[kept])
            found_keys.insert(0, self.keys[kept])
        self.rows = np.concatenate(found_rows).astype(np.int_, copy=False)
        self.cols = np.concatenate(found_cols).astype(np.int_, copy=False)
        self.keys = np.concatenate(found_keys)
        self.size[rows] = k

    def grow(self, rows: IntArray) -> None:
        """Give ``rows`` longer candidate lists."""
        for k in np.unique(self.size[rows]):
            grown = max(int(k), FIRST_CANDIDATES) * CANDIDATE_GROWTH
            self._select(rows[self.size[rows] == k], grown)

    def solve(self) -> IntArray:
        """Optimal assignment of the reduced problem: mentor column per free row or -1."""
        chosen = np.full(self.free.size, -1, dtype=np.int_)
        if self.cols.size == 0:
            return chosen
        cell_rows, cell_cols, cell_keys = _drop_dominated_private(self.rows, self.cols, self.keys)
        active, row_of = np.unique(cell_rows, return_inverse=True)
        mentors, local = np.unique(cell_cols, return_inverse=True)
        # A mentor needs no more slots than rows listing it.
        slots = np.minimum(self.remaining[mentors], np.bincount(local))
        first = np.cumsum(slots) - slots
        real = int(slots.sum())
        slot_rows, slot_cols = _cells_to_slots(row_of, first[local], slots[local])
        values = np.repeat(cell_keys, slots[local])
        if active.size * max(real, active.size) <= _SMALL_REDUCED_CELLS:
            got_rows, got_cols = _small_assignment(slot_rows, slot_cols, values, active.size, real)
        else:
            # Maximum matching first (Hopcroft-Karp): giving the solver exactly as many
            # "unassigned" columns as rows that cannot all be matched forces every complete
            # assignment to match as many rows as possible, so the solver only weighs scores.
            matchable = _matchable(slot_rows, slot_cols, active.size, real)
            got_rows, got_cols = _min_cost_assignment(
                slot_rows, slot_cols, values, active.size, real, active.size - matchable
            )
        slot_owner = np.repeat(mentors, slots)
        matched = got_cols < real
        chosen[active[got_rows[matched]]] = slot_owner[got_cols[matched]]
        return chosen

    def uncertified(self, chosen: IntArray) -> IntArray:
        """Rows whose cut list is not proven sufficient (no listed mentor with spare capacity)."""
        used = np.bincount(chosen[chosen >= 0], minlength=self.remaining.size)
        slack = (used < self.remaining).astype(np.float64)
        has_slack = np.bincount(self.rows, weights=slack[self.cols], minlength=self.size.size) > 0
        doubtful = np.flatnonzero((self.size < self.limit) & ~has_slack)
        if doubtful.size == 0:
            return doubtful
        # Only lists that left out some usable cell need the certificate.
        lengths = np.bincount(self.rows, minlength=self.size.size)[doubtful]
        usable = np.count_nonzero(self.feasible[self.free[doubtful]] & self.open, axis=1)
        failing: IntArray = doubtful[lengths < usable]
        return failing


def _small_assignment(
    rows: IntArray, cols: IntArray, keys: FloatArray, n_rows: int, n_cols: int
) -> tuple[IntArray, IntArray]:
    """The reduced problem when it is small: one dense ``linear_sum_assignment``, no sparse
    matrices. A listed cell is worth ``n_rows + 1`` plus its key, every other cell (and the
    extra columns when rows outnumber columns) 0, meaning "unassigned": one more matched row
    outweighs any difference of keys (each at most 1 plus the tie bonus), so the solver
    matches as many rows as possible first and weighs keys among those, as the sparse path.
    Returns rows and columns of the listed cells it chose.
    """
    value = np.zeros((n_rows, max(n_cols, n_rows)))
    value[rows, cols] = keys + (n_rows + 1.0)
    got_rows, got_cols = linear_sum_assignment(value, maximize=True)
    real = value[got_rows, got_cols] > 0
    return got_rows[real].astype(np.int_), got_cols[real].astype(np.int_)


def _min_cost_assignment(
    rows: IntArray, cols: IntArray, keys: FloatArray, n_rows: int, n_cols: int, dummies: int
) -> tuple[IntArray, IntArray]:
    """Maximum-key assignment of every row to a listed column or to one of ``dummies`` shared
    "unassigned" columns (each row may take any of them, at key 0).

    The cells are few (a handful per row), so the sparse Jonker-Volgenant solver
    (``min_weight_full_bipartite_matching``) works on them directly. Its weights must be
    non-zero, so every cell costs ``2 - key`` (> 0 as keys are at most 1 plus the incumbent
    bonus), a dummy 2: every row takes exactly one column, so shifting all costs by the same
    amount leaves the optimum unchanged. When the dummy cells would outnumber the listed ones
    by far (many rows that cannot all be matched), a dense ``linear_sum_assignment`` is
    cheaper.
    """
    if dummies and n_rows * dummies > _SPARSE_DUMMY_FACTOR * rows.size:
        cost = np.full((n_rows, n_cols + dummies), np.inf)
        cost[:, n_cols:] = 0.0
        cost[rows, cols] = -keys
        got_rows, got_cols = linear_sum_assignment(cost)
        return got_rows.astype(np.int_), got_cols.astype(np.int_)
    return _sparse_assignment(rows, cols, keys, n_rows, n_cols, dummies)


def _matchable(rows: IntArray, cols: IntArray, n_rows: int, n_cols: int) -> int:
    """How many rows a maximum matching of the cells matches (Hopcroft-Karp)."""
    links = csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_rows, n_cols))
    return int(np.count_nonzero(maximum_bipartite_matching(links) >= 0))


def _sparse_assignment(
    rows: IntArray, cols: IntArray, keys: FloatArray, n_rows: int, n_cols: int, dummies: int
) -> tuple[IntArray, IntArray]:
    """``_min_cost_assignment`` on the sparse Jonker-Volgenant solver: every row to a listed
    column or one of ``dummies`` shared "unassigned" columns (cost ``2 - key`` or 2)."""
    dummy_rows = np.repeat(np.arange(n_rows), dummies)
    dummy_cols = np.tile(np.arange(n_cols, n_cols + dummies), n_rows)
    graph = csr_matrix(
        (
            np.concatenate([2.0 - keys, np.full(dummy_rows.size, 2.0)]),
            (np.concatenate([rows, dummy_rows]), np.concatenate([cols, dummy_cols])),
        ),
        shape=(n_rows, n_cols + dummies),
    )
    got_rows, got_cols = min_weight_full_bipartite_matching(graph)
    return got_rows.astype(np.int_), got_cols.astype(np.int_)


def _drop_dominated_private(
    rows: IntArray, cols: IntArray, keys: FloatArray
) -> tuple[IntArray, IntArray, FloatArray]:
    """Keep only each row's best "private" mentor (one no other row lists).

    Nobody competes for a private mentor, so a row that ends up with one of its private
    mentors may as well take the best of them: the others can never be part of an optimum
    that this one is not also part of. Fewer columns for the solver, same optimum.
    """
    listed_by = np.bincount(cols)
    private = listed_by[cols] == 1
    # Order private cells by row, best key first; the first of each row is its best.
    order = np.flatnonzero(private)
    order = order[np.lexsort((-keys[order], rows[order]))]
    first = np.ones(order.size, dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    keep = ~private
    keep[order[first]] = True
    return rows[keep], cols[keep], keys[keep]


def _cells_to_slots(
    rows: IntArray, first_slot: IntArray, slots: IntArray
) -> tuple[IntArray, IntArray]:
    """Expand (row, mentor) cells into (row, slot) cells, one per capacity slot of the mentor."""
    repeat_rows = np.repeat(rows, slots)
    # Offset of each expanded cell within its mentor's slots: 0, 1, ... slots-1.
    starts = np.repeat(np.cumsum(slots) - slots, slots)
    offsets = np.arange(repeat_rows.size) - starts
    return repeat_rows, np.repeat(first_slot, slots) + offsets
