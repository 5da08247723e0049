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
import heapq
import logging
import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from services.matcher.domain.assignment import INCUMBENT_TOLERANCE
from services.matcher.domain.explain import LOWER
from services.matcher.domain.model import Member, Pair, Tandem
from services.matcher.domain.network import tandem_graph
from services.matcher.domain.planning import (
    ALTERNATIVES,
    SHORTLIST,
    Plan,
    _feasibility,
    _pins,
    _unmatched_reason,
    free_capacity,
    newcomers_of,
    plan_tandems,
)
from services.matcher.domain.proposing import (
    SHARED_CHECK_LIMIT,
    PlanContext,
    PlannedProposal,
    components_of,
    mentor_components,
    propose,
)
from services.matcher.domain.score_engine import score_matrix
from services.matcher.domain.scoring import Weights

log = logging.getLogger(__name__)

#: Slack below which a reduced cost counts as negative (float noise of sums around ``big``).
_EPS = 1e-9
_INF = math.inf


class Inconsistent(RuntimeError):
    """The incremental state broke one of its invariants (the planner then rebuilds)."""


class _TooCostly(Exception):
    """The augmenting paths explore more than their budget: the problem is crowded (more
    newcomers than places, or everyone wants the same few mentors), where one solve of the
    whole problem by ``plan_tandems`` (compiled solvers) is cheaper than many paths."""


#: Cells an update may scan in its augmenting paths before it gives up for a full plan.
UPDATE_BUDGET = 200_000
#: And a build, per row (plus the update budget).
BUILD_BUDGET_PER_ROW = 64
#: Plans done by ``plan_tandems`` alone after a build ran out of budget, before the next try.
COOLDOWN = 10
#: Incremental planning is kept for networks where the newcomers take at most this share of
#: the free places: beyond it, many paths are long and one compiled solve is cheaper.
CROWDED_SHARE = 0.5


def _profile(member: Member) -> tuple[object, ...]:
    """What scores and eligibility depend on (capacity and seeking are handled apart)."""
    return (
        member.population, member.lat, member.lon, member.state, member.region, member.joined,
        member.interests, member.strengths,
    )  # fmt: skip


@dataclass(slots=True)
class _Row:
    """A newcomer: its listed mentors' scores, its price and its mentor (``None``: unmatched)."""

    member: Member
    scores: dict[str, float]
    bound: float  # >= the score of every feasible mentor not listed (-inf: all are listed)
    incumbent: str | None = None
    u: float = 0.0
    col: str | None = None
    pinned: str | None = None  # a pinned row is no part of the problem; it holds its pin
    out: bool = True  # taken out of the problem (entering again, or new)

    def key(self, mentor_id: str) -> float:
        bonus = INCUMBENT_TOLERANCE if mentor_id == self.incumbent else 0.0
        return self.scores[mentor_id] + bonus


@dataclass(slots=True)
class _Col:
    """A mentor with free capacity: its price and the rows on it."""

    member: Member
    capacity: int  # free places for the problem (pins already taken off)
    v: float = 0.0
    rows: set[str] = field(default_factory=set)
    listed_by: set[str] = field(default_factory=set)

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.capacity


@dataclass(slots=True)
class _Inputs:
    """The inputs of the last plan, to compare the next ones with."""

    member_list: list[Member]
    tandems: list[Tandem]
    pending: dict[str, str]
    excluded: frozenset[Pair]
    pinned: dict[str, str]
    weights: Weights
    today: dt.date
    members: dict[str, Member] = field(default_factory=dict)  # by id, filled by the state

    def index(self) -> None:
        """Fill ``members`` from ``member_list``."""
        self.members = {x.id: x for x in self.member_list}


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


def _wishes_waiting(inputs: _Inputs) -> bool:
    """Whether a waiting newcomer (see ``newcomers_of``) has wishes."""
    wishing = [x for x in inputs.member_list if x.wishes and x.active and x.seeks_tandem]
    if not wishing:
        return False
    had_tandem = {t.newcomer_id for t in inputs.tandems}
    return any(x.id not in had_tandem for x in wishing)


