"""The service tier: each service's service layer against SQLite in ``tmp_path`` and in-memory
fakes, no broker (as cosmicpython's ``bootstrap_test_app()``). What goes out is what the outbox
relay hands to its sink; what comes in is built as the consumer would hand it over. Each test
takes a fraction of a second; the broker tests in ``tests/integration`` keep proving the
guarantees end to end.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from schemas.events import Topics
from services.infra.auth import Principal, TokenBook
from services.infra.db import migrate
from services.infra.outbox import OutboxRecord, OutboxRelay
from services.infra.records import Delivery, Poison, decode_delivery
from services.matcher import api as matcher_api
from services.matcher import service as matcher_service
from services.matcher.replan import ensure_lock_row
from services.matcher.service import MatcherService
from services.matcher.settings import MatcherSettings
from services.registry.service import MIGRATIONS, RegistryService
from services.registry.settings import RegistrySettings
from tests.helpers import member_body

S = TypeVar("S", bound="_Relayed")


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
class ConsumerRecord:
    """A record as aiokafka consumes it (the fields of its ``ConsumerRecord`` the consumer
    decodes); :func:`handed_over` turns it into what the service layer takes."""

    topic: str
    value: bytes | None
    key: bytes | None
    partition: int = 0
    offset: int = 0


def handed_over(record: ConsumerRecord) -> Delivery | Poison:
    """``record`` as the consumer hands it to the service: decoded, or poison with its reason."""
    return decode_delivery(record)


class _Relayed(Protocol):
    """A service with an outbox relay (the registry's and the matcher's)."""

    @property
    def relay(self) -> OutboxRelay: ...


@dataclass
class _ServiceApp(Generic[S]):
    """A service wired to SQLite and a :class:`MemorySink`; its relay does not run by itself:
    :meth:`published` hands the outbox to the sink, deterministically. :meth:`consumed` builds
    what the consumer hands over, at the partition's next offset."""

    service: S
    sink: MemorySink
    offsets: itertools.count[int] = field(default_factory=itertools.count)

    async def published(self) -> MemorySink:
        """Publish everything pending (as the relay would) and return the sink."""
        while await self.service.relay.publish_pending():
            pass
        return self.sink

    def consumed(
        self, topic: str, data: Any, source: str, key: str | None, event_id: str | None = None
    ) -> Delivery | Poison:
        """A record of ``topic``: raw bytes as they are, else ``data`` in an envelope from
        ``source``."""
        value = data if isinstance(data, bytes) else json.dumps(
            {"id": event_id or str(uuid.uuid4()), "type": topic, "version": 1,
             "time": "2026-11-21T12:00:00Z", "source": source, "data": data}
        ).encode()  # fmt: skip
        record = ConsumerRecord(topic, value, key.encode() if key else None, 0, next(self.offsets))
        return handed_over(record)


@dataclass
class RegistryApp(_ServiceApp[RegistryService]):
    """The registry's service layer (see :class:`_ServiceApp`)."""

    def admitted(
        self, body: dict[str, Any] | bytes, *, event_id: str | None = None, key: str | None = None
    ) -> Delivery | Poison:
        """A ``member.admitted`` record for ``body`` (raw bytes are sent as they are), keyed
        by the member id, at the partition's next offset."""
        if key is None and isinstance(body, dict):
            key = str(body["id"])
        return self.consumed(Topics.MEMBER_ADMITTED, body, "platform", key, event_id)


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


# --- the matcher --------------------------------------------------------------------------------

#: The matcher's calendar in the service tier (tandems end relative to it).
TODAY = dt.date(2026, 11, 21)
STAFF_TOKEN = "staff-token-for-the-service-tier"


def public_member(member_id: str, joined: str, **changes: Any) -> dict[str, Any]:
    """A member as ``city.joined``/``city.updated`` carry it (no contact, partner sectors)."""
    body = member_body(member_id, joined, **changes)
    body.pop("contact", None)
    body["partners"] = [{"sector": p["sector"]} for p in body["partners"]]
    return body


@dataclass
class MatcherApp(_ServiceApp[MatcherService]):
    """The matcher's service layer with the calendar ``TODAY`` (see :class:`_ServiceApp`).
    Nothing runs by itself unless a test calls ``service.start()``: solves are
    ``service.solve_now()``, publishing is :meth:`published`."""

    def record(
        self, topic: str, data: dict[str, Any], *, event_id: str | None = None,
        key: str | None = None,
    ) -> Delivery | Poison:  # fmt: skip
        """A record of ``topic`` with ``data`` in an envelope from the registry, keyed by the
        member id, at the partition's next offset."""
        member = key if key is not None else str(data["id"])
        return self.consumed(topic, data, "registry", member, event_id)

    def joined(self, member_id: str, joined: str, **changes: Any) -> Delivery | Poison:
        """A ``city.joined`` record of a valid member."""
        return self.record(Topics.CITY_JOINED, public_member(member_id, joined, **changes))

    def api(self) -> httpx.AsyncClient:
        """A client of the matcher's HTTP API (its router alone) as staff, in process."""
        app = FastAPI()
        app.include_router(matcher_api.router)
        app.state.matcher = self.service
        app.state.tokens = TokenBook([(Principal("staff", "staff: Erika"), STAFF_TOKEN)])
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://matcher",
            headers={"Authorization": f"Bearer {STAFF_TOKEN}"},
        )  # fmt: skip


async def bootstrap_matcher(data: Path, **settings: Any) -> MatcherApp:
    """The matcher's composition for the service tier: its own SQLite file in ``data``,
    migrated, an in-memory sink instead of Kafka and the calendar ``TODAY``; ``settings``
    override :class:`MatcherSettings` fields (e.g. the debounce)."""
    sink = MemorySink()
    config = MatcherSettings(data=data, broker=None, database_url=None, **settings)
    service = MatcherService(config, sink, today=lambda: TODAY)
    await migrate(service.engine, matcher_service.MIGRATIONS, "alembic_version_matcher")
    await ensure_lock_row(service.engine)
    return MatcherApp(service, sink)


@pytest.fixture
async def matcher(tmp_path: Path) -> AsyncIterator[MatcherApp]:
    app = await bootstrap_matcher(tmp_path)
    try:
        yield app
    finally:
        await app.service.stop()
