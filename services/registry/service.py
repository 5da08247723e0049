"""The registry as a running service: its database, its outbox relay, its Kafka producer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.member import MemberRegistration, MemberUpdate
from services.infra.db import make_engine, migrate
from services.infra.deadletter import dead_letter, enqueue_dead_letter, retry_transient
from services.infra.dedup import ReusedEventId, seen_before
from services.infra.kafka import kafka_sink
from services.infra.outbox import OutboxRelay, RecordSink
from services.infra.records import Delivery, Poison, PoisonRecord, payload_digest
from services.registry import gazetteer, store, tables
from services.registry.admission import (
    AdmissionRefused,
    RuleViolation,
    admission_violations,
    body_violations,
    check,
    wish_violations,
)
from services.registry.settings import RegistrySettings

log = logging.getLogger(__name__)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class Admitted:
    """A member the registry admitted: its stored row and the fields the gazetteer filled in."""

    row: dict[str, Any]
    looked_up: tuple[str, ...] = ()


def _refusal(poison: PoisonRecord, raw: bytes | None) -> Exception | str:
    """The dead letter's error for a ``member.admitted`` record that does not parse: for a
    member the model refuses, the messages ``POST /api/members`` answers with (model errors,
    then the admission rules its fields break); else the decoder's reason."""
    error = poison.validation
    if error is None:
        return poison
    errors = error.errors(include_url=False)
    if not errors or any(not e["loc"] or e["loc"][0] != "data" for e in errors):
        return poison
    problems = [(str(e["loc"][1]) if len(e["loc"]) > 1 else "", e) for e in errors]
    messages = [
        f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" if field else str(e["msg"])
        for field, e in problems
    ]
    try:
        data = json.loads(raw or b"").get("data")
    except (ValueError, RecursionError, AttributeError):
        data = None
    messages += map(str, body_violations(data, {field for field, _ in problems if field}))
    return f"admission refused: {'; '.join(messages)}"


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

    async def admit(
        self,
        member: MemberRegistration,
        actor: str,
        *,
        guard: Callable[[AsyncConnection], Awaitable[bool]] | None = None,
    ) -> Admitted | None:
        """The admission of a member, whichever way it comes in (HTTP API, ``member.admitted``,
        ``tandem import`` through the API, the demo's seed): the gazetteer fills in a missing
        population or missing coordinates, the admission rules are applied (all broken ones
        named in :class:`AdmissionRefused`), then the member, its history (with the looked-up
        fields) and its ``city.joined`` are stored in one transaction and the relay woken.

        ``guard`` runs first in that transaction (e.g. the consumer's dedup); if it answers
        False nothing is stored and None is returned. Raises :class:`AdmissionRefused` or
        :class:`store.DuplicateMember`."""
        problems: list[RuleViolation] = []
        try:
            if gazetteer.needs_lookup(member):
                admission = await asyncio.to_thread(check, member)  # the first look-up reads
            else:
                admission = check(member)
        except AdmissionRefused as refused:
            problems = refused.problems
        if member.wishes:
            async with self.engine.connect() as connection:
                problems = problems + await _wish_problems(connection, member)
        if problems:
            raise AdmissionRefused(problems)
        if guard is None:
            row = await store.register(
                self.engine, admission.member, actor, _today(), admission.looked_up
            )
        else:
            try:
                async with self.engine.begin() as connection:
                    if not await guard(connection):
                        return None
                    row = await store.add_member(
                        connection, admission.member, actor, _today(), admission.looked_up
                    )
            except IntegrityError as error:  # a concurrent registration won the race
                raise store.DuplicateMember(member.id) from error
        self.relay.wake()
        log.info("member registered", extra={"member_id": member.id, "actor": actor})
        return Admitted(row, admission.looked_up)

    async def change(
        self, member_id: str, change: MemberUpdate, actor: str
    ) -> tuple[dict[str, Any], list[str]]:
        """Change a member's profile under the registration's validation and the same admission
        rules (all broken ones named); ``city.updated`` follows through the outbox. Raises
        :class:`store.InvalidChange`, :class:`store.MemberNotFound`, :class:`store.MemberLeft`."""

        async def rules(connection: AsyncConnection, member: MemberRegistration) -> None:
            problems = admission_violations(member)
            if "wishes" in change.model_fields_set:
                problems += await _wish_problems(connection, member)
            if problems:
                raise AdmissionRefused(problems)

        try:
            row, changed = await store.update_member(
                self.engine, member_id, change, actor, check=rules
            )
        except AdmissionRefused as refused:
            raise store.InvalidChange(
                [{"loc": ["body", v.field], "msg": v.message, "type": v.kind}
                 for v in refused.problems]
            ) from refused  # fmt: skip
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

    async def republish(self) -> int:
        """Queue ``city.joined`` again for every member (what ``tandem registry republish``
        does) and wake the relay; returns how many."""
        count = await store.republish(self.engine)
        self.relay.wake()
        return count

    async def ingest_admitted(self, deliveries: Sequence[Delivery | Poison]) -> None:
        """Register the members of ``member.admitted`` records with the same rules as the API:
        idempotent on the envelope id; invalid records, rule violations and existing ids go to
        ``member.admitted.dlq`` with the reason."""
        for delivery in deliveries:
            await retry_transient(functools.partial(self._admit, delivery))
        self.relay.wake()

    async def _admit(self, record: Delivery | Poison) -> None:
        if isinstance(record, Poison):
            async with self.engine.begin() as connection:
                refusal = _refusal(record.error, record.value)
                letter = dead_letter(record, refusal, consumer="registry")
                await enqueue_dead_letter(connection, tables.outbox, letter)
            return
        envelope = record.envelope
        member: MemberRegistration = envelope.data

        async def first_delivery(connection: AsyncConnection) -> bool:
            seen = await seen_before(
                connection, tables.processed_events, str(envelope.id), envelope.type,
                payload_digest(envelope),
            )  # fmt: skip
            return not seen

        try:
            await self.admit(member, "platform (member.admitted)", guard=first_delivery)
            return
        except ReusedEventId as error:
            async with self.engine.begin() as connection:
                letter = dead_letter(record, error, consumer="registry")
                await enqueue_dead_letter(connection, tables.outbox, letter)
            return
        except AdmissionRefused as refused:
            problems = "; ".join(map(str, refused.problems))
        except store.DuplicateMember:
            problems = f"member {member.id} exists already"
        async with self.engine.begin() as connection:
            try:
                if await seen_before(connection, tables.processed_events, str(envelope.id),
                                     envelope.type, payload_digest(envelope)):  # fmt: skip
                    return
            except ReusedEventId as error:
                letter = dead_letter(record, error, consumer="registry")
                await enqueue_dead_letter(connection, tables.outbox, letter)
                return
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


async def _wish_problems(
    connection: AsyncConnection, member: MemberRegistration
) -> list[RuleViolation]:
    """The admission's rule for ``wishes``: other members the registry knows."""
    known = await store.existing_ids(connection, member.wishes)
    return wish_violations(member.id, member.wishes, known)
