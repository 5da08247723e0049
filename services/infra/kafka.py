"""The Kafka edge shared by both services: a producer that survives an absent broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnsupportedForMessageFormatError,
)

from services.infra.outbox import OutboxRecord, RecordRejected
from services.infra.settings import CommonSettings

log = logging.getLogger(__name__)
#: Errors about a record itself: sending it again fails again, whatever the broker's state.
REFUSED_FOR_GOOD = (
    MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError,
    CorruptRecordException, UnsupportedForMessageFormatError, UnicodeError,
)  # fmt: skip


class KafkaSink:
    """Sends outbox records with aiokafka; (re)connects lazily, so a broker that is down at
    start or goes away later only delays delivery."""

    def __init__(self, bootstrap: str, *, idempotence: bool = False, client_id: str = "tandem"):
        self._bootstrap = bootstrap
        self._idempotence = idempotence
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    client_id=self._client_id,
                    acks="all",
                    enable_idempotence=self._idempotence,
                    request_timeout_ms=10_000,
                    linger_ms=2,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send_batch(self, records: Sequence[OutboxRecord]) -> None:
        """Send ``records`` in order and wait for every acknowledgement. A record refused for
        good (too large for the producer or the broker, an invalid topic) raises
        :class:`RecordRejected`; any other error means the broker is away."""
        producer = await self._connected()
        try:
            futures = [
                await producer.send(record.topic, record.payload.encode(), key=record.key.encode())
                for record in records
            ]
            await asyncio.gather(*futures)
        except REFUSED_FOR_GOOD as error:
            await self.close()
            raise RecordRejected(f"{type(error).__name__}: {error}") from error
        except Exception:
            # A producer that failed mid-batch may hold half-sent batches: start afresh.
            await self.close()
            raise

    async def healthy(self) -> bool:
        """Whether the broker answers a metadata request now."""
        try:
            producer = await self._connected()
            ok: bool = await asyncio.wait_for(producer.client.force_metadata_update(), 5)
            return ok
        except Exception:
            await self.close()
            return False

    async def close(self) -> None:
        """Stop the producer (a later send reconnects)."""
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception as error:  # closing a broken connection may fail: nothing to keep
                log.debug("closing producer: %s", error)


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int = 3) -> None:
    """Create ``topics`` if missing, so consumers join with the intended partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


def kafka_sink(settings: CommonSettings, service: str) -> KafkaSink:
    """The producer of ``service`` (``registry`` or ``matcher``) for its outbox relay."""
    if not settings.broker:
        raise ValueError(f"the {service} needs a broker address (TANDEM_BROKER)")
    return KafkaSink(
        settings.broker, idempotence=settings.kafka_idempotence, client_id=f"tandem-{service}"
    )
