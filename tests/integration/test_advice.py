"""Collegial advice over HTTP and Kafka, with roles, events and fairness, on the real broker."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import httpx

from services.runtime import Node
from tests.conftest import COORDINATOR, eventually, member_body, read_topic
from tests.integration.test_member_changes import produce

NETWORK = [
    member_body("goeppingen", "2024-03-01", interests=["young_engagement"], strengths=[]),
    member_body("ammerbuch", "2015-01-01", strengths=["young_engagement", "democracy"]),
    member_body("lemgo", "2020-01-01", state="DE-NW", lat=52.03, lon=8.9,
                strengths=["young_engagement"]),
    member_body("speyer", "2016-01-01", state="DE-RP", lat=49.32, lon=8.43,
                strengths=["digitalisation"]),
    member_body("goch", "2021-01-01", state="DE-NW", lat=51.68, lon=6.16,
                strengths=["sustainability"]),
]  # fmt: skip


async def register(platform: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        assert (await platform.post("/api/members", json=body)).status_code == 201


async def matcher_knows(staff: httpx.AsyncClient, count: int) -> None:
    async def known() -> bool:
        return bool((await staff.get("/api/matcher/status")).json()["members"] >= count)

    await eventually(known, f"the matcher to know {count} members")


async def test_http_advice_ranks_topics_first_and_publishes_both_events(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    await register(platform, NETWORK)
    await matcher_knows(staff, len(NETWORK))
    response = await staff.post(
        "/api/advice-requests",
        json={"city_id": "goeppingen", "topics": ["young_engagement"],
              "question": "Wie gewinnen wir Jugendliche für Nachhaltigkeit?", "k": 3},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    answer = response.json()
    ids = [m["city_id"] for m in answer["matches"]]
    assert len(ids) == 3 == len(set(ids)) and "goeppingen" not in ids
    assert set(ids[:2]) == {"ammerbuch", "lemgo"}, "members with the topic come first"
    assert all(m["reasons"] for m in answer["matches"])
    assert any("junges Engagement" in r for r in answer["matches"][0]["reasons"])

    stored = (await staff.get(f"/api/advice-requests/{answer['request_id']}")).json()
    assert stored["matches"] == answer["matches"]

    assert node.settings.broker is not None
    asked = await read_topic(node.settings.broker, "advice.requested", lambda r: len(r) >= 1)
    matched = await read_topic(node.settings.broker, "advice.matched", lambda r: len(r) >= 1)
    assert asked[0]["value"]["data"]["request_id"] == answer["request_id"]
    assert matched[0]["value"]["data"]["request_id"] == answer["request_id"]
    assert [m["city_id"] for m in matched[0]["value"]["data"]["matches"]] == ids
    assert matched[0]["key"] == "goeppingen"


async def test_coordinators_ask_and_see_only_their_own_city(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    await register(platform, NETWORK)
    await matcher_knows(staff, len(NETWORK))
    coordinator = {"Authorization": f"Bearer {COORDINATOR}"}
    body = {"city_id": "goeppingen", "topics": ["democracy"]}
    own = await staff.post("/api/advice-requests", json=body, headers=coordinator)
    assert own.status_code == 201
    other = await staff.post(
        "/api/advice-requests", json={**body, "city_id": "ammerbuch"}, headers=coordinator
    )
    assert other.status_code == 403
    by_staff = await staff.post("/api/advice-requests", json={**body, "city_id": "ammerbuch"})
    assert by_staff.status_code == 201
    seen = await staff.get(f"/api/advice-requests/{by_staff.json()['request_id']}",
                           headers=coordinator)  # fmt: skip
    assert seen.status_code == 403
    mine = await staff.get(f"/api/advice-requests/{own.json()['request_id']}", headers=coordinator)
    assert mine.status_code == 200
    assert (await platform.post("/api/advice-requests", json=body)).status_code == 403
    unknown = await staff.post("/api/advice-requests", json={**body, "city_id": "nowhere"})
    assert unknown.status_code == 422
    bad_topic = await staff.post("/api/advice-requests", json={**body, "topics": ["knitting"]})
    assert bad_topic.status_code == 422


async def test_kafka_request_gets_its_answer_and_invalid_ones_are_dead_lettered(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    await register(platform, NETWORK)
    await matcher_knows(staff, len(NETWORK))
    assert node.settings.broker is not None
    request_id = str(uuid.uuid4())
    event = {
        "id": str(uuid.uuid4()), "type": "advice.requested", "version": 1,
        "time": "2026-11-21T12:00:00Z", "source": "coordinator-tool",
        "data": {"request_id": request_id, "city_id": "goeppingen",
                 "topics": ["digitalisation"], "question": "", "k": 2},
    }  # fmt: skip
    raw = json.dumps(event).encode()
    await produce(node.settings.broker, "advice.requested", "goeppingen", raw)
    await produce(node.settings.broker, "advice.requested", "goeppingen", raw)  # delivered twice
    await produce(node.settings.broker, "advice.requested", "goeppingen", b'{"id": 1}')

    def answered(records: list[dict[str, Any]]) -> bool:
        return any(r["value"]["data"]["request_id"] == request_id for r in records)

    matched = await read_topic(node.settings.broker, "advice.matched", answered)
    answer = next(r for r in matched if r["value"]["data"]["request_id"] == request_id)
    assert answer["value"]["data"]["matches"][0]["city_id"] == "speyer"
    stored = (await staff.get(f"/api/advice-requests/{request_id}")).json()
    assert stored["source"] == "event" and len(stored["matches"]) == 2
    dead = await read_topic(node.settings.broker, "advice.requested.dlq", lambda r: len(r) >= 1)
    assert dead[0]["value"]["original"] == '{"id": 1}'
    matched_again = await read_topic(node.settings.broker, "advice.matched", answered)
    assert sum(r["value"]["data"]["request_id"] == request_id for r in matched_again) == 1


async def test_many_requests_spread_over_all_capable_members(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    capable = [
        member_body(f"stadt-{i}", "2016-01-01", strengths=["volunteer_recruitment"])
        for i in range(5)
    ]
    await register(platform, [NETWORK[0], *capable])
    await matcher_knows(staff, 6)
    chosen: Counter[str] = Counter()
    for _ in range(20):
        response = await staff.post(
            "/api/advice-requests",
            json={"city_id": "goeppingen", "topics": ["volunteer_recruitment"], "k": 1},
        )
        assert response.status_code == 201
        chosen[response.json()["matches"][0]["city_id"]] += 1
    assert set(chosen) == {f"stadt-{i}" for i in range(5)}
    assert max(chosen.values()) - min(chosen.values()) <= 1, chosen
