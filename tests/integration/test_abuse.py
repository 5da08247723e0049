"""Abuse of the HTTP edge: fuzzed requests to every route, oversized bodies, token comparison in
constant time, and contact data that must never reach an event or a log line."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from services.infra.auth import TokenBook
from services.infra.embedded_broker import EmbeddedBroker
from services.infra.logs import configure_logging
from services.runtime import Node
from tests.conftest import (
    COORDINATOR,
    PLATFORM,
    STAFF,
    TOKENS,
    eventually,
    member_body,
    node_settings,
    read_topic,
)

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
VALID_TOKENS = {"platform": PLATFORM, "staff": STAFF, "coordinator": COORDINATOR}


# ---------------------------------------------------------------------------------------------
# A SQLite node shared by the fuzzing and body-limit tests of this module


@dataclass(repr=False)
class World:
    """The shared node, clients for it, the routes of its OpenAPI document and ids that exist."""

    node: Node
    http: httpx.AsyncClient
    operations: list[tuple[str, str, dict[str, Any]]]
    members: list[str]
    proposals: list[str]
    advice_requests: list[str]
    max_body: int


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One node on SQLite for the module, seeded with members, a proposal and an advice request
    so that fuzzed requests reach real rows as well as missing ones."""
    with EmbeddedBroker() as broker:
        running = Node(node_settings(broker.bootstrap, tmp_path_factory.mktemp("abuse"), None))
        await running.start()
        try:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
                yield await _seed(running, http)
        finally:
            await running.stop()


async def _seed(node: Node, http: httpx.AsyncClient) -> World:
    platform = {"Authorization": f"Bearer {PLATFORM}"}
    staff = {"Authorization": f"Bearer {STAFF}"}
    members = ["ammerbuch", "rheinfelden-baden", "goeppingen", "lemgo"]
    bodies = [
        member_body("ammerbuch", "2015-01-01", mentor_capacity=2),
        member_body("rheinfelden-baden", "2016-01-01", population=34_000, lat=47.56, lon=7.78),
        member_body("goeppingen", "2024-03-01", seeks_tandem=True),
        member_body("lemgo", "2024-05-01", seeks_tandem=True, state="DE-NW", lat=52.03, lon=8.9),
    ]
    for body in bodies:
        response = await http.post("/api/members", json=body, headers=platform)
        assert response.status_code == 201, response.text

    async def two_pending() -> list[str] | None:
        response = await http.get("/api/proposals", params={"status": "pending"}, headers=staff)
        ids = [p["proposal_id"] for p in response.json()["items"]]
        return ids if len(ids) >= 2 else None

    proposals = await eventually(two_pending, "two pending proposals")
    advice = await http.post(
        "/api/advice-requests",
        json={"city_id": "goeppingen", "topics": ["democracy"], "k": 2},
        headers=staff,
    )
    assert advice.status_code == 201, advice.text
    document = (await http.get("/openapi.json")).json()
    operations = [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    return World(
        node=node,
        http=http,
        operations=operations,
        members=members,
        proposals=proposals,
        advice_requests=[advice.json()["request_id"]],
        max_body=node.settings.max_body_bytes,
    )


# ---------------------------------------------------------------------------------------------
# Strategies

HUGE_INTEGERS = st.sampled_from(
    [2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 10**300]
)
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
STRINGS = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=20),
    SURROGATES,
    st.sampled_from(
        ["", " ", "\x00", "a" * 5000, "null", "1e400", "NaN", "../../etc/passwd", "'; DROP TABLE",
         "Zürich ✓ 🙂", "\u202e", "pending", "digitalisation", "DE-BW", "2024-02-30",
         "goeppingen", "GOEPPINGEN", "ammerbuch"]
    ),
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTEGERS,
    st.floats(allow_nan=True, allow_infinity=True),
    STRINGS,
)
JSON_JUNK = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(STRINGS, children, max_size=5),
    ),
    max_leaves=20,
)


