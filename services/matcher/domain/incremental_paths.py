"""The repair by shortest augmenting paths over the reduced costs (see ``incremental``): a row
enters (``_add_row``), a column gets a free place (``_free_column``), and the checks of the
optimality conditions that the repair keeps.
"""

from __future__ import annotations

import heapq

from services.matcher.domain.assignment import INCUMBENT_TOLERANCE
from services.matcher.domain.incremental_state import (
    _EPS,
    _INF,
    Inconsistent,
    _Col,
    _Kept,
    _Row,
    _TooCostly,
)


class _Paths(_Kept):
    """The shortest augmenting paths and the checks of the prices they keep."""

    # --- the shortest augmenting paths ---------------------------------------------------------

    def crowded(self, newcomers: int, places: int) -> bool:
        """Whether the network is too crowded for incremental planning to pay."""
        return newcomers > self.crowded_share * places

    def _spend(self, cells: int) -> None:
        self.budget -= cells
        if self.budget < 0:
            raise _TooCostly("crowded")

    def _slack(self, row: _Row, j: str) -> float:
        return row.u + self.cols[j].v - self.big - row.key(j)

    def _add_row(self, s: str) -> list[str]:
        """Row ``s`` enters: shortest augmenting path from it over the reduced costs (the
        Hungarian step). Returns the rows whose price went down."""
        row = self.rows[s]
        row.out = False
        self.dirty.add(s)
        self._spend(len(row.scores))
        big, cols, rows = self.big, self.cols, self.rows
        best, best_j = 0.0, ""
        for j in row.scores:
            worth = big + row.key(j) - cols[j].v
            if worth > best or (worth == best and best_j and j < best_j):
                best, best_j = worth, j
        row.u = best
        if best_j and best > 0 and not cols[best_j].full:  # its best column has room
            row.col = best_j
            cols[best_j].rows.add(s)
            return []
        # Dijkstra over columns; rows are reached through the full columns they sit on.
        dist: dict[str, float] = {}
        pred: dict[str, str] = {}  # column -> the row it was reached from
        done_rows: dict[str, float] = {}
        done_cols: dict[str, float] = {}
        heap: list[tuple[float, int, str]] = []

        def scan(i: str, base: float) -> None:
            r = rows[i]
            done_rows[i] = base
            self._spend(len(r.scores))
            for j, score in r.scores.items():
                if j in done_cols:
                    continue
                key = score + (INCUMBENT_TOLERANCE if j == r.incumbent else 0.0)
                d = base + max(0.0, r.u + cols[j].v - big - key)
                if d < dist.get(j, _INF):
                    dist[j] = d
                    pred[j] = i
                    heapq.heappush(heap, (d, 0, j))
            heapq.heappush(heap, (base + max(0.0, r.u), 1, i))  # its dummy: unmatched

        scan(s, 0.0)
        end_kind, end, delta = 1, s, 0.0
        while heap:
            d, kind, x = heapq.heappop(heap)
            if kind == 1:
                end_kind, end, delta = 1, x, d
                break
            if x in done_cols or d > dist[x]:
                continue
            col = cols[x]
            if not col.full:
                end_kind, end, delta = 0, x, d
                break
            done_cols[x] = d
            for i in sorted(col.rows):
                scan(i, d)
        lowered = []
        for i, d in done_rows.items():
            if d < delta:
                rows[i].u -= delta - d
                lowered.append(i)
        for j, d in done_cols.items():
            if d < delta:
                cols[j].v += delta - d
        self._augment(s, end_kind, end, pred)
        return lowered

    def _augment(self, s: str, end_kind: int, end: str, pred: dict[str, str]) -> None:
        """Augment along the path that ``_add_row`` found from row ``s`` to ``end`` (a column
        with room, kind 0, or a row's dummy, kind 1; none when that row is ``s``)."""
        rows, cols = self.rows, self.cols
        if end_kind == 1:
            if end == s:
                return
            j_free = rows[end].col
            assert j_free is not None
            cols[j_free].rows.discard(end)
            rows[end].col = None
            self.dirty.add(end)
            target = j_free
        else:
            target = end
        while True:
            i = pred[target]
            previous = self._move(i, target)
            if i == s:
                break
            assert previous is not None
            target = previous

    def _free_all(self, j: str) -> None:
        """Column ``j`` has free places: while it is priced, let rows move in."""
        col = self.cols.get(j)
        while col is not None and not col.full and col.v > _EPS:
            self._free_column(j)
        if col is not None and not col.full:
            col.v = 0.0

    def _free_column(self, k: str) -> None:
        """Column ``k`` has a free place and a price > 0: shortest path from its side, lowering
        its price until it is 0 or a row moves in (the Hungarian step for a column)."""
        big, cols, rows = self.big, self.cols, self.rows
        dist: dict[str, float] = {}
        pred: dict[str, str] = {}  # row -> the column it moves to
        via: dict[str, str] = {}  # column -> the row on it through which it was reached
        done_rows: dict[str, float] = {}
        done_cols: dict[str, float] = {}
        heap: list[tuple[float, int, str]] = []

        def scan(j: str, base: float) -> None:
            c = cols[j]
            done_cols[j] = base
            self._spend(len(c.listed_by))
            # The rows on a reached column share its distance (their chosen cells stay tight
            # when the prices move); the heap holds nothing shorter, so it is theirs.
            for i in c.rows:
                done_rows.setdefault(i, base)
            for i in c.listed_by:
                r = rows[i]
                if r.out or r.pinned is not None or i in done_rows or r.col == j:
                    continue
                d = base + max(0.0, r.u + c.v - big - r.key(j))
                if d < dist.get(i, _INF):
                    dist[i] = d
                    pred[i] = j
                    heapq.heappush(heap, (d, 0, i))
            heapq.heappush(heap, (base + max(0.0, c.v), 1, j))  # its price reaches 0

        scan(k, 0.0)
        end_kind, end, delta = 1, k, cols[k].v
        while heap:
            d, kind, x = heapq.heappop(heap)
            if kind == 1:
                end_kind, end, delta = 1, x, d
                break
            if x in done_rows or d > dist[x]:
                continue
            done_rows[x] = d
            r = rows[x]
            if r.col is None:  # an unmatched row moves in
                end_kind, end, delta = 0, x, d
                break
            if r.col not in done_cols:
                via[r.col] = x
                scan(r.col, d)
        for i, d in done_rows.items():
            if d < delta:
                rows[i].u += delta - d
        for j, d in done_cols.items():
            if d < delta:
                cols[j].v = max(0.0, cols[j].v - (delta - d))
        if end_kind == 1:
            if end == k:
                cols[k].v = 0.0
                return
            cols[end].v = 0.0
            i = via[end]
        else:
            i = end
        while True:
            target = pred[i]
            self._move(i, target)
            if target == k:
                break
            i = via[target]

    def _move(self, i: str, target: str) -> str | None:
        """Row ``i`` takes a place in column ``target`` (one step of an augmenting path); the
        column it leaves, if any."""
        r = self.rows[i]
        previous = r.col
        if previous is not None:
            self.cols[previous].rows.discard(i)
        self.cols[target].rows.add(i)
        r.col = target
        self.dirty.add(i)
        self.touched_cols.add(target)
        return previous

    # --- checks ---------------------------------------------------------------------------------

    def _check_row(self, i: str, row: _Row) -> None:
        if row.out:
            raise Inconsistent(f"row {i} is still out of the problem")
        if row.pinned is not None:
            return
        if row.u < -_EPS:
            raise Inconsistent(f"row {i} has a negative price")
        if row.u < self.big + row.bound - _EPS:
            raise Inconsistent(f"row {i}'s price does not cover its unlisted mentors")
        for j in row.scores:
            if self._slack(row, j) < -1e-7:
                raise Inconsistent(f"cell {i} -> {j} has a negative reduced cost")
        if row.col is None:
            if row.u > 1e-7:
                raise Inconsistent(f"unmatched row {i} has a price")
        else:
            if i not in self.cols[row.col].rows:
                raise Inconsistent(f"row {i} is not on its column")
            if abs(self._slack(row, row.col)) > 1e-7:
                raise Inconsistent(f"row {i}'s cell is not tight")

    def _check_col(self, j: str, col: _Col) -> None:
        if len(col.rows) > col.capacity:
            raise Inconsistent(f"column {j} holds more rows than its capacity")
        if col.v < -_EPS or (not col.full and col.v > 1e-7):
            raise Inconsistent(f"column {j} has a wrong price")
        for i in col.rows:
            if self.rows[i].col != j:
                raise Inconsistent(f"column {j} holds row {i} that is elsewhere")

    def _check_touched(self) -> None:
        for i in self.dirty:
            row = self.rows.get(i)
            if row is not None:
                self._check_row(i, row)
        for j in self.touched_cols:
            col = self.cols.get(j)
            if col is not None:
                self._check_col(j, col)
        self.touched_cols = set()

    def verify(self) -> None:
        """Every invariant of the whole state (raises ``Inconsistent``)."""
        for i, row in self.rows.items():
            self._check_row(i, row)
            for j in row.scores:
                if i not in self.cols[j].listed_by:
                    raise Inconsistent(f"column {j} misses row {i} in its listing")
        for j, col in self.cols.items():
            self._check_col(j, col)
