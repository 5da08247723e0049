"""Poison records on the real broker: nothing blocks a partition, the outbox or readiness, dead
letters stay small and carry no personal data (on SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.outbox import utcnow
from services.registry import tables as registry_tables
from services.runtime import Node
from tests.conftest import eventually, member_body, read_topic
from tests.integration.test_abuse import _every_record

CONSUMED = ("member.admitted", "city.joined", "city.updated", "city.left", "advice.requested")
MIB = 1024 * 1024


def envelope(topic: str, data: Any, event_id: str | None = None) -> bytes:
    return json.dumps(
        {"id": event_id or str(uuid.uuid4()), "type": topic, "version": 1,
         "time": "2026-12-01T12:00:00Z", "source": "test", "data": data},
        ensure_ascii=False,
    ).encode()  # fmt: skip


def public(member_id: str, joined: str, **changes: Any) -> dict[str, Any]:
    """A member as ``city.joined``/``city.updated`` carry it."""
    body = member_body(member_id, joined, **changes)
    body.pop("contact")
    body["partners"] = [{"sector": p["sector"]} for p in body["partners"]]
    return body


def deep_record(topic: str) -> bytes:
    """An envelope whose data nests 5,000 deep (Python's json recurses on it)."""
    return (
        b'{"id": "'
        + str(uuid.uuid4()).encode()
        + b'", "type": "'
        + topic.encode()
        + (b'", "version": 1, "data": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    )


def quote_heavy_record(topic: str) -> bytes:
    """About 750 KB, nearly all double quotes: escaped again in a dead letter it would pass the
    broker's 1 MiB limit."""
    record = envelope(topic, {"id": "goch", "name": '"' * 375_000})
    assert 740_000 < len(record) < 760_000
    return record


async def send(
    bootstrap: str,
    records: list[tuple[str, str | None, bytes]],
    headers: dict[int, list[tuple[str, bytes]]] | None = None,
) -> None:
    """Send ``(topic, key, value)`` records in this order, all to partition 0 of their topic,
    so the valid ones queue behind the poison; ``headers`` by index in ``records``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * MIB)
    await producer.start()
    try:
        for index, (topic, key, value) in enumerate(records):
            await producer.send_and_wait(
                topic, value, key=key.encode() if key else None, partition=0,
                headers=(headers or {}).get(index),
            )  # fmt: skip
    finally:
        await producer.stop()


async def proposal_of(staff: httpx.AsyncClient, newcomer: str, status: str) -> Any:
    response = await staff.get("/api/proposals", params={"newcomer_id": newcomer})
    assert response.status_code == 200, response.text
    return [p for p in response.json()["items"] if p["status"] == status] or None


async def stored_original(engine: AsyncEngine, ref: str) -> bytes:
    table_name, row_id = ref.split("/")
    from services.matcher import tables as matcher_tables

    table = {**registry_tables.metadata.tables, **matcher_tables.metadata.tables}[table_name]
    async with engine.connect() as connection:
        value = await connection.scalar(select(table.c.original).where(table.c.id == row_id))
    assert value is not None, ref
    return bytes(value)


async def test_deep_and_huge_records_on_every_consumed_topic_block_nothing(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    assert node.settings.broker is not None and node.registry and node.matcher
    bootstrap = node.settings.broker
    for body in (
        member_body("ammerbuch", "2015-01-01", mentor_capacity=10),
        member_body("weil-am-rhein", "2024-02-01", seeks_tandem=True),
    ):
        assert (await platform.post("/api/members", json=body)).status_code == 201
    await eventually(lambda: proposal_of(staff, "weil-am-rhein", "pending"), "a first proposal")

    request_id = str(uuid.uuid4())
    valid = {
        "member.admitted": (
            "goeppingen",
            envelope("member.admitted", member_body("goeppingen", "2024-03-01", seeks_tandem=True)),
        ),
        "city.joined": (
            "kleve", envelope("city.joined", public("kleve", "2024-04-01", seeks_tandem=True))
        ),
        "city.updated": (
            "goch", envelope("city.updated", public("goch", "2024-05-01", seeks_tandem=True))
        ),
        "city.left": ("weil-am-rhein", envelope("city.left", {"id": "weil-am-rhein"})),
        "advice.requested": (
            "ammerbuch",
            envelope("advice.requested", {"request_id": request_id, "city_id": "ammerbuch",
                                          "topics": ["democracy"]}),
        ),
    }  # fmt: skip
    poison = {topic: [deep_record(topic), quote_heavy_record(topic)] for topic in CONSUMED}
    records = [(t, "goch", value) for t in CONSUMED for value in poison[t]]
    records += [(t, key, value) for t, (key, value) in valid.items()]
    # A header that is not UTF-8 (FastStream decodes headers) stops nothing either.
    bad_header = [("trace", b"\xff\xfe")]
    await send(bootstrap, records, {i: bad_header for i in range(len(records))})

    # Every valid record behind the poison is applied.
    await eventually(lambda: proposal_of(staff, "goeppingen", "pending"), "member.admitted")
    await eventually(lambda: proposal_of(staff, "kleve", "pending"), "city.joined")
    await eventually(lambda: proposal_of(staff, "goch", "pending"), "city.updated")
    await eventually(lambda: proposal_of(staff, "weil-am-rhein", "withdrawn"), "city.left")

    async def advice_answered() -> bool:
        return (await staff.get(f"/api/advice-requests/{request_id}")).status_code == 200

    await eventually(advice_answered, "advice.requested")

    # Each poison record has its dead letter, small, with the reason; the large original is
    # kept in the consumer's database under the reference, with its digest and size.
    for topic in CONSUMED:
        engine = node.registry.engine if topic == "member.admitted" else node.matcher.engine
        dead = await read_topic(bootstrap, f"{topic}.dlq", lambda r: len(r) >= 2)
        assert len(dead) == 2, topic
        deep, huge = (d["value"] for d in dead)
        assert "nests too deep: 5001 levels" in deep["error"], deep["error"]
        assert "too large" in huge["error"], huge["error"]
        for letter, original in zip((deep, huge), poison[topic], strict=True):
            assert len(json.dumps(letter)) < 100_000
            assert letter["original_sha256"] == hashlib.sha256(original).hexdigest()
            assert letter["original_size"] == len(original)
        assert huge["original"] == "" and huge["original_ref"]
        assert await stored_original(engine, huge["original_ref"]) == poison[topic][1]

    metrics = (await staff.get("/metrics")).text
    for topic in CONSUMED:
        counted = re.search(rf'tandem_dead_letters_total\{{topic="{topic}"\}} ([0-9.]+)', metrics)
        assert counted and float(counted.group(1)) >= 2, topic
    ready = await staff.get("/ready")
    assert ready.status_code == 200 and "problems" not in ready.json(), ready.text


async def test_a_wrong_key_and_a_reused_envelope_id_go_to_the_dlq_with_the_reason(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    assert node.settings.broker is not None
    bootstrap = node.settings.broker
    joined_id, admitted_id = str(uuid.uuid4()), str(uuid.uuid4())
    first = member_body("goeppingen", "2024-03-01", seeks_tandem=True)
    await send(bootstrap, [
        ("city.joined", "ammerbuch", envelope("city.joined", public("kleve", "2015-01-01"))),
        ("city.joined", "ammerbuch", envelope("city.joined", public("ammerbuch", "2015-01-01"),
                                              joined_id)),
        ("city.joined", "ammerbuch", envelope("city.joined", public("ammerbuch", "2015-01-01",
                                                                    name="Anders"), joined_id)),
        ("city.joined", "ammerbuch", envelope("city.joined", public("ammerbuch", "2015-01-01"),
                                              joined_id)),  # sent again: a duplicate, no error
        ("member.admitted", "goeppingen", envelope("member.admitted", first, admitted_id)),
        ("member.admitted", "goch", envelope("member.admitted",
                                             member_body("goch", "2024-01-01"), admitted_id)),
    ])  # fmt: skip

    advice_id = str(uuid.uuid4())
    asked = [
        {"request_id": str(uuid.uuid4()), "city_id": "ammerbuch", "topics": [topic]}
        for topic in ("democracy", "participation")
    ]
    await send(bootstrap, [
        ("advice.requested", "ammerbuch", envelope("advice.requested", data, advice_id))
        for data in (asked[0], asked[0], asked[1])  # the same twice, then other data
    ])  # fmt: skip

    joined_dead = await read_topic(bootstrap, "city.joined.dlq", lambda r: len(r) >= 2)
    errors = sorted(d["value"]["error"] for d in joined_dead)
    assert errors == [
        f"envelope id {joined_id} was used before for other data",
        "message key 'ammerbuch' is not the city id 'kleve' of its data",
    ]
    admitted_dead = await read_topic(bootstrap, "member.admitted.dlq", lambda r: len(r) >= 1)
    assert [d["value"]["error"] for d in admitted_dead] == [
        f"envelope id {admitted_id} was used before for other data"
    ]
    assert admitted_dead[0]["key"] == "goch"
    advice_dead = await read_topic(bootstrap, "advice.requested.dlq", lambda r: len(r) >= 1)
    assert [d["value"]["error"] for d in advice_dead] == [
        f"envelope id {advice_id} was used before for other data"
    ]

    async def answered() -> bool:
        response = await staff.get(f"/api/advice-requests/{asked[0]['request_id']}")
        return response.status_code == 200

    await eventually(answered, "the first request's answer")
    assert (await staff.get(f"/api/advice-requests/{asked[1]['request_id']}")).status_code == 404
    # The first use of each id took effect, the reuse did not; the wrong-keyed record neither.
    await eventually(lambda: proposal_of(staff, "goeppingen", "pending"), "a proposal")
    assert (await staff.get("/api/members/goch")).status_code == 404
    proposals = (await staff.get("/api/proposals")).json()["items"]
    assert {p["mentor_id"] for p in proposals} == {"ammerbuch"}
    assert "kleve" not in {p["newcomer_id"] for p in proposals}
    await read_topic(bootstrap, "city.joined.dlq", lambda r: len(r) >= 2)  # no third letter
    assert len(await read_topic(bootstrap, "city.joined.dlq", lambda r: len(r) >= 2)) == 2


SECRET_NAME, SECRET_MAIL = "Hedwig Geheim", "hedwig.geheim@example.org"
SECRET_PARTNER = "Geheimbund"


async def test_no_contact_string_of_a_refused_registration_appears_on_any_topic(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    assert node.settings.broker is not None and node.registry
    bootstrap = node.settings.broker
    contact = {"name": SECRET_NAME, "email": SECRET_MAIL}
    partners = [
        {"name": SECRET_PARTNER, "sector": "civil_society"},
        {"name": "Rathaus", "sector": "administration"},
        {"name": "Stadtwerke", "sector": "business"},
    ]
    existing = member_body("ammerbuch", "2015-01-01", contact=contact, partners=partners)
    assert (await platform.post("/api/members", json=existing)).status_code == 201
    refused = [
        member_body("kleinstadt", "2024-01-01", population=500, contact=contact,
                    partners=partners),
        member_body("ammerbuch", "2015-01-01", contact=contact, partners=partners,
                    exception_reason=f"{SECRET_NAME} bat darum"),  # exists already
        member_body("goch", "2024-01-01", contact={"name": SECRET_NAME, "email": "kaputt"}),
        {**member_body("kleve", "2024-01-01", contact=contact), "contakt": SECRET_MAIL},
    ]  # fmt: skip
    records = [("member.admitted", b["id"], envelope("member.admitted", b)) for b in refused]
    broken = envelope("member.admitted", member_body("wesel", "2024-01-01", contact=contact))
    records.append(("member.admitted", "wesel", broken[:-3]))  # not JSON any more
    records.append(("member.admitted", "wesel", broken[:5] + b"\xff" + broken[5:]))  # not UTF-8
    await send(bootstrap, records)

    dead = await read_topic(bootstrap, "member.admitted.dlq", lambda r: len(r) >= len(records))
    assert len(dead) == len(records)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for letter in dead:
        by_key.setdefault(letter["key"], []).append(letter["value"])
    assert "data.contact" in by_key["kleinstadt"][0]["redacted"]
    assert "data.partners.0.name" in by_key["kleinstadt"][0]["redacted"]
    assert "population" in by_key["kleinstadt"][0]["error"]
    assert "exists already" in by_key["ammerbuch"][0]["error"]
    assert "data.exception_reason" in by_key["ammerbuch"][0]["redacted"]
    assert "data.contakt" in by_key["kleve"][0]["redacted"]
    # Worded as the API words its 422 (the same messages on every way in, #15).
    assert "contact.email: value is not a valid email" in by_key["goch"][0]["error"]
    for withheld in by_key["wesel"]:  # unreadable: kept in the registry's database only
        assert withheld["original"] == "" and withheld["redacted"] == ["original"]
        assert withheld["original_ref"].startswith("registry_dead_letter_originals/")

    secrets = (SECRET_NAME, SECRET_MAIL, SECRET_PARTNER, "hedwig", "Geheim")
    texts = await _every_record(bootstrap)
    assert texts["member.admitted.dlq"]
    leaks = {t: s for t, found in texts.items() if t != "member.admitted"
             for s in secrets if any(s in text for text in found)}  # fmt: skip
    assert not leaks
    async with node.registry.engine.connect() as connection:
        payloads = (await connection.scalars(select(registry_tables.outbox.c.payload))).all()
    assert not [s for s in secrets for p in payloads if s in p]


async def test_a_record_the_broker_refuses_is_parked_and_named_by_ready(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    """A record over the producer's 1 MiB limit in the outbox (however it got there) is parked
    with its error; members registered afterwards reach the matcher; /ready stays 200 and
    names the parked record instead of blaming the broker."""
    assert node.registry is not None
    async with node.registry.engine.begin() as connection:
        await connection.execute(
            insert(registry_tables.outbox).values(
                event_id=str(uuid.uuid4()), topic="city.joined", key="riesig",
                payload=json.dumps({"x": "y" * (MIB + 10_000)}), created_at=utcnow(), attempts=0,
            )
        )  # fmt: skip
    for body in (
        member_body("ammerbuch", "2015-01-01"),
        member_body("goeppingen", "2024-03-01", seeks_tandem=True),
    ):
        assert (await platform.post("/api/members", json=body)).status_code == 201
    await eventually(lambda: proposal_of(staff, "goeppingen", "pending"), "a proposal")

    async def named() -> dict[str, Any] | None:
        response = await staff.get("/ready")
        body: dict[str, Any] = response.json()
        return body if response.status_code == 200 and body.get("problems") else None

    ready = await eventually(named, "/ready to name the parked record")
    assert ready["problems"] == ["registry outbox: 1 record parked: MessageSizeTooLargeError"], (
        ready
    )
    assert ready["checks"]["registry"]["broker"] is True
    parked = await node.registry.relay.parked()
    assert [topic for topic, _ in parked] == ["city.joined"]
    assert "MessageSizeTooLargeError" in parked[0][1]
    metrics = (await staff.get("/metrics")).text
    assert 'tandem_outbox_parked_total{topic="city.joined"}' in metrics


async def test_a_record_the_database_refuses_is_dead_lettered_and_the_rest_applied(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    """A valid event whose value no column holds (a revision of 10^30) fails in the database
    on every delivery: the batch is applied record by record and that one dead-lettered."""
    assert node.settings.broker is not None
    bootstrap = node.settings.broker
    await send(bootstrap, [
        ("city.joined", "kleve", envelope("city.joined", public("kleve", "2015-01-01",
                                                                revision=10**30))),
        ("city.joined", "ammerbuch", envelope("city.joined", public("ammerbuch", "2015-01-01"))),
        ("city.joined", "goch", envelope("city.joined", public("goch", "2024-05-01",
                                                               seeks_tandem=True))),
    ])  # fmt: skip
    proposal = await eventually(lambda: proposal_of(staff, "goch", "pending"), "a proposal")
    assert proposal[0]["mentor_id"] == "ammerbuch"
    dead = await read_topic(bootstrap, "city.joined.dlq", lambda r: len(r) >= 1)
    assert dead[0]["key"] == "kleve"
    assert dead[0]["value"]["error"].startswith("the database refused it")
