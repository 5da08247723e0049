"""Idempotent consumers: an event id is processed once, in the transaction of its effect."""

from __future__ import annotations

from sqlalchemy import Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.infra.outbox import utcnow


async def seen_before(connection: AsyncConnection, table: Table, event_id: str, topic: str) -> bool:
    """Record ``event_id`` in ``table``; True if it was there already (then change nothing).
    Call it inside the transaction that applies the event, so both commit or neither does."""
    known = await connection.scalar(
        select(func.count()).select_from(table).where(table.c.event_id == event_id)
    )
    if known:
        return True
    await connection.execute(insert(table).values(event_id=event_id, topic=topic, at=utcnow()))
    return False
