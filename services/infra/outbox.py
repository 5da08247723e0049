"""Transactional outbox: events are rows committed with the state change they announce.

A relay publishes pending rows in order (message key = the city id) and marks them sent only
after the broker acknowledged them. A crash between publish and mark publishes a row again;
consumers deduplicate on the envelope id, so the effect happens once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import Envelope
from services.infra.db import json_values
from services.infra.metrics import DEAD_LETTERS, EVENTS_PUBLISHED, OUTBOX_PARKED
from services.infra.settings import CommonSettings

log = logging.getLogger(__name__)

#: Set to "1" (tests only) to kill the process after a publish and before the rows are marked.
CRASH_AFTER_PUBLISH = "TANDEM_FAULT_CRASH_AFTER_PUBLISH"
CRASH_EXIT_CODE = 86


def outbox_table(metadata: MetaData, name: str) -> Table:
    """The outbox table of one service (each service names its own)."""
    return Table(
        name,
        metadata,
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
               autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("sent_at", DateTime(timezone=True), nullable=True, index=True),
        Column("attempts", Integer, nullable=False, default=0),
        # A row the broker refuses for good (too large, …) is parked with the error, so the
        # rows behind it do not wait; an operator fixes it and clears parked_at.
        Column("parked_at", DateTime(timezone=True), nullable=True),
        Column("error", Text, nullable=True),
    )  # fmt: skip


def utcnow() -> dt.datetime:
    """Now, timezone-aware (UTC)."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class OutboxRecord:
    """One row to publish."""

    seq: int
    event_id: str
    topic: str
    key: str
    payload: str


def outbox_row(envelope: Envelope[Any], key: str) -> dict[str, Any]:
    """The outbox row of ``envelope``: for ``enqueue``, or for one ``insert`` of many rows (an
    executemany) where a transaction queues a lot of events at once."""
    return {
        "event_id": str(envelope.id),
        "topic": envelope.type,
        "key": key,
        "payload": envelope.model_dump_json(),
        "created_at": utcnow(),
        "attempts": 0,
    }


async def enqueue(
    connection: AsyncConnection, table: Table, envelope: Envelope[Any], key: str
) -> None:
    """Add ``envelope`` to the outbox inside the caller's transaction."""
    await connection.execute(insert(table).values(**outbox_row(envelope, key)))


async def enqueue_raw(
    connection: AsyncConnection, table: Table, event_id: str, topic: str, key: str,
    payload: BaseModel,
) -> None:  # fmt: skip
    """Add a record that is not an envelope (a dead letter) to the outbox."""
    await connection.execute(
        insert(table).values(
            event_id=event_id, topic=topic, key=key, payload=payload.model_dump_json(),
            created_at=utcnow(), attempts=0,
        )
    )  # fmt: skip


class RecordRejected(Exception):
    """The broker (or the producer) refuses a record for good: too large, an invalid topic.
    Sending it again fails again; the relay parks it instead of retrying its batch."""


class RecordSink(Protocol):
    """Where the relay sends records: Kafka in production, a list in unit tests."""

    async def send_batch(self, records: Sequence[OutboxRecord]) -> None:
        """Send all ``records`` in order; return only once the broker acknowledged each.
        Raise :class:`RecordRejected` if a record is refused for good."""

    async def healthy(self) -> bool:
        """Whether the broker answers now."""


