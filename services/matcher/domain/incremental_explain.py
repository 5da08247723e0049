"""The plan of the kept state (see ``incremental``): proposals with reasons and alternatives
rebuilt for the rows an update touched, and the reasons of the unmatched.
"""

from __future__ import annotations

import numpy as np

from services.matcher.domain.incremental_state import (
    _INF,
    _Kept,
    _Row,
)
from services.matcher.domain.planning import (
    ALTERNATIVES,
    Plan,
    _unmatched_reason,
    earliest_year,
)
from services.matcher.domain.proposing import (
    PlanContext,
    PlannedProposal,
    components_of,
    mentor_components,
    propose,
)
from services.matcher.domain.score_engine import score_matrix


class _Explaining(_Kept):
    """The proposals of the kept state, rebuilt where they changed."""

    # --- the plan ---------------------------------------------------------------------------------

    def _explain(self) -> None:
        """Rebuild the proposals of the dirty rows and the unmatched reasons, with
        ``proposing.propose`` against a context of just those rows and the holders of the
        mentors they list. A rebuilt proposal equal to the one before stays that object."""
        planned, before = self._take_dirty()
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

    def _take_dirty(self) -> tuple[list[str], dict[str, PlannedProposal]]:
        """Take the dirty rows: drop their proposals and reasons, give the unmatched ones their
        reason; returns the rows to plan and the proposals they had before."""
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
        return planned, before

    def _unmatched_reason(self, row: _Row) -> str:
        if self._years is None:
            active = [x for x in self.inputs.member_list if x.active]
            mentors = int(self.mentor_years.min()) if self.mentor_years.size else None
            self._years = (earliest_year(active), mentors)
        earliest_active, earliest_mentor = self._years
        any_feasible = bool(row.scores) or row.bound > -_INF
        return _unmatched_reason(
            row.member.joined.year, earliest_active, earliest_mentor, any_feasible
        )

    def result(self) -> Plan:
        proposals = [self.proposals[i] for i in sorted(self.proposals)]
        unmatched = {i: self.unmatched[i] for i in sorted(self.unmatched)}
        return Plan(proposals=proposals, unmatched=unmatched, dropped_pins=dict(self.dropped))
