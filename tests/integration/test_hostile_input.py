"""What a hostile or unlucky client sends never ends in a 5xx: offsets beyond any list, U+0000
in bodies, forms, paths and queries, deep nesting and endless digits, a database that drops
its connections mid-burst, clients that send a byte a second. And an erased contact is in no
file of the SQLite database afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.infra.embedded_broker import EmbeddedBroker
from services.infra.http import MAX_INTEGER_DIGITS, MAX_JSON_DEPTH, MAX_OFFSET
from services.runtime import Node
from tests.conftest import (
    PLATFORM,
    POSTGRES_ADMIN,
    STAFF,
    eventually,
    member_body,
    node_settings,
)

PLATFORM_AUTH = {"Authorization": f"Bearer {PLATFORM}"}
STAFF_AUTH = {"Authorization": f"Bearer {STAFF}"}
JSON = {"Content-Type": "application/json"}


def _detail_types(response: httpx.Response) -> list[str]:
    detail = response.json()["detail"]
    return [e["type"] for e in detail] if isinstance(detail, list) else []


# ---------------------------------------------------------------------------------------------
# Offsets, U+0000, nesting and digits: 4xx on SQLite and PostgreSQL


async def test_offsets_beyond_the_bound_are_refused_with_422(
    staff: httpx.AsyncClient, platform: httpx.AsyncClient
) -> None:
    """A 21-digit offset was a 500 on both databases; now every list answers 422 beyond
    ``MAX_OFFSET`` or ``limit`` 1000, and a page up to them (the lists that returned everything
    take ``limit`` and ``offset`` too, as the contract says)."""
    for member_id in ("lemgo", "ammerbuch"):
        body = member_body(member_id, "2020-01-01")
        assert (await platform.post("/api/members", json=body)).status_code == 201

    async def pair_ruled() -> bool:  # once the matcher knows both
        rule = {"rule": "forbidden"}
        return (await staff.put("/api/pairs/lemgo/ammerbuch", json=rule)).is_success

    await eventually(pair_ruled, "the matcher to take a pair rule")
    lists = ("/api/members", "/api/proposals", "/api/pairs", "/api/newcomers/waiting",
             "/api/members/lemgo/history")  # fmt: skip
    for path in lists:
        for offset in (10**20, 2**63, MAX_OFFSET + 1, -1):
            response = await staff.get(path, params={"offset": offset})
            assert response.status_code == 422, (path, offset, response.text)
        edge = await staff.get(path, params={"offset": MAX_OFFSET})
        assert edge.status_code == 200, edge.text
        assert edge.json()["items"] == []
        for limit in (0, 1001, 10**20):
            assert (await staff.get(path, params={"limit": limit})).status_code == 422
    for path, total in (("/api/members", 2), ("/api/pairs", 1), ("/api/members/lemgo/history", 1)):
        whole = await staff.get(path, params={"limit": 1000, "offset": 0})
        assert len(whole.json()["items"]) == whole.json()["total"] == total, whole.text
        rest = await staff.get(path, params={"limit": 1, "offset": 1})
        assert len(rest.json()["items"]) == total - 1 and rest.json()["total"] == total


NUL_BODIES: list[tuple[str, str, dict[str, Any], list[str | int]]] = [
    ("POST", "/api/members", member_body("nul-stadt", "2020-01-01", name="Nul\x00stadt"),
     ["body", "name"]),
    ("POST", "/api/members",
     member_body("nul-stadt", "2020-01-01", contact={"name": "A\x00B", "email": "a@b.example"}),
     ["body", "contact", "name"]),
    ("POST", "/api/members",
     {**member_body("nul-stadt", "2020-01-01"), "inter\x00ests": ["democracy"]},
     ["body", "inter\\u0000ests"]),
    ("PATCH", "/api/members/lemgo", {"name": "Lem\x00go"}, ["body", "name"]),
    ("POST", "/api/members/lemgo/leave", {"reason": "weg\x00"}, ["body", "reason"]),
    ("POST", "/api/proposals/some-proposal/reject", {"reason": "\x00"}, ["body", "reason"]),
    ("POST", "/api/proposals/some-proposal/accept", {"reason": "ok\x00"}, ["body", "reason"]),
    ("POST", "/api/advice-requests",
     {"city_id": "lemgo", "topics": ["democracy"], "question": "Wie\x00?"},
     ["body", "question"]),
]  # fmt: skip

NUL_URLS = [
    ("GET", "/api/members/lem%00go"),
    ("GET", "/api/members/%00/history"),
    ("PATCH", "/api/members/%00"),
    ("GET", "/api/proposals/%00"),
    ("GET", "/api/proposals?newcomer_id=lem%00go"),
    ("GET", "/api/proposals?status=pending&x=%00"),
    ("GET", "/api/advice-requests/%00"),
    ("PUT", "/api/pairs/lemgo/%00"),
    ("DELETE", "/api/pairs/%00/lemgo"),
    ("GET", "/ui/proposals%00"),
]


async def test_nul_characters_are_refused_with_422_everywhere(
    node: Node, staff: httpx.AsyncClient, platform: httpx.AsyncClient
) -> None:
    """U+0000 in a name, contact, key, reason or question, in a path or a query, and in a form
    of the staff page was a 500 on PostgreSQL; now it is a 422 naming where it was, on both
    databases, and nothing is stored."""
    body = member_body("lemgo", "2020-01-01", state="DE-NW", lat=52.03, lon=8.9)
    assert (await platform.post("/api/members", json=body)).status_code == 201
    for method, path, payload, loc in NUL_BODIES:
        response = await staff.request(method, path, json=payload)
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["detail"][0]["loc"] == loc, response.text
        assert _detail_types(response) == ["string_nul"]
    for method, url in NUL_URLS:
        response = await staff.request(method, url, json={"rule": "forbidden"})
        assert response.status_code == 422, (method, url, response.text)
        assert _detail_types(response) == ["string_nul"]
    async with httpx.AsyncClient(
        base_url=node.url, timeout=30, cookies={"tandem_staff": STAFF}
    ) as browser:
        form = await browser.post(
            "/ui/proposals/some-proposal/reject", data={"reason": "zu\x00weit"}
        )
        assert form.status_code == 422, form.text
        assert _detail_types(form) == ["string_nul"]
    listed = (await staff.get("/api/members")).json()
    assert [m["id"] for m in listed["items"]] == ["lemgo"]
    assert listed["items"][0]["name"] == body["name"]
    assert (await staff.get("/api/members/lemgo/history")).json()["total"] == 1


async def test_deep_nesting_and_endless_digits_answer_422_with_the_reason(
    staff: httpx.AsyncClient, platform: httpx.AsyncClient
) -> None:
    """5,000-deep arrays and objects and a 5,000-digit integer were a bare 400 (Python's
    parser gave up); now a 422 says what is wrong. Just inside the limits is parsed as usual."""
    valid = member_body("tuebingen", "2020-01-01")
    deep_array = b"[" * 5000 + b"]" * 5000
    deep_object = b'{"a":' * 5000 + b"1" + b"}" * 5000
    digits = b'{"population": ' + b"9" * 5000 + b"}"
    for path in ("/api/members", "/api/advice-requests", "/api/members/lemgo/leave"):
        for raw, kind in ((deep_array, "too_deep"), (deep_object, "too_deep"),
                          (digits, "number_too_large")):  # fmt: skip
            response = await platform.post(path, content=raw, headers=JSON)
            assert response.status_code == 422, (path, raw[:20], response.text)
            assert _detail_types(response) == [kind], response.text
    just_too_deep = {**valid, "extra": _nested(MAX_JSON_DEPTH)}
    response = await platform.post("/api/members", json=just_too_deep)
    assert response.status_code == 422 and _detail_types(response) == ["too_deep"]
    assert "nested deeper than 32 levels" in response.text
    long_number = {**valid, "population": int("9" * (MAX_INTEGER_DIGITS + 1))}
    response = await platform.post("/api/members", json=long_number)
    assert response.status_code == 422 and _detail_types(response) == ["number_too_large"]
    # Inside the limits the model decides: no unknown fields, not 20 digits of people.
    deep_but_allowed = {**valid, "extra": _nested(MAX_JSON_DEPTH - 1)}
    response = await platform.post("/api/members", json=deep_but_allowed)
    assert response.status_code == 422 and _detail_types(response) == ["extra_forbidden"]
    twenty = {**valid, "population": int("9" * MAX_INTEGER_DIGITS)}
    response = await platform.post("/api/members", json=twenty)
    assert response.status_code == 422 and _detail_types(response) == ["less_than_equal"]
    assert (await platform.post("/api/members", json=valid)).status_code == 201
    listed = await staff.get("/api/members")
    assert [m["id"] for m in listed.json()["items"]] == ["tuebingen"]


def _nested(levels: int) -> Any:
    """A value that, as a field of a body, makes the body ``levels + 1`` deep."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


