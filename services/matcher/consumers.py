"""The matcher's Kafka entrypoint: hand member events to the service."""

from __future__ import annotations

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from schemas.events import Topics
from services.infra.consumer import deliveries_of, make_broker, session_of
from services.matcher.advice_desk import answer_advice_deliveries
from services.matcher.service import MatcherService

MEMBER_TOPICS = (Topics.CITY_JOINED, Topics.CITY_UPDATED, Topics.CITY_LEFT)
BATCH_TIMEOUT_MS = 20


def build_consumer(service: MatcherService) -> KafkaBroker:
    """A FastStream broker subscribed to the member events (batches, at-least-once)."""
    session = session_of(service.settings)
    broker = make_broker(service.settings, "tandem-matcher")

    @broker.subscriber(
        *MEMBER_TOPICS,
        batch=True,
        # Up to 4,000 records per transaction, and fetches that can hold them (aiokafka's
        # default of 1 MiB per partition is about 1,700 joins): a burst of 10,000 joins
        # reached its last proposal in 1.15 s instead of 1.19 s with 1,000 (medians of five,
        # twice each); 1,000 had been 3.9 s instead of 5.0 s with 500 on a slower machine.
        max_records=4000,
        max_partition_fetch_bytes=8 << 20,
        # A poll that finds nothing within this wait is followed by FastStream sleeping as long
        # again, and a join arriving then waits it out: 20 ms instead of 50 took the 50 joins/s
        # run's p50 from 74-89 to 65-77 ms and its p99 from 152-166 to 134-154 ms (three
        # interleaved pairs). A burst is unaffected: a poll with records returns at once.
        batch_timeout_ms=BATCH_TIMEOUT_MS,
        group_id=service.settings.matcher_group_id,
        auto_offset_reset="earliest",
        # At-least-once: offsets are committed after the handler returned; an error rewinds.
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=session.timeout_ms,
        heartbeat_interval_ms=session.heartbeat_ms,
        fetch_max_wait_ms=session.fetch_wait_ms,
    )
    async def on_member_events(message: KafkaMessage) -> None:
        await service.ingest(deliveries_of(message))

    @broker.subscriber(
        Topics.ADVICE_REQUESTED,
        batch=True,
        max_records=100,
        batch_timeout_ms=BATCH_TIMEOUT_MS,
        group_id=f"{service.settings.matcher_group_id}-advice",
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=session.timeout_ms,
        heartbeat_interval_ms=session.heartbeat_ms,
        fetch_max_wait_ms=session.fetch_wait_ms,
    )
    async def on_advice_requested(message: KafkaMessage) -> None:
        await answer_advice_deliveries(service, deliveries_of(message))

    return broker
