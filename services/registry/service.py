"""The registry as a running service: its database, its outbox relay, its Kafka producer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.events import UnknownVersion, parse_event
from schemas.member import MemberRegistration, MemberUpdate
from services.infra.db import make_engine, migrate
from services.infra.deadletter import dead_letter, enqueue_dead_letter, retry_transient
from services.infra.dedup import seen_before
from services.infra.kafka import kafka_sink
from services.infra.outbox import OutboxRelay, RecordSink
from services.infra.settings import RegistrySettings
from services.registry import gazetteer, store, tables
from services.registry.admission import admission_violations

log = logging.getLogger(__name__)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


MIGRATIONS = Path(__file__).with_name("migrations")


class RegistryService:
    """Members in, ``city.joined`` out; the relay runs as a background task."""

    def __init__(self, settings: RegistrySettings, sink: RecordSink | None = None) -> None:
        self.settings = settings
        # One connection on SQLite: one writer path for the API, the consumer and the relay.
        self.engine = make_engine(settings.database_for("registry"), one_connection=True)
        self.sink = sink or kafka_sink(settings, "registry")
        self.relay = OutboxRelay.of(settings, self.engine, tables.outbox, self.sink)
        self._task: asyncio.Task[None] | None = None
        self.consuming = False

    async def start(self) -> None:
        """Migrate the database and start the relay."""
        await migrate(self.engine, MIGRATIONS, "alembic_version_registry")
        self._task = asyncio.create_task(self.relay.run(), name="registry-outbox-relay")

    async def stop(self) -> None:
        """Stop the relay and close connections (unsent rows stay for the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        close = getattr(self.sink, "close", None)
        if close is not None:
            await close()
        await self.engine.dispose()

    async def register(
        self, member: MemberRegistration, actor: str, looked_up: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Store ``member`` with its ``city.joined`` and wake the relay. ``looked_up``: the
        fields the gazetteer filled in (recorded in the history)."""
        row = await store.register(self.engine, member, actor, _today(), looked_up)
        self.relay.wake()
        log.info("member registered", extra={"member_id": member.id, "actor": actor})
        return row

    async def update(
        self, member_id: str, change: MemberUpdate, actor: str
    ) -> tuple[dict[str, Any], list[str]]:
        """Change a member's profile; ``city.updated`` follows through the outbox."""
        row, changed = await store.update_member(self.engine, member_id, change, actor)
        if changed:
            self.relay.wake()
            log.info("member updated", extra={"member_id": member_id, "fields": changed})
        return row, changed

    async def leave(self, member_id: str, reason: str, actor: str) -> dict[str, Any]:
        """The member leaves; ``city.left`` follows through the outbox."""
        row = await store.leave(self.engine, member_id, reason, actor)
        self.relay.wake()
        log.info("member left", extra={"member_id": member_id})
        return row

    async def ingest_admitted(self, records: Sequence[Any]) -> None:
        """Register the members of ``member.admitted`` records with the same rules as the API:
        idempotent on the envelope id; invalid records, rule violations and existing ids go to
        ``member.admitted.dlq`` with the reason."""
        for record in records:
            await retry_transient(functools.partial(self._admit, record))
        self.relay.wake()

    async def _admit(self, record: Any) -> None:
        try:
            envelope = parse_event(record.topic, record.value or b"")
        except (ValidationError, UnknownVersion, ValueError) as error:
            async with self.engine.begin() as connection:
                letter = dead_letter(record, error, consumer="registry")
                await enqueue_dead_letter(connection, tables.outbox, letter)
            return
        member: MemberRegistration = envelope.data
        looked_up: tuple[str, ...] = ()
        try:
            completion = await gazetteer.fill_in(member)
        except gazetteer.GazetteerError as error:
            problems = f"population: {error}"
        else:
            member, looked_up = completion.member, completion.looked_up
            problems = "; ".join(f"{v.field}: {v.message}" for v in admission_violations(member))
        async with self.engine.begin() as connection:
            if await seen_before(connection, tables.processed_events, str(envelope.id),
                                 envelope.type):  # fmt: skip
                return
            if not problems:
                try:
                    await store.add_member(
                        connection, member, "platform (member.admitted)", _today(), looked_up
                    )
                    log.info("member admitted by event", extra={"member_id": member.id})
                    return
                except store.DuplicateMember:
                    problems = f"member {member.id} exists already"
            letter = dead_letter(record, f"admission refused: {problems}", consumer="registry")
            await enqueue_dead_letter(connection, tables.outbox, letter)

    def mark_consuming(self) -> None:
        """The consumer joined its group (readiness needs it)."""
        self.consuming = True

    async def ready(self) -> dict[str, bool]:
        """Whether the database and the broker answer."""
        try:
            await self.relay.backlog()
            database = True
        except Exception:
            database = False
        return {"database": database, "broker": self.relay.broker_ok and self.consuming}