# ---------------------------------------------------------------------------------------------
# The database drops its connections during a burst (PostgreSQL)


async def _terminate_backends(database: str) -> int:
    """pg_terminate_backend for every connection to ``database`` (the services'), as an
    operator or a failover would; how many were ended."""
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        ended = await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    return int(ended or 0)


async def _until_answered(
    send: Any, answers: list[httpx.Response], attempts: int = 40
) -> tuple[httpx.Response, bool]:
    """Send until the answer is not a 503, as a client that honours ``Retry-After`` does;
    every answer is kept. The last answer, and whether a 503 came before it."""
    unavailable = False
    for _ in range(attempts):
        response: httpx.Response = await send()
        answers.append(response)
        if response.status_code != 503:
            return response, unavailable
        unavailable = True
        assert response.headers.get("retry-after") == "1", response.headers
        await asyncio.sleep(0.2)
    raise AssertionError("still 503 after 40 attempts")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_killed_database_connections_give_no_500_and_lose_no_acknowledged_member(
    node: Node, database_url: str, staff: httpx.AsyncClient, platform: httpx.AsyncClient
) -> None:
    """While 60 members register (12 at a time) and staff read, every connection of the
    services' database is terminated again and again. No answer is a 500; writes that hit a
    dropped connection answer 503 with ``Retry-After`` and the client sends them again; every
    member that got a 201 is stored with its one history entry and reaches the matcher (its
    ``city.joined`` committed with it), and the node serves as before once the database
    stays."""
    database = database_url.rsplit("/", 1)[1]
    answers: list[httpx.Response] = []
    acknowledged: set[str] = set()
    existing: set[str] = set()  # a 409 after a 503: the first attempt had committed
    gate = asyncio.Semaphore(12)

    async def register(index: int) -> None:
        member_id = f"stadt-{index:03d}"
        body = member_body(member_id, "2020-01-01", population=20_000 + index)
        async with gate:
            response, retried = await _until_answered(
                lambda: platform.post("/api/members", json=body), answers
            )
        if response.status_code == 201:
            acknowledged.add(member_id)
        else:  # only a commit whose acknowledgement was lost with the connection
            assert response.status_code == 409 and retried, response.text
            existing.add(member_id)

    async def read(index: int) -> None:
        response, _ = await _until_answered(lambda: staff.get("/api/members"), answers)
        assert response.status_code == 200, response.text

    ended: list[int] = []

    async def kill() -> None:
        for _ in range(8):
            await asyncio.sleep(0.25)
            ended.append(await _terminate_backends(database))

    writes = [register(i) for i in range(60)]
    reads = [read(i) for i in range(20)]
    await asyncio.gather(kill(), *writes, *reads)

    statuses = sorted({r.status_code for r in answers})
    assert all(s < 500 or s == 503 for s in statuses), statuses
    assert sum(ended) > 0, "no connection was terminated: the test proved nothing"
    assert acknowledged, statuses
    listed = await staff.get("/api/members", params={"limit": 1000})
    assert listed.status_code == 200
    stored = {m["id"] for m in listed.json()["items"]}
    assert acknowledged | existing == stored == {f"stadt-{i:03d}" for i in range(60)}
    for member_id in sorted(acknowledged):
        history = await staff.get(f"/api/members/{member_id}/history")
        assert [h["action"] for h in history.json()["items"]] == ["registered"], member_id
    after = await platform.post("/api/members", json=member_body("danach", "2020-01-01"))
    assert after.status_code == 201, after.text

    async def all_published() -> bool:  # each row's city.joined was in its transaction
        status = await staff.get("/api/matcher/status")
        return status.status_code == 200 and status.json()["members"] == len(stored) + 1

    await eventually(all_published, "every member's city.joined at the matcher", timeout=60)


