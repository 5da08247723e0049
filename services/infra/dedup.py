"""Idempotent consumers: an event id is processed once, in the transaction of its effect."""

from __future__ import annotations

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.infra.outbox import utcnow


class ReusedEventId(ValueError):
    """An envelope id processed before for other data: dead-lettered, not dropped."""


async def seen_before(
    connection: AsyncConnection, table: Table, event_id: str, topic: str,
    digest: str | None = None,
) -> bool:  # fmt: skip
    """Record ``event_id`` in ``table`` (with the ``digest`` of its payload); True if it was
    there already with the same payload (then change nothing). Raises :class:`ReusedEventId`
    if it was there with another digest. Call it inside the transaction that applies the
    event, so both commit or neither does."""
    known = (
        await connection.execute(select(table.c.digest).where(table.c.event_id == event_id))
    ).first()  # fmt: skip
    if known is not None:
        earlier = known[0]
        if digest is not None and earlier is not None and earlier != digest:
            raise ReusedEventId(f"envelope id {event_id} was used before for other data")
        return True
    await connection.execute(
        insert(table).values(event_id=event_id, topic=topic, at=utcnow(), digest=digest)
    )
    return False