class _State:
    """Rows, columns, prices and proposals of the last plan, and how to update them."""

    def __init__(self, inputs: _Inputs) -> None:
        self.inputs = inputs
        self.weights, self.today = inputs.weights, inputs.today
        self.rows: dict[str, _Row] = {}
        self.cols: dict[str, _Col] = {}
        self.big = 0.0
        self.latest: int | None = None
        self.graph: nx.Graph = nx.Graph()
        self.had_tandem: set[str] = set()
        self.running: Counter[str] = Counter()
        self.row_years: Counter[int] = Counter()  # joining years of the rows (newcomers)
        self.excluded_of: dict[str, set[str]] = {}
        self.mentor_list: list[Member] = []
        self.mentor_index: dict[str, int] = {}
        self.mentor_years: NDArray[np.int_] = np.empty(0, dtype=np.int_)
        self.proposals: dict[str, PlannedProposal] = {}
        self.unmatched: dict[str, str] = {}
        self.dropped: dict[str, str] = {}
        self.dirty: set[str] = set()  # rows whose proposal must be rebuilt
        self.touched_cols: set[str] = set()
        self.budget = UPDATE_BUDGET  # cells the augmenting paths may still scan
        self.crowded_share = CROWDED_SHARE
        self._years: tuple[NDArray[np.int_], NDArray[np.int_]] | None = None
        self._component: tuple[nx.Graph, dict[str, int]] | None = None
        self._mentor_component: tuple[list[Member], NDArray[np.int_]] | None = None
        #: Per column of ``mentor_list`` its free capacity, pins included (None: to compute).
        self._capacities: NDArray[np.int_] | None = None
        #: Per mentor the rows pinned to it (pins change only with a rebuild).
        self._pinned_on: dict[str, list[str]] | None = None

    # --- building from scratch ----------------------------------------------------------------

    @staticmethod
    def build(inputs: _Inputs, crowded_share: float = CROWDED_SHARE) -> _State:
        """The state of a full plan of ``inputs``; ``_TooCostly`` where it does not pay."""
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
        # Incumbents not in their row's shortlist are listed too (their bonus may count).
        extra_rows: list[int] = []
        extra_cols: list[int] = []
        for i, newcomer in enumerate(newcomers):
            held = column.get(inputs.pending.get(newcomer.id, ""), -1)
            if held >= 0 and feasible[i, held] and held not in listed[i]:
                extra_rows.append(i)
                extra_cols.append(held)
        extra: dict[tuple[int, int], float] = {}
        if extra_rows:
            values_of = scores.cells(
                np.array(extra_rows, dtype=np.int_), np.array(extra_cols, dtype=np.int_)
            )
            extra = dict(
                zip(zip(extra_rows, extra_cols, strict=True), values_of.tolist(), strict=True)
            )
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

    def _set_mentor_list(self, mentors: Iterable[Member]) -> None:
        self._capacities = None
        self.mentor_list = sorted(mentors, key=lambda x: x.id)
        self.mentor_index = {x.id: j for j, x in enumerate(self.mentor_list)}
        self.mentor_years = np.fromiter(
            (x.joined.year for x in self.mentor_list), np.int_, len(self.mentor_list)
        )

    # --- the incremental update ----------------------------------------------------------------

    def update(self, new: _Inputs) -> bool:
        """Apply the change from the last inputs to ``new``; False when it needs a full plan."""
        old = self.inputs
        if new.weights != old.weights or new.today != old.today:
            return False
        if new.pinned != old.pinned:
            return False
        changed = self._changed_members(old, new)
        tandems_changed = new.tandems != old.tandems
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
            return False
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
            return False
        if tandems_changed and (graph.edges != self.graph.edges):
            waiting = set(self.rows) | {i for i, now in row_now.items() if now}
            if any(i in graph or i in self.graph for i in waiting):
                return False  # a waiting newcomer's network criterion may change
        if len(self.rows) + sum(row_now.values()) + 2 > self.big / 2:
            return False
        if self.crowded(
            sum(row_now.values()) + len(self.rows), sum(c.capacity for c in self.cols.values())
        ):
            return False
        self.graph = graph
        self.inputs = new
        self._years = None
        for n, m in excluded_added:
            self.excluded_of.setdefault(n, set()).add(m)
        for n, m in excluded_gone:
            self.excluded_of.get(n, set()).discard(m)
        # What explanations depend on besides the own pair (``planning.propose``): who holds
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

        entering: set[str] = set()
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
        if mentors_changed:
            self._dirty_shared(old_years)
        self._explain()
        return True

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
        # Augment along the path.
        if end_kind == 1:
            if end == s:
                return lowered
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
            r = rows[i]
            previous = r.col
            if previous is not None:
                cols[previous].rows.discard(i)
            cols[target].rows.add(i)
            r.col = target
            self.dirty.add(i)
            self.touched_cols.add(target)
            if i == s:
                break
            assert previous is not None
            target = previous
        return lowered

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
            r = rows[i]
            target = pred[i]
            previous = r.col
            if previous is not None:
                cols[previous].rows.discard(i)
            cols[target].rows.add(i)
            r.col = target
            self.dirty.add(i)
            self.touched_cols.add(target)
            if target == k:
                break
            i = via[target]

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

    # --- the plan ---------------------------------------------------------------------------------

    def _explain(self) -> None:
        """Rebuild the proposals of the dirty rows and the unmatched reasons, with
        ``planning.propose`` against a context of just those rows and the holders of the
        mentors they list. A rebuilt proposal equal to the one before stays that object."""
        dirty, self.dirty = sorted(self.dirty), set()
        planned: list[str] = []
        before: dict[str, PlannedProposal] = {}
        for i in dirty:
            row = self.rows.get(i)
            old = self.proposals.pop(i, None)
            if old is not None:
                before[i] = old
            self.unmatched.pop(i, None)
            if row is None:
                continue
            if row.col is None and row.pinned is None:
                self.unmatched[i] = self._unmatched_reason(row)
            else:
                planned.append(i)
        if not planned:
            return
        index = self.mentor_index
        if self._pinned_on is None:
            self._pinned_on = {}
            for i, row in self.rows.items():
                if row.pinned is not None:
                    self._pinned_on.setdefault(row.pinned, []).append(i)
        pinned_on = self._pinned_on
        wanted: list[list[str]] = []
        involved = set(planned)
        for i in planned:
            entry = self.rows[i]
            chosen = entry.pinned if entry.pinned is not None else entry.col
            assert chosen is not None
            # Best first, equal scores by mentor id (the column order of a full plan).
            others = sorted((-s, j) for j, s in entry.scores.items() if j != chosen)
            listed = [chosen, *(j for _, j in others[:ALTERNATIVES])]
            wanted.append(listed)
            for j in [*listed, *entry.member.wishes]:
                col = self.cols.get(j)
                if col is not None:
                    involved.update(col.rows)
                involved.update(pinned_on.get(j, ()))
        ids = sorted(involved)
        members = [self.rows[i].member for i in ids]
        mentors = self.mentor_list
        years = np.fromiter((x.joined.year for x in members), np.int_, len(members))
        feasible = self.mentor_years[None, :] < years[:, None]
        for k, i in enumerate(ids):
            for j in self.excluded_of.get(i, ()):
                if j in index:
                    feasible[k, index[j]] = False
            if i in index:
                feasible[k, index[i]] = False
        held = [self.rows[i].pinned or self.rows[i].col for i in ids]
        chosen_cols = np.array([-1 if j is None else index[j] for j in held], dtype=np.int_)
        pending = self.inputs.pending
        incumbent = np.array([index.get(pending.get(i, ""), -1) for i in ids], dtype=np.int_)
        if self._capacities is None:
            self._capacities = np.fromiter(
                (self.cols[x.id].capacity + len(pinned_on.get(x.id, ())) for x in mentors),
                np.int_,
                len(mentors),
            )
        capacity = self._capacities
        if self._component is None or self._component[0] is not self.graph:
            self._component = (self.graph, components_of(self.graph))
        component = self._component[1]
        if self._mentor_component is None or self._mentor_component[0] is not mentors:
            self._mentor_component = (mentors, mentor_components(mentors, component))
        context = PlanContext(
            members, mentors, index, capacity, feasible, chosen_cols,
            score_matrix(members, mentors, self.weights, self.today, self.graph),
            self.weights, self.graph, self.inputs.members, self.inputs.excluded, incumbent,
            component, self._mentor_component[1], {x: k for k, x in enumerate(ids)}, self.today,
        )  # fmt: skip
        width = max(len(listed) for listed in wanted)
        listed_cols = np.full((len(planned), width), -1, dtype=np.int_)
        for k, listed in enumerate(wanted):
            listed_cols[k, : len(listed)] = [index[j] for j in listed]
        rows = np.array([context.row[i] for i in planned], dtype=np.int_)
        pinned = np.array([self.rows[i].pinned is not None for i in planned], dtype=np.bool_)
        wished = np.zeros(len(planned), dtype=np.bool_)  # wishes are planned in full
        for proposal in propose(rows, listed_cols, pinned, wished, context):
            old = before.get(proposal.newcomer_id)
            self.proposals[proposal.newcomer_id] = old if old == proposal else proposal

    def _unmatched_reason(self, row: _Row) -> str:
        if self._years is None:
            members = self.inputs.member_list
            active = np.sort(np.fromiter((x.joined.year for x in members if x.active), np.int_))
            self._years = (active, np.sort(self.mentor_years))
        active_years, mentor_years = self._years
        feasible = np.array([bool(row.scores) or row.bound > -_INF])
        return _unmatched_reason(row.member, active_years, mentor_years, feasible)

    def result(self) -> Plan:
        proposals = [self.proposals[i] for i in sorted(self.proposals)]
        unmatched = {i: self.unmatched[i] for i in sorted(self.unmatched)}
        return Plan(proposals=proposals, unmatched=unmatched, dropped_pins=dict(self.dropped))
