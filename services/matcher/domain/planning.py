"""Re-plan tandems for everyone waiting, and turn the plan into proposal changes.

``plan_tandems`` is the use case "solve jointly for every newcomer still waiting": it decides
who is a newcomer, which mentors are eligible for whom, scores all pairs, solves the joint
assignment and explains the result. ``reconcile`` compares the plan with the proposals that are
pending and says which to keep, which to create and which to supersede. The proposal lifecycle
(statuses and their transitions) is ``domain.lifecycle``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from services.matcher.domain.assignment import FIRST_CANDIDATES, solve_assignment
from services.matcher.domain.model import Member, Pair, Tandem
from services.matcher.domain.network import tandem_graph
from services.matcher.domain.proposing import (
    PlanContext,
    PlannedProposal,
    components_of,
    mentor_components,
    propose,
)
from services.matcher.domain.score_engine import ScoreMatrix, score_matrix
from services.matcher.domain.scoring import (
    Weights,
)

#: How many alternatives a proposal lists.
ALTERNATIVES = 3
#: Best mentors listed per newcomer while scoring: the solver's first candidate lists and,
#: without the chosen one, the alternatives.
SHORTLIST = max(FIRST_CANDIDATES, ALTERNATIVES + 1)


class Unmatched(StrEnum):
    """Why a newcomer got no proposal in this solve."""

    NO_ELIGIBLE_MENTOR = "no_eligible_mentor"  # nobody active joined in an earlier year
    NO_CAPACITY = "no_capacity"  # earlier members exist, all busy with running tandems
    ALL_REJECTED = "all_rejected"  # those with capacity are all rejected or forbidden
    CAPACITY_TAKEN = "capacity_taken"  # suitable mentors went to other newcomers this round


UNMATCHED_MESSAGES_DE = {
    Unmatched.NO_ELIGIBLE_MENTOR: "Noch kein aktives Mitglied ist in einem früheren Jahr "
    "beigetreten; es gibt keine mögliche Tandem-Stadt.",
    Unmatched.NO_CAPACITY: "Alle früher beigetretenen Mitglieder sind mit laufenden Tandems "
    "ausgelastet.",
    Unmatched.ALL_REJECTED: "Alle früher beigetretenen Mitglieder mit freier Kapazität wurden "
    "abgelehnt oder sind ausgeschlossen.",
    Unmatched.CAPACITY_TAKEN: "Die passenden Tandem-Städte sind in dieser Runde anderen neuen "
    "Mitgliedern zugeordnet; sobald Kapazität frei wird, folgt ein Vorschlag.",
}


def unmatched_message(reason: str) -> str:
    """German explanation of an unmatched reason code for staff."""
    return UNMATCHED_MESSAGES_DE[Unmatched(reason)]


class DroppedPin(StrEnum):
    """Why a pinned pair was not applied (the newcomer is then planned normally)."""

    NOT_A_NEWCOMER = "not_a_newcomer"
    UNKNOWN_MENTOR = "unknown_mentor"  # not an active member
    NOT_ELIGIBLE = "not_eligible"  # same member, or not joined in an earlier year
    EXCLUDED = "excluded"  # rejected or forbidden pair
    NO_CAPACITY = "no_capacity"  # the mentor has no free capacity left for it


@dataclass(frozen=True, slots=True)
class Plan:
    """Result of a joint solve: proposals by newcomer id, and who stays unmatched and why."""

    proposals: list[PlannedProposal]
    unmatched: dict[str, str]
    dropped_pins: dict[str, str] = field(default_factory=dict)

    def proposal_for(self, newcomer_id: str) -> PlannedProposal | None:
        """The planned proposal of a newcomer, if any."""
        return next((p for p in self.proposals if p.newcomer_id == newcomer_id), None)


def newcomers_of(members: Sequence[Member], tandems: Sequence[Tandem]) -> list[Member]:
    """Active members seeking a tandem that never had an accepted tandem as newcomer."""
    had_tandem = {t.newcomer_id for t in tandems}
    return sorted(
        (x for x in members if x.active and x.seeks_tandem and x.id not in had_tandem),
        key=lambda x: x.id,
    )


def free_capacity(
    members: Sequence[Member], tandems: Sequence[Tandem], today: dt.date
) -> dict[str, int]:
    """Per member: ``mentor_capacity`` minus its running tandems as mentor (never below 0)."""
    running = Counter(t.mentor_id for t in tandems if t.is_running(today))
    taken = running.get
    return {x.id: max(0, x.mentor_capacity - taken(x.id, 0)) for x in members}


def plan_tandems(
    members: Sequence[Member],
    tandems: Sequence[Tandem],
    pending: Mapping[str, str],
    rejected: set[Pair],
    forbidden: set[Pair],
    pinned: Mapping[str, str],
    weights: Weights,
    today: dt.date,
    graph_of_past_tandems: nx.Graph | None = None,
) -> Plan:
    """Plan a mentor for every newcomer, jointly (see ``solve_assignment``).

    ``pending``: newcomer id -> mentor id of its current pending proposal (kept when tied).
    ``rejected``/``forbidden``: (newcomer id, mentor id) pairs never to propose. ``pinned``:
    newcomer id -> mentor id it must get; pins that are not possible are dropped and reported
    in ``Plan.dropped_pins``. ``graph_of_past_tandems`` defaults to the graph of ``tandems``.
    Newcomers and mentors are ordered by id, so the same input gives the same plan.
    """
    newcomers = newcomers_of(members, tandems)
    if not newcomers:
        return Plan(proposals=[], unmatched={})
    graph = tandem_graph(tandems) if graph_of_past_tandems is None else graph_of_past_tandems
    capacity_of = free_capacity(members, tandems, today)
    active = sorted((x for x in members if x.active), key=lambda x: x.id)
    # Only members with free capacity that joined before the latest newcomers can mentor
    # anybody now; the others (this year's newcomers, say) are no columns at all.
    latest = max(x.joined.year for x in newcomers)
    with_capacity = [x for x in active if capacity_of[x.id] > 0]
    mentors = [x for x in with_capacity if x.joined.year < latest]
    too_new = {x.id for x in with_capacity if x.joined.year >= latest}
    capacity = np.array([capacity_of[x.id] for x in mentors], dtype=np.int_)
    column = {x.id: j for j, x in enumerate(mentors)}
    feasible = _feasibility(newcomers, mentors, column, rejected | forbidden)
    # Each newcomer's best feasible mentors are listed while scoring: the solver's first
    # candidates and the alternatives come from them, not from more passes over the matrix.
    # In a crowded network (more newcomers than free places) most newcomers wait: the solver
    # lists per mentor there, and only the planned newcomers need their lists, afterwards.
    crowded = len(newcomers) > int(capacity.sum())
    scores = score_matrix(
        newcomers, mentors, weights, today, graph, shortlist=0 if crowded else SHORTLIST,
        feasible=feasible,
    )  # fmt: skip
    # Infeasible incumbents (e.g. the pair was since forbidden) get no bonus in the solver.
    incumbent = np.array([column.get(pending.get(x.id, ""), -1) for x in newcomers], dtype=np.int_)
    pins, dropped = _pins(
        newcomers, active, column, capacity, feasible, pinned, rejected | forbidden, too_new
    )
    wish_pins = _wish_pins(newcomers, column, capacity, feasible, pins, incumbent, scores)
    chosen = solve_assignment(
        scores, capacity, feasible, incumbent, wish_pins, None if crowded else scores.shortlist
    )
    if crowded:
        scores.list_best(np.flatnonzero(chosen >= 0), SHORTLIST, feasible)
    chosen = _prefer_closer(chosen, scores, capacity, incumbent, wish_pins)

    unmatched = _unmatched_reasons(newcomers, active, mentors, feasible, chosen)
    rows = np.flatnonzero(chosen >= 0)
    component = components_of(graph)
    context = PlanContext(
        newcomers, mentors, column, capacity, feasible, chosen, scores, weights, graph,
        {x.id: x for x in members}, rejected | forbidden, incumbent, component,
        mentor_components(mentors, component), {x.id: i for i, x in enumerate(newcomers)}, today,
    )  # fmt: skip
    # Per planned newcomer: its mentor, then its alternatives (-1 pads).
    listed = np.column_stack([chosen[rows], _alternatives(scores.shortlist[rows], chosen[rows])])
    proposals = propose(
        rows, listed, pins[rows] >= 0, (wish_pins[rows] >= 0) & (pins[rows] < 0), context
    )
    return Plan(proposals=proposals, unmatched=unmatched, dropped_pins=dropped)


def _feasibility(
    newcomers: Sequence[Member],
    mentors: Sequence[Member],
    column: Mapping[str, int],
    excluded: set[Pair],
) -> NDArray[np.bool_]:
    """Eligible pairs: mentor joined in an earlier calendar year, not the newcomer itself, and
    the pair not rejected or forbidden (mentors without free capacity are not columns).
    ``column``: mentor id -> its column."""
    year_n = np.fromiter((x.joined.year for x in newcomers), np.int_, len(newcomers))
    year_m = np.fromiter((x.joined.year for x in mentors), np.int_, len(mentors))
    feasible: NDArray[np.bool_] = year_m[None, :] < year_n[:, None]
    row = {x.id: i for i, x in enumerate(newcomers)}
    for newcomer_id, mentor_id in excluded:
        if newcomer_id in row and mentor_id in column:
            feasible[row[newcomer_id], column[mentor_id]] = False
    # An earlier year already rules out pairing a member with itself; kept explicit for safety.
    for newcomer_id, i in row.items():
        if newcomer_id in column:
            feasible[i, column[newcomer_id]] = False
    return feasible


def _pins(
    newcomers: Sequence[Member],
    active: Sequence[Member],
    column: Mapping[str, int],
    capacity: NDArray[np.int_],
    feasible: NDArray[np.bool_],
    pinned: Mapping[str, str],
    excluded: set[Pair],
    too_new: set[str],
) -> tuple[NDArray[np.int_], dict[str, str]]:
    """Pinned columns per newcomer (-1 if none) and the pins that cannot be honoured.
    ``too_new``: members with capacity that are no column because nobody waiting may have them."""
    row = {x.id: i for i, x in enumerate(newcomers)}
    members = {x.id: x for x in active}
    pins = np.full(len(newcomers), -1, dtype=np.int_)
    load = np.zeros_like(capacity)
    dropped: dict[str, str] = {}
    for newcomer_id in sorted(pinned):  # sorted: who loses an over-full pin is deterministic
        mentor_id = pinned[newcomer_id]
        if newcomer_id not in row:
            dropped[newcomer_id] = DroppedPin.NOT_A_NEWCOMER
        elif mentor_id not in members:
            dropped[newcomer_id] = DroppedPin.UNKNOWN_MENTOR
        elif (newcomer_id, mentor_id) in excluded:
            dropped[newcomer_id] = DroppedPin.EXCLUDED
        elif mentor_id in too_new:
            dropped[newcomer_id] = DroppedPin.NOT_ELIGIBLE
        elif mentor_id not in column:
            dropped[newcomer_id] = DroppedPin.NO_CAPACITY
        elif not feasible[row[newcomer_id], column[mentor_id]]:
            dropped[newcomer_id] = DroppedPin.NOT_ELIGIBLE
        elif load[column[mentor_id]] >= capacity[column[mentor_id]]:
            dropped[newcomer_id] = DroppedPin.NO_CAPACITY
        else:
            pins[row[newcomer_id]] = column[mentor_id]
            load[column[mentor_id]] += 1
    return pins, dropped


def _unmatched_reasons(
    newcomers: Sequence[Member],
    active: Sequence[Member],
    mentors: Sequence[Member],
    feasible: NDArray[np.bool_],
    chosen: NDArray[np.int_],
) -> dict[str, str]:
    """Why each unmatched newcomer waits (``_unmatched_reason``); what every row shares is
    computed once (after a burst thousands wait)."""
    waiting = np.flatnonzero(chosen < 0)
    rows: list[int] = waiting.tolist()
    earliest_active = earliest_year(active)
    earliest_mentor = earliest_year(mentors)
    any_feasible: list[bool] = np.any(feasible[waiting], axis=1).tolist()
    return {
        newcomers[i].id: _unmatched_reason(
            newcomers[i].joined.year, earliest_active, earliest_mentor, eligible
        )
        for i, eligible in zip(rows, any_feasible, strict=True)
    }


def earliest_year(members: Sequence[Member]) -> int | None:
    """The earliest joining year of ``members`` (None if there are none)."""
    return min((x.joined.year for x in members), default=None)


def _unmatched_reason(
    year: int, earliest_active: int | None, earliest_mentor: int | None, any_feasible: bool
) -> str:
    """Why a newcomer of ``year`` waits: no active member joined earlier, none with capacity
    did, those with capacity are all excluded, or they went to others in this round."""
    if earliest_active is None or earliest_active >= year:
        return Unmatched.NO_ELIGIBLE_MENTOR
    if earliest_mentor is None or earliest_mentor >= year:
        return Unmatched.NO_CAPACITY
    if not any_feasible:
        return Unmatched.ALL_REJECTED
    return Unmatched.CAPACITY_TAKEN


def _alternatives(shortlist: NDArray[np.int_], chosen: NDArray[np.int_]) -> NDArray[np.int_]:
    """Per row the ``ALTERNATIVES`` best other feasible mentor columns, best first (-1 pads).

    ``shortlist``: the rows' best feasible columns, best first, equal scores by column (see
    ``score_matrix``); at least ``ALTERNATIVES + 1`` wide, so that the alternatives are in it
    whether or not it holds the chosen mentor. Whether a mentor's capacity is used by another
    proposal of this solve does not matter.
    """
    other = (shortlist >= 0) & (shortlist != chosen[:, None])
    # Stable: the listed order (best first) is kept among the other mentors.
    order = np.argsort(~other, axis=1, kind="stable")[:, :ALTERNATIVES]
    picked = np.take_along_axis(shortlist, order, axis=1)
    result = np.where(np.take_along_axis(other, order, axis=1), picked, -1)
    if result.shape[1] < ALTERNATIVES:  # fewer mentors than alternatives
        pad = np.full((result.shape[0], ALTERNATIVES - result.shape[1]), -1, dtype=np.int_)
        result = np.concatenate([result, pad], axis=1)
    return result


# --- wishes ----------------------------------------------------------------------------------


def _wish_pins(
    newcomers: Sequence[Member],
    column: Mapping[str, int],
    capacity: NDArray[np.int_],
    feasible: NDArray[np.bool_],
    pins: NDArray[np.int_],
    incumbent: NDArray[np.int_],
    scores: ScoreMatrix,
) -> NDArray[np.int_]:
    """``pins`` plus a wished mentor for as many newcomers as possible.

    A newcomer without a pin that wished eligible mentors with room gets one of them, fixed
    like a pin. When wishes exceed a mentor's capacity, the joint score decides: the wishes
    are granted by the same solver on the wished pairs only (most wishes granted, then the
    highest sum of their scores, current proposals kept at ties)."""
    m = len(column)
    cells = [
        (i, column[wished])
        for i, newcomer in enumerate(newcomers)
        if pins[i] < 0
        for wished in newcomer.wishes
        if wished in column and feasible[i, column[wished]]
    ]
    if not cells:
        return pins
    # Only the rows with a possible wish take part (the wished pairs of the others are none).
    rows = np.unique(np.array([i for i, _ in cells], dtype=np.int_))
    wish = np.zeros((len(newcomers), m), dtype=np.bool_)
    for i, j in cells:
        wish[i, j] = True
    left = capacity - np.bincount(pins[pins >= 0], minlength=m)
    sub_incumbent = np.where(wish[rows, np.maximum(incumbent[rows], 0)], incumbent[rows], -1)
    granted = solve_assignment(
        scores.rows(rows), left.astype(np.int_), wish[rows], sub_incumbent,
        np.full(rows.size, -1, dtype=np.int_),
    )  # fmt: skip
    result = pins.copy()
    result[rows[granted >= 0]] = granted[granted >= 0]
    return result


def _prefer_closer(
    chosen: NDArray[np.int_],
    scores: ScoreMatrix,
    capacity: NDArray[np.int_],
    incumbent: NDArray[np.int_],
    fixed: NDArray[np.int_],
) -> NDArray[np.int_]:
    """Among exactly tied mentors, the closer one: a planned newcomer whose listed mentor with
    free capacity scores exactly the same as its own but is closer (higher geography score)
    moves there, until nobody can. The total stays the same, so the plan stays optimal; kept
    proposals, pins and wishes do not move. Tandem partners visit each other: at a tie,
    distance decides."""
    if scores.shortlist.size == 0:
        return chosen
    rows = np.flatnonzero((chosen >= 0) & (fixed < 0) & (incumbent != chosen))
    if rows.size == 0:
        return chosen
    listed = scores.shortlist[rows]
    own = scores.cells(rows, chosen[rows])
    tied = (listed >= 0) & (listed != chosen[rows][:, None])
    tied &= np.abs(np.nan_to_num(scores.shortlist_scores[rows], nan=-1.0) - own[:, None]) <= 1e-12
    candidates = np.flatnonzero(tied.any(axis=1))
    if candidates.size == 0:
        return chosen
    result = chosen.copy()
    load = np.bincount(result[result >= 0], minlength=capacity.size)
    groups = []  # per candidate row: its tied mentors (its own first) and their geography
    for index in candidates.tolist():
        row = int(rows[index])
        cols = np.concatenate([[result[row]], listed[index][tied[index]]]).astype(np.int_)
        near = scores.breakdowns(np.full(cols.size, row, dtype=np.int_), cols)["geography"]
        order = np.argsort(-near, kind="stable")
        groups.append((row, cols[order].tolist(), near[order].tolist()))
    # Until nobody moves: a move can free room that an earlier row wants (every move gains
    # distance, so this ends).
    moved = True
    while moved:
        moved = False
        for row, cols_of, near_of in groups:
            own = near_of[cols_of.index(int(result[row]))]
            for j, near in zip(cols_of, near_of, strict=True):
                if near <= own + 1e-12:
                    break
                if load[j] < capacity[j]:
                    load[result[row]] -= 1
                    load[j] += 1
                    result[row] = j
                    moved = True
                    break
    return result


# --- from plan to proposal changes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewProposal:
    """A proposal to create; ``supersedes`` is the pending proposal it replaces, if any."""

    planned: PlannedProposal
    supersedes: str | None


@dataclass(frozen=True, slots=True)
class Changes:
    """What to do with the proposals after a re-plan.

    ``keep``: pending proposal ids that stay as they are. ``new``: proposals to create.
    ``supersede``: every pending proposal id to mark ``superseded``: those replaced by a new
    proposal (named in its ``supersedes``) and those of newcomers that are now unmatched or no
    longer newcomers (superseded with no replacement).
    """

    keep: tuple[str, ...]
    new: tuple[NewProposal, ...]
    supersede: tuple[str, ...]


def reconcile(plan: Plan, pending_proposals: Mapping[str, tuple[str, str]]) -> Changes:
    """Compare ``plan`` with the pending proposals (newcomer id -> (proposal id, mentor id)).

    Same mentor as pending: keep. Different mentor: a new proposal that supersedes the old
    one. Pending proposal but no planned mentor: superseded without replacement. Proposals of
    members that left are the caller's to ``withdraw`` before planning (that is what
    ``withdrawn`` means); ``reconcile`` never withdraws.
    """
    keep: list[str] = []
    new: list[NewProposal] = []
    supersede: list[str] = []
    planned = {p.newcomer_id: p for p in plan.proposals}
    for proposal in plan.proposals:
        current = pending_proposals.get(proposal.newcomer_id)
        if current is not None and current[1] == proposal.mentor_id:
            keep.append(current[0])
            continue
        if current is not None:
            supersede.append(current[0])
        new.append(NewProposal(planned=proposal, supersedes=current[0] if current else None))
    for newcomer_id in sorted(pending_proposals):
        if newcomer_id not in planned:
            supersede.append(pending_proposals[newcomer_id][0])
    return Changes(keep=tuple(keep), new=tuple(new), supersede=tuple(supersede))
