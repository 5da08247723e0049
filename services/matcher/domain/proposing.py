"""What a planned proposal says: the proposal and alternatives of each planned newcomer,
with German reasons and why not the others.

``propose`` turns the rows of a solved plan (``planning.plan_tandems`` and the incremental
planner) into ``PlannedProposal``s: the chosen mentor's score and breakdown, its reasons
(what is shared with few or no other eligible mentors), the alternatives with why each is not
the proposal, and what became of the newcomer's wishes. ``PlanContext`` is what it needs of
the plan.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import networkx as nx
import numpy as np
from numpy.typing import NDArray

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
from services.matcher.domain.model import Member, Pair
from services.matcher.domain.score_engine import ScoreMatrix
from services.matcher.domain.scoring import (
    CRITERIA,
    Weights,
    experience_score,
    geography_score,
    network_score,
    population_score,
    topic_score,
)


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


def _breakdown_dicts(parts: Mapping[str, NDArray[np.float64]]) -> list[dict[str, float]]:
    """One ``{criterion: score}`` dict per cell (a literal is the fastest way to build many)."""
    topics, population, geography, experience, network = CRITERIA
    return [
        {topics: a, population: b, geography: c, experience: d, network: e}
        for a, b, c, d, e in zip(*(parts[name].tolist() for name in CRITERIA), strict=True)
    ]


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
