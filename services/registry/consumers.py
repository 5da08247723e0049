"""The registry's Kafka entrypoint: members admitted by the platform."""

from __future__ import annotations

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from schemas.events import Topics
from services.infra.consumer import deliveries_of, make_broker, session_of
from services.registry.service import RegistryService


def build_consumer(service: RegistryService) -> KafkaBroker:
    """A FastStream broker subscribed to ``member.admitted`` (at-least-once)."""
    session = session_of(service.settings)
    broker = make_broker(service.settings, "tandem-registry")

    @broker.subscriber(
        Topics.MEMBER_ADMITTED,
        batch=True,
        max_records=200,
        batch_timeout_ms=50,
        group_id=service.settings.registry_group_id,
        auto_offset_reset="earliest",
        # At-least-once: offsets are committed after the handler returned; an error rewinds.
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=session.timeout_ms,
        heartbeat_interval_ms=session.heartbeat_ms,
        fetch_max_wait_ms=session.fetch_wait_ms,
    )
    async def on_member_admitted(message: KafkaMessage) -> None:
        await service.ingest_admitted(deliveries_of(message))

    return broker
