"""Shared fixtures: a real embedded broker, a Tandem node, Kafka helpers."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from services.infra.embedded_broker import EmbeddedBroker
from services.infra.settings import CommonSettings
from services.runtime import Node

PLATFORM = "platform-token-for-tests"
STAFF = "staff-token-for-tests"
COORDINATOR = "coordinator-token-goeppingen"
TOKENS = f"platform:{PLATFORM},staff:{STAFF}:Erika Staff,coordinator:{COORDINATOR}:goeppingen"
T = TypeVar("T")


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A fresh Tansu broker for one test (memory only, so tests never share data)."""
    with EmbeddedBroker() as running:
        yield running


POSTGRES_ADMIN = os.environ.get(
    "TANDEM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def _postgres_problem() -> str | None:
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN, timeout=3)
    except (OSError, asyncpg.PostgresError) as error:
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN} ({error})"
    await connection.close()
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """None (each service's own SQLite file in the data dir) or a fresh PostgreSQL database
    shared by both services, dropped afterwards. Skips visibly where PostgreSQL is absent."""
    if request.param == "sqlite":
        yield None
        return
    problem = await _postgres_problem()
    if problem:
        pytest.skip(problem)
    name = f"tandem_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def node_settings(bootstrap: str, data: Path, database_url: str | None) -> CommonSettings:
    """Settings of a test node: the given broker, a free HTTP port, short group sessions."""
    return CommonSettings(
        broker=bootstrap,
        data=data,
        port=0,
        api_tokens=SecretStr(TOKENS),
        kafka_session_timeout_ms=1500,
        database_url=database_url,
    )


@pytest.fixture
async def node(
    broker: EmbeddedBroker, tmp_path: Path, database_url: str | None
) -> AsyncIterator[Node]:
    """Registry + matcher + HTTP API on a free port, on the test's broker and database (every
    test using it runs on SQLite and on PostgreSQL)."""
    settings = node_settings(broker.bootstrap, tmp_path, database_url)
    running = Node(settings)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def staff(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with the staff token."""
    async with httpx.AsyncClient(
        base_url=node.url, headers={"Authorization": f"Bearer {STAFF}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def platform(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with the platform token."""
    async with httpx.AsyncClient(
        base_url=node.url, headers={"Authorization": f"Bearer {PLATFORM}"}, timeout=30
    ) as client:
        yield client


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 20) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 20
) -> list[dict[str, Any]]:
    """Read ``topic`` from the start until ``until(records)`` holds; each record is
    ``{"key", "value" (parsed JSON or raw str)}``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while not until(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}; got {len(records)} records")
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for message in messages:
                    raw = message.value.decode() if message.value else ""
                    try:
                        value: Any = json.loads(raw)
                    except ValueError:
                        value = raw
                    key = message.key.decode() if message.key else None
                    records.append({"key": key, "value": value})
    finally:
        await consumer.stop()
    return records


def member_body(member_id: str, joined: str, **changes: Any) -> dict[str, Any]:
    """A valid registration body."""
    body: dict[str, Any] = {
        "id": member_id,
        "name": member_id.replace("-", " ").title(),
        "kind": "city",
        "state": "DE-BW",
        "population": 50_000,
        "lat": 48.7,
        "lon": 9.6,
        "joined": joined,
        "interests": ["digitalisation"],
        "strengths": ["digitalisation", "democracy"],
        "mentor_capacity": 1,
        "contact": {"name": "Maria Muster", "email": "maria.muster@example.org"},
        "partners": [
            {"name": "Bürgerstiftung", "sector": "civil_society"},
            {"name": "Rathaus", "sector": "administration"},
            {"name": "Stadtwerke", "sector": "business"},
        ],
    }
    body.update(changes)
    return body


async def group_caught_up(bootstrap: str, group: str, topics: tuple[str, ...]) -> bool:
    """Whether ``group`` has committed offsets at the end of every partition of ``topics``
    (an exact, observable 'the consumer has processed everything there is')."""
    from aiokafka import TopicPartition

    # A consumer with the group id that never subscribes does not join the group: it only
    # reads the group's committed offsets.
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        await probe.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(probe.partitions_for_topic(topic) or set())
        ]
        ends = await probe.end_offsets(partitions)
        for tp in partitions:
            if ends[tp] and (await probe.committed(tp) or 0) < ends[tp]:
                return False
        return True
    finally:
        await probe.stop()
