"""The matcher's Kafka entrypoints: parse nothing here, hand records to the service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from schemas.events import Topics
from services.matcher.service import MatcherService

log = logging.getLogger(__name__)


def _records(message: KafkaMessage) -> tuple[Any, ...]:
    raw = message.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


def build_consumer(service: MatcherService) -> KafkaBroker:
    """A FastStream broker subscribed to what the matcher consumes.

    At-least-once: offsets are committed only after the batch's transaction (NACK_ON_ERROR
    rewinds to the first record of a failed batch); records are deduplicated on the envelope id.
    """
    settings = service.settings
    assert settings.broker is not None
    session = settings.kafka_session_timeout_ms or 10_000
    broker = KafkaBroker(
        settings.broker,
        client_id="tandem-matcher",
        log_level=logging.DEBUG,
        request_timeout_ms=10_000,
    )

    @broker.subscriber(
        Topics.CITY_JOINED,
        batch=True,
        max_records=500,
        batch_timeout_ms=50,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=session,
        heartbeat_interval_ms=max(100, session // 10),
    )
    async def on_city_joined(message: KafkaMessage) -> None:
        await service.ingest(Topics.CITY_JOINED, _records(message))

    return broker


async def run_consumer(broker: KafkaBroker, service: MatcherService) -> None:
    """Start consuming as soon as the broker is reachable (retrying with backoff), so the
    matcher can start before Kafka does."""
    backoff = 0.5
    while True:
        try:
            await broker.start()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("broker not reachable (%s); retrying in %.1f s", error, backoff)
            with contextlib.suppress(Exception):
                await broker.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)
            continue
        service.consuming = True
        return
