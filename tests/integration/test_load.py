"""Load: 5,000 members registered by 50 concurrent clients, none lost, none doubled, bounded
memory. Runs on SQLite (the default deployment); the figures go to ``tandem bench``."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.member import STATES
from services.infra.embedded_broker import EmbeddedBroker
from services.runtime import Node
from tests.conftest import PLATFORM, STAFF, eventually, member_body, node_settings, read_topic

MEMBERS = 5_000
CLIENTS = 50
NEWCOMER_EVERY = 100  # 50 newcomers seek a tandem among 4,950 possible mentors
MAX_RSS_GROWTH_MB = 500


@pytest.fixture
async def sqlite_node(tmp_path: Path) -> AsyncIterator[Node]:
    """Registry + matcher + HTTP on their own broker, on SQLite only."""
    with EmbeddedBroker() as broker:
        running = Node(node_settings(broker.bootstrap, tmp_path, None))
        await running.start()
        try:
            yield running
        finally:
            await running.stop()


def _peak_rss_mb() -> float:
    """This process's peak resident set size so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def _bodies() -> Iterator[dict[str, Any]]:
    """5,000 valid, varied registrations: states, sizes, join years, topics; every 100th a
    newcomer of this year's cohort."""
    states = sorted(STATES)
    topics = ["digitalisation", "sustainability", "participation", "democracy",
              "young_engagement", "volunteer_recruitment", "recognition", "networking"]  # fmt: skip
    for i in range(MEMBERS):
        newcomer = i % NEWCOMER_EVERY == 0
        yield member_body(
            f"load-{i:05d}",
            "2026-01-15" if newcomer else f"{2010 + i % 14}-0{1 + i % 9}-01",
            state=states[i % len(states)],
            population=10_000 + (i * 7919) % 240_000,
            lat=47.5 + (i % 70) / 10,
            lon=6.0 + (i % 90) / 10,
            interests=[topics[i % 8], topics[(i + 3) % 8]],
            strengths=[topics[(i + 1) % 8]],
            seeks_tandem=newcomer,
            mentor_capacity=i % 3,
        )


@pytest.mark.slow
async def test_5000_members_from_50_concurrent_clients_arrive_once_each(
    sqlite_node: Node, record_property: Callable[[str, object], None]
) -> None:
    """50 clients register 5,000 members at once: every answer is 201, the registry lists
    5,000, ``city.joined`` carries 5,000 distinct ids, the matcher's read model holds exactly
    5,000, and the process's peak memory grows by less than 500 MB."""
    node = sqlite_node
    assert node.settings.broker is not None
    peak_before = _peak_rss_mb()
    bodies = _bodies()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    latencies: list[float] = []

    async def client_task(http: httpx.AsyncClient) -> None:
        for body in bodies:  # one shared iterator: each body is taken by exactly one task
            started = time.perf_counter()
            response = await http.post("/api/members", json=body)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1
            if response.status_code != 201:
                failures.append(f"{body['id']}: {response.status_code} {response.text[:200]}")

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=node.url, limits=limits, timeout=120,
        headers={"Authorization": f"Bearer {PLATFORM}"},
    ) as http:  # fmt: skip
        started = time.perf_counter()
        await asyncio.gather(*(client_task(http) for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - started
    assert not failures, failures[:5]
    assert statuses == Counter({201: MEMBERS})

    async with httpx.AsyncClient(
        base_url=node.url, timeout=60, headers={"Authorization": f"Bearer {STAFF}"}
    ) as staff:
        listed = await staff.get("/api/members", params={"limit": 1})
        assert listed.status_code == 200
        assert listed.json()["total"] == MEMBERS

        seen: set[str] = set()
        read = 0

        def all_joined(records: list[dict[str, Any]]) -> bool:
            nonlocal read
            for record in records[read:]:
                seen.add(record["value"]["data"]["id"])
            read = len(records)
            return len(seen) >= MEMBERS

        joined = await read_topic(node.settings.broker, "city.joined", all_joined, timeout=180)
        assert seen == {f"load-{i:05d}" for i in range(MEMBERS)}
        assert all(r["key"] == r["value"]["data"]["id"] for r in joined)
        on_topic = time.perf_counter() - started

        async def matcher_members() -> int:
            status = await staff.get("/api/matcher/status")
            assert status.status_code == 200
            members: int = status.json()["members"]
            assert members <= MEMBERS, f"the matcher holds {members} members"
            return members if members >= MEMBERS else 0

        assert await eventually(matcher_members, "the matcher to hold 5,000", 180) == MEMBERS
        in_matcher = time.perf_counter() - started
        # Still exactly 5,000 once the matcher has caught up (a redelivered event adds none).
        assert (await staff.get("/api/matcher/status")).json()["members"] == MEMBERS

    growth = _peak_rss_mb() - peak_before
    assert growth < MAX_RSS_GROWTH_MB, f"peak RSS grew by {growth:.0f} MB"

    ordered = sorted(latencies)
    figures = {
        "requests_per_s": round(MEMBERS / elapsed, 1),
        "register_s": round(elapsed, 2),
        "latency_p50_ms": round(statistics.median(ordered) * 1000, 1),
        "latency_p95_ms": round(ordered[int(0.95 * len(ordered))] * 1000, 1),
        "latency_max_ms": round(ordered[-1] * 1000, 1),
        "all_on_topic_s": round(on_topic, 2),
        "all_in_matcher_s": round(in_matcher, 2),
        "peak_rss_growth_mb": round(growth, 1),
        "topic_records": len(joined),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"\nload: {figures}")
