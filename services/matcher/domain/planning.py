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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from services.matcher.domain.assignment import FIRST_CANDIDATES, solve_assignment
from services.matcher.domain.explain import (
    LOWER,
    Reason,
    Rival,
    pair_reasons,
    statements,
    why_lower,
    why_not,
    wish_not_possible,
    wish_taken,
)
from services.matcher.domain.model import Member, Pair, Tandem
from services.matcher.domain.network import tandem_graph
from services.matcher.domain.score_engine import ScoreMatrix, score_matrix
from services.matcher.domain.scoring import (
    CRITERIA,
    Weights,
    experience_score,
    geography_score,
    network_score,
    population_score,
    topic_score,
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
class Alternative:
    """Another eligible mentor for the newcomer, with its score; ``why_not`` says in German
    why it is not the proposal, ``taken_by`` is the newcomer whose proposal of the same plan
    uses that mentor (None if none does)."""

    mentor_id: str
    score: float
    breakdown: dict[str, float]
    why_not: str = ""
    taken_by: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedProposal:
    """The mentor planned for a newcomer, why, and the next best eligible mentors."""

    newcomer_id: str
    mentor_id: str
    score: float
    breakdown: dict[str, float]
    reasons: list[str]
    alternatives: tuple[Alternative, ...]
    pinned: bool = False
    wished: bool = False


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
    scores = score_matrix(
        newcomers, mentors, weights, today, graph, shortlist=SHORTLIST, feasible=feasible
    )
    # Infeasible incumbents (e.g. the pair was since forbidden) get no bonus in the solver.
    incumbent = np.array([column.get(pending.get(x.id, ""), -1) for x in newcomers], dtype=np.int_)
    pins, dropped = _pins(
        newcomers, active, column, capacity, feasible, pinned, rejected | forbidden, too_new
    )
    wish_pins = _wish_pins(newcomers, column, capacity, feasible, pins, incumbent, scores)
    chosen = solve_assignment(scores, capacity, feasible, incumbent, wish_pins, scores.shortlist)
    chosen = _prefer_closer(chosen, scores, capacity, incumbent, wish_pins)

    unmatched: dict[str, str] = {}
    years = np.sort([x.joined.year for x in active])
    mentor_years = np.sort([x.joined.year for x in mentors])
    for row in np.flatnonzero(chosen < 0).tolist():
        unmatched[newcomers[row].id] = _unmatched_reason(
            newcomers[row], years, mentor_years, feasible[row]
        )
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


def _breakdown_dicts(parts: Mapping[str, NDArray[np.float64]]) -> list[dict[str, float]]:
    """One ``{criterion: score}`` dict per cell (a literal is the fastest way to build many)."""
    topics, population, geography, experience, network = CRITERIA
    return [
        {topics: a, population: b, geography: c, experience: d, network: e}
        for a, b, c, d, e in zip(*(parts[name].tolist() for name in CRITERIA), strict=True)
    ]


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


def _unmatched_reason(
    newcomer: Member,
    active_years: NDArray[np.int_],
    mentor_years: NDArray[np.int_],
    feasible_row: NDArray[np.bool_],
) -> str:
    if np.searchsorted(active_years, newcomer.joined.year) == 0:
        return Unmatched.NO_ELIGIBLE_MENTOR
    if np.searchsorted(mentor_years, newcomer.joined.year) == 0:
        return Unmatched.NO_CAPACITY
    if not feasible_row.any():
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


# --- reasons and why not the others ----------------------------------------------------------

#: How many other eligible mentors are checked at most before a statement is called shared.
SHARED_CHECK_LIMIT = 512


@dataclass(frozen=True, slots=True)
class PlanContext:
    """What explaining proposals needs to know of a joint plan, for ``propose``.

    Rows are newcomers ordered by id: every newcomer to explain and every holder of a mentor
    one of them lists (as alternative or wish); ``plan_tandems`` passes all newcomers, the
    incremental planner just those. Columns are every mentor with free capacity (pins
    included), ordered by id. ``feasible``, ``chosen`` (column or -1), ``incumbent`` (the
    column of the pending mentor or -1) and ``scores`` are over those rows and columns;
    ``capacity`` is each column's free capacity; ``component`` maps members to their
    connected component of ``graph`` and ``mentor_component`` the columns (-1: none)."""

    newcomers: Sequence[Member]
    mentors: Sequence[Member]
    column: Mapping[str, int]
    capacity: NDArray[np.int_]
    feasible: NDArray[np.bool_]
    chosen: NDArray[np.int_]
    scores: ScoreMatrix
    weights: Weights
    graph: nx.Graph
    members: Mapping[str, Member]
    excluded: set[Pair] | frozenset[Pair]
    incumbent: NDArray[np.int_]
    component: Mapping[str, int]
    mentor_component: NDArray[np.int_]
    row: Mapping[str, int]
    today: dt.date


def components_of(graph: nx.Graph) -> dict[str, int]:
    """Member id -> the number of its connected component in the tandem graph."""
    return {
        node: index for index, part in enumerate(nx.connected_components(graph)) for node in part
    }


def mentor_components(mentors: Sequence[Member], component: Mapping[str, int]) -> NDArray[np.int_]:
    """Per mentor column its component (-1 outside the graph)."""
    return np.fromiter((component.get(x.id, -1) for x in mentors), np.int_, len(mentors))


def propose(
    rows: NDArray[np.int_],
    listed: NDArray[np.int_],
    pinned: NDArray[np.bool_],
    wished: NDArray[np.bool_],
    c: PlanContext,
) -> list[PlannedProposal]:
    """The proposals of ``rows`` (context rows), explained against the plan of ``c``.

    ``listed``: per row its chosen column, then its alternatives best first (-1 pads);
    ``pinned``/``wished``: per row whether its mentor is a pin or a granted wish. The one
    place where proposals, their reasons and their alternatives' why-not are made: full and
    incremental planning both call it."""
    # Their breakdowns in one vectorised call, in that order.
    cell_rows = np.repeat(rows, listed.shape[1]).reshape(listed.shape)[listed >= 0]
    cell_cols = listed[listed >= 0]
    parts = c.scores.breakdowns(cell_rows, cell_cols)
    totals = c.scores.weighted(parts)
    counts = np.count_nonzero(listed >= 0, axis=1)
    table = _Cells(
        np.column_stack([parts[name] for name in CRITERIA]) if cell_cols.size else
        np.zeros((0, len(CRITERIA))),
        totals, np.cumsum(counts) - counts,
    )  # fmt: skip
    cells = iter(zip(cell_cols.tolist(), totals.tolist(), _breakdown_dicts(parts), strict=True))
    proposals = []
    extra = (counts - 1).tolist()
    flags = zip(pinned.tolist(), wished.tolist(), strict=True)
    for i, alternatives, (pin, wish) in zip(rows.tolist(), extra, flags, strict=True):
        j, score, breakdown = next(cells)
        proposals.append(
            PlannedProposal(
                newcomer_id=c.newcomers[i].id,
                mentor_id=c.mentors[j].id,
                score=score,
                breakdown=breakdown,
                reasons=[],  # explained below, once the whole plan is known
                alternatives=tuple(
                    Alternative(c.mentors[k].id, value, parts_of)
                    for k, value, parts_of in islice(cells, alternatives)
                ),
                pinned=bool(pin),
                wished=bool(wish),
            )
        )
    return _explain_all(proposals, c, table)


def _explain_all(
    proposals: list[PlannedProposal], c: PlanContext, table: _Cells
) -> list[PlannedProposal]:
    """The proposals with their distinguishing reasons, wish sentences and why-not per
    alternative, all computed from the finished plan (batched: a few vectorised score calls
    for all proposals together)."""
    rows = [c.row[p.newcomer_id] for p in proposals]
    reasons = [
        pair_reasons(c.newcomers[i], c.mentors[int(c.chosen[i])], p.breakdown, c.weights, p.wished)
        for i, p in zip(rows, proposals, strict=True)
    ]
    shared = _shared_statements(rows, proposals, reasons, c)
    why = _why_nots(rows, proposals, c, table)
    result = []
    for k, (i, p) in enumerate(zip(rows, proposals, strict=True)):
        shown = [r.text for r in reasons[k] if r.text not in shared[k]]
        result.append(
            PlannedProposal(
                newcomer_id=p.newcomer_id,
                mentor_id=p.mentor_id,
                score=p.score,
                breakdown=p.breakdown,
                reasons=shown + _wish_sentences(i, p, c),
                alternatives=why[k],
                pinned=p.pinned,
                wished=p.wished,
            )
        )
    return result


def _shared_statements(
    rows: list[int],
    proposals: list[PlannedProposal],
    reasons: list[list[Reason]],
    c: PlanContext,
) -> list[set[str]]:
    """Per proposal, its statements that every other eligible mentor of the newcomer would get
    word for word (none when it has no other eligible mentor). Checked against the alternatives
    first (already scored), then against the other eligible mentors one by one, only for rows
    with statements still undecided. A row with more than ``SHARED_CHECK_LIMIT`` other eligible
    mentors (besides the proposal's and the alternatives) shares no statement but the network
    one (not every eligible mentor would be looked at)."""
    eligible = np.count_nonzero(c.feasible[rows], axis=1).tolist() if rows else []
    undecided: list[dict[str, set[str]]] = []
    shared: list[set[str]] = []
    for k, (i, found) in enumerate(zip(rows, reasons, strict=True)):
        by_criterion: dict[str, set[str]] = {}
        known: set[str] = set()
        # Beyond the limit, no statement is called shared (see below) but the network one,
        # which is decided on the graph: nothing to compare mentor by mentor.
        others = eligible[k] - 1 - len(proposals[k].alternatives)
        exhaustive = others <= SHARED_CHECK_LIMIT
        for r in found:
            if r.kind != "reason" or eligible[k] < 2:
                continue
            if r.criterion == "network" and _network_shared(i, c):
                known.add(r.text)  # the newcomer is linked to none of its eligible mentors
            elif exhaustive:
                by_criterion.setdefault(r.criterion, set()).add(r.text)
        undecided.append(by_criterion)
        shared.append(known)

    def narrow(k: int, mentor: Member, breakdown: Mapping[str, float]) -> None:
        said = statements(c.newcomers[rows[k]], mentor, breakdown, c.weights, undecided[k])
        for criterion in list(undecided[k]):
            undecided[k][criterion] &= said
            if not undecided[k][criterion]:
                del undecided[k][criterion]

    for k, proposal in enumerate(proposals):
        for alternative in proposal.alternatives:
            if not undecided[k]:
                break
            narrow(k, c.mentors[c.column[alternative.mentor_id]], alternative.breakdown)
    # The other eligible mentors, one at a time and only the criteria still undecided (with
    # the plain one-pair formulas, which equal the matrix to 1e-12), stopping as soon as every
    # statement of the row is told apart.
    for k, proposal in enumerate(proposals):
        if not undecided[k]:
            continue
        # Only rows with at most SHARED_CHECK_LIMIT other eligible mentors have statements
        # undecided (see above): every one of them is looked at, in column order.
        row = rows[k]
        seen = {int(c.chosen[row]), *(c.column[a.mentor_id] for a in proposal.alternatives)}
        newcomer = c.newcomers[row]
        for j in np.flatnonzero(c.feasible[row]).tolist():
            if j in seen:
                continue
            mentor = c.mentors[j]
            narrow(k, mentor, {name: _ONE_PAIR[name](newcomer, mentor, c) for name in undecided[k]})
            if not undecided[k]:
                break
    for k in range(len(rows)):
        for texts in undecided[k].values():
            shared[k] |= texts
    return shared


_ONE_PAIR: dict[str, Callable[[Member, Member, PlanContext], float]] = {
    "topics": lambda newcomer, mentor, c: topic_score(newcomer, mentor),
    "population": lambda newcomer, mentor, c: population_score(newcomer, mentor),
    "geography": lambda newcomer, mentor, c: geography_score(newcomer, mentor),
    "experience": lambda newcomer, mentor, c: experience_score(mentor, c.today),
    "network": lambda newcomer, mentor, c: network_score(newcomer.id, mentor.id, c.graph),
}


def _network_shared(row: int, c: PlanContext) -> bool:
    """Whether every eligible mentor of the row is unconnected to it in the tandem graph
    (then "no common link yet" is true of all of them)."""
    part = c.component.get(c.newcomers[row].id)
    return part is None or not bool((c.feasible[row] & (c.mentor_component == part)).any())


def _why_nots(
    rows: list[int], proposals: list[PlannedProposal], c: PlanContext, table: _Cells
) -> list[tuple[Alternative, ...]]:
    """Every proposal's alternatives with ``taken_by`` and ``why_not`` (see ``explain.why_not``).

    Vectorised over all alternatives: the gaps and the criterion each loses most on from the
    cells' criteria (``table``); the rivals' scores, needed only at ties, from two calls."""
    m = len(c.mentors)
    holders = np.bincount(c.chosen[c.chosen >= 0], minlength=m)
    first = np.full(m, -1, dtype=np.int_)
    planned = np.flatnonzero(c.chosen >= 0)
    # newcomers are ordered by id: the first holder of a mentor is the smallest row.
    first[c.chosen[planned[::-1]]] = planned[::-1]
    counts = np.array([len(p.alternatives) for p in proposals], dtype=np.int_)
    total = int(counts.sum())
    own = np.repeat(table.starts, counts)
    offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    other = own + 1 + offset
    cols = np.fromiter(
        (c.column[a.mentor_id] for p in proposals for a in p.alternatives), np.int_, total
    )
    gaps = table.totals[own] - table.totals[other]
    share = _shares_vector(c.weights)
    loss = share * (table.parts[own] - table.parts[other])
    worst = np.argmax(loss, axis=1) if total else np.zeros(0, dtype=np.int_)
    positive = (loss[np.arange(total), worst] > 0).tolist()
    held = (holders[cols] > 0).tolist()
    full = (holders[cols] >= c.capacity[cols]).tolist()
    rival_rows = first[cols]
    lower = (gaps > LOWER).tolist()
    # Ties with a held mentor: who has it, its score there and with the proposal's mentor.
    tied = np.flatnonzero(~(gaps > LOWER) & (holders[cols] > 0))
    own_cols = np.repeat(c.chosen[np.array(rows, dtype=np.int_)], counts) if rows else cols
    tie_rows, tie_cols, tie_own = rival_rows[tied], cols[tied], own_cols[tied]
    tie_scores = c.scores.cells(tie_rows, tie_cols).tolist() if tied.size else []
    tie_swaps = c.scores.cells(tie_rows, tie_own).tolist() if tied.size else []
    swappable = c.feasible[tie_rows, tie_own].tolist() if tied.size else []
    rivals = {
        int(index): Rival(
            name=c.newcomers[r].name,
            score=tie_scores[n],
            swap=tie_swaps[n] if swappable[n] else None,
            full=full[index],
            fixed=c.mentors[col].id in c.newcomers[r].wishes,
        )
        for n, (index, r, col) in enumerate(
            zip(tied.tolist(), tie_rows.tolist(), tie_cols.tolist(), strict=True)
        )
    }
    gap_list, worst_list, rival_list = gaps.tolist(), worst.tolist(), rival_rows.tolist()
    result = []
    index = 0
    for i, p in zip(rows, proposals, strict=True):
        listed = []
        for a in p.alternatives:
            r = rival_list[index]
            holder = c.newcomers[r] if held[index] else None
            if lower[index]:
                sentence = why_lower(
                    gap_list[index],
                    CRITERIA[worst_list[index]] if positive[index] else None,
                    holder.name if holder is not None and full[index] else None,
                )
            else:
                sentence = why_not(
                    p.score, p.breakdown, a.score, a.breakdown, rivals.get(index), c.weights,
                    wished=p.wished, pinned=p.pinned,
                    incumbent=bool(c.incumbent[i] == c.chosen[i]),
                )  # fmt: skip
            taken_by = holder.id if holder is not None else None
            listed.append(Alternative(a.mentor_id, a.score, a.breakdown, sentence, taken_by))
            index += 1
        result.append(tuple(listed))
    return result


@dataclass(frozen=True, slots=True)
class _Cells:
    """The scored cells of ``propose``, in its order (per proposal: its mentor, then its
    alternatives): their criteria (cells x ``CRITERIA``), totals, and where each proposal's
    cells start."""

    parts: NDArray[np.float64]
    totals: NDArray[np.float64]
    starts: NDArray[np.int_]


def _shares_vector(weights: Weights) -> NDArray[np.float64]:
    share = weights.normalised()
    return np.array([share.get(name, 0.0) for name in CRITERIA])


def _wish_sentences(row: int, proposal: PlannedProposal, c: PlanContext) -> list[str]:
    """Why the newcomer's wishes are not the proposal (none when one of them is)."""
    newcomer = c.newcomers[row]
    if proposal.wished or proposal.mentor_id in newcomer.wishes:
        return []
    said = []
    for wished in newcomer.wishes:
        member = c.members.get(wished)
        name = member.name if member else wished
        k = c.column.get(wished)
        if member is None or not member.active:
            said.append(wish_not_possible(name, "inactive"))
        elif member.joined.year >= newcomer.joined.year or wished == newcomer.id:
            said.append(wish_not_possible(name, "too_new"))
        elif (newcomer.id, wished) in c.excluded:
            said.append(wish_not_possible(name, "excluded"))
        elif k is None:
            said.append(wish_not_possible(name, "no_capacity"))
        else:
            holders = [c.newcomers[i].name for i in np.flatnonzero(c.chosen == k).tolist()]
            if holders:
                said.append(wish_taken(name, holders))
            else:
                said.append(wish_not_possible(name, "no_capacity"))
    return said


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
