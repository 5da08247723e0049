"""Staff decisions on proposals: the state change and its ``tandem.decided``, together."""

from __future__ import annotations

import calendar
import datetime as dt
import uuid
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.events import TandemDecided, Topics, make_event
from services.infra.outbox import enqueue, utcnow
from services.matcher import store, tables
from services.matcher.domain.planning import IllegalTransition, transition

Decision = Literal["accepted", "rejected"]


class ProposalNotFound(LookupError):
    """No proposal with this id."""


def add_months(day: dt.date, months: int) -> dt.date:
    """``day`` plus ``months`` calendar months (clamped to the month's last day)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


async def decide(
    engine: AsyncEngine,
    proposal_id: str,
    decision: Decision,
    actor: str,
    reason: str,
    today: dt.date,
    tandem_months: int,
) -> dict[str, Any]:
    """Record the decision on a pending proposal and queue ``tandem.decided``.

    Raises ProposalNotFound, or IllegalTransition unless the proposal is pending."""
    async with engine.begin() as connection:
        # The update is the first write: it locks the row, so two staff members cannot both
        # decide the same proposal.
        result = await connection.execute(
            update(tables.proposals)
            .where(tables.proposals.c.proposal_id == proposal_id)
            .values(seq=tables.proposals.c.seq)
        )
        row = await store.get_proposal(connection, proposal_id)
        if result.rowcount == 0 or row is None:
            raise ProposalNotFound(proposal_id)
        status = transition(row["status"], "accept" if decision == "accepted" else "reject")
        now = utcnow()
        values: dict[str, Any] = {
            "status": status.value,
            "decided_at": now,
            "decided_by": actor,
            "decision_reason": reason,
        }
        if decision == "accepted":
            values["ends_on"] = add_months(today, tandem_months)
        await connection.execute(
            update(tables.proposals)
            .where(tables.proposals.c.proposal_id == proposal_id)
            .values(**values)
        )
        event = make_event(
            Topics.TANDEM_DECIDED,
            "matcher",
            TandemDecided(
                proposal_id=uuid.UUID(proposal_id),
                decision=decision,
                reason=reason,
                newcomer_id=row["newcomer_id"],
                mentor_id=row["mentor_id"],
                decided_at=now,
            ),
        )
        await enqueue(connection, tables.outbox, event, key=row["newcomer_id"])
        updated = await store.get_proposal(connection, proposal_id)
    assert updated is not None
    return store.proposal_out(updated)


__all__ = ["Decision", "IllegalTransition", "ProposalNotFound", "add_months", "decide"]