class OutboxRelay:
    """Publishes pending outbox rows and marks them sent after the broker's acknowledgement."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        sink: RecordSink,
        *,
        batch: int = 2000,
        poll_seconds: float = 1.0,
        on_sent: Callable[[Sequence[OutboxRecord]], Awaitable[None] | None] | None = None,
        keep_sent: dt.timedelta = dt.timedelta(days=7),
        linger_seconds: float = 0.01,
    ) -> None:
        self._engine = engine
        self._table = table
        self._sink = sink
        self._batch = batch
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._on_sent = on_sent
        self._keep_sent = keep_sent
        self._linger = linger_seconds
        self.broker_ok = False
        self.last_error: str | None = None

    @classmethod
    def of(
        cls, settings: CommonSettings, engine: AsyncEngine, table: Table, sink: RecordSink
    ) -> OutboxRelay:
        """The relay of a service, configured by its settings."""
        return cls(
            engine, table, sink, batch=settings.outbox_batch,
            poll_seconds=settings.outbox_poll_seconds,
        )  # fmt: skip

    def wake(self) -> None:
        """Tell the relay new rows are there (it also polls, so this is only about latency)."""
        self._wake.set()

    async def backlog(self) -> int:
        """Rows waiting for the broker's acknowledgement (parked rows do not wait)."""
        async with self._engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(self._table).where(
                    self._table.c.sent_at.is_(None), self._table.c.parked_at.is_(None)
                )
            )  # fmt: skip
        return int(count or 0)

    async def parked(self) -> list[tuple[str, str]]:
        """The parked rows, oldest first: ``(topic, error)``."""
        table = self._table
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(table.c.topic, table.c.error)
                    .where(table.c.sent_at.is_(None), table.c.parked_at.is_not(None))
                    .order_by(table.c.seq)
                )
            ).all()  # fmt: skip
        return [(str(topic), str(error or "")) for topic, error in rows]

    async def problems(self) -> list[str]:
        """What keeps records from the broker, in words for ``/ready``: parked rows (with the
        error of the first) and the last error of a relay that is not sending."""
        table = self._table
        parked = (table.c.sent_at.is_(None), table.c.parked_at.is_not(None))
        async with self._engine.connect() as connection:
            count = int(
                await connection.scalar(select(func.count()).select_from(table).where(*parked)) or 0
            )
            first = await connection.scalar(
                select(table.c.error).where(*parked).order_by(table.c.seq).limit(1)
            )
        found = []
        if count:
            reason = str(first or "").split(":", 1)[0]
            found.append(f"outbox: {count} record{'s' if count > 1 else ''} parked: {reason}")
        if self.last_error is not None:
            found.append(f"outbox: {self.last_error}")
        return found

    async def publish_pending(self) -> int:
        """One round: publish up to ``batch`` pending rows; returns how many were sent. Where
        the broker refuses a record of the batch for good, the rows are sent one by one and
        the refused one is parked with its error (logged and counted), so nothing behind it
        waits."""
        table = self._table
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(table.c.seq, table.c.event_id, table.c.topic, table.c.key,
                           table.c.payload)
                    .where(table.c.sent_at.is_(None), table.c.parked_at.is_(None))
                    .order_by(table.c.seq)
                    .limit(self._batch)
                )
            ).all()  # fmt: skip
        if not rows:
            return 0
        records = [
            OutboxRecord(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows
        ]
        try:
            await self._sink.send_batch(records)
        except RecordRejected:
            return await self._publish_one_by_one(records)
        except Exception:
            await self._count_attempt(records)
            raise
        await self._mark_sent(records)
        return len(records)

    async def _publish_one_by_one(self, records: Sequence[OutboxRecord]) -> int:
        sent = 0
        for record in records:
            try:
                await self._sink.send_batch([record])
            except RecordRejected as error:
                await self._park(record, error)
                continue
            except Exception:
                await self._count_attempt([record])
                raise
            await self._mark_sent([record])
            sent += 1
        return sent

    async def _count_attempt(self, records: Sequence[OutboxRecord]) -> None:
        table = self._table
        async with self._engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(table.c.seq.in_([r.seq for r in records]))
                .values(attempts=table.c.attempts + 1)
            )

    async def _park(self, record: OutboxRecord, error: RecordRejected) -> None:
        table = self._table
        reason = str(error)[:4000]
        async with self._engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(table.c.seq == record.seq)
                .values(parked_at=utcnow(), error=reason, attempts=table.c.attempts + 1)
            )
        OUTBOX_PARKED.labels(record.topic).inc()
        log.error(
            "outbox record parked",
            extra={"topic": record.topic, "event_id": record.event_id, "error": reason},
        )

    async def _mark_sent(self, records: Sequence[OutboxRecord]) -> None:
        table = self._table
        if os.environ.get(CRASH_AFTER_PUBLISH) == "1":
            # Fault injection for the reliability tests: die like a killed process between the
            # broker's acknowledgement and marking the rows sent.
            os._exit(CRASH_EXIT_CODE)
        seqs = [r.seq for r in records]
        async with self._engine.begin() as connection:
            if connection.dialect.name == "sqlite":  # one bound value for the whole round
                await connection.execute(
                    update(table)
                    .where(table.c.seq.in_(json_values("seqs")))
                    .values(sent_at=utcnow()),
                    {"seqs": json.dumps(seqs)},
                )
            else:
                await connection.execute(
                    update(table).where(table.c.seq.in_(seqs)).values(sent_at=utcnow())
                )
        for topic, count in Counter(record.topic for record in records).items():
            EVENTS_PUBLISHED.labels(topic).inc(count)
            if topic.endswith(".dlq"):
                DEAD_LETTERS.labels(topic.removesuffix(".dlq")).inc(count)
        if self._on_sent is not None:
            result = self._on_sent(records)
            if result is not None:
                await result

    async def purge_sent(self) -> None:
        """Forget rows acknowledged longer ago than ``keep_sent``."""
        async with self._engine.begin() as connection:
            await connection.execute(
                delete(self._table).where(self._table.c.sent_at < utcnow() - self._keep_sent)
            )

    async def run(self) -> None:
        """Publish forever: when woken, else every ``poll_seconds``; back off on broker errors
        (1 s doubling to 30 s) without losing a row.

        Under load, wakes come faster than rounds: a wake within ``linger_seconds`` of the
        previous round's end waits for the rest of that time, so one round (a read, a send, a
        write) carries the rows of several commits instead of each commit paying for its own
        (and each round's write competing with the commits for SQLite's lock); a lone wake is
        served at once. The broker's health is asked after a poll interval without traffic
        (and at start): a round that sent something has just shown the broker is there.
        """
        loop = asyncio.get_running_loop()
        backoff = 1.0
        rounds = 0
        woken = False  # the first round also checks the broker's health
        last_round = -math.inf
        while True:
            if woken:
                early = last_round + self._linger - loop.time()
                if early > 0:
                    await asyncio.sleep(early)
            # Cleared before looking, so a wake() during a round is never lost.
            self._wake.clear()
            try:
                sent = await self.publish_pending()
                last_round = loop.time()
                if sent:
                    self.broker_ok = True
                    self.last_error = None
                    backoff = 1.0
                    if sent >= self._batch:  # there may be more
                        continue
                elif not woken:  # a quiet poll interval: is the broker still there?
                    rounds += 1
                    if rounds % 600 == 0:
                        await self.purge_sent()
                    self.broker_ok = await self._sink.healthy()
                    if self.broker_ok:
                        self.last_error = None
                        backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker or the database is away: retry later
                # A database error says nothing about the broker (``/ready`` checks the
                # database itself); anything else came from sending.
                if not isinstance(error, SQLAlchemyError):
                    self.broker_ok = False
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("outbox relay: %s; retrying in %.0f s", self.last_error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                woken = False
                continue
            woken = await self._sleep(self._poll)

    async def _sleep(self, seconds: float) -> bool:
        """Until woken (True) or ``seconds`` passed (False)."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True
