"""The service tier: each service's service layer against SQLite in ``tmp_path`` and in-memory
fakes, no broker (as cosmicpython's ``bootstrap_test_app()``). What goes out is what the outbox
relay hands to its sink; what comes in is built as the consumer would hand it over. Each test
takes a fraction of a second; the broker tests in ``tests/integration`` keep proving the
guarantees end to end.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas.events import Topics
from services.infra.db import migrate
from services.infra.outbox import OutboxRecord
from services.registry.service import MIGRATIONS, RegistryService
from services.registry.settings import RegistrySettings


class MemorySink:
    """The relay's sink as a list: every record it was given, acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[OutboxRecord] = []

    async def send_batch(self, records: Sequence[OutboxRecord]) -> None:
        self.sent.extend(records)

    async def healthy(self) -> bool:
        return True

    def on(self, topic: str) -> list[dict[str, Any]]:
        """The records sent to ``topic``, in order: ``{"key", "value" (parsed JSON)}``."""
        return [
            {"key": r.key, "value": json.loads(r.payload)} for r in self.sent if r.topic == topic
        ]


@dataclass(frozen=True)
class Delivery:
    """A consumed record as the service layer reads it (the fields of aiokafka's
    ``ConsumerRecord`` that ``ingest_admitted`` and the dead letters use)."""

    topic: str
    value: bytes | None
    key: bytes | None
    partition: int = 0
    offset: int = 0


@dataclass
class RegistryApp:
    """A registry service wired to SQLite and a :class:`MemorySink`; its relay does not run
    by itself: :meth:`published` hands the outbox to the sink, deterministically."""

    service: RegistryService
    sink: MemorySink
    offsets: itertools.count[int] = field(default_factory=itertools.count)

    async def published(self) -> MemorySink:
        """Publish everything pending (as the relay would) and return the sink."""
        while await self.service.relay.publish_pending():
            pass
        return self.sink

    def admitted(
        self, body: dict[str, Any] | bytes, *, event_id: str | None = None, key: str | None = None
    ) -> Delivery:
        """A ``member.admitted`` record for ``body`` (raw bytes are sent as they are), keyed
        by the member id, at the partition's next offset."""
        if isinstance(body, bytes):
            value = body
        else:
            value = json.dumps(
                {"id": event_id or str(uuid.uuid4()), "type": Topics.MEMBER_ADMITTED,
                 "version": 1, "time": "2026-11-21T12:00:00Z", "source": "platform",
                 "data": body}
            ).encode()  # fmt: skip
        if key is None and isinstance(body, dict):
            key = str(body["id"])
        return Delivery(
            Topics.MEMBER_ADMITTED, value, key.encode() if key else None, 0, next(self.offsets)
        )


async def bootstrap_registry(data: Path) -> RegistryApp:
    """The registry's composition for the service tier: its own SQLite file in ``data``,
    migrated, and an in-memory sink instead of Kafka."""
    sink = MemorySink()
    service = RegistryService(RegistrySettings(data=data, broker=None, database_url=None), sink)
    await migrate(service.engine, MIGRATIONS, "alembic_version_registry")
    return RegistryApp(service, sink)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[RegistryApp]:
    app = await bootstrap_registry(tmp_path)
    try:
        yield app
    finally:
        await app.service.stop()
