"""Broker loss heals without restarts: an emptied broker under running services, and the
embedded broker of ``tandem up`` dying."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from services.infra.embedded_broker import EmbeddedBroker
from services.infra.kafka import KAFKA_TOPICS
from services.infra.settings import CommonSettings
from services.registry import store
from services.runtime import Node
from tests.conftest import (
    PLATFORM,
    STAFF,
    TOKENS,
    eventually,
    node_settings,
    read_topic,
)
from tests.helpers import NETWORK_MENTORS, NETWORK_NEWCOMERS, client

MENTORS = NETWORK_MENTORS[:3]
NEWCOMERS = NETWORK_NEWCOMERS


async def register(platform: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        response = await platform.post("/api/members", json=body)
        assert response.status_code == 201, response.text


async def proposed_for(staff: httpx.AsyncClient, newcomers: list[str]) -> set[str]:
    """The newcomers of ``newcomers`` that have a pending proposal, once all of them have."""
    items = (await staff.get("/api/proposals", params={"status": "pending"})).json()["items"]
    have = {item["newcomer_id"] for item in items}
    return have if set(newcomers) <= have else set()


async def members_known(staff: httpx.AsyncClient, count: int) -> bool:
    return bool((await staff.get("/api/matcher/status")).json()["members"] >= count)


async def ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/ready")).status_code == 200


async def partitions(bootstrap: str, topics: Sequence[str]) -> dict[str, int]:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        await probe.topics()
        return {t: len(probe.partitions_for_topic(t) or ()) for t in topics}
    finally:
        await probe.stop()


@pytest.fixture
async def node(
    broker: EmbeddedBroker, tmp_path: Path, database_url: str | None
) -> AsyncIterator[Node]:
    """A node whose consumers count as stuck after 3 s without progress (30 s by default)."""
    settings = node_settings(broker.bootstrap, tmp_path, database_url)
    running = Node(settings.model_copy(update={"consumer_stall_seconds": 3.0}))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.mark.slow  # 3-14 s: a stuck consumer is restarted and rejoins
async def test_broker_replaced_under_running_services_heals_after_republish(
    node: Node, broker: EmbeddedBroker, database_url: str | None
) -> None:
    async with client(node.url, PLATFORM) as platform, client(node.url, STAFF) as staff:
        await register(platform, [*MENTORS, NEWCOMERS[0]])
        await eventually(lambda: proposed_for(staff, ["goeppingen"]), "a first proposal")

        # The broker dies and an empty one takes its address: no topic, offset or group.
        await asyncio.to_thread(broker.stop, 0)
        await asyncio.to_thread(broker.start)

        # What the operator runs: `tandem registry republish` (the same store call).
        assert node.registry is not None
        assert await store.republish(node.registry.engine) == 4
        node.registry.relay.wake()
        await register(platform, NEWCOMERS[1:])

        newcomers = [n["id"] for n in NEWCOMERS]
        await eventually(lambda: proposed_for(staff, newcomers), "every newcomer proposed", 60)
        await eventually(lambda: members_known(staff, 6), "every member at the matcher")
        joined = await read_topic(broker.bootstrap, "city.joined", lambda r: len(r) >= 6)
        assert {r["key"] for r in joined} >= {m["id"] for m in [*MENTORS, *NEWCOMERS]}
        # Every topic the services use is back, DLQs included: three partitions where our code
        # created it, Tansu's default (4) where a producer's metadata request came first.
        counts = await partitions(broker.bootstrap, KAFKA_TOPICS)
        assert min(counts.values()) >= 3, counts
        await eventually(lambda: ready(platform), "/ready after the broker came back")


@pytest.fixture
async def touchy_node(
    broker: EmbeddedBroker, tmp_path: Path, database_url: str | None
) -> AsyncIterator[Node]:
    """A node whose consumers count as stuck after 1 s without progress."""
    settings = node_settings(broker.bootstrap, tmp_path, database_url)
    running = Node(settings.model_copy(update={"consumer_stall_seconds": 1.0}))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.mark.slow  # ~9 s: stuck, restarted with backoff, recovered
async def test_ready_says_why_while_a_consumer_makes_no_progress_and_recovers(
    touchy_node: Node, database_url: str | None
) -> None:
    node = touchy_node
    assert node.matcher is not None
    failing = True
    real_ingest = node.matcher.ingest

    async def ingest(records: Sequence[Any]) -> None:
        if failing:  # e.g. a database that refuses every write: the batch is redelivered
            raise RuntimeError("the matcher cannot apply its records")
        await real_ingest(records)

    node.matcher.ingest = ingest  # type: ignore[method-assign]
    async with client(node.url, PLATFORM) as platform, client(node.url, STAFF) as staff:
        await eventually(lambda: ready(platform), "/ready at start")
        await register(platform, [MENTORS[0], NEWCOMERS[0]])

        async def not_ready() -> dict[str, Any] | None:
            response = await platform.get("/ready")
            return response.json() if response.status_code == 503 else None

        body = await eventually(not_ready, "/ready to report the stuck consumer")
        assert body["ready"] is False and body["checks"]["matcher"]["consumer"] is False
        assert any(
            "tandem-matcher" in reason and "no progress" in reason and "records waiting" in reason
            for reason in body["reasons"]
        ), body
        assert body["checks"]["registry"]["consumer"] is True

        failing = False
        await eventually(lambda: proposed_for(staff, ["goeppingen"]), "the proposal after all")
        await eventually(lambda: ready(platform), "/ready once the consumer gets on")
        assert "reasons" not in (await platform.get("/ready")).json()


async def test_up_restarts_its_dead_embedded_broker_and_republishes(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = CommonSettings(
        data=tmp_path, port=0, api_tokens=SecretStr(TOKENS), database_url=database_url
    )
    node = Node(settings)  # no broker given: an embedded one, as `tandem up` runs it
    await node.start()
    try:
        assert node.broker is not None
        address, first_pid = node.broker.bootstrap, node.broker.pid
        async with client(node.url, PLATFORM) as platform, client(node.url, STAFF) as staff:
            await register(platform, [*MENTORS, NEWCOMERS[0]])
            await eventually(lambda: proposed_for(staff, ["goeppingen"]), "a first proposal")

            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)  # the broker process dies

            async def restarted() -> bool:
                broker = node.broker
                return bool(broker and broker.running and broker.pid != first_pid)

            await eventually(restarted, "the embedded broker to be restarted")
            assert node.broker.bootstrap == address and node.broker_restarts == 1
            everyone = {m["id"] for m in [*MENTORS, NEWCOMERS[0]]}
            joined = await read_topic(address, "city.joined", lambda r: len(r) >= 4)
            assert {r["key"] for r in joined} == everyone  # republished by itself

            await register(platform, NEWCOMERS[1:2])
            await eventually(
                lambda: proposed_for(staff, ["goeppingen", "goch"]), "a proposal for a new join"
            )
            await eventually(lambda: ready(platform), "/ready after the restart")
    finally:
        await node.stop()
