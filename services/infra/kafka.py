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
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnsupportedForMessageFormatError,
)

from schemas.events import EVENTS, Topics
from services.infra.outbox import OutboxRecord, RecordRejected
from services.infra.settings import CommonSettings

log = logging.getLogger(__name__)
#: Errors about a record itself: sending it again fails again, whatever the broker's state.
REFUSED_FOR_GOOD = (
    MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError,
    CorruptRecordException, UnsupportedForMessageFormatError, UnicodeError,
)  # fmt: skip
#: Every topic the services consume or produce, with the dead-letter topics: created up front
#: (three partitions each) and again whenever a broker turns out to lack them (a new or emptied
#: broker), so consumers join with the intended partitions and producers never wait for them.
KAFKA_TOPICS: tuple[str, ...] = (*EVENTS, *(Topics.dlq(t) for t in EVENTS))


#: The producer's largest record batch (bytes); see ``KafkaSink._connected``.
PRODUCER_BATCH_BYTES = 256 * 1024


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
                    # Batches of up to 256 KiB (aiokafka's default is 16 KiB, eight proposals):
                    # 1,514 proposals reach the broker in 20 ms instead of 55 ms. Within
                    # the 1 MiB a Kafka broker takes per batch by default.
                    max_batch_size=PRODUCER_BATCH_BYTES,
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
            await self._topics_present(producer, {record.topic for record in records})
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

    async def _topics_present(self, producer: AIOKafkaProducer, topics: set[str]) -> None:
        """Make sure ``topics`` exist on the broker now, before anything is sent: a broker
        replaced behind the same address (an emptied embedded broker) knows none, the
        producer's cached metadata does not notice, and the embedded broker accepts records
        for a topic it does not know into a log no consumer ever reads."""
        cluster = await producer.client.fetch_all_metadata()
        missing = sorted(t for t in topics if not cluster.partitions_for_topic(t))
        if missing:
            await asyncio.wait_for(recreate_topics(self._bootstrap, missing), 30)
            await producer.client.force_metadata_update()

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


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int = 3) -> list[str]:
    """Create ``topics`` if missing, so consumers join with the intended partition count;
    returns the ones that were missing."""
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
                pass  # someone else (a replica, an auto-creating producer) was quicker
            log.info(
                "topics created: %s", ", ".join(missing),
                extra={"topics": missing},
            )  # fmt: skip
        return missing
    finally:
        await admin.close()


async def recreate_topics(bootstrap: str, topics: Sequence[str]) -> list[str]:
    """Bring back those of ``topics`` the broker lacks (a new or emptied broker) while clients
    are running; returns them.

    They are asked for the way a producer asks before its first send (a metadata request,
    which creates a missing topic with the broker's default partitions where the broker
    auto-creates topics); only where that does not create them does a CreateTopics request
    follow. Creating a topic the other way at the very moment a producer's metadata request
    creates it left the embedded broker with two logs under one name (records produced to one,
    fetched from the other), so running clients never race an explicit create against
    auto-creation."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    left: list[str] = []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    try:
        await producer.start()
        for topic in missing:
            try:
                await asyncio.wait_for(producer.partitions_for(topic), 6)
            except (TimeoutError, KafkaError):
                left.append(topic)  # the broker does not auto-create topics
    finally:
        await producer.stop()
    if left:
        await ensure_topics(bootstrap, left)
    log.warning(
        "the broker lacked topics (a new or emptied broker?); recreated %s", ", ".join(missing),
        extra={"topics": missing},
    )  # fmt: skip
    return missing


def kafka_sink(settings: CommonSettings, service: str) -> KafkaSink:
    """The producer of ``service`` (``registry`` or ``matcher``) for its outbox relay."""
    if not settings.broker:
        raise ValueError(f"the {service} needs a broker address (TANDEM_BROKER)")
    return KafkaSink(
        settings.broker, idempotence=settings.kafka_idempotence, client_id=f"tandem-{service}"
    )
