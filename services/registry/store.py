"""The registry's database: members, their history, and the outbox, changed together."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import CityJoined, CityLeft, CityUpdated, Topics, make_event
from schemas.member import MemberRegistration, MemberUpdate, PartnerSector
from services.infra.db import checkpoint_wal
from services.infra.outbox import enqueue, outbox_row, utcnow
from services.registry import tables


class DuplicateMember(Exception):
    """A member with this id exists already."""


class MemberNotFound(LookupError):
    """No member with this id."""


class MemberLeft(Exception):
    """The member left the network; its record is read-only."""


class InvalidChange(ValueError):
    """The changed member breaks the model's validation or an admission rule (``errors``: the
    422 entries, every one)."""

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
        wishes=list(row["wishes"] or []),
        estimated=list(row["estimated"] or []),
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
        "wishes": list(member.wishes),
        "estimated": list(member.estimated),
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


@dataclass(frozen=True)
class Registration:
    """One registration to store: the member, who registers it, the day that decides
    ``seeks_tandem``, and the fields the gazetteer filled in."""

    member: MemberRegistration
    actor: str
    today: dt.date
    looked_up: Sequence[str] = ()


async def add_members(
    connection: AsyncConnection, registrations: Sequence[Registration]
) -> list[dict[str, Any] | None]:
    """Insert the members, their history entries and their ``city.joined`` in the caller's
    transaction, three statements for all of them; per registration its stored row, or None
    when the id exists (already, or earlier in ``registrations``). The primary key decides:
    no look-up first, and ``ON CONFLICT DO NOTHING`` says which ids were new without an error
    (on PostgreSQL an error would abort the caller's transaction). The history entry lists the
    fields the gazetteer filled in in ``reason``, its ``fields`` only those the caller gave."""
    rows: list[dict[str, Any] | None] = []
    claimed: set[str] = set()
    for registration in registrations:
        member = registration.member
        if member.population is None:
            raise ValueError(f"member {member.id} has no population (look it up first)")
        fresh = member.id not in claimed
        claimed.add(member.id)
        rows.append(member_row(member, registration.today) if fresh else None)
    candidates = [row for row in rows if row is not None]
    if not candidates:
        return [None] * len(rows)
    statement = _insert_new_member(connection.dialect.name)
    inserted = set(
        (await connection.execute(statement.returning(tables.members.c.id), candidates)).scalars()
    )
    stored = [row if row is not None and row["id"] in inserted else None for row in rows]
    history: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    for registration, row in zip(registrations, stored, strict=True):
        if row is None:
            continue
        member, looked_up = registration.member, registration.looked_up
        history.append({
            "member_id": member.id,
            "action": "registered",
            "fields": sorted(
                k for k in member.model_fields_set if k != "contact" and k not in looked_up
            ),
            "reason": looked_up_note(looked_up),
            "actor": registration.actor,
            "at": row["created_at"],
        })  # fmt: skip
        event = make_event(Topics.CITY_JOINED, "registry", public_member(row))
        outbox.append(outbox_row(event, key=member.id))
    if history:
        await connection.execute(_INSERT_HISTORY, history)
        await connection.execute(_INSERT_OUTBOX, outbox)
    return stored


async def add_member(
    connection: AsyncConnection,
    member: MemberRegistration,
    actor: str,
    today: dt.date,
    looked_up: Sequence[str] = (),
) -> dict[str, Any]:
    """:func:`add_members` for one member; raises DuplicateMember if the id exists."""
    (row,) = await add_members(connection, [Registration(member, actor, today, looked_up)])
    if row is None:
        raise DuplicateMember(member.id)
    return row


_INSERT_HISTORY = insert(tables.member_history)
_INSERT_OUTBOX = insert(tables.outbox)


@functools.cache
def _insert_new_member(dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT (id) DO NOTHING`` in ``dialect``: an id that exists is not
    inserted (and not returned). Any other constraint still raises."""
    if dialect == "postgresql":
        return postgresql.insert(tables.members).on_conflict_do_nothing(index_elements=["id"])
    if dialect == "sqlite":
        return sqlite.insert(tables.members).on_conflict_do_nothing(index_elements=["id"])
    raise NotImplementedError(f"no ON CONFLICT for {dialect}")


class RegistrationWriter:
    """Group commit for the API's registrations: those that arrive while a transaction runs
    wait together and go into the next one (three statements and one commit for all, see
    :func:`add_members`), so under load the database does one transaction per batch rather
    than one per request, and on SQLite one writer (the engine's one connection) keeps up.
    A lone registration is written at once. If a batch fails, each of its registrations is
    tried alone, so one bad row fails only its own request."""

    def __init__(self, engine: AsyncEngine, max_batch: int = 200) -> None:
        self._engine = weakref.ref(engine)  # the engine's entry in ``_writers`` may go with it
        self._max_batch = max_batch
        self._pending: list[tuple[Registration, asyncio.Future[dict[str, Any]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def register(self, registration: Registration) -> dict[str, Any]:
        """Store ``registration`` (with the next batch); its row. Raises DuplicateMember."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((registration, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="registry-writer")
        return await future  # a caller that goes away: its row is still written

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._write(batch)
            except Exception as error:
                if len(batch) == 1:
                    _settle(batch[0][1], error=error)
                    continue
                for item in batch:  # which one failed? each alone
                    try:
                        await self._write([item])
                    except Exception as alone:
                        _settle(item[1], error=alone)

    async def _write(
        self, batch: Sequence[tuple[Registration, asyncio.Future[dict[str, Any]]]]
    ) -> None:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the registry's engine is gone")
        async with engine.begin() as connection:
            rows = await add_members(connection, [registration for registration, _ in batch])
        for (registration, future), row in zip(batch, rows, strict=True):
            if row is None:
                _settle(future, error=DuplicateMember(registration.member.id))
            else:
                _settle(future, row)


def _settle(
    future: asyncio.Future[dict[str, Any]],
    row: dict[str, Any] | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(row or {})


_writers: weakref.WeakKeyDictionary[AsyncEngine, RegistrationWriter] = weakref.WeakKeyDictionary()


async def register(
    engine: AsyncEngine,
    member: MemberRegistration,
    actor: str,
    today: dt.date,
    looked_up: Sequence[str] = (),
) -> dict[str, Any]:
    """Register ``member`` (row, history, outbox in one transaction, shared with the
    registrations that arrive meanwhile: :class:`RegistrationWriter`, one per engine)."""
    writer = _writers.get(engine)
    if writer is None:
        writer = _writers[engine] = RegistrationWriter(engine)
    try:
        return await writer.register(Registration(member, actor, today, looked_up))
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
        "exception_reason", "wishes", "estimated",
    )  # fmt: skip
    return {k: row[k] for k in keys}


async def existing_ids(connection: AsyncConnection, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` that are registered members (for checking wishes)."""
    if not ids:
        return set()
    query = select(tables.members.c.id).where(tables.members.c.id.in_(list(ids)))
    return set((await connection.execute(query)).scalars())


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
    engine: AsyncEngine,
    member_id: str,
    change: MemberUpdate,
    actor: str,
    check: Callable[[AsyncConnection, MemberRegistration], Awaitable[object]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Apply ``change`` with the registration's validation; ``check`` sees the changed member
    before anything is written (the service's admission rules: it raises to refuse, which
    rolls back). Records the history and queues ``city.updated`` when anything changed.
    Returns the row and the names of the changed fields."""
    from pydantic import ValidationError

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
        if check is not None:
            await check(connection, member)
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
    history recorded, ``city.left`` queued. The pseudonymous record stays. On SQLite the
    write-ahead log is checkpointed and truncated afterwards, so the erased strings are in no
    file (``secure_delete`` zeroes them in the database file)."""
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
    await checkpoint_wal(engine)
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
