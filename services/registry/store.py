"""The registry's database: members, their history, and the outbox, changed together."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import CityJoined, CityLeft, CityUpdated, Topics, make_event
from schemas.member import MemberRegistration, MemberUpdate, PartnerSector
from services.infra.outbox import enqueue, outbox_row, utcnow
from services.registry import tables


class DuplicateMember(Exception):
    """A member with this id exists already."""


class MemberNotFound(LookupError):
    """No member with this id."""


class MemberLeft(Exception):
    """The member left the network; its record is read-only."""


class InvalidChange(ValueError):
    """The changed member breaks the model's validation or an admission rule."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid change")
        self.errors = errors


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
        revision=row["revision"],
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
        "revision": 1,
        "created_at": now,
        "updated_at": now,
    }


def looked_up_note(looked_up: Sequence[str]) -> str | None:
    """The history entry's ``reason`` for values the gazetteer filled in at registration."""
    if not looked_up:
        return None
    return f"looked up in GeoNames (CC BY 4.0): {', '.join(looked_up)}"


async def add_member(
    connection: AsyncConnection,
    member: MemberRegistration,
    actor: str,
    today: dt.date,
    looked_up: Sequence[str] = (),
) -> dict[str, Any]:
    """Insert the member, its history entry and its ``city.joined`` in the caller's
    transaction. Raises DuplicateMember if the id exists. ``looked_up`` names the fields the
    gazetteer filled in: the history entry lists them in ``reason``, its ``fields`` only the
    fields the caller gave."""
    if member.population is None:
        raise ValueError(f"member {member.id} has no population (look it up first)")
    row = member_row(member, today)
    # Three statements and no look-up first: the primary key decides whether the id is new, and
    # ON CONFLICT DO NOTHING says so without an error (on PostgreSQL an error would abort the
    # caller's transaction, which still writes a dead letter when the consumer admits).
    inserted = await connection.execute(_insert_new_member(connection.dialect.name), row)
    if inserted.rowcount != 1:
        raise DuplicateMember(member.id)
    await connection.execute(
        _INSERT_HISTORY,
        {
            "member_id": member.id,
            "action": "registered",
            "fields": sorted(
                k for k in member.model_fields_set if k != "contact" and k not in looked_up
            ),
            "reason": looked_up_note(looked_up),
            "actor": actor,
            "at": row["created_at"],
        },
    )
    event = make_event(Topics.CITY_JOINED, "registry", public_member(row))
    await connection.execute(_INSERT_OUTBOX, outbox_row(event, key=member.id))
    return row


_INSERT_HISTORY = insert(tables.member_history)
_INSERT_OUTBOX = insert(tables.outbox)


