"""Helpers shared by the test tiers (unit, service, integration, e2e): polling, valid bodies,
reading topics. ``tests/conftest.py`` re-exports them, so ``from tests.conftest import ...``
keeps working; new code may import from here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer

__all__ = [
    "NETWORK_MENTORS", "NETWORK_NEWCOMERS", "client", "eventually", "group_caught_up",
    "member_body", "read_topic",
]  # fmt: skip

T = TypeVar("T")


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


#: A small real-looking network for the tests that run whole nodes: mentors of earlier years,
#: newcomers of 2024 that seek a tandem.
NETWORK_MENTORS = [
    member_body("ammerbuch", "2015-01-01", population=11_000),
    member_body("lemgo", "2016-01-01", population=42_000, state="DE-NW", lat=52.03, lon=8.9),
    member_body("speyer", "2017-01-01", population=50_000, state="DE-RP", lat=49.32, lon=8.43),
    member_body("herford", "2018-01-01", population=66_000, state="DE-NW", lat=52.11, lon=8.67),
]
NETWORK_NEWCOMERS = [
    member_body("goeppingen", "2024-03-01", population=58_000, seeks_tandem=True),
    member_body("goch", "2024-03-01", population=34_000, state="DE-NW", lat=51.68, lon=6.16,
                seeks_tandem=True),
    member_body("ratzeburg", "2024-03-01", population=14_000, state="DE-SH", lat=53.7,
                lon=10.76, seeks_tandem=True),
]  # fmt: skip


def client(url: str, token: str) -> httpx.AsyncClient:
    """An HTTP client of a node with ``token``."""
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