def _raw_bodies() -> st.SearchStrategy[bytes]:
    """Bodies no JSON encoder writes: broken syntax, deep nesting, endless digits, bad UTF-8."""
    return st.one_of(
        st.binary(max_size=200),
        st.integers(1, 20_000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.integers(1, 20_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
        st.integers(4_000, 50_000).map(lambda digits: b'{"population": ' + b"9" * digits + b"}"),
        st.sampled_from(
            [b"", b"{", b"null", b"[]", b'"text"', b"\xff\xfe{}", b'{"id": "\xc3("}',
             b'{"a": NaN, "b": -Infinity}', b'{"k": 1e99999}', b'{"a":1,"a":2}', b"\x00" * 64]
        ),
    )  # fmt: skip


def _templates(world: World) -> dict[tuple[str, str], dict[str, Any]]:
    """A valid body per route, to mutate: junk in single fields gets past the first parse."""
    return {
        ("POST", "/api/members"): member_body("fuzz-city", "2020-01-01"),
        ("PATCH", "/api/members/{member_id}"): {"mentor_capacity": 2, "name": "Neu"},
        ("POST", "/api/members/{member_id}/leave"): {"reason": "Fusion"},
        ("POST", "/api/proposals/{proposal_id}/accept"): {"reason": ""},
        ("POST", "/api/proposals/{proposal_id}/reject"): {"reason": "zu weit"},
        ("POST", "/api/proposals/{proposal_id}/choose"): {"mentor_id": world.members[1]},
        ("PUT", "/api/pairs/{newcomer_id}/{mentor_id}"): {"rule": "forbidden"},
        ("POST", "/api/advice-requests"): {"city_id": "goeppingen", "topics": ["democracy"]},
        ("POST", "/api/plans/preview"): {"weights": {"topics": 1, "geography": 2}},
        ("PUT", "/api/weights"): {"weights": {"topics": 1, "geography": 2}, "reason": "Test"},
    }


def _body(template: dict[str, Any] | None) -> st.SearchStrategy[tuple[str, Any]]:
    """("json", value), ("raw", bytes) or ("none", None)."""
    options: list[st.SearchStrategy[tuple[str, Any]]] = [
        JSON_JUNK.map(lambda value: ("json", value)),
        _raw_bodies().map(lambda raw: ("raw", raw)),
        st.just(("none", None)),
    ]
    if template is not None:
        keys = st.one_of(st.sampled_from(sorted(template)), STRINGS)
        mutated = st.tuples(
            st.dictionaries(keys, JSON_JUNK, min_size=1, max_size=3),
            st.sets(st.sampled_from(sorted(template)), max_size=2),
        ).map(
            lambda change: (
                "json",
                {k: v for k, v in {**template, **change[0]}.items() if k not in change[1]},
            )
        )
        options = [mutated, mutated, *options]
    return st.one_of(options)


def _path_value(world: World, name: str) -> st.SearchStrategy[str]:
    known = {
        "member_id": world.members,
        "newcomer_id": world.members,
        "mentor_id": world.members,
        "proposal_id": world.proposals,
        "request_id": world.advice_requests,
    }.get(name, world.members)
    return st.one_of(
        st.sampled_from(known),
        STRINGS,
        st.integers().map(str),
        HUGE_INTEGERS.map(str),
        st.sampled_from(["..", ".", "%00", "%2F", "a/b", "?x=1", "#", " ", "x" * 300]),
    )


def _query_value() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-5, 2000).map(str),
        HUGE_INTEGERS.map(str),
        st.floats().map(str),
        STRINGS,
        st.sampled_from(["pending", "accepted", "rejected", "superseded", "withdrawn", "ALL"]),
    )


def _authorization() -> st.SearchStrategy[bytes | None]:
    """Valid tokens of every role, and everything that must not pass for one."""
    valid = st.sampled_from([f"Bearer {t}".encode() for t in VALID_TOKENS.values()])
    invalid = st.one_of(
        st.none(),
        st.sampled_from(
            [b"", b"Bearer", b"Bearer ", b"Basic " + PLATFORM.encode(), STAFF.encode(),
             b"Bearer " + STAFF[:-1].encode(), b"Bearer " + STAFF.encode() + b"x",
             b"Bearer " + STAFF.upper().encode(), b"Bearer \xe4\xf6\xfc\xff",
             b"Bearer " + b"z" * 4000, b"Bearer\t" + STAFF.encode() + b"\t"]
        ),
        st.binary(max_size=60).map(
            lambda raw: b"Bearer " + bytes(c for c in raw if c >= 0x20 and c != 0x7F)
        ),
    )  # fmt: skip
    # HTTP drops whitespace around a header value, and httpx refuses to send it.
    return st.one_of(valid, valid, invalid.map(lambda raw: raw.strip() if raw else raw))