@functools.cache
def _insert_new_member(dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT (id) DO NOTHING`` in ``dialect``: a row count of 0 means the id
    exists. Any other constraint still raises."""
    if dialect == "postgresql":
        return postgresql.insert(tables.members).on_conflict_do_nothing(index_elements=["id"])
    if dialect == "sqlite":
        return sqlite.insert(tables.members).on_conflict_do_nothing(index_elements=["id"])
    raise NotImplementedError(f"no ON CONFLICT for {dialect}")


async def register(
    engine: AsyncEngine,
    member: MemberRegistration,
    actor: str,
    today: dt.date,
    looked_up: Sequence[str] = (),
) -> dict[str, Any]:
    """Register ``member`` in one transaction (row, history, outbox)."""
    try:
        async with engine.begin() as connection:
            return await add_member(connection, member, actor, today, looked_up)
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


def registration_of(row: RowMapping | dict[str, Any]) -> dict[str, Any]:
    """A stored member as the registration body it came from (for re-validation)."""
    keys = (
        "id", "name", "kind", "state", "region", "population", "lat", "lon", "joined",
        "interests", "strengths", "mentor_capacity", "seeks_tandem", "contact", "partners",
        "exception_reason",
    )  # fmt: skip
    return {k: row[k] for k in keys}


async def _locked_member(connection: AsyncConnection, member_id: str) -> RowMapping:
    # A no-op update first: it takes the row's write lock until commit (SQLite and PostgreSQL).
    await connection.execute(
        update(tables.members)
        .where(tables.members.c.id == member_id)
        .values(revision=tables.members.c.revision)
    )
    row = (
        await connection.execute(select(tables.members).where(tables.members.c.id == member_id))
    ).mappings().first()  # fmt: skip
    if row is None:
        raise MemberNotFound(member_id)
    if row["status"] == "left":
        raise MemberLeft(member_id)
    return row


async def update_member(
    engine: AsyncEngine, member_id: str, change: MemberUpdate, actor: str
) -> tuple[dict[str, Any], list[str]]:
    """Apply ``change`` with the registration's validation and admission rules; record the
    history and queue ``city.updated`` when anything changed. Returns the row and the names of
    the changed fields."""
    from pydantic import ValidationError

    from services.registry.admission import admission_violations

    given = change.model_dump(exclude_unset=True, mode="json")
    async with engine.begin() as connection:
        row = await _locked_member(connection, member_id)
        merged = {**registration_of(row), **given}
        if "state" in given and "region" not in given:
            merged["region"] = None  # derived again from the new state
        merged["joined"] = str(merged["joined"])
        try:
            member = MemberRegistration.model_validate(merged)
        except ValidationError as error:
            raise InvalidChange(
                [{**e, "loc": ["body", *e["loc"]]} for e in error.errors(include_url=False)]
            ) from error
        problems = admission_violations(member)
        if problems:
            raise InvalidChange(
                [{"loc": ["body", v.field], "msg": v.message, "type": "admission_rule"}
                 for v in problems]
            )  # fmt: skip
        values = member_row(member, row["joined"])
        values["seeks_tandem"] = (
            member.seeks_tandem if member.seeks_tandem is not None else row["seeks_tandem"]
        )
        changed = sorted(
            k for k in registration_of(row) if k != "id" and _differs(row[k], values[k])
        )
        if not changed:
            return dict(row), []
        now = utcnow()
        fresh = {k: values[k] for k in changed}
        await connection.execute(
            update(tables.members)
            .where(tables.members.c.id == member_id)
            .values(**fresh, revision=row["revision"] + 1, updated_at=now)
        )
        await connection.execute(
            insert(tables.member_history).values(
                member_id=member_id, action="updated", fields=changed, actor=actor, at=now
            )
        )
        stored = (
            await connection.execute(
                select(tables.members).where(tables.members.c.id == member_id)
            )
        ).mappings().one()  # fmt: skip
        event = make_event(
            Topics.CITY_UPDATED, "registry", CityUpdated(**public_member(stored).model_dump())
        )
        await enqueue(connection, tables.outbox, event, key=member_id)
    return dict(stored), changed


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, float) or isinstance(new, float):
        return old is None or new is None or abs(float(old) - float(new)) > 1e-9
    return bool(old != new)


async def leave(engine: AsyncEngine, member_id: str, reason: str, actor: str) -> dict[str, Any]:
    """The member leaves: status ``left``, contact and partner names erased (right to erasure),
    history recorded, ``city.left`` queued. The pseudonymous record stays."""
    async with engine.begin() as connection:
        row = await _locked_member(connection, member_id)
        now = utcnow()
        await connection.execute(
            update(tables.members)
            .where(tables.members.c.id == member_id)
            .values(
                status="left",
                contact=None,
                partners=[{"name": "", "sector": p["sector"]} for p in row["partners"]],
                seeks_tandem=False,
                revision=row["revision"] + 1,
                updated_at=now,
            )
        )
        await connection.execute(
            insert(tables.member_history).values(
                member_id=member_id, action="left", fields=["status", "contact", "partners"],
                reason=reason, actor=actor, at=now,
            )
        )  # fmt: skip
        event = make_event(Topics.CITY_LEFT, "registry", CityLeft(id=member_id, reason=reason))
        await enqueue(connection, tables.outbox, event, key=member_id)
        stored = (
            await connection.execute(
                select(tables.members).where(tables.members.c.id == member_id)
            )
        ).mappings().one()  # fmt: skip
    return dict(stored)


async def history(engine: AsyncEngine, member_id: str) -> list[dict[str, Any]] | None:
    """Every change of a member, oldest first; None if the member is unknown."""
    h = tables.member_history
    async with engine.connect() as connection:
        exists = await connection.scalar(
            select(func.count()).select_from(tables.members).where(tables.members.c.id == member_id)
        )
        if not exists:
            return None
        rows = (
            await connection.execute(select(h).where(h.c.member_id == member_id).order_by(h.c.seq))
        ).mappings().all()  # fmt: skip
    return [
        {"action": r["action"], "fields": r["fields"], "reason": r["reason"],
         "actor": r["actor"], "at": r["at"].isoformat()}
        for r in rows
    ]  # fmt: skip
