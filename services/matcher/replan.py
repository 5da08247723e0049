"""Re-solve the assignment for every newcomer still waiting, and record what changed.

One transaction: take the solver lock, read the state, plan with the domain, supersede and
insert proposals, queue their ``tandem.proposed`` events. The lock is a row update made first,
so on SQLite and PostgreSQL alike two matcher processes never solve at the same time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import TandemProposed, Topics, make_event
from services.infra.db import insert_rows
from services.infra.metrics import PLANS
from services.infra.outbox import outbox_row, utcnow
from services.matcher import tables
from services.matcher.domain.incremental import IncrementalPlanner
from services.matcher.domain.lifecycle import ProposalStatus
from services.matcher.domain.model import Member, Tandem
from services.matcher.domain.planning import Plan, reconcile, unmatched_message
from services.matcher.domain.scoring import Weights
from services.matcher.store import MemberChange, domain_member
from services.matcher.weights import adopted as adopted_weights

PENDING, ACCEPTED, REJECTED, SUPERSEDED = (
    ProposalStatus.PENDING.value, ProposalStatus.ACCEPTED.value,
    ProposalStatus.REJECTED.value, ProposalStatus.SUPERSEDED.value,
)  # fmt: skip
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


class _MemberCache:
    """The domain members of one database, kept between solves.

    Every transaction that writes members takes the next number of the change counter and
    stamps the rows it writes with it (``store.next_member_change``). A solve reads the
    counter: unchanged, it reads no member at all; else only the rows stamped after the number
    it saw last. Numbers become visible in the order they were taken (the counter row stays
    locked until the writing transaction commits), so what another matcher process sharing the
    database wrote is never missed. Members are never deleted (a departure is a status).
    """

    def __init__(self) -> None:
        self.seq = -1
        self.members: dict[str, Member] = {}

    async def load(self, connection: AsyncConnection) -> list[Member]:
        counter = tables.member_changes
        seq = await connection.scalar(select(counter.c.seq).where(counter.c.name == "members"))
        seq = -1 if seq is None else int(seq)
        if seq < self.seq:  # the database was replaced: read it whole
            self.seq, self.members = -1, {}
        if seq != self.seq:
            m = tables.members
            rows = await connection.execute(select(m).where(m.c.change_seq > self.seq))
            for row in rows.mappings():
                self.members[row["id"]] = domain_member(row)
            self.seq = seq
        return list(self.members.values())

    def take(self, changes: Sequence[MemberChange]) -> None:
        """Members an ingest wrote and committed, in the order of their change numbers: taken
        while each number follows the last one the cache holds (then the next solve reads no
        member row); after a gap (a departure, another process's write) the next solve reads
        from the database as before."""
        for written in changes:
            if written.change != self.seq + 1:
                return
            for member in written.members:
                self.members[member.id] = member
            self.seq = written.change


#: One cache per database engine (dropped with the engine).
_CACHES: weakref.WeakKeyDictionary[AsyncEngine, _MemberCache] = weakref.WeakKeyDictionary()


#: One incremental planner per database engine: it keeps the last plan's rows, columns and
#: prices, so that the next solve repairs the plan instead of planning everyone again.
_PLANNERS: weakref.WeakKeyDictionary[AsyncEngine, IncrementalPlanner] = weakref.WeakKeyDictionary()


def planner_of(engine: AsyncEngine) -> IncrementalPlanner:
    """The engine's incremental planner (created on first use)."""
    planner = _PLANNERS.get(engine)
    if planner is None:
        planner = _PLANNERS[engine] = IncrementalPlanner()
    return planner


def remember_members(engine: AsyncEngine, changes: Sequence[MemberChange]) -> None:
    """Hand the member changes of a committed ingest to the engine's member cache (if a solve
    made one), so that the next solve need not read them back."""
    cache = _CACHES.get(engine)
    if cache is not None:
        cache.take(changes)


async def _members_of(connection: AsyncConnection) -> list[Member]:
    cache = _CACHES.get(connection.engine)
    if cache is None:
        cache = _CACHES[connection.engine] = _MemberCache()
    return await cache.load(connection)


class PlanState(NamedTuple):
    """What a plan starts from, as the database holds it."""

    members: list[Member]
    #: The accepted tandems.
    tandems: list[Tandem]
    #: The pending proposals: newcomer id -> (proposal id, mentor id).
    pending: dict[str, tuple[str, str]]
    #: (newcomer id, mentor id) pairs staff rejected.
    rejected: set[tuple[str, str]]
    #: (newcomer id, mentor id) pairs staff forbade.
    forbidden: set[tuple[str, str]]
    #: Pinned pairs: newcomer id -> mentor id.
    pinned: dict[str, str]


async def load_state(connection: AsyncConnection, today: dt.date) -> PlanState:
    """Members, accepted tandems, pending proposals, rejected, forbidden and pinned pairs."""
    members = await _members_of(connection)
    p = tables.proposals
    rows = (
        await connection.execute(
            select(p.c.proposal_id, p.c.newcomer_id, p.c.mentor_id, p.c.status, p.c.decided_at,
                   p.c.ends_on)
            .where(p.c.status.in_((PENDING, ACCEPTED, REJECTED)))
            .order_by(p.c.seq)
        )
    ).mappings().all()  # fmt: skip
    tandems: list[Tandem] = []
    pending: dict[str, tuple[str, str]] = {}
    rejected: set[tuple[str, str]] = set()
    for row in rows:
        pair = (str(row["newcomer_id"]), str(row["mentor_id"]))
        if row["status"] == ACCEPTED:
            started = row["decided_at"].date() if row["decided_at"] else today
            tandems.append(Tandem(*pair, started, row["ends_on"] or today))
        elif row["status"] == REJECTED:
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
    return PlanState(members, tandems, pending, rejected, forbidden, pinned)


@dataclass(frozen=True)
class Outcome:
    """A plan and the rows that record it."""

    plan: Plan
    superseded: list[str]
    proposals: list[dict[str, Any]]
    events: list[dict[str, Any]]
    waiting: list[dict[str, Any]]


def plan_outcome(
    state: PlanState,
    weights: Weights,
    today: dt.date,
    now: dt.datetime,
    planner: IncrementalPlanner,
) -> Outcome:
    """Plan (pure CPU work: runs in a worker thread) and build the rows to write.

    The planner repairs its last plan where it can (``domain.incremental``) and plans in full
    otherwise; either way the plan is optimal for this state."""
    plan = planner.plan(
        state.members,
        state.tandems,
        pending={n: m for n, (_, m) in state.pending.items()},
        rejected=state.rejected,
        forbidden=state.forbidden,
        pinned=state.pinned,
        weights=weights,
        today=today,
    )
    PLANS.labels(planner.stats.last).inc()
    changes = reconcile(plan, state.pending)
    proposals: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for change in changes.new:
        planned, supersedes = change.planned, change.supersedes
        proposal_id = uuid.uuid4()
        # The alternatives as the row stores them and the event validates them (into
        # ``Alternative`` models, without a dump back to dicts for the row).
        alternatives = [
            {"mentor_id": a.mentor_id, "score": a.score, "breakdown": dict(a.breakdown),
             "why_not": a.why_not, "taken_by": a.taken_by}
            for a in planned.alternatives
        ]  # fmt: skip
        data = TandemProposed(
            proposal_id=proposal_id,
            newcomer_id=planned.newcomer_id,
            mentor_id=planned.mentor_id,
            score=planned.score,
            breakdown=dict(planned.breakdown),
            reasons=list(planned.reasons),
            alternatives=alternatives,  # validated into ``Alternative`` models
            supersedes=uuid.UUID(supersedes) if supersedes else None,
        )
        proposals.append(
            {
                "proposal_id": str(proposal_id),
                "newcomer_id": data.newcomer_id,
                "mentor_id": data.mentor_id,
                "score": data.score,
                "breakdown": data.breakdown,
                "reasons": data.reasons,
                "alternatives": alternatives,
                "supersedes": supersedes,
                "status": PENDING,
                "created_at": now,
            }
        )
        events.append(
            outbox_row(make_event(Topics.TANDEM_PROPOSED, "matcher", data), data.newcomer_id)
        )
    waiting = [
        {"newcomer_id": newcomer_id, "status": reason, "message": unmatched_message(reason),
         "updated_at": now}
        for newcomer_id, reason in plan.unmatched.items()
    ]  # fmt: skip
    return Outcome(plan, list(changes.supersede), proposals, events, waiting)


async def replan(engine: AsyncEngine, weights: Weights, today: dt.date, holder: str) -> SolveResult:
    """Re-solve jointly for all waiting newcomers and persist the changes.

    The planning runs in a worker thread (the event loop keeps serving the consumer's
    heartbeats and HTTP meanwhile); the transaction, and with it the solver lock, is held
    throughout, as before. Rows are written with one executemany per table."""
    async with engine.begin() as connection:
        await take_lock(connection, holder)
        weights = await adopted_weights(connection) or weights  # staff's, above the settings
        state = await load_state(connection, today)
        now = utcnow()
        outcome = await asyncio.to_thread(
            plan_outcome, state, weights, today, now, planner_of(engine)
        )
        await record_outcome(connection, outcome, now)
    plan = outcome.plan
    return SolveResult(
        newcomers=len(plan.proposals) + len(plan.unmatched),
        proposed=len(outcome.proposals),
        superseded=len(outcome.superseded),
        unmatched=len(plan.unmatched),
    )


async def record_outcome(connection: AsyncConnection, outcome: Outcome, now: dt.datetime) -> None:
    """Write a plan's changes in the caller's transaction (which holds the solver lock):
    supersede, insert the new proposals and their events, replace the waiting list."""
    superseded = outcome.superseded
    if superseded:
        await connection.execute(
            update(tables.proposals)
            .where(tables.proposals.c.proposal_id.in_(superseded))
            .where(tables.proposals.c.status == PENDING)
            .values(status=SUPERSEDED, decided_at=now, decided_by="matcher",
                    decision_reason="re-solve found a better assignment")
        )  # fmt: skip
    if outcome.proposals:
        await insert_rows(connection, tables.proposals, outcome.proposals)
        await insert_rows(connection, tables.outbox, outcome.events)
    await _record_waiting(connection, outcome.waiting)


async def _record_waiting(connection: AsyncConnection, waiting: list[dict[str, Any]]) -> None:
    """Make the waiting list what the plan says, writing only the difference: after a burst
    thousands wait, and most of them wait on for the same reason. A row's ``updated_at`` is
    when its reason last changed."""
    w = tables.waiting
    current = {str(i): str(s) for i, s in (await connection.execute(
        select(w.c.newcomer_id, w.c.status))).all()}  # fmt: skip
    wanted = {row["newcomer_id"]: row for row in waiting}
    gone = [i for i in current if i not in wanted]
    for start in range(0, len(gone), 500):
        await connection.execute(delete(w).where(w.c.newcomer_id.in_(gone[start : start + 500])))
    fresh = [row for i, row in wanted.items() if i not in current]
    if fresh:
        await insert_rows(connection, w, fresh)
    changed = [
        {**row, "b_id": i}
        for i, row in wanted.items()
        if i in current and current[i] != row["status"]
    ]
    if changed:
        await connection.execute(
            update(w).where(w.c.newcomer_id == bindparam("b_id")),
            [{k: v for k, v in row.items() if k != "newcomer_id"} for row in changed],
        )
