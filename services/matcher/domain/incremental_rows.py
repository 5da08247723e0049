"""Rows (newcomers) and columns (mentors) in and out of the kept state (see ``incremental``):
listing and rescoring a row's mentors, taking rows out and letting them enter again, adding and
dropping columns, and the small questions an update asks of the state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from services.matcher.domain.assignment import INCUMBENT_TOLERANCE
from services.matcher.domain.explain import LOWER
from services.matcher.domain.incremental_paths import _Paths
from services.matcher.domain.incremental_state import (
    _EPS,
    _INF,
    _Col,
    _Inputs,
    _Row,
)
from services.matcher.domain.model import Member
from services.matcher.domain.planning import (
    ALTERNATIVES,
    SHORTLIST,
)
from services.matcher.domain.proposing import (
    SHARED_CHECK_LIMIT,
)
from services.matcher.domain.score_engine import score_matrix


class _RowsAndColumns(_Paths):
    """Rows and columns in and out, and what an update asks of them."""

    def _held_before(self, i: str) -> str | None:
        """The mentor row ``i`` held in the last plan (None: none)."""
        proposal = self.proposals.get(i)
        return proposal.mentor_id if proposal is not None else None

    def _ties(self, i: str) -> bool:
        """Whether row ``i``'s proposal has an alternative scoring at least as much."""
        proposal = self.proposals.get(i)
        return proposal is not None and any(
            not proposal.score - a.score > LOWER for a in proposal.alternatives
        )

    def _dirty_shared(self, old_years: NDArray[np.int_]) -> None:
        """The mentors (columns) changed: mark the rows whose "shared by every eligible mentor"
        statements may change. Those are the rows whose eligible mentors are all compared
        (at most ``SHARED_CHECK_LIMIT`` besides the proposal and alternatives, before or
        after) and rows in the tandem graph (their network statement)."""
        limit = SHARED_CHECK_LIMIT + ALTERNATIVES + 1
        new_years = np.sort(self.mentor_years)
        for i, row in self.rows.items():
            year = row.member.joined.year
            before = int(np.searchsorted(old_years, year))
            after = int(np.searchsorted(new_years, year))
            if min(before, after) <= limit or i in self.graph:
                self.dirty.add(i)

    def _prefer_closer(self) -> None:
        """As ``planning._prefer_closer``: a newcomer without a pin whose mentor is not its
        pending one moves to an exactly tied listed mentor with room that is closer, until
        nobody can. The total stays the same and so do the prices (a tied column with room has
        price 0, and so then has the row's own column)."""
        groups = []
        for i in sorted(self.rows):
            row = self.rows[i]
            if row.col is None or row.pinned is not None or row.incumbent == row.col:
                continue
            own = row.scores[row.col]
            options = sorted(
                j for j, s in row.scores.items()
                if j != row.col and j != row.incumbent and abs(s - own) <= 1e-12
            )  # fmt: skip
            if not options:
                continue
            ids = [row.col, *options]
            near = score_matrix(
                [row.member],
                [self.cols[j].member for j in ids],
                self.weights,
                self.today,
                self.graph,
            ).breakdowns(np.zeros(len(ids), dtype=np.int_), np.arange(len(ids)))["geography"]
            order = np.argsort(-near, kind="stable").tolist()
            groups.append((i, [ids[k] for k in order], [float(near[k]) for k in order]))
        moved = True
        while moved:
            moved = False
            for i, tied, near_of in groups:
                row = self.rows[i]
                assert row.col is not None
                own = near_of[tied.index(row.col)]
                for j, closeness in zip(tied, near_of, strict=True):
                    if closeness <= own + 1e-12:
                        break
                    if not self.cols[j].full:
                        old = self.cols[row.col]
                        old.rows.discard(i)
                        old.v = 0.0
                        self.cols[j].rows.add(i)
                        self.touched_cols.update((row.col, j))
                        row.col = j
                        self.dirty.add(i)
                        moved = True
                        break

    @staticmethod
    def _changed_members(old: _Inputs, new: _Inputs) -> set[str]:
        """Ids of members that joined, changed or left; fills ``new.members``.

        Usually the list is the last one (the very same member objects, which the matcher's
        member cache keeps) plus a few at its end: then only those are looked at, and the last
        index is taken over. Otherwise every member is compared."""
        before, after = old.member_list, new.member_list
        count = len(before)
        if len(after) >= count and after[:count] == before:  # identity first: a C loop
            tail = after[count:]
            if not any(x.id in old.members for x in tail):
                new.members = old.members
                old.members = {}
                for x in tail:
                    new.members[x.id] = x
                return {x.id for x in tail}
        new.index()
        current, last = new.members, old.members or {x.id: x for x in before}
        changed = {i for i, x in current.items() if (y := last.get(i)) is not x and y != x}
        changed.update(i for i in last if i not in current)
        return changed

    @staticmethod
    def _too_short(row: _Row) -> bool:
        """Whether the listed mentors may miss one of the row's best ``ALTERNATIVES + 1``."""
        return row.bound > -_INF and (
            sum(1 for s in row.scores.values() if s >= row.bound) < ALTERNATIVES + 1
        )

    def _is_newcomer(self, member: Member | None) -> bool:
        return (
            member is not None
            and member.active
            and member.seeks_tandem
            and member.id not in self.had_tandem
        )

    def _capacity(self, member: Member) -> int:
        """Free places of a member as a column now (0: no column)."""
        if not member.active or self.latest is None or member.joined.year >= self.latest:
            return 0
        return max(0, member.mentor_capacity - self.running[member.id])

    def _feasible(self, row: _Row, mentor_id: str) -> bool:
        col = self.cols[mentor_id]
        return (
            col.member.joined.year < row.member.joined.year
            and mentor_id != row.member.id
            and mentor_id not in self.excluded_of.get(row.member.id, ())
        )

    # --- rows and columns in and out -------------------------------------------------------------

    def _list(self, i: str, j: str, score: float) -> None:
        self.rows[i].scores[j] = score
        self.cols[j].listed_by.add(i)

    def _unlist(self, i: str, j: str) -> None:
        del self.rows[i].scores[j]
        col = self.cols.get(j)
        if col is not None:
            col.listed_by.discard(i)

    def _take_out(self, i: str) -> None:
        """Take row ``i`` out of the problem (it enters again later); the rest stays optimal."""
        row = self.rows[i]
        if row.out:
            return
        row.out = True
        self.dirty.add(i)
        j = row.col
        row.col, row.u = None, 0.0
        if j is not None:
            col = self.cols[j]
            col.rows.discard(i)
            self._free_all(j)

    def _drop_row(self, i: str) -> None:
        """Row ``i`` leaves for good."""
        self._take_out(i)
        row = self.rows.pop(i)
        if row.pinned is not None:
            self._pinned_on = self._capacities = None
        self.row_years[row.member.joined.year] -= 1
        for j in row.scores:
            col = self.cols.get(j)
            if col is not None:
                col.listed_by.discard(i)
        self.dirty.add(i)

    def _drop_col(self, j: str) -> set[str]:
        """Column ``j`` leaves (for good, or to enter again changed); returns its rows."""
        col = self.cols[j]
        rows = set(col.rows)
        for i in sorted(rows):
            row = self.rows[i]
            row.out, row.col, row.u = True, None, 0.0
            self.dirty.add(i)
        col.rows.clear()
        for i in col.listed_by:
            self.rows[i].scores.pop(j, None)
            self.dirty.add(i)
        del self.cols[j]
        self.touched_cols.add(j)
        return rows

    def _add_cols(self, added: list[str], new: _Inputs) -> set[str]:
        """Score the new columns against every row and list them where they may matter;
        returns the rows whose prices they violate (those enter again)."""
        for j in added:
            member = new.members[j]
            self.cols[j] = _Col(member, self._capacity(member))
            self.touched_cols.add(j)
        self._set_mentor_list(c.member for c in self.cols.values())
        ids = sorted(self.rows)
        if not ids:
            return set()
        members = [self.rows[i].member for i in ids]
        columns = [self.cols[j].member for j in added]
        scores = score_matrix(members, columns, self.weights, self.today, self.graph)
        block = scores.rows(np.arange(len(ids)))
        violated: set[str] = set()
        for k, j in enumerate(added):
            col = self.cols[j]
            for i, score in zip(ids, block[:, k].tolist(), strict=True):
                row = self.rows[i]
                if score >= row.bound and self._feasible(row, j):
                    self._list(i, j, score)
                    self.dirty.add(i)
                    if not row.out and row.pinned is None and self._slack(row, j) < -_EPS:
                        violated.add(i)
            del col
        for i in sorted(violated):
            self._take_out(i)
        return violated

    def _set_incumbent(self, i: str, mentor_id: str | None) -> bool:
        """Row ``i``'s pending mentor changed; True when it must enter again."""
        row = self.rows[i]
        if mentor_id is not None and (
            mentor_id not in self.cols or not self._feasible(row, mentor_id)
        ):
            mentor_id = None  # infeasible incumbents get no bonus (as in plan_tandems)
        if mentor_id == row.incumbent:
            return False
        if mentor_id is not None and mentor_id not in row.scores:
            self._list(i, mentor_id, self._score_cells(row.member, [mentor_id])[0])
        if row.out or row.pinned is not None:
            row.incumbent = mentor_id
            return False
        if row.col is not None and row.col == mentor_id:
            # The usual case after a plan: its mentor becomes the incumbent. Its cell gains
            # the bonus and the price with it; no other cell gains, so every slack stays.
            row.incumbent = mentor_id
            row.u += INCUMBENT_TOLERANCE
            return False
        before = row.key(row.col) if row.col is not None else 0.0
        row.incumbent = mentor_id
        if row.col is not None:
            row.u += row.key(row.col) - before  # the chosen cell stays tight
        if row.u < -_EPS or row.u < self.big + row.bound - _EPS:
            self._take_out(i)
            return True
        if any(self._slack(row, j) < -_EPS for j in row.scores):
            self._take_out(i)
            return True
        return False

    def _new_rows(self, ids: list[str], new: _Inputs) -> None:
        """Score new rows against every column and list their best mentors."""
        if not ids:
            return
        members = [new.members[i] for i in ids]
        for i, member in zip(ids, members, strict=True):
            self.rows[i] = _Row(member, {}, -_INF)
            self.row_years[member.joined.year] += 1
            incumbent = new.pending.get(i)
            self.rows[i].incumbent = incumbent
        self._rescore(ids)

    def _rescore(self, ids: list[str], width: int = SHORTLIST) -> None:
        """(Re)list the rows' ``width`` best feasible mentors from a full row of scores each."""
        if not ids:
            return
        if not self.mentor_list:
            for i in ids:
                row = self.rows[i]
                row.scores, row.bound, row.incumbent = {}, -_INF, None
            return
        members = [self.rows[i].member for i in ids]
        block = score_matrix(members, self.mentor_list, self.weights, self.today, self.graph).rows(
            np.arange(len(ids))
        )
        for k, i in enumerate(ids):
            row = self.rows[i]
            for j in row.scores:
                col = self.cols.get(j)
                if col is not None:
                    col.listed_by.discard(i)
            values = block[k]
            feasible = self.mentor_years < row.member.joined.year
            for j in self.excluded_of.get(i, ()):
                if j in self.mentor_index:
                    feasible[self.mentor_index[j]] = False
            if i in self.mentor_index:
                feasible[self.mentor_index[i]] = False
            candidates = np.flatnonzero(feasible)
            if candidates.size > width:
                # The width + 1 best: the first width are listed, the last is the bound.
                part = np.argpartition(-values[candidates], width)[: width + 1]
                candidates = candidates[part]
            order = candidates[np.lexsort((candidates, -values[candidates]))]
            top = order[:width]
            row.bound = float(values[order[width]]) if order.size > width else -_INF
            row.scores = {
                self.mentor_list[j].id: v
                for j, v in zip(top.tolist(), values[top].tolist(), strict=True)
            }
            if row.incumbent is not None:
                at = self.mentor_index.get(row.incumbent, -1)
                if at < 0 or not feasible[at]:
                    row.incumbent = None
                elif row.incumbent not in row.scores:
                    row.scores[row.incumbent] = float(values[at])
            for j in row.scores:
                self.cols[j].listed_by.add(i)
            self.dirty.add(i)

    def _score_cells(self, newcomer: Member, mentor_ids: list[str]) -> list[float]:
        mentors = [self.cols[j].member for j in mentor_ids]
        scores = score_matrix([newcomer], mentors, self.weights, self.today, self.graph)
        values: list[float] = scores.rows(np.array([0]))[0].tolist()
        return values

    def _enter(self, ids: Sequence[str]) -> None:
        """Rows enter the problem one by one; rows whose price fell below their bound are
        rescored in full and enter again."""
        queue = list(ids)
        while queue:
            later: set[str] = set()
            for i in queue:
                row = self.rows[i]
                if not row.out:
                    continue
                for r in [i, *self._add_row(i)]:
                    other = self.rows[r]
                    if not other.out and other.u < self.big + other.bound - _EPS:
                        self._take_out(r)
                        later.add(r)
            queue = sorted(later)
            # Longer lists each time a row fails again (as the solver's candidate lists grow),
            # up to every feasible mentor, which never fails. A full row costs like scanning
            # a share of its cells.
            widths: dict[int, list[str]] = {}
            for i in queue:
                width = max(SHORTLIST, len(self.rows[i].scores)) * 4
                widths.setdefault(width, []).append(i)
            for width, group in sorted(widths.items()):
                self._spend(len(group) * (len(self.mentor_list) // 16 + 1))
                self._rescore(group, width)