# ---------------------------------------------------------------------------------------------
# Slow clients


@pytest.fixture
async def impatient_node(tmp_path: Path) -> AsyncIterator[Node]:
    """A node on SQLite that gives clients one second to send a request's headers or body."""
    with EmbeddedBroker() as broker:
        settings = node_settings(broker.bootstrap, tmp_path, None).model_copy(
            update={"request_read_timeout_seconds": 1.0}
        )
        running = Node(settings)
        await running.start()
        try:
            yield running
        finally:
            await running.stop()


async def _dribble(url: str, head: bytes, body: bytes) -> tuple[bytes, float]:
    """Open a connection, send ``head`` at once, then ``body`` a byte every 0.2 s, until the
    server answers and closes; (everything it sent, seconds until it closed)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    received = b""
    try:
        if head:
            writer.write(head)
        for byte in body:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:  # closed by the server: what it sent is still to be read
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
            received += chunk
            if not chunk:  # closed by the server
                break
        else:
            raise AssertionError("the server waited for the whole slow request")
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                received += chunk
    finally:
        writer.close()
    return received, time.monotonic() - started


async def test_slow_clients_are_cut_off_after_the_read_timeout(impatient_node: Node) -> None:
    """Ten clients send a byte every 0.2 s: four their headers, four their body, two the body
    of a request the application answered without reading it. Each gets a 408 and a closed
    connection after about the configured second (not after the 150 s their requests would
    take), while other clients are served as usual."""
    register = (
        b"POST /api/members HTTP/1.1\r\nHost: tandem\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + PLATFORM.encode() + b"\r\nContent-Length: 750\r\n\r\n"
    )
    unread = b"GET /health HTTP/1.1\r\nHost: tandem\r\nContent-Length: 750\r\n\r\n"
    headers = b"GET /health HTTP/1.1\r\nHost: tandem\r\nX-Slow: " + b"x" * 740 + b"\r\n\r\n"
    body = b'{"id": "' + b"x" * 740 + b'"}'
    slow = [
        *(_dribble(impatient_node.url, b"", headers) for _ in range(4)),
        *(_dribble(impatient_node.url, register, body) for _ in range(4)),
        *(_dribble(impatient_node.url, unread, body) for _ in range(2)),
    ]
    tasks = [asyncio.ensure_future(s) for s in slow]
    async with httpx.AsyncClient(base_url=impatient_node.url, timeout=30) as client:
        while not all(t.done() for t in tasks):
            assert (await client.get("/health")).status_code == 200
            await asyncio.sleep(0.1)
    results = [await t for t in tasks]
    for index, (received, seconds) in enumerate(results):
        assert seconds < 15, (index, seconds)
        if index >= 8:  # the answer to the request, then the 408 for what kept dribbling
            assert received.startswith(b"HTTP/1.1 200"), received[:200]
        assert b"HTTP/1.1 408 " in received, (index, received[:300])
        assert b"not received within 1 s" in received, received[-200:]
    async with httpx.AsyncClient(base_url=impatient_node.url, timeout=30) as client:
        registered = await client.post(
            "/api/members", json=member_body("lemgo", "2020-01-01"), headers=PLATFORM_AUTH
        )
        assert registered.status_code == 201, registered.text


# ---------------------------------------------------------------------------------------------
# Erasure reaches the files (SQLite)

MEMBERS = ["lemgo", "ammerbuch", "goeppingen", "tuebingen", "boeblingen", "reutlingen"]
LEAVING = ["ammerbuch", "tuebingen"]


def _secrets(member_id: str) -> dict[str, str]:
    """A member's distinctive contact and partner strings."""
    return {
        "email": f"ottilie.{member_id}@geloescht-mail.example",
        "name": f"Ottilie Unauffindbar-{member_id.title()}",
        "partner": f"Stiftung Spurlos {member_id.title()}heim",
    }


