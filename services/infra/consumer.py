"""Consumer plumbing shared by the services: start when the broker is there, raw records."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faststream.kafka import KafkaBroker, KafkaMessage

from services.infra.metrics import EVENTS_CONSUMED
from services.infra.settings import CommonSettings

log = logging.getLogger(__name__)


def records_of(message: KafkaMessage) -> tuple[Any, ...]:
    """The aiokafka records behind a (batch) message (counted as consumed)."""
    raw = message.raw_message
    records = raw if isinstance(raw, tuple) else (raw,)
    for record in records:
        EVENTS_CONSUMED.labels(record.topic).inc()
    return records


def _readable_headers(record: Any) -> Any:
    """``record`` with header values FastStream can decode (it decodes them as UTF-8 before
    any handler runs, so one bad header would stop the partition); the value is untouched."""
    headers = record.headers or ()
    try:
        for _, value in headers:
            (value or b"").decode("utf-8")
    except UnicodeDecodeError:
        fixed = tuple(
            (name, (value or b"").decode("utf-8", "replace").encode()) for name, value in headers
        )
        return dataclasses.replace(record, headers=fixed)
    return record


async def raw_parser(message: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """FastStream's parser, given records whose headers it can read (values stay bytes)."""
    if isinstance(message, tuple):
        return await original(tuple(_readable_headers(record) for record in message))
    return await original(_readable_headers(message))


async def raw_decoder(message: Any) -> Any:
    """The body as bytes (a list of them for a batch): our code decodes every record
    (``services.infra.records``), so a record FastStream cannot decode (nested 5,000 deep,
    a huge number) never fails before our handler sees it."""
    return message.body


def consumer_lag(broker: KafkaBroker) -> dict[str, int]:
    """Records behind the partition ends per consumer group, as far as aiokafka knows them
    (its fetch responses carry each partition's high watermark)."""
    lag: dict[str, int] = {}
    for subscriber in broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        group = getattr(consumer, "_group_id", None)
        if consumer is None or group is None:
            continue
        behind = 0
        try:
            assignment = consumer._subscription.subscription.assignment
            for partition in consumer.assignment():
                high = consumer.highwater(partition)
                state = assignment.state_value(partition)
                if high is not None and state is not None and state.has_valid_position:
                    behind += max(0, high - state.position)
        except (AttributeError, KeyError, AssertionError):
            # The position lives in aiokafka's internals; without them there is no lag figure.
            continue
        lag[group] = lag.get(group, 0) + behind
    return lag


def make_broker(settings: CommonSettings, client_id: str) -> KafkaBroker:
    """A FastStream Kafka broker whose per-message logs go to ``tandem.kafka`` at DEBUG."""
    assert settings.broker is not None
    return KafkaBroker(
        settings.broker,
        client_id=client_id,
        logger=logging.getLogger("tandem.kafka"),
        log_level=logging.DEBUG,
        request_timeout_ms=10_000,
        parser=raw_parser,
        decoder=raw_decoder,
    )


@dataclass(frozen=True)
class Session:
    """Group session timing: short on the embedded broker, Kafka's defaults elsewhere."""

    timeout_ms: int
    heartbeat_ms: int
    fetch_wait_ms: int = 500  # aiokafka's default


def session_of(settings: CommonSettings) -> Session:
    """The consumer group session of ``settings``."""
    timeout = settings.kafka_session_timeout_ms or 10_000
    fetch_wait = settings.kafka_fetch_max_wait_ms or Session.fetch_wait_ms
    return Session(timeout, max(100, timeout // 10), fetch_wait)


async def run_consumer(broker: KafkaBroker, on_started: Callable[[], None]) -> None:
    """Start consuming as soon as the broker is reachable (retrying with backoff), so a
    service can start before Kafka does."""
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
        on_started()
        return
