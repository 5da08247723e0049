"""The registry's database: members, their history, and the outbox, changed together."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import CityJoined, Topics, make_event
from schemas.member import MemberRegistration, PartnerSector
from services.infra.outbox import enqueue, utcnow
from services.registry import tables


class DuplicateMember(Exception):
    """A member with this id exists already."""


def public_member(row: RowMapping | dict[str, Any]) -> CityJoined:
    """What events say about a stored member: no contact, partners by sector only."""
    return CityJoined(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        state=row["state"],
        region=row["region"],
        population=row["population"],
        lat=row["lat"],
        lon=row["lon"],
        joined=row["joined"],
        interests=list(row["interests"]),
        strengths=list(row["strengths"]),
        mentor_capacity=row["mentor_capacity"],
        seeks_tandem=row["seeks_tandem"],
        partners=[PartnerSector(sector=p["sector"]) for p in row["partners"]],
        status=row["status"],
    )


def member_row(member: MemberRegistration, today: dt.date) -> dict[str, Any]:
    """The table row of a new registration."""
    now = utcnow()
    return {
        "id": member.id,
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
        "seeks_tandem": member.resolved_seeks_tandem(today),
        "contact": member.contact.model_dump() if member.contact else None,
        "partners": [p.model_dump() for p in member.partners],
        "exception_reason": member.exception_reason,
        "status": "active",
        "created_at": now,
        "updated_at": now,
    }


async def add_member(
    connection: AsyncConnection, member: MemberRegistration, actor: str, today: dt.date
) -> dict[str, Any]:
    """Insert the member, its history entry and its ``city.joined`` in the caller's
    transaction. Raises DuplicateMember if the id exists."""
    row = member_row(member, today)
    exists = await connection.scalar(
        select(func.count()).select_from(tables.members).where(tables.members.c.id == member.id)
    )
    if exists:
        raise DuplicateMember(member.id)
    try:
        await connection.execute(insert(tables.members).values(**row))
    except IntegrityError as error:  # a concurrent registration won the race
        raise DuplicateMember(member.id) from error
    await connection.execute(
        insert(tables.member_history).values(
            member_id=member.id,
            action="registered",
            fields=sorted(k for k in member.model_fields_set if k != "contact"),
            actor=actor,
            at=row["created_at"],
        )
    )
    event = make_event(Topics.CITY_JOINED, "registry", public_member(row))
    await enqueue(connection, tables.outbox, event, key=member.id)
    return row


async def register(
    engine: AsyncEngine, member: MemberRegistration, actor: str, today: dt.date
) -> dict[str, Any]:
    """Register ``member`` in one transaction (row, history, outbox)."""
    try:
        async with engine.begin() as connection:
            return await add_member(connection, member, actor, today)
    except IntegrityError as error:
        raise DuplicateMember(member.id) from error


async def get_member(engine: AsyncEngine, member_id: str) -> dict[str, Any] | None:
    """One member with all fields (contact included: for staff only)."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(select(tables.members).where(tables.members.c.id == member_id))
        ).mappings().first()  # fmt: skip
    return dict(row) if row else None


async def list_members(
    engine: AsyncEngine, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of members ordered by id, and the total."""
    async with engine.connect() as connection:
        total = await connection.scalar(select(func.count()).select_from(tables.members))
        rows = (
            await connection.execute(
                select(tables.members).order_by(tables.members.c.id).limit(limit).offset(offset)
            )
        ).mappings().all()  # fmt: skip
    return [dict(r) for r in rows], int(total or 0)


async def republish(engine: AsyncEngine) -> int:
    """Queue ``city.joined`` again for every member (new envelope ids; the matcher's read
    model upserts, so a re-publication changes nothing it already knew)."""
    count = 0
    async with engine.begin() as connection:
        rows = (
            (await connection.execute(select(tables.members).order_by(tables.members.c.created_at)))
            .mappings()
            .all()
        )
        for row in rows:
            event = make_event(Topics.CITY_JOINED, "registry", public_member(row))
            await enqueue(connection, tables.outbox, event, key=row["id"])
            count += 1
    return count
