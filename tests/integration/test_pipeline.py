"""A city joins, a tandem is proposed: registry -> broker -> matcher -> broker, for real."""

from __future__ import annotations

import re
from typing import Any

import httpx

from services.runtime import Node
from tests.conftest import eventually, member_body, read_topic


async def pending_for(staff: httpx.AsyncClient, newcomer: str) -> dict[str, Any] | None:
    response = await staff.get("/api/proposals", params={"status": "pending"})
    assert response.status_code == 200
    items = [p for p in response.json()["items"] if p["newcomer_id"] == newcomer]
    return items[0] if items else None


async def test_join_yields_proposal_event_and_api_entry(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    for body in (
        member_body("ammerbuch", "2015-01-01"),
        member_body("goeppingen", "2024-03-01", seeks_tandem=True),
    ):
        response = await platform.post("/api/members", json=body)
        assert response.status_code == 201, response.text

    proposal = await eventually(lambda: pending_for(staff, "goeppingen"), "a pending proposal")
    assert proposal["mentor_id"] == "ammerbuch"
    assert 0 < proposal["score"] <= 1
    assert set(proposal["breakdown"]) >= {"population", "geography", "topics", "experience"}
    assert any("Digitalisierung" in reason for reason in proposal["reasons"])
    assert proposal["supersedes"] is None

    assert node.settings.broker is not None
    events = await read_topic(node.settings.broker, "tandem.proposed", lambda r: len(r) >= 1)
    assert events[0]["key"] == "goeppingen"
    assert events[0]["value"]["type"] == "tandem.proposed"
    assert events[0]["value"]["data"]["proposal_id"] == proposal["proposal_id"]

    joined = await read_topic(node.settings.broker, "city.joined", lambda r: len(r) >= 2)
    assert {r["key"] for r in joined} == {"ammerbuch", "goeppingen"}
    for record in joined:
        text = str(record["value"])
        assert "Maria Muster" not in text and "example.org" not in text
        assert "Bürgerstiftung" not in text


async def test_reject_gives_next_mentor_and_accept_publishes_decision(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    for body in (
        member_body("ammerbuch", "2015-01-01"),
        member_body("rheinfelden-baden", "2016-01-01", population=34_000, lat=47.56, lon=7.78),
        member_body("goeppingen", "2024-03-01", seeks_tandem=True),
    ):
        assert (await platform.post("/api/members", json=body)).status_code == 201
    first = await eventually(lambda: pending_for(staff, "goeppingen"), "a first proposal")

    rejected = await staff.post(
        f"/api/proposals/{first['proposal_id']}/reject", json={"reason": "zu weit weg"}
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["decided_by"] == "Erika Staff"

    second = await eventually(lambda: pending_for(staff, "goeppingen"), "a second proposal")
    assert second["mentor_id"] != first["mentor_id"]

    again = await staff.post(f"/api/proposals/{first['proposal_id']}/accept")
    assert again.status_code == 409

    accepted = await staff.post(f"/api/proposals/{second['proposal_id']}/accept")
    assert accepted.status_code == 200
    assert accepted.json()["status"] == "accepted" and accepted.json()["ends_on"]

    assert node.settings.broker is not None
    decided = await read_topic(node.settings.broker, "tandem.decided", lambda r: len(r) >= 2)
    decisions = {r["value"]["data"]["proposal_id"]: r["value"]["data"]["decision"] for r in decided}
    assert decisions == {first["proposal_id"]: "rejected", second["proposal_id"]: "accepted"}
    assert all(r["key"] == "goeppingen" for r in decided)


async def test_invalid_city_joined_goes_to_dlq_and_consumer_continues(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    from aiokafka import AIOKafkaProducer

    assert node.settings.broker is not None
    producer = AIOKafkaProducer(bootstrap_servers=node.settings.broker)
    await producer.start()
    try:
        await producer.send_and_wait("city.joined", b"{not json", key=b"broken")
    finally:
        await producer.stop()
    for body in (
        member_body("ammerbuch", "2015-01-01"),
        member_body("goeppingen", "2024-03-01", seeks_tandem=True),
    ):
        assert (await platform.post("/api/members", json=body)).status_code == 201
    await eventually(lambda: pending_for(staff, "goeppingen"), "a proposal after the bad record")
    dead = await read_topic(node.settings.broker, "city.joined.dlq", lambda r: len(r) >= 1)
    assert dead[0]["value"]["original"] == "{not json"
    assert dead[0]["value"]["error"]
    assert dead[0]["key"] == "broken"


async def test_operations_endpoints_metrics_asyncapi_and_request_ids(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    from services.infra.metrics import METRIC_NAMES

    for body in (
        member_body("ammerbuch", "2015-01-01"),
        member_body("goeppingen", "2024-03-01", seeks_tandem=True),
    ):
        assert (await platform.post("/api/members", json=body)).status_code == 201
    await eventually(lambda: pending_for(staff, "goeppingen"), "a proposal")
    advice = await staff.post(
        "/api/advice-requests", json={"city_id": "goeppingen", "topics": ["democracy"]}
    )
    assert advice.status_code == 201

    async def published() -> str | None:
        text = (await staff.get("/metrics")).text
        return text if 'tandem_events_published_total{topic="tandem.proposed"}' in text else None

    metrics = await eventually(published, "tandem.proposed to be counted")
    for name in METRIC_NAMES:
        assert name in metrics, name
    # Counters are per process (other tests count too): they must have counted at least ours.
    consumed = re.search(r'tandem_events_consumed_total\{topic="city.joined"\} ([0-9.]+)', metrics)
    assert consumed and float(consumed.group(1)) >= 2
    assert 'tandem_proposals{status="pending"} 1.0' in metrics
    assert "tandem_solve_seconds_count" in metrics

    asyncapi = (await staff.get("/docs/asyncapi")).json()
    assert asyncapi["asyncapi"].startswith("3.")
    assert {c["address"] for c in asyncapi["channels"].values()} >= {
        "city.joined",
        "tandem.proposed",
    }
    echoed = await staff.get("/health", headers={"X-Request-ID": "req-42"})
    assert echoed.headers["x-request-id"] == "req-42"
    assert (await staff.get("/health")).headers["x-request-id"]
