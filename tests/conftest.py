"""Shared fixtures: a real embedded broker, a Tandem node, its settings and API clients.

The helpers (``eventually``, ``member_body``, ``read_topic``, ``group_caught_up``) live in
``tests/helpers.py`` and are re-exported here."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from services.infra.embedded_broker import EmbeddedBroker
from services.infra.settings import CommonSettings
from services.runtime import Node

# Shared helpers live in tests/helpers.py; re-exported here for ``from tests.conftest import``.
from tests.helpers import eventually as eventually
from tests.helpers import group_caught_up as group_caught_up
from tests.helpers import member_body as member_body
from tests.helpers import read_topic as read_topic

PLATFORM = "platform-token-for-tests"
STAFF = "staff-token-for-tests"
COORDINATOR = "coordinator-token-goeppingen"
TOKENS = f"platform:{PLATFORM},staff:{STAFF}:Erika Staff,coordinator:{COORDINATOR}:goeppingen"


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
