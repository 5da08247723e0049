"""Weights from decisions, a preview of new weights, and their adoption.

``preview`` and ``adopt`` share one code path (``_replan``): the full joint re-plan of
``replan`` with the given weights and the same reconciliation with the pending proposals.
The preview rolls its read back; the adoption records the weights and writes the re-plan in the
same transaction, under the solver lock, so what it changes is what the preview showed for the
same state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra.outbox import utcnow
from services.matcher import tables
from services.matcher import weights as weights_store
from services.matcher.domain.calibration import Agreement, Decision, calibrate
from services.matcher.domain.incremental import IncrementalPlanner
from services.matcher.domain.lifecycle import ProposalStatus
from services.matcher.domain.scoring import Weights
from services.matcher.replan import Outcome, load_state, plan_outcome, record_outcome, take_lock
from services.matcher.service import MatcherService


async def decision_history(connection: AsyncConnection) -> list[Decision]:
    """Every staff decision, oldest first, with the per-criterion scores of all mentors shown.

    An accepted proposal: its mentor taken over its alternatives. A rejected proposal that an
    accepted proposal ``supersedes`` (``POST .../choose``): that alternative taken over the
    proposal and the other alternatives. Any other rejected proposal: the pair turned down.
    Mentors shown without their per-criterion scores (none are, since alternatives carry
    them) are left out of the decision."""
    p = tables.proposals
    rows = (
        await connection.execute(
            select(p.c.proposal_id, p.c.mentor_id, p.c.breakdown, p.c.alternatives, p.c.status,
                   p.c.supersedes, p.c.decided_at, p.c.seq)
            .where(p.c.status.in_((ProposalStatus.ACCEPTED.value, ProposalStatus.REJECTED.value)))
            .order_by(p.c.decided_at, p.c.seq)
        )
    ).mappings().all()  # fmt: skip
    rejected = {r["proposal_id"]: r for r in rows if r["status"] == ProposalStatus.REJECTED}
    chosen_instead = {
        r["supersedes"]: r["mentor_id"]
        for r in rows
        if r["status"] == ProposalStatus.ACCEPTED and r["supersedes"] in rejected
    }
    decisions: list[Decision] = []
    for row in rows:
        if row["status"] == ProposalStatus.ACCEPTED and row["supersedes"] in rejected:
            continue  # the result of a choice: counted with the proposal it replaced
        shown = [(row["mentor_id"], row["breakdown"])] + [
            (a["mentor_id"], a.get("breakdown")) for a in row["alternatives"] or []
        ]
        shown = [(m, b) for m, b in shown if b]
        if not shown or shown[0][0] != row["mentor_id"]:
            continue
        mentors = [m for m, _ in shown]
        if row["status"] == ProposalStatus.ACCEPTED:
            chosen: int | None = 0
        elif row["proposal_id"] in chosen_instead:
            taken = chosen_instead[row["proposal_id"]]
            if taken not in mentors:
                continue
            chosen = mentors.index(taken)
        else:
            chosen = None
        decisions.append(Decision(tuple(b for _, b in shown), chosen))
    return decisions


@dataclass(frozen=True)
class _Replan:
    outcome: Outcome
    changes: list[dict[str, Any]]
    unchanged: int


async def _replan(
    connection: AsyncConnection, weights: Weights, today: dt.date, now: dt.datetime
) -> _Replan:
    """The full joint re-plan with ``weights`` against the current state (nothing written),
    and which pending proposals it changes."""
    state = await load_state(connection, today)
    pending = state.pending
    p = tables.proposals
    query = select(p.c.proposal_id, p.c.score).where(p.c.status == ProposalStatus.PENDING.value)
    rows = (await connection.execute(query)).mappings().all()
    scores = {str(r["proposal_id"]): float(r["score"]) for r in rows}
    # A planner of its own, planning in full: the preview leaves the matcher's planner as it
    # is, and adoption (the same code) plans exactly what the preview showed.
    outcome = await asyncio.to_thread(
        plan_outcome, state, weights, today, now, IncrementalPlanner()
    )
    replaced = {row["supersedes"] for row in outcome.proposals if row["supersedes"]}
    changes: list[dict[str, Any]] = []
    for row in outcome.proposals:
        before = pending.get(row["newcomer_id"])
        changes.append(
            {
                "newcomer_id": row["newcomer_id"],
                "from": before[1] if before else None,
                "to": row["mentor_id"],
                "score_from": scores.get(before[0]) if before else None,
                "score_to": row["score"],
            }
        )
    by_id = {proposal_id: (n, m) for n, (proposal_id, m) in pending.items()}
    for proposal_id in outcome.superseded:
        if proposal_id not in replaced and proposal_id in by_id:
            newcomer_id, mentor_id = by_id[proposal_id]
            changes.append(
                {"newcomer_id": newcomer_id, "from": mentor_id, "to": None,
                 "score_from": scores.get(proposal_id), "score_to": None}
            )  # fmt: skip
    changes.sort(key=lambda c: c["newcomer_id"])
    return _Replan(outcome, changes, len(pending) - len(outcome.superseded))


async def preview(engine: AsyncEngine, weights: Weights, today: dt.date) -> dict[str, Any]:
    """What adopting ``weights`` would change now; stores and publishes nothing."""
    async with engine.connect() as connection:
        replan = await _replan(connection, weights, today, utcnow())
        await connection.rollback()
    return {"changes": replan.changes, "unchanged": replan.unchanged}


async def adopt(
    engine: AsyncEngine, weights: Weights, reason: str, actor: str, today: dt.date, holder: str
) -> dict[str, Any]:
    """Record ``weights`` as the ones in force and re-plan every pending proposal with them,
    in one transaction under the solver lock; supersede those whose mentor changes."""
    async with engine.begin() as connection:
        await take_lock(connection, holder)
        now = utcnow()
        recorded = await weights_store.record(connection, weights, reason, actor, now)
        replan = await _replan(connection, weights, today, now)
        await record_outcome(connection, replan.outcome, now)
    return {**recorded, "changes": replan.changes, "unchanged": replan.unchanged}


def _agreement(values: Agreement) -> dict[str, Any]:
    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {"top1": rounded(values.top1), "mean_rank": rounded(values.mean_rank),
            "evaluated": values.decisions}  # fmt: skip


async def report(engine: AsyncEngine, configured: Weights, today: dt.date) -> dict[str, Any]:
    """``GET /api/calibration``: the fit of the weights to the decisions so far, how the current
    and the fitted weights agree with held-out decisions, and what the fitted weights would
    change. Changes nothing."""
    async with engine.connect() as connection:
        current = await weights_store.adopted(connection) or configured
        decisions = await decision_history(connection)
    result = await asyncio.to_thread(calibrate, decisions, current.as_dict())
    fitted: dict[str, Any] | None = None
    changes: list[dict[str, Any]] = []
    if result.fitted is not None and result.fitted_agreement is not None:
        shown = _rounded(result.fitted)
        fitted = {"weights": shown, **_agreement(result.fitted_agreement)}
        # What adopting exactly the shown weights (PUT /api/weights) would change.
        proposed = await preview(engine, weights_store.normalised(shown), today)
        changes = [{k: c[k] for k in ("newcomer_id", "from", "to")} for c in proposed["changes"]]
    return {
        "decisions": result.decisions,
        "minimum": result.minimum,
        "missing": result.missing,
        "current": {"weights": _rounded(result.current), **_agreement(result.current_agreement)},
        "fitted": fitted,
        "changes": changes,
    }


def _rounded(weights: Mapping[str, float]) -> dict[str, float]:
    return {c: round(w, 4) for c, w in weights.items()}


# --- for the routers: the running matcher's engine, settings and clock -----------------------


async def report_of(service: MatcherService) -> dict[str, Any]:
    """``report`` for the running matcher (its configured weights below the adopted ones)."""
    return await report(service.engine, service.weights, service.today())


async def preview_on(service: MatcherService, weights: Weights) -> dict[str, Any]:
    """``preview`` against the running matcher's state."""
    return await preview(service.engine, weights, service.today())


async def adopt_on(
    service: MatcherService, weights: Weights, reason: str, actor: str
) -> dict[str, Any]:
    """``adopt`` on the running matcher, then send the new proposals' events."""
    result = await adopt(service.engine, weights, reason, actor, service.today(), service.holder)
    service.relay.wake()
    return result