def _quoted(value: str) -> str:
    """Percent-encoded, lone surrogates included (as their UTF-8-like bytes)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _is_valid(authorization: bytes | None) -> bool:
    if authorization is None:
        return False
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and token.strip() in VALID_TOKENS.values()


CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "application/json", "text/plain",
     "application/json; charset=latin-1", "multipart/form-data; boundary=x",
     "application/x-www-form-urlencoded", "application/merge-patch+json", "*/*"]
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Fuzzing


@MODULE_LOOP
@settings(
    max_examples=14,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    # No shrinking: an example is a request to every route, and shrinking one takes minutes.
    # A failure is reported as found, with the request that failed in its notes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(data=st.data())
async def test_every_route_answers_junk_without_a_server_error(
    world: World, data: st.DataObject
) -> None:
    """Each example sends one fuzzed request to every operation of the OpenAPI document: junk
    and mutated bodies, random path and query parameters, valid and invalid tokens. No answer
    is a 5xx; an invalid token never gets a 2xx or a 403; every 4xx of the API is FastAPI's
    ``{"detail": ...}``."""
    templates = _templates(world)
    for method, path, operation in world.operations:
        params = operation.get("parameters", [])
        url = path
        for param in (p for p in params if p["in"] == "path"):
            value = data.draw(_path_value(world, param["name"]), label=param["name"])
            url = url.replace("{" + param["name"] + "}", _quoted(value))
        declared = [p["name"] for p in params if p["in"] == "query"]
        names = st.sampled_from([*declared, "limit", "offset", "status", "newcomer_id", "x"])
        query = data.draw(st.lists(st.tuples(names, _query_value()), max_size=4), label="query")
        if query:
            url += "?" + "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in query)
        authorization = data.draw(_authorization(), label="authorization")
        headers: dict[bytes, bytes] = {}
        if authorization is not None:
            headers[b"Authorization"] = authorization
        content: bytes | None = None
        if method in {"POST", "PUT", "PATCH"} or data.draw(st.booleans(), label="get body"):
            kind, value = data.draw(_body(templates.get((method, path))), label="body")
            if kind == "json":
                content = json.dumps(value).encode()
            elif kind == "raw":
                content = value
            content_type = data.draw(CONTENT_TYPES, label="content type")
            if content_type is not None:
                headers[b"Content-Type"] = content_type.encode()
        note(f"{method} {url} {headers!r} {content[:300] if content else content!r}")
        response = await world.http.request(method, url, headers=headers, content=content)
        if path == "/ready" and response.status_code == 503:
            # Not ready is an answer: the relay saw a transient broker error a moment ago.
            assert response.json()["ready"] is False
        else:
            assert response.status_code < 500, (method, url, response.status_code, response.text)
        if path.startswith("/api/") and not _is_valid(authorization):
            assert response.status_code not in {200, 201, 204, 403}, (method, url, response.text)
        if path.startswith("/api/") and 400 <= response.status_code < 500:
            if response.headers.get("content-type", "").startswith("application/json"):
                assert "detail" in response.json(), (method, url, response.text)


@MODULE_LOOP
async def test_openapi_lists_the_routes_and_the_node_still_serves(world: World) -> None:
    """The document the fuzzing walks lists the services' routes, and the node serves and is
    ready once the fuzzing is over."""
    paths = {p for _, p, _ in world.operations}
    assert {"/api/members", "/api/members/{member_id}", "/api/proposals/{proposal_id}/reject",
            "/api/advice-requests", "/api/matcher/status", "/health", "/ready",
            "/metrics"} <= paths  # fmt: skip
    assert (await world.http.get("/health")).status_code == 200

    async def ready() -> bool:
        return (await world.http.get("/ready")).status_code == 200

    await eventually(ready, "the node to be ready")
    staff = {"Authorization": f"Bearer {STAFF}"}
    listed = await world.http.get("/api/members", headers=staff, params={"limit": 1000})
    assert listed.status_code == 200
    assert set(world.members) <= {m["id"] for m in listed.json()["items"]}


# ---------------------------------------------------------------------------------------------
# Oversized bodies


def _padded_member(member_id: str, size: int) -> bytes:
    """A valid registration body, padded with JSON whitespace to ``size`` bytes."""
    body = json.dumps(member_body(member_id, "2019-01-01")).encode()
    assert len(body) < size
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def _chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@MODULE_LOOP
async def test_oversized_bodies_are_refused_with_413_declared_or_streamed(world: World) -> None:
    """A body over the limit gets 413 whether its Content-Length is declared or it arrives
    chunked without one, on every route that takes a body; nothing is stored; a body at the
    limit is read as usual; the connection keeps serving."""
    platform = {"Authorization": f"Bearer {PLATFORM}", "Content-Type": "application/json"}
    staff = {"Authorization": f"Bearer {STAFF}"}
    staff_json = {**staff, "Content-Type": "application/json"}
    limit = world.max_body

    exact = _padded_member("exact-fit", limit)
    assert len(exact) == limit
    stored = await world.http.post("/api/members", content=exact, headers=platform)
    assert stored.status_code == 201, stored.text

    for member_id, streamed in (("declared-big", False), ("streamed-big", True)):
        body = _padded_member(member_id, limit + 1)
        response = await world.http.post(
            "/api/members", content=_chunks(body) if streamed else body, headers=platform
        )
        assert response.status_code == 413, (member_id, response.status_code, response.text)
        assert "larger than" in response.json()["detail"]
        if streamed:
            assert "content-length" not in response.request.headers
            assert response.request.headers["transfer-encoding"] == "chunked"
        else:
            assert response.request.headers["content-length"] == str(limit + 1)
        missing = await world.http.get(f"/api/members/{member_id}", headers=staff)
        assert missing.status_code == 404, "a refused body must not be stored"

    junk = b'{"reason": "' + b"x" * (3 * limit) + b'"}'
    for method, path, _ in world.operations:
        if method not in {"POST", "PUT", "PATCH"}:
            continue
        url = path.format(
            member_id="ammerbuch", proposal_id=world.proposals[0], newcomer_id="goeppingen",
            mentor_id="ammerbuch",
        )  # fmt: skip
        for content in (junk, _chunks(junk)):
            response = await world.http.request(method, url, content=content, headers=staff_json)
            assert response.status_code == 413, (method, path, response.status_code)
    # A declared length over the limit is refused before the body or the token is looked at.
    anonymous = await world.http.post(
        "/api/members", content=b"x" * (limit + 1), headers={"Content-Type": "application/json"}
    )
    assert anonymous.status_code == 413
    assert (await world.http.get("/health")).status_code == 200


# ---------------------------------------------------------------------------------------------
# Tokens in constant time


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[bytes, bytes]]]:
    """Every ``hmac.compare_digest`` call made while the test runs, as (known, given)."""
    calls: list[tuple[bytes, bytes]] = []
    original: Callable[[Any, Any], bool] = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    yield calls


def test_token_lookup_compares_every_entry_in_constant_time(
    comparisons: list[tuple[bytes, bytes]],
) -> None:
    """A right token, the first or the last, costs as many comparisons as a wrong one: the
    lookup never stops early, and it compares bytes with ``hmac.compare_digest``."""
    book = TokenBook.parse(TOKENS)
    known = [PLATFORM, STAFF, COORDINATOR]
    for token, role in ((PLATFORM, "platform"), (COORDINATOR, "coordinator"),
                        ("wrong-token-x", None), ("", None), ("äöü-not-ascii", None),
                        (PLATFORM[:-1], None)):  # fmt: skip
        comparisons.clear()
        principal = book.lookup(token)
        assert (principal.role if principal else None) == role
        assert len(comparisons) == len(known), token
        assert sorted(a for a, _ in comparisons) == sorted(t.encode() for t in known)
        assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in comparisons)


@MODULE_LOOP
async def test_http_requests_with_right_and_wrong_tokens_compare_alike(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the HTTP edge, too: a request with a wrong token makes as many comparisons as one
    with the right token."""
    counts: dict[str, int] = {}
    original = hmac.compare_digest
    calls = 0

    def counting(a: Any, b: Any) -> bool:
        nonlocal calls
        calls += 1
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for label, token in (("staff", STAFF), ("wrong", "x" * len(STAFF)), ("short", "x")):
        calls = 0
        response = await world.http.get(
            "/api/matcher/status", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == (200 if label == "staff" else 401)
        counts[label] = calls
    assert counts["staff"] == counts["wrong"] == counts["short"] == len(VALID_TOKENS)


# ---------------------------------------------------------------------------------------------
# Contact data stays out of events and logs

SECRET_CONTACTS = [
    {"name": "Quirin Vertraulich-Öztürk", "email": "quirin.geheimpost@vertraulich-mail.example"},
    {"name": "Xaveria Diskret-Laß", "email": "xaveria.privat77@diskret-mail.example"},
    {"name": "Yorick Nichtöffentlich", "email": "yorick.ungenannt@verborgen-mail.example"},
    {"name": "Zenzi Umgezogen-Nachname", "email": "zenzi.neueadresse@umzug-mail.example"},
    {"name": "Wendelin Abgelehnt-Person", "email": "wendelin.abgewiesen@refused-mail.example"},
]
SECRET_PARTNERS = [
    "Stiftung Verschwiegenheit Quirinsheim",
    "Bürgerverein Heimlichkeit Xaverhausen",
    "Rathaus Diskretion Yorickstadt",
    "Firma Schweigsam Zenzingen GmbH",
]


def _partners(first: str, second: str) -> list[dict[str, str]]:
    return [
        {"name": first, "sector": "civil_society"},
        {"name": second, "sector": "administration"},
        {"name": "Stadtwerke", "sector": "business"},
    ]


def _secrets() -> list[str]:
    """Every personal string, and ASCII fragments that survive JSON's \\u escapes."""
    found: list[str] = []
    for contact in SECRET_CONTACTS:
        found += [contact["name"], contact["email"], contact["email"].split("@")[0]]
        found += [part for part in contact["name"].replace("-", " ").split() if part.isascii()]
    for partner in SECRET_PARTNERS:
        found += [partner, *(w for w in partner.split() if w.isascii() and len(w) > 8)]
    return sorted(set(found))


async def _every_record(bootstrap: str) -> dict[str, list[str]]:
    """Each topic on the broker, read from the start to its current end: key, value and header
    text of every record (raw, and JSON-decoded so that escaped umlauts compare too)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    texts: dict[str, list[str]] = {}
    try:
        topics = sorted(await consumer.topics())
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        for topic in topics:
            texts[topic] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        deadline = time.monotonic() + 30
        while await behind():
            assert time.monotonic() < deadline, "timed out reading every topic"
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                for message in messages:
                    parts = [message.key or b"", message.value or b""]
                    parts += [value for _, value in message.headers or ()]
                    for raw in parts:
                        text = raw.decode("utf-8", errors="replace")
                        texts[tp.topic].append(text)
                        try:
                            decoded = json.loads(text)
                        except ValueError:
                            continue
                        texts[tp.topic].append(json.dumps(decoded, ensure_ascii=False))
    finally:
        await consumer.stop()
    return texts


def _at_least(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda records: len(records) >= count


def _log_text(record: logging.LogRecord) -> str:
    """All of a record: its message, arguments, ``extra`` fields and traceback."""
    text = [record.getMessage(), repr(record.args)]
    text += [repr(v) for k, v in vars(record).items() if k not in {"msg", "args"}]
    if record.exc_info:
        text.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(text)


class _Recorder(logging.Handler):
    """Keeps every record it is handed, once :meth:`start` has set logging up."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.tapped: list[logging.Logger] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def start(self) -> None:
        """Logging as ``tandem up`` sets it up at its most verbose (``TANDEM_LOG_LEVEL=DEBUG``:
        the root logger at DEBUG, so also every logger of the services and of libraries that
        leave their level unset; the client libraries the product quiets, and SQLAlchemy,
        which sets its own WARNING, as configured), plus uvicorn's access log switched on.
        Called in the test itself: pytest sets the root level again when a test starts."""
        root = logging.getLogger()
        configure_logging("DEBUG", json_lines=True)
        root.handlers[:] = [self]
        for name in list(logging.root.manager.loggerDict):
            logger = logging.getLogger(name)
            if name.startswith("services.") or name == "uvicorn.access":
                logger.setLevel(logging.DEBUG)
            if not logger.propagate:  # uvicorn's loggers: records never reach the root
                logger.addHandler(self)
                self.tapped.append(logger)


@pytest.fixture
def every_log(node: Node) -> Iterator[_Recorder]:
    """A recorder of every log record (see :meth:`_Recorder.start`); logging as it was after."""
    root = logging.getLogger()
    loggers = [root] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    levels = {logger: logger.level for logger in loggers}
    handlers = root.handlers[:]
    recorder = _Recorder()
    try:
        yield recorder
    finally:
        root.handlers[:] = handlers
        for logger in recorder.tapped:
            logger.removeHandler(recorder)
        for name in list(logging.root.manager.loggerDict):
            logger = logging.getLogger(name)
            logger.setLevel(levels.get(logger, logging.NOTSET))
        root.setLevel(levels[root])


async def test_contact_data_reaches_no_event_and_no_log_line(
    node: Node, every_log: _Recorder
) -> None:
    """Members with distinctive contacts and partners register, change their contact, leave;
    a registration is refused and one collides; staff decide proposals; advice is asked for.
    Afterwards no record on any topic and no log record contains any of that data."""
    assert node.settings.broker is not None
    bootstrap = node.settings.broker
    every_log.start()
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    async with (
        httpx.AsyncClient(base_url=node.url, timeout=30,
                          headers={"Authorization": f"Bearer {PLATFORM}"}) as platform,
        httpx.AsyncClient(base_url=node.url, timeout=30,
                          headers={"Authorization": f"Bearer {STAFF}"}) as staff,
    ):  # fmt: skip
        members = [
            member_body("ammerbuch", "2015-01-01", contact=SECRET_CONTACTS[0],
                        partners=_partners(SECRET_PARTNERS[0], SECRET_PARTNERS[1])),
            member_body("rheinfelden-baden", "2016-01-01", population=34_000, lat=47.56,
                        lon=7.78, contact=SECRET_CONTACTS[1]),
            member_body("goeppingen", "2024-03-01", seeks_tandem=True,
                        contact=SECRET_CONTACTS[2],
                        partners=_partners(SECRET_PARTNERS[2], "Rathaus")),
            member_body("lemgo", "2020-01-01", state="DE-NW", lat=52.03, lon=8.9),
        ]  # fmt: skip
        for body in members:
            response = await platform.post("/api/members", json=body)
            assert response.status_code == 201, response.text
        refused = await platform.post(
            "/api/members",
            json=member_body("kleinstadt", "2020-01-01", population=500,
                             contact=SECRET_CONTACTS[4]),
        )  # fmt: skip
        assert refused.status_code == 422
        collision = await platform.post(
            "/api/members", json=member_body("lemgo", "2020-01-01", contact=SECRET_CONTACTS[4])
        )
        assert collision.status_code == 409
        shown = (await staff.get("/api/members/ammerbuch")).json()
        assert shown["contact"] == SECRET_CONTACTS[0], "the API is where contact data is shown"

        async def pending() -> dict[str, Any] | None:
            items = (await staff.get("/api/proposals", params={"status": "pending"})).json()
            return items["items"][0] if items["items"] else None

        first = await eventually(pending, "a first proposal")
        rejected = await staff.post(
            f"/api/proposals/{first['proposal_id']}/reject", json={"reason": "zu weit weg"}
        )
        assert rejected.status_code == 200
        second = await eventually(pending, "a second proposal")
        assert (await staff.post(f"/api/proposals/{second['proposal_id']}/accept")).is_success

        patched = await platform.patch(
            "/api/members/rheinfelden-baden",
            json={"contact": SECRET_CONTACTS[3], "mentor_capacity": 2,
                  "partners": _partners(SECRET_PARTNERS[3], "Rathaus")},
        )  # fmt: skip
        assert patched.status_code == 200, patched.text
        left = await platform.post("/api/members/lemgo/leave", json={"reason": "Austritt"})
        assert left.status_code == 200 and left.json()["status"] == "left"
        coordinator = {"Authorization": f"Bearer {COORDINATOR}"}
        advice = await staff.post(
            "/api/advice-requests",
            json={"city_id": "goeppingen", "topics": ["democracy"], "k": 2},
            headers=coordinator,
        )
        assert advice.status_code == 201, advice.text

    # Everything above has reached the broker before it is searched.
    expected = {
        "city.joined": 4, "city.updated": 1, "city.left": 1, "tandem.proposed": 2,
        "tandem.decided": 2, "advice.requested": 1, "advice.matched": 1,
    }  # fmt: skip
    for topic, count in expected.items():
        await read_topic(bootstrap, topic, _at_least(count))
    records = await _every_record(bootstrap)
    assert set(expected) <= set(records), sorted(records)
    assert any('"id": "ammerbuch"' in text for text in records["city.joined"]), "records read"
    secrets = _secrets()
    assert len(secrets) > 20
    for topic, texts in records.items():
        for text in texts:
            leaked = [s for s in secrets if s in text]
            assert not leaked, f"{leaked} on {topic}: {text[:500]}"

    logged = every_log.records
    assert any(r.name == "services.registry.service" for r in logged), "logs were recorded"
    assert any(r.name == "uvicorn.access" for r in logged), "the access log was recorded"
    assert logging.getLogger("services.registry.service").isEnabledFor(logging.DEBUG)
    leaks: dict[str, list[str]] = {}
    for record in logged:
        text = _log_text(record)
        leaked = [s for s in secrets if s in text]
        if leaked:
            leaks.setdefault(record.name, []).append(f"{leaked}: {record.getMessage()[:300]}")
    assert not leaks, leaks
