"""Incremental planning: work proportional to the change, the same optimum as a full plan.

``IncrementalPlanner.plan`` takes the same inputs as ``planning.plan_tandems`` and returns the
same kind of ``Plan``. Between calls it keeps what a plan needs: per newcomer (row) its candidate
mentors with their scores, per mentor (column) its free capacity, the assignment, and the dual
prices of the assignment problem. On the next call it compares the inputs with the previous ones
and recomputes only what the change touches: a join adds a row (one row of scores), a mentor's
change replaces a column (one column of scores), a decision or departure removes a row, a
rejected pair removes a cell. The assignment is then repaired from the previous optimum by
shortest augmenting paths over the reduced costs (the dynamic Hungarian algorithm, Mills-Tettey,
Stentz and Dias, 2007), and reasons and alternatives are built only for the proposals that are
new or changed. A change of weights or of the day, pins, a new newcomer cohort year, or tandem
changes that touch a waiting newcomer's network, rebuild the state: a full plan. Crowded
networks (more newcomers than ``CROWDED_SHARE`` of the free places) and updates whose paths
exceed ``UPDATE_BUDGET`` are planned by ``plan_tandems`` instead (long paths; one compiled solve
is cheaper there).

The problem (as ``assignment.solve_assignment``): maximise first the number of matched
newcomers, then the sum of scores plus ``INCUMBENT_TOLERANCE`` per newcomer that keeps its
pending mentor. Here each matched cell is worth ``big + key`` (``key`` = score plus the bonus,
``big`` > the largest possible sum of keys), which makes "matched first" exact, and every row
may stay unmatched at worth 0 (its private "dummy" column). The linear-programming dual has a
price ``u[i] >= 0`` per row and ``v[j] >= 0`` per column with ``u[i] + v[j] >= big + key[i, j]``
for every feasible cell. A plan is optimal exactly when, with some such prices, every chosen
cell is tight (``u + v = worth``), every unmatched row has ``u = 0`` and every column with free
capacity has ``v = 0`` (complementary slackness). The planner keeps such prices and repairs
them with each change:

* a row enters (``_add_row``): its price is set to its best reduced worth and the shortest path
  over the reduced costs (slacks) from it to a column with free capacity, or to some row's
  dummy, is applied; the prices on the path's tree are shifted so every slack stays >= 0.
* a column gets a free place while priced (``_free_column``): the same from the column's side,
  lowering its price until either it is 0 or another row moves in.
* a row leaves or a column changes: the rows on it are taken out and enter again.

Rows list only their best mentors (``SHORTLIST``, plus whatever was added since). A row's
``bound`` is at least the score of every feasible mentor it does not list; prices with
``u[i] >= big + bound[i]`` cover those cells too (``v >= 0``), so the plan is optimal for the
whole problem, not just for the listed cells. A row whose price falls below that is rescored in
full and enters again. ``verify`` checks all of these conditions; a failed check or any error
during an update makes the planner rebuild from scratch (counted in ``fallbacks``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from services.matcher.domain.incremental_explain import _Explaining
from services.matcher.domain.incremental_rows import _RowsAndColumns
from services.matcher.domain.incremental_state import (
    _EPS,
    _INF,
    BUILD_BUDGET_PER_ROW,
    COOLDOWN,
    CROWDED_SHARE,
    UPDATE_BUDGET,
    _Col,
    _Inputs,
    _profile,
    _Row,
    _TooCostly,
)
from services.matcher.domain.model import Member, Pair, Tandem
from services.matcher.domain.network import tandem_graph
from services.matcher.domain.planning import (
    SHORTLIST,
    Plan,
    _feasibility,
    _pins,
    free_capacity,
    newcomers_of,
    plan_tandems,
)
from services.matcher.domain.score_engine import ScoreMatrix, score_matrix
from services.matcher.domain.scoring import Weights

log = logging.getLogger(__name__)


@dataclass
class PlannerStats:
    """How the planner answered so far."""

    full: int = 0  # rebuilt from scratch (first plan, weight or day change, pins, ...)
    incremental: int = 0
    fallbacks: int = 0  # an inconsistency or error during an update, then rebuilt
    last: str = ""


class IncrementalPlanner:
    """Plans like ``plan_tandems`` and keeps the state to repair the next plan cheaply.

    Thread-safe (one plan at a time). ``plan(..., full=True)`` forces a rebuild.
    """

    def __init__(self, verify_every: int = 0, crowded_share: float = CROWDED_SHARE) -> None:
        #: Check every invariant of the whole state after every n-th incremental plan (0:
        #: only the rows and columns a change touched); tests use 1.
        self.verify_every = verify_every
        #: Newcomers per free place beyond which plans are left to ``plan_tandems``.
        self.crowded_share = crowded_share
        self.stats = PlannerStats()
        self._state: _State | None = None
        self._cooldown = 0
        self._lock = threading.Lock()

    def plan(
        self,
        members: Sequence[Member],
        tandems: Sequence[Tandem],
        pending: Mapping[str, str],
        rejected: set[Pair],
        forbidden: set[Pair],
        pinned: Mapping[str, str],
        weights: Weights,
        today: dt.date,
        *,
        full: bool = False,
    ) -> Plan:
        """The plan for these inputs (see ``planning.plan_tandems``)."""
        inputs = _Inputs(
            member_list=list(members),
            tandems=list(tandems),
            pending=dict(pending),
            excluded=frozenset(rejected | forbidden),
            pinned=dict(pinned),
            weights=weights,
            today=today,
        )
        with self._lock:
            if _wishes_waiting(inputs):
                # Wishes are granted like pins before the main solve (``plan_tandems``): while
                # a waiting newcomer has wishes, every plan is a full one.
                self._state = None
                self.stats.full += 1
                self.stats.last = "full"
                return plan_tandems(
                    inputs.member_list, inputs.tandems, inputs.pending, set(inputs.excluded),
                    set(), inputs.pinned, inputs.weights, inputs.today,
                )  # fmt: skip
            state = self._state
            if state is not None and not full:
                try:
                    state.budget = UPDATE_BUDGET
                    if state.update(inputs):
                        self.stats.incremental += 1
                        self.stats.last = "incremental"
                        if self.verify_every and self.stats.incremental % self.verify_every == 0:
                            state.verify()
                        return state.result()
                except _TooCostly:
                    pass
                except Exception:
                    log.warning("incremental plan inconsistent; planning in full", exc_info=True)
                    self._state = None
                    plan = self._rebuild(inputs)
                    self.stats.fallbacks += 1
                    self.stats.last = "fallback"
                    return plan
            return self._rebuild(inputs)

    def _rebuild(self, inputs: _Inputs) -> Plan:
        """A full plan; it keeps the state for the next one unless that is too costly."""
        self._state = None
        self.stats.full += 1
        self.stats.last = "full"
        if self._cooldown > 0:
            self._cooldown -= 1
        else:
            try:
                self._state = _State.build(inputs, self.crowded_share)
                return self._state.result()
            except _TooCostly as crowded:
                self._cooldown = COOLDOWN if crowded.args else 0
        return plan_tandems(
            inputs.member_list, inputs.tandems, inputs.pending, set(inputs.excluded), set(),
            inputs.pinned, inputs.weights, inputs.today,
        )  # fmt: skip

    def verify(self) -> None:
        """Check every invariant of the kept state (raises ``Inconsistent``)."""
        with self._lock:
            if self._state is not None:
                self._state.verify()


def _crowded(inputs: _Inputs, share: float) -> bool:
    """Whether more newcomers wait than ``share`` of the free places of the mentors who could
    take them: the test ``_State.build`` makes after its matrices, for inputs without pins
    (where pins take none of the places), in two passes over the members."""
    members, tandems = inputs.member_list, inputs.tandems
    had_tandem = {t.newcomer_id for t in tandems}
    years = [
        x.joined.year for x in members if x.active and x.seeks_tandem and x.id not in had_tandem
    ]
    if not years:
        return False
    latest = max(years)
    capacity = free_capacity(members, tandems, inputs.today)
    places = sum(capacity[x.id] for x in members if x.active and x.joined.year < latest)
    return len(years) > share * places


def _wishes_waiting(inputs: _Inputs) -> bool:
    """Whether a waiting newcomer (see ``newcomers_of``) has wishes."""
    wishing = [x for x in inputs.member_list if x.wishes and x.active and x.seeks_tandem]
    if not wishing:
        return False
    had_tandem = {t.newcomer_id for t in inputs.tandems}
    return any(x.id not in had_tandem for x in wishing)


def _unlisted_incumbents(
    newcomers: list[Member],
    column: dict[str, int],
    feasible: NDArray[np.bool_],
    pending: dict[str, str],
    scores: ScoreMatrix,
) -> dict[tuple[int, int], float]:
    """The scores of the incumbents not in their row's shortlist, by (row, column): they are
    listed too (their bonus may count)."""
    listed = scores.shortlist
    extra_rows: list[int] = []
    extra_cols: list[int] = []
    for i, newcomer in enumerate(newcomers):
        held = column.get(pending.get(newcomer.id, ""), -1)
        if held >= 0 and feasible[i, held] and held not in listed[i]:
            extra_rows.append(i)
            extra_cols.append(held)
    extra: dict[tuple[int, int], float] = {}
    if extra_rows:
        values_of = scores.cells(
            np.array(extra_rows, dtype=np.int_), np.array(extra_cols, dtype=np.int_)
        )
        extra = dict(zip(zip(extra_rows, extra_cols, strict=True), values_of.tolist(), strict=True))
    return extra


class _State(_Explaining, _RowsAndColumns):
    """Rows, columns, prices and proposals of the last plan, and how to update them."""

    # --- building from scratch ----------------------------------------------------------------

    @staticmethod
    def build(inputs: _Inputs, crowded_share: float = CROWDED_SHARE) -> _State:
        """The state of a full plan of ``inputs``; ``_TooCostly`` where it does not pay."""
        if not inputs.pinned and _crowded(inputs, crowded_share):
            raise _TooCostly()  # known before any index, graph or matrix is built
        inputs.index()
        state = _State(inputs)
        state.crowded_share = crowded_share
        members = inputs.member_list
        state.graph = tandem_graph(inputs.tandems)
        state.had_tandem = {t.newcomer_id for t in inputs.tandems}
        state.running = Counter(t.mentor_id for t in inputs.tandems if t.is_running(inputs.today))
        for newcomer_id, mentor_id in inputs.excluded:
            state.excluded_of.setdefault(newcomer_id, set()).add(mentor_id)
        newcomers = newcomers_of(members, inputs.tandems)
        state.big = 4.0 * len(newcomers) + 1024.0
        if not newcomers:
            return state
        capacity_of = free_capacity(members, inputs.tandems, inputs.today)
        active = sorted((x for x in members if x.active), key=lambda x: x.id)
        latest = max(x.joined.year for x in newcomers)
        state.latest = latest
        with_capacity = [x for x in active if capacity_of[x.id] > 0]
        mentors = [x for x in with_capacity if x.joined.year < latest]
        too_new = {x.id for x in with_capacity if x.joined.year >= latest}
        capacity = np.array([capacity_of[x.id] for x in mentors], dtype=np.int_)
        column = {x.id: j for j, x in enumerate(mentors)}
        excluded = set(inputs.excluded)
        feasible = _feasibility(newcomers, mentors, column, excluded)
        pins, state.dropped = _pins(
            newcomers, active, column, capacity, feasible, inputs.pinned, excluded, too_new
        )
        if state.crowded(int(np.count_nonzero(pins < 0)), int(capacity.sum() - (pins >= 0).sum())):
            raise _TooCostly()  # plan_tandems' solvers are cheaper here
        state.budget = UPDATE_BUDGET + BUILD_BUDGET_PER_ROW * len(newcomers)
        scores = score_matrix(
            newcomers, mentors, inputs.weights, inputs.today, state.graph,
            shortlist=SHORTLIST, feasible=feasible,
        )  # fmt: skip
        pin_load = np.bincount(pins[pins >= 0], minlength=len(mentors))
        for j, mentor in enumerate(mentors):
            state.cols[mentor.id] = _Col(mentor, int(capacity[j] - pin_load[j]))
        state._set_mentor_list(mentors)
        listed = scores.shortlist
        values = scores.shortlist_scores
        counts = np.count_nonzero(listed >= 0, axis=1)
        extra = _unlisted_incumbents(newcomers, column, feasible, inputs.pending, scores)
        for i, newcomer in enumerate(newcomers):
            k = int(counts[i])
            cols = [mentors[j].id for j in listed[i, :k].tolist()]
            row = _Row(
                member=newcomer,
                scores=dict(zip(cols, values[i, :k].tolist(), strict=True)),
                bound=float(values[i, k - 1]) if k >= SHORTLIST else -_INF,
            )
            incumbent = inputs.pending.get(newcomer.id)
            if incumbent in column and feasible[i, column[incumbent]]:
                row.incumbent = incumbent
                if (i, column[incumbent]) in extra:
                    row.scores[incumbent] = extra[(i, column[incumbent])]
            if pins[i] >= 0:
                row.pinned = mentors[int(pins[i])].id
            state.rows[newcomer.id] = row
            state.row_years[newcomer.joined.year] += 1
            for mentor_id in row.scores:
                state.cols[mentor_id].listed_by.add(newcomer.id)
        state.dirty = set(state.rows)
        state._enter(sorted(i for i, row in state.rows.items() if row.pinned is None))
        for row in state.rows.values():  # pinned rows are never part of the problem
            if row.pinned is not None:
                row.out = False
        state._prefer_closer()
        state._explain()
        return state

    # --- the incremental update ----------------------------------------------------------------

    def update(self, new: _Inputs) -> bool:
        """Apply the change from the last inputs to ``new``; False when it needs a full plan."""
        old = self.inputs
        if new.weights != old.weights or new.today != old.today:
            return False
        if new.pinned != old.pinned:
            return False
        changed = self._changed_members(old, new)
        if len(changed) > len(self.rows) + len(self.cols):
            return False  # repairing would touch more than a new plan builds (a burst)
        tandems_changed = new.tandems != old.tandems
        accepted = self._accepts(old, new, changed, tandems_changed)
        if accepted is None:
            return False
        graph, row_now = accepted
        excluded_added = new.excluded - old.excluded
        excluded_gone = old.excluded - new.excluded
        changed_cols, mentors_changed, old_years = self._adopt(
            new, graph, changed, excluded_added, excluded_gone
        )
        entering: set[str] = set()
        self._change_rows(new, changed, row_now, excluded_added, entering)
        mentors_changed |= self._change_cols(new, changed, entering, changed_cols)
        self._change_cells(old, new, excluded_gone, entering)
        self._enter_changed(new, row_now, entering)
        self._mark_moved(changed_cols)
        if mentors_changed:
            self._dirty_shared(old_years)
        self._explain()
        return True

    def _accepts(
        self, old: _Inputs, new: _Inputs, changed: set[str], tandems_changed: bool
    ) -> tuple[nx.Graph, dict[str, bool]] | None:
        """The graph and the rows after the change (member id -> a newcomer now), or None
        when the change needs a full plan (``changed`` gains the members of changed tandems)."""
        graph = self.graph
        if tandems_changed:
            before = {(t.newcomer_id, t.mentor_id, t.started, t.ends) for t in old.tandems}
            after = {(t.newcomer_id, t.mentor_id, t.started, t.ends) for t in new.tandems}
            for a, b, _, _ in before ^ after:
                changed.update((a, b))
            graph = tandem_graph(new.tandems)
            self.had_tandem = {t.newcomer_id for t in new.tandems}
            self.running = Counter(t.mentor_id for t in new.tandems if t.is_running(new.today))
        pinned_ids = set(new.pinned) | set(new.pinned.values())
        excluded_added = new.excluded - old.excluded
        excluded_gone = old.excluded - new.excluded
        if pinned_ids and (
            changed & pinned_ids
            or any(n in pinned_ids or m in pinned_ids for n, m in excluded_added | excluded_gone)
        ):
            return None
        # The rows (newcomers) and columns (mentors with capacity) after the change.
        row_now = {i: self._is_newcomer(new.members.get(i)) for i in changed}
        years = self.row_years.copy()
        for i, now in row_now.items():
            row = self.rows.get(i)
            if row is not None:
                years[row.member.joined.year] -= 1
            if now:
                years[new.members[i].joined.year] += 1
        latest = max((y for y, count in years.items() if count > 0), default=None)
        if latest != self.latest:
            return None
        if tandems_changed and (graph.edges != self.graph.edges):
            waiting = set(self.rows) | {i for i, now in row_now.items() if now}
            if any(i in graph or i in self.graph for i in waiting):
                return None  # a waiting newcomer's network criterion may change
        if len(self.rows) + sum(row_now.values()) + 2 > self.big / 2:
            return None
        if self.crowded(
            sum(row_now.values()) + len(self.rows), sum(c.capacity for c in self.cols.values())
        ):
            return None
        return graph, row_now

    def _adopt(
        self,
        new: _Inputs,
        graph: nx.Graph,
        changed: set[str],
        excluded_added: frozenset[Pair],
        excluded_gone: frozenset[Pair],
    ) -> tuple[set[str], bool, NDArray[np.int_]]:
        """Take the new inputs; the columns whose holders' explanations may change, whether a
        mentor changed, and the mentors' joining years before the change."""
        self.graph = graph
        self.inputs = new
        self._years = None
        for n, m in excluded_added:
            self.excluded_of.setdefault(n, set()).add(m)
        for n, m in excluded_gone:
            self.excluded_of.get(n, set()).discard(m)
        # What explanations depend on besides the own pair (``proposing.propose``): who holds
        # each mentor, its capacity, the holders' names and scores (``taken_by``, ``why_not``),
        # and every eligible mentor of a row (statements shared by all are left out).
        held_before = self._held_before
        changed_cols: set[str] = set()
        mentors_changed = False
        old_years = np.sort(self.mentor_years)
        for i in changed:
            if i in self.rows:
                self.dirty.add(i)  # its name or estimated fields may be in its sentences
                changed_cols.add(held_before(i) or "")
            if i in self.cols:
                mentors_changed = True
        for n, _ in excluded_added | excluded_gone:
            if n in self.rows:
                self.dirty.add(n)
                changed_cols.add(held_before(n) or "")
        return changed_cols, mentors_changed, old_years

    def _change_rows(
        self,
        new: _Inputs,
        changed: set[str],
        row_now: dict[str, bool],
        excluded_added: frozenset[Pair],
        entering: set[str],
    ) -> None:
        """Steps 1 and 2: rows that leave or changed, cells that became infeasible."""
        # 1. Rows that leave, or whose member changed (they enter again with new scores).
        for i in sorted(changed):
            row = self.rows.get(i)
            if row is None:
                continue
            member = new.members.get(i)
            if not row_now[i] or member is None or _profile(member) != _profile(row.member):
                self._drop_row(i)
            else:
                row.member = member
        # 2. Cells that became infeasible (rejected or forbidden pairs).
        for n, m in sorted(excluded_added):
            row = self.rows.get(n)
            if row is not None and m in row.scores:
                if row.col == m:
                    self._take_out(n)
                    entering.add(n)
                self._unlist(n, m)
                self.dirty.add(n)

    def _change_cols(
        self, new: _Inputs, changed: set[str], entering: set[str], changed_cols: set[str]
    ) -> bool:
        """Steps 3 to 5: columns that go, change or come; whether a mentor changed."""
        mentors_changed = False
        # 3. Columns that go or change.
        col_now: dict[str, int] = {}
        for j in changed:
            member = new.members.get(j)
            col_now[j] = self._capacity(member) if member is not None else 0
        added_cols: list[str] = []
        for j in sorted(col_now):
            col = self.cols.get(j)
            member = new.members.get(j)
            if col is None:
                if col_now[j] > 0:
                    added_cols.append(j)
                continue
            assert member is not None or col_now[j] == 0
            mentors_changed = True
            changed_cols.add(j)
            if col_now[j] == 0 or member is None or _profile(member) != _profile(col.member):
                entering |= self._drop_col(j)
                if col_now[j] > 0:
                    added_cols.append(j)
                continue
            col.member = member
            # 4. Capacity changes of a kept column (the capacity first: taking the excess rows
            # out must not free places).
            col.capacity = col_now[j]
            self._capacities = None
            for i in sorted(col.rows, reverse=True)[: max(0, len(col.rows) - col.capacity)]:
                self._take_out(i)
                entering.add(i)
            self.touched_cols.add(j)
            self._free_all(j)
        mentors_changed |= bool(added_cols)
        if added_cols or any(j not in self.cols for j in col_now if j in self.mentor_index):
            self._set_mentor_list(c.member for c in self.cols.values())
        # 5. New columns: one column of scores against every row.
        if added_cols:
            entering |= self._add_cols(added_cols, new)
        return mentors_changed

    def _change_cells(
        self, old: _Inputs, new: _Inputs, excluded_gone: frozenset[Pair], entering: set[str]
    ) -> None:
        """Steps 6 and 7: cells feasible again, incumbents that changed."""
        # 6. Cells that became feasible again.
        for n, m in sorted(excluded_gone):
            row = self.rows.get(n)
            col = self.cols.get(m)
            if row is None or col is None or m in row.scores or not self._feasible(row, m):
                continue
            score = self._score_cells(row.member, [m])[0]
            if score >= row.bound:
                self._list(n, m, score)
                self.dirty.add(n)
                if not row.out and self._slack(row, m) < -_EPS:
                    self._take_out(n)
                    entering.add(n)
        # 7. Incumbents (pending proposals) that changed.
        old_pending, new_pending = old.pending, new.pending
        if old_pending != new_pending:
            for i in sorted({i for i, _ in old_pending.items() ^ new_pending.items()}):
                if i in self.rows and self._set_incumbent(i, new_pending.get(i)):
                    entering.add(i)
                if self._ties(i):  # "kept at a tie" or not: its why-not may change
                    self.dirty.add(i)

    def _enter_changed(self, new: _Inputs, row_now: dict[str, bool], entering: set[str]) -> None:
        """Step 8: new rows, and every row taken out, enter; the result is checked."""
        # 8. New rows, and every row taken out, enter (in id order: deterministic).
        fresh = sorted(i for i, now in row_now.items() if now and i not in self.rows)
        self._new_rows(fresh, new)
        entering.update(fresh)
        # Rows that lost listed mentors may list too few for their alternatives: rescore.
        short = sorted(
            i for i in self.dirty
            if i in self.rows and self.rows[i].pinned is None and self._too_short(self.rows[i])
        )  # fmt: skip
        for i in short:
            self._take_out(i)
        self._rescore(short)
        entering.update(short)
        entering = {i for i in entering if i in self.rows and self.rows[i].out}
        self._enter(sorted(entering))
        self._prefer_closer()
        self._check_touched()

    def _mark_moved(self, changed_cols: set[str]) -> None:
        """Rows listing a mentor that changed hands, or whose holder changed, are dirty."""
        held_before = self._held_before
        # Mentors that changed hands: every row listing one may have it as an alternative.
        # (A row whose mentor changed is dirty: every step that moves a row marks it.)
        for i in self.dirty:
            row = self.rows.get(i)
            holding = None if row is None else row.pinned or row.col
            last = held_before(i)
            if holding != last:
                changed_cols.update((last or "", holding or ""))
        for j in sorted(changed_cols):
            col = self.cols.get(j)
            if col is not None:
                self.dirty.update(col.listed_by)
