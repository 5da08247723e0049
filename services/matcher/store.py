"""The matcher's database access: read model, proposals, dedup, outbox."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.member import PublicMember
from services.infra.db import insert_rows, json_values
from services.infra.outbox import utcnow
from services.matcher import tables
from services.matcher.domain.lifecycle import DECIDED, ProposalAction, ProposalStatus, transition
from services.matcher.domain.model import Member

#: Every status, in lifecycle order (the status counts list them all).
PROPOSAL_STATUSES = tuple(status.value for status in ProposalStatus)


def running_tandem(proposals: Table, today: dt.date) -> ColumnElement[bool]:
    """The SQL form of :meth:`Tandem.is_running` for rows of ``proposals``: an accepted
    proposal whose tandem ends after ``today`` (a row without an end is not running, as
    ``replan.load_state`` reads it). ``tests/service`` checks both agree."""
    return and_(proposals.c.status == ProposalStatus.ACCEPTED.value, proposals.c.ends_on > today)


#: Ids per ``IN (...)`` query: well below SQLite's and asyncpg's bound-parameter limits.
_CHUNK = 500


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


async def recorded_digests(
    connection: AsyncConnection, events: Sequence[tuple[str, str, str | None]]
) -> dict[str, str | None]:
    """Record the ``(event_id, topic, digest)`` triples as processed (the first of an id in
    ``events`` counts); return the ids recorded by an earlier transaction with the digest
    stored then (None for rows older than digests). Call it inside the transaction that applies
    the events, so both commit or neither does; a batch costs a few statements, not two per
    event."""
    first: dict[str, tuple[str, str | None]] = {}
    for event_id, topic, digest in events:
        first.setdefault(event_id, (topic, digest))
    ids = list(first)
    known: dict[str, str | None] = {
        str(row["event_id"]): None if row["digest"] is None else str(row["digest"])
        for row in await _DIGESTS_OF.rows(connection, ids)
    }
    now = utcnow()
    fresh = [
        {"event_id": i, "topic": first[i][0], "at": now, "digest": first[i][1]}
        for i in ids
        if i not in known
    ]
    if fresh:
        await insert_rows(connection, tables.processed_events, fresh)
    return known


_MEMBER_FIELDS = (
    "name", "kind", "state", "region", "population", "lat", "lon", "joined", "interests",
    "strengths", "mentor_capacity", "seeks_tandem", "status", "revision", "wishes", "estimated",
)  # fmt: skip


async def next_member_change(connection: AsyncConnection) -> int:
    """The next member change number, taken in the caller's transaction (which then holds the
    counter row until it commits: numbers become visible in the order they were taken)."""
    counter = tables.member_changes
    seq = await connection.scalar(
        update(counter)
        .where(counter.c.name == "members")
        .values(seq=counter.c.seq + 1)
        .returning(counter.c.seq)
    )
    if seq is None:
        raise RuntimeError("the member change counter row is missing (run the migrations)")
    return int(seq)


class _ByIds:
    """A SELECT of the rows whose ``key`` is one of many ids, as every ingested batch runs a
    few: built once, so SQLAlchemy finds it in its compiled cache. On SQLite the ids go in as
    one JSON array (``json_each``): one statement and one bound value for a whole batch, where
    expanding ``IN`` lists cost SQLAlchemy a parameter each (three such reads were a fifth of
    ingesting 10,000 joins); elsewhere as expanding lists of at most ``_CHUNK`` ids."""

    def __init__(self, key: Column[Any], *columns: Column[Any]) -> None:
        self.chunked = select(*columns).where(key.in_(bindparam("ids", expanding=True)))
        self.whole = select(*columns).where(key.in_(json_values("ids_json")))

    async def rows(self, connection: AsyncConnection, ids: Sequence[str]) -> list[RowMapping]:
        if not ids:
            return []
        if connection.dialect.name == "sqlite":
            params = {"ids_json": json.dumps(list(ids))}
            return list((await connection.execute(self.whole, params)).mappings().all())
        found: list[RowMapping] = []
        for chunk in _chunks(ids):
            rows = await connection.execute(self.chunked, {"ids": chunk})
            found.extend(rows.mappings().all())
        return found


_DIGESTS_OF = _ByIds(
    tables.processed_events.c.event_id,
    tables.processed_events.c.event_id,
    tables.processed_events.c.digest,
)
_DEPARTED_OF = _ByIds(tables.departed.c.id, tables.departed.c.id)
_MEMBERS_OF = _ByIds(
    tables.members.c.id, tables.members.c.id, *(tables.members.c[k] for k in _MEMBER_FIELDS)
)
_UPDATE_MEMBERS = update(tables.members).where(tables.members.c.id == bindparam("b_id"))


@dataclass(frozen=True, slots=True)
class MemberChange:
    """What one upsert wrote: the member change number it took and the members as written."""

    change: int
    members: list[Member]


async def upsert_member(
    connection: AsyncConnection,
    members: Sequence[PublicMember],
    written: list[MemberChange] | None = None,
) -> bool:
    """Insert or update the read model's copies of ``members`` (in this order; the same member
    may come more than once), keeping the newest revision of each (events of different topics
    may arrive out of order); True if anything changed. Members that left stay ``left``.
    A batch costs a few statements: two reads, one insert, one update (each an executemany).
    ``written`` (if given) gets the change as the domain sees it, for the solver's member cache
    to take once the transaction committed (``replan.remember_members``)."""
    ids = list(dict.fromkeys(x.id for x in members))
    departed: set[str] = {row["id"] for row in await _DEPARTED_OF.rows(connection, ids)}
    current: dict[str, dict[str, Any]] = {
        row["id"]: dict(row) for row in await _MEMBERS_OF.rows(connection, ids)
    }
    inserts: dict[str, dict[str, Any]] = {}
    updates: dict[str, dict[str, Any]] = {}
    now = utcnow()
    for member in members:
        values: dict[str, Any] = {
            "name": member.name,
            "kind": member.kind,
            "state": member.state,
            "region": member.region,
            "population": member.population,
            "lat": member.lat,
            "lon": member.lon,
            "joined": member.joined,
            "interests": list(member.interests),
            "strengths": list(member.strengths),
            "mentor_capacity": member.mentor_capacity,
            "seeks_tandem": bool(member.seeks_tandem),
            "status": "left" if member.id in departed else member.status,
            "revision": member.revision,
            "wishes": list(member.wishes),
            "estimated": list(member.estimated),
        }
        known = current.get(member.id)
        if known is None:
            # One dict per new member: its row, and what later copies in the batch compare to.
            inserts[member.id] = current[member.id] = values
            values["id"], values["updated_at"] = member.id, now
            continue
        if known["revision"] > member.revision or all(known[k] == v for k, v in values.items()):
            continue
        elif member.id in inserts:  # inserted earlier in this batch: insert the newer values
            inserts[member.id].update(values)
        else:
            updates[member.id] = {"b_id": member.id, "updated_at": now, **values}
        current[member.id] = values
    if inserts or updates:
        change = await next_member_change(connection)
    if inserts:
        for row in inserts.values():
            row["change_seq"] = change
        await insert_rows(connection, tables.members, list(inserts.values()))
    if updates:
        for row in updates.values():
            row["change_seq"] = change
        await connection.execute(_UPDATE_MEMBERS, list(updates.values()))
    if written is not None and (inserts or updates):
        written_rows = {**inserts, **updates}
        written.append(
            MemberChange(
                change, [domain_member({**row, "id": i}) for i, row in written_rows.items()]
            )
        )
    return bool(inserts or updates)


async def member_left(connection: AsyncConnection, member_id: str, reason: str) -> bool:
    """Record the departure: the member is inactive from now on, its pending proposals (as
    newcomer or mentor) are withdrawn. Running tandems stay and are flagged for staff."""
    known = await connection.scalar(
        select(func.count()).select_from(tables.departed).where(tables.departed.c.id == member_id)
    )
    if known:
        return False
    now = utcnow()
    await connection.execute(insert(tables.departed).values(id=member_id, reason=reason, at=now))
    change = await next_member_change(connection)
    await connection.execute(
        update(tables.members)
        .where(tables.members.c.id == member_id)
        .values(status="left", seeks_tandem=False, updated_at=now, change_seq=change)
    )
    p = tables.proposals
    await connection.execute(
        update(p)
        .where(p.c.status == ProposalStatus.PENDING.value)
        .where((p.c.newcomer_id == member_id) | (p.c.mentor_id == member_id))
        .values(
            status=transition(ProposalStatus.PENDING, ProposalAction.WITHDRAW).value,
            decided_at=now,
            decided_by="matcher",
            decision_reason=f"{member_id} hat das Netzwerk verlassen",
        )
    )
    return True


def domain_member(row: RowMapping | dict[str, Any]) -> Member:
    """The domain's view of a read-model row."""
    return Member(
        id=row["id"],
        name=row["name"],
        state=row["state"],
        region=row["region"],
        population=row["population"],
        lat=row["lat"],
        lon=row["lon"],
        joined=row["joined"],
        interests=frozenset(row["interests"]),
        strengths=frozenset(row["strengths"]),
        mentor_capacity=row["mentor_capacity"],
        seeks_tandem=row["seeks_tandem"],
        active=row["status"] == "active",
        wishes=tuple(row["wishes"] or ()),
        estimated=frozenset(row["estimated"] or ()),
    )


