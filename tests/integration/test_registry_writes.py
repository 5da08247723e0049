"""The registry's write path on SQLite (its one connection) and PostgreSQL: registrations in
three statements, concurrent ones sharing a transaction, duplicates refused by the primary key."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.member import MemberRegistration
from services.infra.db import make_engine, migrate
from services.registry import store, tables
from services.registry.service import MIGRATIONS
from tests.conftest import member_body

TODAY = dt.date(2026, 1, 1)


@pytest.fixture
async def engine(tmp_path: Path, database_url: str | None) -> AsyncIterator[AsyncEngine]:
    """The registry's engine as the service makes it (one connection on SQLite)."""
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url, one_connection=True)
    await migrate(engine, MIGRATIONS, "alembic_version_registry")
    yield engine
    await engine.dispose()


def _member(member_id: str) -> MemberRegistration:
    return MemberRegistration.model_validate(member_body(member_id, "2020-01-01"))


def _record(engine: AsyncEngine, kind: str) -> list[str]:
    """Collects the SQL statements (``kind="statement"``) or commits the engine runs."""
    seen: list[str] = []
    if kind == "statement":

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
            seen.append(sql.split()[0].upper())

    else:

        @event.listens_for(engine.sync_engine, "commit")
        def commit(_conn: Any) -> None:
            seen.append("COMMIT")

    return seen


async def _count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def test_a_registration_is_three_inserts_and_a_duplicate_adds_nothing(
    engine: AsyncEngine,
) -> None:
    statements = _record(engine, "statement")
    row = await store.register(engine, _member("goeppingen"), "test", TODAY)
    assert row["id"] == "goeppingen" and row["revision"] == 1
    assert statements == ["INSERT", "INSERT", "INSERT"]  # member, history, outbox; no SELECT

    statements.clear()
    with pytest.raises(store.DuplicateMember):
        await store.register(engine, _member("goeppingen"), "test", TODAY)
    assert statements == ["INSERT"]  # the primary key refuses it; nothing else is written
    assert await _count(engine, tables.members) == 1
    assert await _count(engine, tables.member_history) == 1
    assert await _count(engine, tables.outbox) == 1


async def test_concurrent_registrations_share_commits_and_each_id_is_stored_once(
    engine: AsyncEngine,
) -> None:
    await store.register(engine, _member("existing"), "test", TODAY)
    commits = _record(engine, "commit")
    ids = [f"city-{k}" for k in range(40)] + [f"city-{k}" for k in range(5)] + ["existing"]

    outcomes = await asyncio.gather(
        *(store.register(engine, _member(member_id), "test", TODAY) for member_id in ids),
        return_exceptions=True,
    )

    stored = [o["id"] for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, store.DuplicateMember)]
    assert sorted(stored) == sorted(f"city-{k}" for k in range(40))
    assert sorted(str(e) for e in refused) == sorted([*(f"city-{k}" for k in range(5)),
                                                      "existing"])  # fmt: skip
    assert len(stored) + len(refused) == len(ids)
    # The registrations that waited went together: far fewer commits than registrations.
    assert 1 <= len(commits) <= 5, commits
    assert await _count(engine, tables.members) == 41
    assert await _count(engine, tables.member_history) == 41
    assert await _count(engine, tables.outbox) == 41
    async with engine.connect() as connection:
        keys = (await connection.execute(select(tables.outbox.c.key))).scalars().all()
    assert sorted(keys) == sorted(["existing", *(f"city-{k}" for k in range(40))])


async def test_a_failing_batch_fails_only_the_registration_that_broke_it(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.public_member

    def breaks_on_one(row: Any) -> Any:
        if row["id"] == "city-3":
            raise RuntimeError("this one cannot be published")
        return real(row)

    monkeypatch.setattr(store, "public_member", breaks_on_one)
    outcomes = await asyncio.gather(
        *(store.register(engine, _member(f"city-{k}"), "test", TODAY) for k in range(8)),
        return_exceptions=True,
    )

    failed = [k for k, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [3]
    assert isinstance(outcomes[3], RuntimeError)
    assert await _count(engine, tables.members) == 7  # the failed one rolled back with nothing
    assert await _count(engine, tables.outbox) == 7
