"""The registry as a running service: its database, its outbox relay, its Kafka producer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from schemas.member import MemberRegistration
from services.infra.db import make_engine, migrate
from services.infra.kafka import KafkaSink
from services.infra.outbox import OutboxRelay, RecordSink
from services.infra.settings import RegistrySettings
from services.registry import store, tables

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")


class RegistryService:
    """Members in, ``city.joined`` out; the relay runs as a background task."""

    def __init__(self, settings: RegistrySettings, sink: RecordSink | None = None) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_for("registry"))
        if sink is None:
            if not settings.broker:
                raise ValueError("the registry needs a broker address (TANDEM_BROKER)")
            sink = KafkaSink(
                settings.broker, idempotence=settings.kafka_idempotence, client_id="tandem-registry"
            )
        self.sink = sink
        self.relay = OutboxRelay(
            self.engine,
            tables.outbox,
            sink,
            batch=settings.outbox_batch,
            poll_seconds=settings.outbox_poll_seconds,
        )
        self._task: asyncio.Task[None] | None = None

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

    async def register(self, member: MemberRegistration, actor: str) -> dict[str, Any]:
        """Store ``member`` with its ``city.joined`` and wake the relay."""
        row = await store.register(self.engine, member, actor, dt.datetime.now(dt.UTC).date())
        self.relay.wake()
        log.info("member registered", extra={"member_id": member.id, "actor": actor})
        return row

    async def ready(self) -> dict[str, bool]:
        """Whether the database and the broker answer."""
        try:
            await self.relay.backlog()
            database = True
        except Exception:
            database = False
        return {"database": database, "broker": self.relay.broker_ok}
