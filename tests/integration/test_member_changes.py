"""Members change: updates, departures, and the platform's member.admitted path, end to end."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from services.runtime import Node
from tests.conftest import eventually, member_body, read_topic
from tests.integration.test_pipeline import pending_for


async def produce(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


def admitted(body: dict[str, Any], event_id: str | None = None, version: int = 1) -> bytes:
    return json.dumps(
        {"id": event_id or str(uuid.uuid4()), "type": "member.admitted", "version": version,
         "time": "2026-11-21T12:00:00Z", "source": "platform", "data": body}
    ).encode()  # fmt: skip


async def test_raising_capacity_gives_the_waiting_newcomer_a_proposal(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    for body in (
        member_body("ammerbuch", "2015-01-01", mentor_capacity=1),
        member_body("goeppingen", "2024-03-01", seeks_tandem=True),
        member_body("goch", "2024-03-01", seeks_tandem=True, state="DE-NW"),
    ):
        assert (await platform.post("/api/members", json=body)).status_code == 201

    async def one_waits() -> list[dict[str, Any]] | None:
        waiting = (await staff.get("/api/newcomers/waiting")).json()["items"]
        pending = (await staff.get("/api/proposals", params={"status": "pending"})).json()
        return waiting if len(waiting) == 1 and pending["total"] == 1 else None

    waiting = await eventually(one_waits, "one proposal and one waiting newcomer")
    assert waiting[0]["status"] == "capacity_taken" and waiting[0]["message"]
    lonely = waiting[0]["newcomer_id"]

    patched = await platform.patch("/api/members/ammerbuch", json={"mentor_capacity": 2})
    assert patched.status_code == 200, patched.text
    assert patched.json()["mentor_capacity"] == 2
    proposal = await eventually(lambda: pending_for(staff, lonely), "a proposal after the update")
    assert proposal["mentor_id"] == "ammerbuch"

    assert node.settings.broker is not None
    updated = await read_topic(node.settings.broker, "city.updated", lambda r: len(r) >= 1)
    assert updated[0]["key"] == "ammerbuch"
    assert updated[0]["value"]["data"]["mentor_capacity"] == 2
    assert "contact" not in updated[0]["value"]["data"]

    invalid = await platform.patch("/api/members/ammerbuch", json={"interests": ["knitting"]})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"][:2] == ["body", "interests"]
    rule = await platform.patch("/api/members/ammerbuch", json={"population": 500})
    assert rule.status_code == 422 and rule.json()["detail"][0]["loc"] == ["body", "population"]
    assert (
        await platform.patch("/api/members/nobody", json={"population": 20_000})
    ).status_code == 404


async def test_departure_withdraws_replaces_erases_and_is_in_the_history(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    for body in (
        member_body("ammerbuch", "2015-01-01"),
        member_body("rheinfelden-baden", "2016-01-01", population=34_000, lat=47.56, lon=7.78),
        member_body("goeppingen", "2024-03-01", seeks_tandem=True),
    ):
        assert (await platform.post("/api/members", json=body)).status_code == 201
    first = await eventually(lambda: pending_for(staff, "goeppingen"), "a proposal")
    leaving = first["mentor_id"]

    left = await staff.post(f"/api/members/{leaving}/leave", json={"reason": "Förderung endet"})
    assert left.status_code == 200, left.text
    assert left.json()["status"] == "left" and left.json()["contact"] is None

    async def replaced() -> dict[str, Any] | None:
        current = await pending_for(staff, "goeppingen")
        return current if current and current["mentor_id"] != leaving else None

    await eventually(replaced, "a replacement proposal")
    withdrawn = (await staff.get(f"/api/proposals/{first['proposal_id']}")).json()
    assert withdrawn["status"] == "withdrawn"
    listed = (await staff.get("/api/proposals", params={"status": "withdrawn"})).json()
    assert [p["proposal_id"] for p in listed["items"]] == [first["proposal_id"]]

    stored = (await staff.get(f"/api/members/{leaving}")).json()
    assert stored["contact"] is None and all(p["name"] == "" for p in stored["partners"])
    assert (
        await platform.patch(f"/api/members/{leaving}", json={"population": 20_000})
    ).status_code == 409
    assert (await staff.post(f"/api/members/{leaving}/leave", json={})).status_code == 409

    history = (await staff.get(f"/api/members/{leaving}/history")).json()["items"]
    assert [h["action"] for h in history] == ["registered", "left"]
    assert history[1]["actor"] == "Erika Staff" and history[1]["reason"] == "Förderung endet"

    assert node.registry is not None
    async with node.registry.engine.connect() as connection:
        from sqlalchemy import text

        raw = (await connection.execute(text("SELECT contact, partners FROM members WHERE id = :i"),
                                        {"i": leaving})).one()  # fmt: skip
    assert raw[0] is None and "Maria Muster" not in str(raw) and "Bürgerstiftung" not in str(raw)

    assert node.settings.broker is not None
    gone = await read_topic(node.settings.broker, "city.left", lambda r: len(r) >= 1)
    assert gone[0]["key"] == leaving
    assert gone[0]["value"]["data"] == {"id": leaving, "reason": "Förderung endet"}


async def test_member_admitted_event_becomes_member_and_proposal(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    assert node.settings.broker is not None
    bootstrap = node.settings.broker
    assert (
        await platform.post("/api/members", json=member_body("ammerbuch", "2015-01-01"))
    ).status_code == 201
    event_id = str(uuid.uuid4())
    body = member_body("goeppingen", "2024-03-01", seeks_tandem=True)
    await produce(bootstrap, "member.admitted", "goeppingen", admitted(body, event_id))
    await produce(bootstrap, "member.admitted", "goeppingen", admitted(body, event_id))  # replay
    await produce(bootstrap, "member.admitted", "kleinstadt",
                  admitted(member_body("kleinstadt", "2024-01-01", population=500)))  # fmt: skip
    await produce(bootstrap, "member.admitted", "x", b"\xff\x00 not json")
    await produce(bootstrap, "member.admitted", "goch",
                  admitted(member_body("goch", "2024-01-01"), version=7))  # fmt: skip

    proposal = await eventually(lambda: pending_for(staff, "goeppingen"), "a proposal")
    assert proposal["mentor_id"] == "ammerbuch"
    dead = await read_topic(bootstrap, "member.admitted.dlq", lambda r: len(r) >= 3)
    errors = {d["key"]: d["value"]["error"] for d in dead}
    assert "population" in errors["kleinstadt"]
    assert dead[[d["key"] for d in dead].index("x")]["value"]["original_encoding"] == "base64"
    assert "version 7" in errors["goch"]
    history = (await staff.get("/api/members/goeppingen/history")).json()["items"]
    assert len(history) == 1 and history[0]["actor"] == "platform (member.admitted)"
    members = (await staff.get("/api/members")).json()
    assert members["total"] == 2  # the replay added nothing, the invalid ones nothing


async def test_unknown_version_of_city_updated_is_dead_lettered(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    assert node.settings.broker is not None
    record = {
        "id": str(uuid.uuid4()), "type": "city.updated", "version": 2,
        "time": "2026-11-21T12:00:00Z", "source": "registry", "data": {"id": "ammerbuch"},
    }  # fmt: skip
    await produce(node.settings.broker, "city.updated", "ammerbuch", json.dumps(record).encode())
    dead = await read_topic(node.settings.broker, "city.updated.dlq", lambda r: len(r) >= 1)
    assert "version 2" in dead[0]["value"]["error"]
    assert dead[0]["value"]["consumer"] == "matcher"
