"""The consumer's intake on the embedded broker: records not yet at the handler are counted, and
a burst's end is confirmed only by a fetch answered after the last batch (aiokafka's internals
behind ``services.infra.consumer.Intake``, which an aiokafka upgrade could move)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from services.infra.consumer import Intake, deliveries_of
from services.infra.embedded_broker import EmbeddedBroker
from services.infra.kafka import ensure_topics
from tests.helpers import eventually

TOPIC = "city.joined"
GROUP = "intake-probe"


async def test_intake_counts_what_the_handler_lacks_and_waits_for_the_broker(
    broker: EmbeddedBroker,
) -> None:
    await ensure_topics(broker.bootstrap, [TOPIC])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    await producer.start()
    consumer = KafkaBroker(broker.bootstrap)
    intake = Intake(GROUP)
    intake.broker = lambda: consumer
    gate = asyncio.Event()
    received: list[int] = []

    @consumer.subscriber(
        TOPIC, batch=True, max_records=10, group_id=GROUP, auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR, fetch_max_wait_ms=20, session_timeout_ms=1500,
        heartbeat_interval_ms=500,
    )  # fmt: skip
    async def handle(message: KafkaMessage) -> None:
        records = deliveries_of(message)
        intake.note(records)
        received.append(len(records))
        await gate.wait()

    try:
        for number in range(60):
            await producer.send(TOPIC, b"{}", key=f"member-{number}".encode())
        await producer.flush()
        assert intake.behind() == 0 and not intake.unconfirmed()  # no consumer yet: no figures
        await consumer.start()

        async def first_batch_held() -> bool:
            return len(received) == 1 and intake.behind() == 60 - received[0]

        # The handler holds its first batch: the rest is known to wait, and nothing confirms
        # the end of the burst.
        await eventually(first_batch_held, "the records behind the first batch to be counted")
        assert intake.unconfirmed()

        gate.set()

        async def caught_up() -> bool:
            return sum(received) == 60 and not intake.unconfirmed()

        # A fetch answered after the last batch reached the handler says nothing more waits.
        await eventually(caught_up, "the broker to confirm that nothing more waits")
        assert intake.behind() == 0
    finally:
        gate.set()
        await consumer.stop()
        await producer.stop()