def _files_holding(data: Path, needles: list[bytes]) -> dict[str, list[bytes]]:
    """Which files of the data directory (database, -wal, -shm, ...) hold which needles."""
    found: dict[str, list[bytes]] = {}
    for path in sorted(data.iterdir()):
        if path.is_file():
            content = path.read_bytes()
            hits = [n for n in needles if n in content]
            if hits:
                found[path.name] = hits
    return found


async def test_an_erased_contact_is_in_no_sqlite_file(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Six members register, each with its own contact and a named partner; two of them leave.
    Afterwards neither the database file nor its -wal or -shm holds those two members' contact
    email or name or partner name, also once the relay has written again, while the others'
    are still found (so the search can see them)."""
    running = Node(node_settings(broker.bootstrap, tmp_path, None))
    await running.start()
    erased = [v.encode() for m in LEAVING for v in _secrets(m).values()]
    kept = [v.encode() for m in MEMBERS if m not in LEAVING for v in _secrets(m).values()]
    try:
        async with httpx.AsyncClient(
            base_url=running.url, timeout=30, headers=PLATFORM_AUTH
        ) as http:
            for member_id in MEMBERS:
                secret = _secrets(member_id)
                partners = [
                    {"name": secret["partner"], "sector": "civil_society"},
                    {"name": "Rathaus", "sector": "administration"},
                    {"name": "Stadtwerke", "sector": "business"},
                ]
                body = member_body(
                    member_id, "2020-01-01", partners=partners,
                    contact={"name": secret["name"], "email": secret["email"]},
                )  # fmt: skip
                assert (await http.post("/api/members", json=body)).status_code == 201
            before = _files_holding(tmp_path, erased)
            assert sum(len(hits) for hits in before.values()) >= len(erased), before
            for member_id in LEAVING:
                left = await http.post(f"/api/members/{member_id}/leave", json={"reason": "x"})
                assert left.status_code == 200 and left.json()["contact"] is None
            assert _files_holding(tmp_path, erased) == {}
            registry = running.registry
            assert registry is not None

            async def all_sent() -> bool:  # the relay wrote to the database since the erasure
                return await registry.relay.backlog() == 0

            await eventually(all_sent, "the registry's outbox to be sent")
            assert _files_holding(tmp_path, erased) == {}
    finally:
        await running.stop()
    assert _files_holding(tmp_path, erased) == {}
    still = _files_holding(tmp_path, kept)
    assert {hit for hits in still.values() for hit in hits} == set(kept), still
