"""Re-solve the assignment for every newcomer still waiting, and record what changed.

One transaction: take the solver lock, read the state, plan with the domain, supersede and
insert proposals, queue their ``tandem.proposed`` events. The lock is a row update made first,
so on SQLite and PostgreSQL alike two matcher processes never solve at the same time.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import Alternative, TandemProposed, Topics, make_event
from services.infra.outbox import enqueue, utcnow
from services.matcher import tables
from services.matcher.domain.model import Member, Tandem
from services.matcher.domain.planning import Plan, plan_tandems, reconcile, unmatched_message
from services.matcher.domain.scoring import Weights
from services.matcher.store import domain_member

log = logging.getLogger(__name__)
LOCK = "solve"


@dataclass(frozen=True)
class SolveResult:
    """What one re-solve did."""

    newcomers: int
    proposed: int
    superseded: int
    unmatched: int


async def ensure_lock_row(engine: AsyncEngine) -> None:
    """Create the solver lock row once."""
    async with engine.begin() as connection:
        exists = await connection.scalar(
            select(tables.solver_lock.c.name).where(tables.solver_lock.c.name == LOCK)
        )
        if exists is None:
            await connection.execute(
                insert(tables.solver_lock).values(name=LOCK, holder="", generation=0)
            )


async def take_lock(connection: AsyncConnection, holder: str) -> None:
    """Serialise solvers: the first write of the transaction locks the row until commit."""
    await connection.execute(
        update(tables.solver_lock)
        .where(tables.solver_lock.c.name == LOCK)
        .values(holder=holder, generation=tables.solver_lock.c.generation + 1)
    )


async def load_state(
    connection: AsyncConnection, today: dt.date
) -> tuple[list[Member], list[Tandem], dict[str, tuple[str, str]], set[tuple[str, str]],
           set[tuple[str, str]], dict[str, str]]:  # fmt: skip
    """Members, accepted tandems, pending proposals, rejected, forbidden and pinned pairs."""
    members = [
        domain_member(row)
        for row in (await connection.execute(select(tables.members))).mappings().all()
    ]
    p = tables.proposals
    rows = (
        await connection.execute(
            select(p.c.proposal_id, p.c.newcomer_id, p.c.mentor_id, p.c.status, p.c.decided_at,
                   p.c.ends_on)
            .where(p.c.status.in_(("pending", "accepted", "rejected")))
            .order_by(p.c.seq)
        )
    ).mappings().all()  # fmt: skip
    tandems: list[Tandem] = []
    pending: dict[str, tuple[str, str]] = {}
    rejected: set[tuple[str, str]] = set()
    for row in rows:
        pair = (str(row["newcomer_id"]), str(row["mentor_id"]))
        if row["status"] == "accepted":
            started = row["decided_at"].date() if row["decided_at"] else today
            tandems.append(Tandem(*pair, started, row["ends_on"] or today))
        elif row["status"] == "rejected":
            rejected.add(pair)
        else:
            pending[pair[0]] = (str(row["proposal_id"]), pair[1])
    forbidden: set[tuple[str, str]] = set()
    pinned: dict[str, str] = {}
    for rule in (await connection.execute(select(tables.pair_rules))).mappings().all():
        if rule["rule"] == "forbidden":
            forbidden.add((str(rule["newcomer_id"]), str(rule["mentor_id"])))
        elif rule["rule"] == "pinned":
            pinned[str(rule["newcomer_id"])] = str(rule["mentor_id"])
    return members, tandems, pending, rejected, forbidden, pinned


async def resolve(
    engine: AsyncEngine, weights: Weights, today: dt.date, holder: str
) -> SolveResult:
    """Re-solve jointly for all waiting newcomers and persist the changes."""
    async with engine.begin() as connection:
        await take_lock(connection, holder)
        members, tandems, pending, rejected, forbidden, pinned = await load_state(connection, today)
        plan: Plan = plan_tandems(
            members,
            tandems,
            pending={n: m for n, (_, m) in pending.items()},
            rejected=rejected,
            forbidden=forbidden,
            pinned=pinned,
            weights=weights,
            today=today,
        )
        changes = reconcile(plan, pending)
        now = utcnow()
        superseded = list(changes.supersede)
        if superseded:
            await connection.execute(
                update(tables.proposals)
                .where(tables.proposals.c.proposal_id.in_(superseded))
                .where(tables.proposals.c.status == "pending")
                .values(status="superseded", decided_at=now, decided_by="matcher",
                        decision_reason="re-solve found a better assignment")
            )  # fmt: skip
        for change in changes.new:
            planned, supersedes = change.planned, change.supersedes
            proposal_id = uuid.uuid4()
            data = TandemProposed(
                proposal_id=proposal_id,
                newcomer_id=planned.newcomer_id,
                mentor_id=planned.mentor_id,
                score=planned.score,
                breakdown=dict(planned.breakdown),
                reasons=list(planned.reasons),
                alternatives=[
                    Alternative(mentor_id=a.mentor_id, score=a.score, breakdown=dict(a.breakdown))
                    for a in planned.alternatives
                ],
                supersedes=uuid.UUID(supersedes) if supersedes else None,
            )
            await connection.execute(
                insert(tables.proposals).values(
                    proposal_id=str(proposal_id),
                    newcomer_id=data.newcomer_id,
                    mentor_id=data.mentor_id,
                    score=data.score,
                    breakdown=data.breakdown,
                    reasons=data.reasons,
                    alternatives=[a.model_dump() for a in data.alternatives],
                    supersedes=supersedes,
                    status="pending",
                    created_at=now,
                )
            )
            await enqueue(
                connection,
                tables.outbox,
                make_event(Topics.TANDEM_PROPOSED, "matcher", data),
                key=data.newcomer_id,
            )
        await connection.execute(delete(tables.waiting))
        for newcomer_id, reason in plan.unmatched.items():
            await connection.execute(
                insert(tables.waiting).values(
                    newcomer_id=newcomer_id,
                    status=reason,
                    message=unmatched_message(reason),
                    updated_at=now,
                )
            )
    return SolveResult(
        newcomers=len(plan.proposals) + len(plan.unmatched),
        proposed=len(changes.new),
        superseded=len(superseded),
        unmatched=len(plan.unmatched),
    )
