"""Staff decisions on proposals: the state change and its ``tandem.decided``, together."""

from __future__ import annotations

import calendar
import datetime as dt
import uuid
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import TandemDecided, TandemProposed, Topics, make_event
from services.infra.outbox import enqueue, utcnow
from services.matcher import store, tables
from services.matcher.domain.explain import explain_pair
from services.matcher.domain.lifecycle import IllegalTransition as IllegalTransition
from services.matcher.domain.lifecycle import PairUnavailable as PairUnavailable
from services.matcher.domain.lifecycle import (
    ProposalAction,
    ProposalStatus,
    check_pair_available,
    transition,
)
from services.matcher.domain.model import Tandem
from services.matcher.domain.scoring import Weights, score_pair

#: What staff decide on a pending proposal.
Decision = Literal[ProposalStatus.ACCEPTED, ProposalStatus.REJECTED]


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
    started: dt.date | None = None,
) -> dict[str, Any]:
    """Record the decision on a pending proposal and queue ``tandem.decided``. An accepted
    tandem runs ``tandem_months`` from ``started`` (default today; earlier dates record
    tandems that began before they were entered).

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
        accepting = decision == ProposalStatus.ACCEPTED
        status = transition(
            row["status"], ProposalAction.ACCEPT if accepting else ProposalAction.REJECT
        )
        now = utcnow()
        values: dict[str, Any] = {
            "status": status.value,
            "decided_at": now,
            "decided_by": actor,
            "decision_reason": reason,
        }
        if accepting:
            values["ends_on"] = add_months(started or today, tandem_months)
        await connection.execute(
            update(tables.proposals)
            .where(tables.proposals.c.proposal_id == proposal_id)
            .values(**values)
        )
        event = make_event(
            Topics.TANDEM_DECIDED,
            "matcher",
            _decided_event(proposal_id, decision, reason, row, now),
        )
        await enqueue(connection, tables.outbox, event, key=row["newcomer_id"])
        updated = await store.get_proposal(connection, proposal_id)
    assert updated is not None
    return store.proposal_out(updated)


class NotAnAlternative(ValueError):
    """The chosen mentor is not an eligible alternative of the proposal (HTTP: 422)."""


async def choose_alternative(
    engine: AsyncEngine,
    proposal_id: str,
    mentor_id: str,
    actor: str,
    reason: str,
    today: dt.date,
    tandem_months: int,
    weights: Weights,
) -> dict[str, Any]:
    """Accept one of a pending proposal's alternatives and reject the proposal, in one step.

    The new pair is recorded as an accepted proposal that supersedes the rejected one; the
    events are ``tandem.decided`` (rejected), ``tandem.proposed`` and ``tandem.decided``
    (accepted), all in the same transaction."""
    p = tables.proposals
    async with engine.begin() as connection:
        await connection.execute(
            update(p).where(p.c.proposal_id == proposal_id).values(seq=p.c.seq)
        )
        row = await store.get_proposal(connection, proposal_id)
        if row is None:
            raise ProposalNotFound(proposal_id)
        rejected_status = transition(row["status"], ProposalAction.REJECT)
        newcomer_id = row["newcomer_id"]
        if mentor_id not in {a["mentor_id"] for a in row["alternatives"]}:
            raise NotAnAlternative(f"{mentor_id!r} is not an alternative of this proposal")
        await _check_pair_available(connection, newcomer_id, mentor_id, today)
        members = await store.domain_members(connection, [newcomer_id, mentor_id])
        if len(members) < 2:
            raise PairUnavailable(f"{mentor_id!r} or {newcomer_id!r} is no longer an active member")
        pair = score_pair(members[newcomer_id], members[mentor_id], weights, today)
        now = utcnow()
        note = reason or f"Alternative {mentor_id} gewählt"
        await connection.execute(
            update(p)
            .where(p.c.proposal_id == proposal_id)
            .values(status=rejected_status.value, decided_at=now, decided_by=actor,
                    decision_reason=note)
        )  # fmt: skip
        chosen = TandemProposed(
            proposal_id=uuid.uuid4(),
            newcomer_id=newcomer_id,
            mentor_id=mentor_id,
            score=pair.total,
            breakdown=pair.breakdown,
            reasons=explain_pair(members[newcomer_id], members[mentor_id], pair.breakdown, weights),
            alternatives=[],
            supersedes=uuid.UUID(proposal_id),
        )
        await connection.execute(
            insert(p).values(
                proposal_id=str(chosen.proposal_id), newcomer_id=newcomer_id, mentor_id=mentor_id,
                score=chosen.score, breakdown=chosen.breakdown, reasons=chosen.reasons,
                alternatives=[], supersedes=proposal_id, status=ProposalStatus.ACCEPTED.value,
                created_at=now,
                decided_at=now, decided_by=actor, decision_reason=note,
                ends_on=add_months(today, tandem_months),
            )
        )  # fmt: skip
        for topic, data in (
            (Topics.TANDEM_DECIDED,
             _decided_event(proposal_id, ProposalStatus.REJECTED, note, row, now)),
            (Topics.TANDEM_PROPOSED, chosen),
            (Topics.TANDEM_DECIDED,
             _decided_event(str(chosen.proposal_id), ProposalStatus.ACCEPTED, note,
                            {"newcomer_id": newcomer_id, "mentor_id": mentor_id}, now)),
        ):  # fmt: skip
            await enqueue(
                connection, tables.outbox, make_event(topic, "matcher", data), newcomer_id
            )
        created = await store.get_proposal(connection, str(chosen.proposal_id))
    assert created is not None
    return store.proposal_out(created)


def _decided_event(
    proposal_id: str, decision: Decision, reason: str, row: Any, at: dt.datetime
) -> TandemDecided:
    return TandemDecided(
        proposal_id=uuid.UUID(proposal_id), decision=decision, reason=reason,
        newcomer_id=row["newcomer_id"], mentor_id=row["mentor_id"], decided_at=at,
    )  # fmt: skip


async def _check_pair_available(
    connection: AsyncConnection, newcomer_id: str, mentor_id: str, today: dt.date
) -> None:
    """Load what the domain's rule (``check_pair_available``) needs about the pair: whether it
    was rejected or forbidden, the mentor's capacity and accepted tandems (few per mentor)."""
    p, rules = tables.proposals, tables.pair_rules
    rejected = await connection.scalar(
        select(func.count())
        .select_from(p)
        .where(p.c.newcomer_id == newcomer_id, p.c.mentor_id == mentor_id,
               p.c.status == ProposalStatus.REJECTED.value)
    )  # fmt: skip
    forbidden = await connection.scalar(
        select(func.count())
        .select_from(rules)
        .where(rules.c.newcomer_id == newcomer_id, rules.c.mentor_id == mentor_id,
               rules.c.rule == "forbidden")
    )  # fmt: skip
    capacity = await connection.scalar(
        select(tables.members.c.mentor_capacity).where(tables.members.c.id == mentor_id)
    )
    accepted = await connection.execute(
        select(p.c.newcomer_id, p.c.decided_at, p.c.ends_on).where(
            p.c.mentor_id == mentor_id, p.c.status == ProposalStatus.ACCEPTED.value
        )
    )
    tandems = [
        Tandem(
            str(row.newcomer_id), mentor_id, _started(row.decided_at, today), row.ends_on or today
        )
        for row in accepted.all()
    ]
    check_pair_available(
        newcomer_id, mentor_id, rejected=bool(rejected), forbidden=bool(forbidden),
        mentor_capacity=None if capacity is None else int(capacity), tandems=tandems, today=today,
    )  # fmt: skip


def _started(decided_at: dt.datetime | None, today: dt.date) -> dt.date:
    return decided_at.date() if decided_at is not None else today
