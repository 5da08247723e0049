"""The transactional outbox on a real SQLite database, with a sink that fails on demand."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest

from schemas.member import MemberRegistration
from services.infra.db import make_engine, migrate
from services.infra.outbox import OutboxRecord, OutboxRelay
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
