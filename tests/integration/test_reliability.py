"""Nothing lost, nothing twice: the delivery guarantees, broken for real on the embedded broker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.exc import OperationalError

from services.infra.deadletter import retry_transient
from services.infra.embedded_broker import EmbeddedBroker
from services.infra.outbox import CRASH_AFTER_PUBLISH, CRASH_EXIT_CODE
from services.runtime import Node
from tests.conftest import (
    PLATFORM,
    STAFF,
    TOKENS,
    eventually,
    group_caught_up,
    node_settings,
    read_topic,
)
from tests.e2e.conftest import tandem_command
from tests.helpers import NETWORK_MENTORS, NETWORK_NEWCOMERS, client

MENTORS = NETWORK_MENTORS
NEWCOMERS = NETWORK_NEWCOMERS
MATCHER_TOPICS = ("city.joined", "city.updated", "city.left")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def register(platform: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        response = await platform.post("/api/members", json=body)
        assert response.status_code == 201, response.text


async def pending_by_newcomer(staff: httpx.AsyncClient) -> dict[str, list[str]]:
    items = (await staff.get("/api/proposals", params={"status": "pending"})).json()["items"]
    result: dict[str, list[str]] = {}
    for item in items:
        result.setdefault(item["newcomer_id"], []).append(item["mentor_id"])
    return result


async def all_proposed(staff: httpx.AsyncClient, newcomers: list[str]) -> dict[str, list[str]]:
    pending = await pending_by_newcomer(staff)
    return pending if set(newcomers) <= set(pending) else {}


async def test_broker_absent_at_start_then_everything_is_delivered(tmp_path: Path) -> None:
    port = free_port()
    node = Node(node_settings(f"127.0.0.1:{port}", tmp_path, None))
    await node.start()
    broker = EmbeddedBroker(port=port)
    try:
        async with client(node.url, PLATFORM) as platform, client(node.url, STAFF) as staff:
            assert (await platform.get("/ready")).status_code == 503
            await register(platform, [MENTORS[0], NEWCOMERS[0]])
            await asyncio.to_thread(broker.start)

            async def ready() -> bool:
                return (await platform.get("/ready")).status_code == 200

            await eventually(ready, "/ready once the broker is up", timeout=40)
            proposals = await eventually(
                lambda: all_proposed(staff, ["goeppingen"]), "a proposal", timeout=40
            )
            assert proposals == {"goeppingen": ["ammerbuch"]}
            joined = await read_topic(broker.bootstrap, "city.joined", lambda r: len(r) >= 2)
            assert sorted(r["key"] for r in joined) == ["ammerbuch", "goeppingen"]
    finally:
        await node.stop()
        await asyncio.to_thread(broker.stop)


@pytest.mark.slow
async def test_frozen_broker_loses_nothing_and_duplicates_nothing(
    node: Node, broker: EmbeddedBroker, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    await register(platform, [*MENTORS, NEWCOMERS[0]])
    first = await eventually(lambda: all_proposed(staff, ["goeppingen"]), "a first proposal")
    proposal_id = (await staff.get("/api/proposals", params={"status": "pending"})).json()["items"][
        0
    ]["proposal_id"]
    assert first

    broker.freeze()
    try:
        await register(platform, NEWCOMERS[1:])  # answered from the database: 201
        accepted = await staff.post(f"/api/proposals/{proposal_id}/accept")
        assert accepted.status_code == 200
        await asyncio.sleep(30)  # the scenario: the broker hangs for 30 s
    finally:
        broker.thaw()

    pending = await eventually(
        lambda: all_proposed(staff, ["goch", "ratzeburg"]), "proposals after the freeze", 60
    )
    assert all(len(mentors) == 1 for mentors in pending.values()), pending
    decided = await read_topic(broker.bootstrap, "tandem.decided", lambda r: len(r) >= 1)
    # A send that timed out during the freeze is sent again (at-least-once): a copy on the
    # broker carries the same envelope id, which consumers deduplicate on.
    assert {r["value"]["data"]["proposal_id"] for r in decided} == {proposal_id}
    assert len({r["value"]["id"] for r in decided}) == 1
    proposed = await read_topic(broker.bootstrap, "tandem.proposed", lambda r: len(r) >= 3)
    stored = (await staff.get("/api/proposals", params={"limit": 1000})).json()["items"]
    assert {r["value"]["data"]["proposal_id"] for r in proposed} == {
        p["proposal_id"] for p in stored
    }
    assert len({r["value"]["id"] for r in proposed}) == len(stored)
    joined = await read_topic(broker.bootstrap, "city.joined", lambda r: len(r) >= 7)
    assert {r["key"] for r in joined} == {m["id"] for m in [*MENTORS, *NEWCOMERS]}


async def test_replayed_and_duplicated_events_change_nothing(
    node: Node, broker: EmbeddedBroker, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    await register(platform, [*MENTORS, *NEWCOMERS])
    await eventually(lambda: all_proposed(staff, [n["id"] for n in NEWCOMERS]), "proposals")
    await eventually(
        lambda: group_caught_up(broker.bootstrap, "tandem-matcher", MATCHER_TOPICS), "caught up"
    )
    before = (await staff.get("/api/proposals", params={"limit": 1000})).json()
    status_before = (await staff.get("/api/matcher/status")).json()

    joined = await read_topic(broker.bootstrap, "city.joined", lambda r: len(r) >= 7)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for record in [*joined, *joined]:  # the whole topic, twice
            value = __import__("json").dumps(record["value"]).encode()
            await producer.send_and_wait("city.joined", value, key=record["key"].encode())
    finally:
        await producer.stop()
    await eventually(
        lambda: group_caught_up(broker.bootstrap, "tandem-matcher", MATCHER_TOPICS),
        "the replay to be consumed",
    )
    await eventually(_solver_idle(node), "the solver to settle")
    after = (await staff.get("/api/proposals", params={"limit": 1000})).json()
    assert after == before
    status_after = (await staff.get("/api/matcher/status")).json()
    assert status_after["members"] == status_before["members"] == 7
    proposed = await read_topic(broker.bootstrap, "tandem.proposed", lambda r: len(r) >= 3)
    assert len(proposed) == before["total"]


def _solver_idle(node: Node) -> Any:
    async def idle() -> bool:
        assert node.matcher is not None
        return not node.matcher.solve_pending() and await node.matcher.relay.backlog() == 0

    return idle


async def test_matcher_restart_resumes_and_ends_like_an_uninterrupted_run(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    registry = Node(node_settings(broker.bootstrap, tmp_path / "registry", None),
                    services=("registry",))  # fmt: skip
    await registry.start()
    interrupted = Node(node_settings(broker.bootstrap, tmp_path / "matcher", None),
                       services=("matcher",))  # fmt: skip
    await interrupted.start()
    try:
        async with client(registry.url, PLATFORM) as platform:
            await register(platform, [*MENTORS, NEWCOMERS[0]])
            async with client(interrupted.url, STAFF) as staff:
                await eventually(lambda: all_proposed(staff, ["goeppingen"]), "a first proposal")
            await interrupted.stop()  # mid-stream: more members join while it is down
            await register(platform, NEWCOMERS[1:])
        resumed = Node(node_settings(broker.bootstrap, tmp_path / "matcher", None),
                       services=("matcher",))  # fmt: skip
        reference = Node(
            node_settings(broker.bootstrap, tmp_path / "reference", None),
            services=("matcher",),
            overrides={"matcher_group_id": "reference"},
        )
        await resumed.start()
        await reference.start()
        try:
            newcomers = [n["id"] for n in NEWCOMERS]
            async with client(resumed.url, STAFF) as one, client(reference.url, STAFF) as two:
                after_restart = await eventually(lambda: all_proposed(one, newcomers), "resumed")
                uninterrupted = await eventually(lambda: all_proposed(two, newcomers), "reference")
                assert after_restart == uninterrupted
                assert all(len(m) == 1 for m in after_restart.values())
        finally:
            await resumed.stop()
            await reference.stop()
    finally:
        await registry.stop()


async def test_two_matchers_in_one_group_propose_once_and_survive_a_loss(
    broker: EmbeddedBroker, tmp_path: Path, database_url: str | None
) -> None:
    shared = database_url or f"sqlite+aiosqlite:///{tmp_path / 'matcher.db'}"
    registry = Node(node_settings(broker.bootstrap, tmp_path / "registry", None),
                    services=("registry",))  # fmt: skip
    first = Node(node_settings(broker.bootstrap, tmp_path / "a", shared), services=("matcher",))
    second = Node(node_settings(broker.bootstrap, tmp_path / "b", shared), services=("matcher",))
    await registry.start()
    await first.start()
    await second.start()
    try:
        async with client(registry.url, PLATFORM) as platform, client(first.url, STAFF) as staff:
            await register(platform, [*MENTORS, *NEWCOMERS[:2]])
            pending = await eventually(
                lambda: all_proposed(staff, ["goeppingen", "goch"]), "proposals from the pair"
            )
            await eventually(_solver_idle(first), "first solver idle")
            await eventually(_solver_idle(second), "second solver idle")
            pending = await pending_by_newcomer(staff)
            assert all(len(m) == 1 for m in pending.values()), pending
            proposed = await read_topic(broker.bootstrap, "tandem.proposed", lambda r: len(r) >= 2)
            stored = (await staff.get("/api/proposals", params={"limit": 1000})).json()
            assert len({r["value"]["data"]["proposal_id"] for r in proposed}) == stored["total"]

            await first.stop()  # one replica dies; the other takes over its partitions
            async with client(second.url, STAFF) as survivor:
                await register(platform, NEWCOMERS[2:])
                carried_on = await eventually(
                    lambda: all_proposed(survivor, [n["id"] for n in NEWCOMERS]),
                    "the survivor to propose for the late newcomer",
                    timeout=40,
                )
                assert all(len(m) == 1 for m in carried_on.values()), carried_on
    finally:
        await second.stop()
        await first.stop()
        await registry.stop()


@pytest.mark.slow
def test_registry_killed_between_publish_and_mark_publishes_again_with_one_effect(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "TANDEM_API_TOKENS": TOKENS, "TANDEM_BROKER": broker.bootstrap,
           "TANDEM_KAFKA_SESSION_TIMEOUT_MS": "1500"}  # fmt: skip
    command = [*tandem_command(), "registry", "--port", str(port), "--data", str(tmp_path)]
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {PLATFORM}"}

    def wait_healthy(process: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("registry did not come up")

    crashing = subprocess.Popen(
        command, env={**env, CRASH_AFTER_PUBLISH: "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_healthy(crashing)
    response = httpx.post(f"{base}/api/members", json=MENTORS[0], headers=headers)
    assert response.status_code == 201
    assert crashing.wait(timeout=30) == CRASH_EXIT_CODE  # died after the broker's ack

    restarted = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_healthy(restarted)
        records = asyncio.run(
            read_topic(broker.bootstrap, "city.joined", lambda r: len(r) >= 2, timeout=30)
        )
        assert [r["key"] for r in records] == ["ammerbuch", "ammerbuch"]
        assert records[0]["value"]["id"] == records[1]["value"]["id"], "same envelope again"

        async def matcher_effect() -> int:
            matcher = Node(node_settings(broker.bootstrap, tmp_path / "matcher", None),
                           services=("matcher",))  # fmt: skip
            await matcher.start()
            try:
                async with client(matcher.url, STAFF) as staff:

                    async def caught_up() -> bool:
                        return await group_caught_up(
                            broker.bootstrap, "tandem-matcher", MATCHER_TOPICS
                        )

                    await eventually(caught_up, "the matcher to consume both copies")
                    status = (await staff.get("/api/matcher/status")).json()
                    return int(status["members"])
            finally:
                await matcher.stop()

        assert asyncio.run(matcher_effect()) == 1
    finally:
        restarted.send_signal(signal.SIGTERM)
        output, _ = restarted.communicate(timeout=30)
    assert restarted.returncode == 0, output


async def test_transient_database_errors_are_retried_then_surface() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        return "done"

    assert await retry_transient(flaky) == "done" and calls == 3

    async def always_busy() -> str:
        raise OperationalError("UPDATE", {}, Exception("database is locked"))

    with pytest.raises(OperationalError):
        await retry_transient(always_busy, attempts=2)