def proposal_out(row: RowMapping | dict[str, Any]) -> dict[str, Any]:
    """A proposal as the API shows it: the ``tandem.proposed`` data plus its lifecycle."""

    def iso(value: dt.datetime | dt.date | None) -> str | None:
        return value.isoformat() if value is not None else None

    out: dict[str, Any] = {
        "proposal_id": row["proposal_id"],
        "newcomer_id": row["newcomer_id"],
        "mentor_id": row["mentor_id"],
        "score": row["score"],
        "breakdown": row["breakdown"],
        "reasons": row["reasons"],
        "alternatives": row["alternatives"],
        "supersedes": row["supersedes"],
        "status": row["status"],
        "created_at": iso(row["created_at"]),
    }
    if row["status"] in DECIDED:
        out.update(
            decided_at=iso(row["decided_at"]),
            decided_by=row["decided_by"],
            decision_reason=row["decision_reason"],
        )
    if row["ends_on"] is not None:
        out["ends_on"] = iso(row["ends_on"])
    return out


async def list_proposals(
    engine: AsyncEngine, status: str | None, limit: int, offset: int, newcomer_id: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Proposals newest first, optionally of one status or newcomer, and their total."""
    query = select(tables.proposals)
    count = select(func.count()).select_from(tables.proposals)
    if status:
        query = query.where(tables.proposals.c.status == str(status))
        count = count.where(tables.proposals.c.status == str(status))
    if newcomer_id:
        query = query.where(tables.proposals.c.newcomer_id == newcomer_id)
        count = count.where(tables.proposals.c.newcomer_id == newcomer_id)
    async with engine.connect() as connection:
        total = await connection.scalar(count)
        rows = (
            await connection.execute(
                query.order_by(tables.proposals.c.seq.desc()).limit(limit).offset(offset)
            )
        ).mappings().all()  # fmt: skip
        left: set[str] = set(
            (await connection.execute(select(tables.departed.c.id))).scalars().all()
        )
    return [_flagged(proposal_out(r), left) for r in rows], int(total or 0)


def _flagged(proposal: dict[str, Any], left: set[str]) -> dict[str, Any]:
    """Mark accepted tandems whose partner left the network, for staff to look at."""
    if proposal["status"] == ProposalStatus.ACCEPTED:
        gone = [m for m in (proposal["newcomer_id"], proposal["mentor_id"]) if m in left]
        if gone:
            proposal["flags"] = [f"member_left:{m}" for m in gone]
    return proposal


async def get_proposal(connection: AsyncConnection, proposal_id: str) -> RowMapping | None:
    """One proposal row."""
    return (
        await connection.execute(
            select(tables.proposals).where(tables.proposals.c.proposal_id == proposal_id)
        )
    ).mappings().first()  # fmt: skip


async def waiting_newcomers(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Newcomers without a pending or accepted proposal, with the reason."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(select(tables.waiting).order_by(tables.waiting.c.newcomer_id))
        ).mappings().all()  # fmt: skip
    return [
        {
            "newcomer_id": r["newcomer_id"],
            "status": r["status"],
            "message": r["message"],
            "updated_at": r["updated_at"].isoformat(),
        }
        for r in rows
    ]


async def status_counts(engine: AsyncEngine) -> dict[str, int]:
    """How much the matcher knows: members, proposals by status, waiting newcomers."""
    async with engine.connect() as connection:
        members = await connection.scalar(select(func.count()).select_from(tables.members))
        by_status: dict[str, int] = dict(
            (
                await connection.execute(
                    select(tables.proposals.c.status, func.count()).group_by(
                        tables.proposals.c.status
                    )
                )
            ).all()
        )
        waiting = await connection.scalar(select(func.count()).select_from(tables.waiting))
    counts = {"members": int(members or 0), "waiting": int(waiting or 0)}
    counts.update({s: int(by_status.get(s, 0)) for s in PROPOSAL_STATUSES})
    return counts


async def domain_members(connection: AsyncConnection, ids: list[str]) -> dict[str, Member]:
    """The active members among ``ids``, by id."""
    rows = (
        await connection.execute(
            select(tables.members).where(
                tables.members.c.id.in_(ids), tables.members.c.status == "active"
            )
        )
    ).mappings().all()  # fmt: skip
    return {row["id"]: domain_member(row) for row in rows}


async def set_pair_rule(
    engine: AsyncEngine, newcomer_id: str, mentor_id: str, rule: str, actor: str
) -> None:
    """Pin or forbid a pair (replacing an earlier rule for it). A newcomer has at most one pin."""
    r = tables.pair_rules
    async with engine.begin() as connection:
        await connection.execute(
            delete(r).where(r.c.newcomer_id == newcomer_id, r.c.mentor_id == mentor_id)
        )
        if rule == "pinned":
            await connection.execute(
                delete(r).where(r.c.newcomer_id == newcomer_id, r.c.rule == "pinned")
            )
        await connection.execute(
            insert(r).values(newcomer_id=newcomer_id, mentor_id=mentor_id, rule=rule,
                             created_by=actor, created_at=utcnow())
        )  # fmt: skip


async def delete_pair_rule(engine: AsyncEngine, newcomer_id: str, mentor_id: str) -> bool:
    """Remove the rule of a pair; False if there was none."""
    r = tables.pair_rules
    async with engine.begin() as connection:
        result = await connection.execute(
            delete(r).where(r.c.newcomer_id == newcomer_id, r.c.mentor_id == mentor_id)
        )
    return bool(result.rowcount)


async def list_pair_rules(engine: AsyncEngine) -> list[dict[str, Any]]:
    """All pinned and forbidden pairs."""
    async with engine.connect() as connection:
        rows = (await connection.execute(select(tables.pair_rules))).mappings().all()
    return [
        {**{k: row[k] for k in ("newcomer_id", "mentor_id", "rule", "created_by")},
         "created_at": row["created_at"].isoformat()}
        for row in rows
    ]  # fmt: skip
