"""Dead letters: a record a consumer cannot process goes to ``<topic>.dlq`` with the reason."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from sqlalchemy import Table, func, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.events import DeadLetter, Topics
from services.infra.outbox import enqueue_raw, utcnow

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("5c0d7c1e-8a8e-4f57-9d7e-7a1d6c1e0d11")


def dead_letter(record: Any, error: BaseException | str, consumer: str) -> DeadLetter:
    """The dead letter of a Kafka record (aiokafka ``ConsumerRecord``)."""
    value: bytes = record.value or b""
    try:
        original = value.decode("utf-8")
        encoding: Literal["utf-8", "base64"] = "utf-8"
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(value).decode("ascii"), "base64"
    key = record.key.decode("utf-8", "replace") if record.key else None
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        original=original,
        original_encoding=encoding,
        error=str(error)[:4000],
        consumer=consumer,
        time=utcnow(),
    )


async def enqueue_dead_letter(
    connection: AsyncConnection, outbox: Table, letter: DeadLetter
) -> bool:
    """Queue ``letter`` on ``<topic>.dlq`` once per (topic, partition, offset), so a record
    delivered again is not dead-lettered twice. Returns False if it was queued before."""
    event_id = str(uuid.uuid5(_NAMESPACE, f"{letter.topic}/{letter.partition}/{letter.offset}"))
    exists = await connection.scalar(
        select(func.count()).select_from(outbox).where(outbox.c.event_id == event_id)
    )
    if exists:
        return False
    await enqueue_raw(
        connection, outbox, event_id, Topics.dlq(letter.topic), letter.key or "unknown", letter
    )
    return True


#: Errors worth retrying: the database is busy or away for a moment.
TRANSIENT = (OperationalError, DBAPIError, ConnectionError, TimeoutError)
T = TypeVar("T")


async def retry_transient(work: Callable[[], Awaitable[T]], attempts: int = 6) -> T:
    """Run ``work``, retrying transient errors with exponential backoff (0.1 s doubling); the
    last error propagates, so the consumer's batch is not acknowledged and comes again."""
    delay = 0.1
    for attempt in range(attempts):
        try:
            return await work()
        except TRANSIENT as error:
            if attempt == attempts - 1:
                raise
            log.warning("database busy (%s); retrying in %.1f s", type(error).__name__, delay)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
