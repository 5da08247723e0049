"""The transactional outbox on a real SQLite database, with a sink that fails on demand."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from schemas.member import MemberRegistration
from services.infra.db import make_engine, migrate
from services.infra.deadletter import dead_letter, enqueue_dead_letter
from services.infra.outbox import OutboxRecord, OutboxRelay, RecordRejected
from services.infra.records import Consumed
from services.registry import store, tables
from services.registry.service import MIGRATIONS
from tests.conftest import member_body


class FlakySink:
    """Refuses the first ``failures`` batches, then keeps what it is sent."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[OutboxRecord] = []

    async def send_batch(self, records: Sequence[OutboxRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.sent.extend(records)

    async def healthy(self) -> bool:
        return self.failures == 0


async def test_rows_stay_until_the_broker_acknowledges(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await migrate(engine, MIGRATIONS, "alembic_version_registry")
    sink = FlakySink(failures=2)
    relay = OutboxRelay(engine, tables.outbox, sink, batch=2)
    for index in range(3):
        member = MemberRegistration.model_validate(member_body(f"city-{index}", "2020-01-01"))
        await store.register(engine, member, "test", dt.date(2026, 1, 1))

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await relay.publish_pending()
        assert await relay.backlog() == 3
    assert await relay.publish_pending() == 2
    assert await relay.publish_pending() == 1
    assert await relay.publish_pending() == 0
    assert await relay.backlog() == 0
    assert [r.key for r in sink.sent] == ["city-0", "city-1", "city-2"]
    assert all(r.topic == "city.joined" for r in sink.sent)
    assert len({r.event_id for r in sink.sent}) == 3
    await engine.dispose()


async def test_duplicate_registration_leaves_no_second_event(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await migrate(engine, MIGRATIONS, "alembic_version_registry")
    member = MemberRegistration.model_validate(member_body("goeppingen", "2024-01-01"))
    await store.register(engine, member, "test", dt.date(2024, 6, 1))
    with pytest.raises(store.DuplicateMember):
        await store.register(engine, member, "test", dt.date(2024, 6, 1))
    relay = OutboxRelay(engine, tables.outbox, FlakySink(0))
    assert await relay.backlog() == 1
    await engine.dispose()


class PickySink:
    """Refuses one record for good (as a broker refuses one too large), keeps the others."""

    def __init__(self, refused_key: str) -> None:
        self.refused_key = refused_key
        self.sent: list[OutboxRecord] = []
        self.batches: list[int] = []

    async def send_batch(self, records: Sequence[OutboxRecord]) -> None:
        self.batches.append(len(records))
        if any(r.key == self.refused_key for r in records):
            raise RecordRejected("MessageSizeTooLargeError: the message is 1051336 bytes")
        self.sent.extend(records)

    async def healthy(self) -> bool:
        return True


async def test_a_record_the_broker_refuses_is_parked_and_the_rest_go_on(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await migrate(engine, MIGRATIONS, "alembic_version_registry")
    sink = PickySink(refused_key="city-1")
    relay = OutboxRelay(engine, tables.outbox, sink, batch=10)
    for index in range(4):
        member = MemberRegistration.model_validate(member_body(f"city-{index}", "2020-01-01"))
        await store.register(engine, member, "test", dt.date(2026, 1, 1))
    parked_before = _parked_count("city.joined")

    assert await relay.publish_pending() == 3
    assert sink.batches == [4, 1, 1, 1, 1]  # the batch, then one by one
    assert [r.key for r in sink.sent] == ["city-0", "city-2", "city-3"]
    assert await relay.backlog() == 0
    assert await relay.parked() == [
        ("city.joined", "MessageSizeTooLargeError: the message is 1051336 bytes")
    ]
    assert await relay.problems() == ["outbox: 1 record parked: MessageSizeTooLargeError"]
    assert _parked_count("city.joined") == parked_before + 1

    # Later rows are not held up by the parked one, and it is not sent again.
    member = MemberRegistration.model_validate(member_body("city-9", "2020-01-01"))
    await store.register(engine, member, "test", dt.date(2026, 1, 1))
    assert await relay.publish_pending() == 1
    assert sink.sent[-1].key == "city-9" and sink.batches[-1] == 1
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(tables.outbox.c.parked_at, tables.outbox.c.sent_at, tables.outbox.c.error)
                .where(tables.outbox.c.key == "city-1")
            )
        ).one()  # fmt: skip
    assert row.parked_at is not None and row.sent_at is None and "TooLarge" in row.error
    await engine.dispose()


def _parked_count(topic: str) -> float:
    value = REGISTRY.get_sample_value("tandem_outbox_parked_total", {"topic": topic})
    return value or 0.0


async def test_a_dead_letter_too_large_to_travel_keeps_its_original_in_the_database(
    tmp_path: Path,
) -> None:
    """200 KB of double quotes: within the decoder's bounds, but escaped twice over in a dead
    letter. The letter travels small and points to the original kept in the database."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await migrate(engine, MIGRATIONS, "alembic_version_registry")
    value = json.dumps({"id": str(uuid.uuid4()), "name": '"' * 100_000}).encode()
    assert len(value) > 200_000
    record = Consumed(topic="city.left", partition=2, offset=41, key=b"goch", value=value)
    letter = dead_letter(record, "city.left: not an envelope", consumer="matcher")
    assert len(letter.model_dump_json()) > 400_000
    async with engine.begin() as connection:
        assert await enqueue_dead_letter(connection, tables.outbox, letter)
        assert not await enqueue_dead_letter(connection, tables.outbox, letter)  # once
    async with engine.connect() as connection:
        payload = await connection.scalar(select(tables.outbox.c.payload))
        stored = (await connection.execute(select(tables.dead_letter_originals))).one()
    sent = json.loads(payload)
    assert len(payload) < 10_000 and sent["original"] == ""
    assert sent["original_ref"] == f"registry_dead_letter_originals/{stored.id}"
    assert sent["original_sha256"] == stored.sha256 == hashlib.sha256(value).hexdigest()
    assert sent["original_size"] == stored.size == len(value)
    assert stored.original == value and (stored.partition, stored.offset) == (2, 41)
    await engine.dispose()
