"""``insert_rows`` hands SQLite's driver exactly what SQLAlchemy's ``execute(insert(...))``
would: the same rows, as stored and as read back, for every type the matcher's bulk writes
use (text, numbers, NULLs, dates, aware timestamps, booleans, JSON lists)."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.db import insert_rows, make_engine, migrate
from services.matcher import tables
from services.matcher.service import MIGRATIONS

WORDS = ["", "Göppingen", 'a"b', "back\\slash", "\u00e9\u0301", "😀", "x" * 200, "null", "[1]"]


def member_rows(seed: int, count: int) -> list[dict[str, Any]]:
    """``count`` member rows with values drawn per column; in odd seeds every row shares one
    timestamp (a batch's), in even ones each has its own, in various time zones."""
    rng = random.Random(seed)
    shared = dt.datetime(2026, 12, 1, 19, 0, 1, 123456, tzinfo=dt.UTC)

    def words() -> list[str]:
        return rng.sample(WORDS, rng.randint(0, 3))

    def instant() -> dt.datetime:
        zone = dt.timezone(dt.timedelta(hours=rng.choice([0, 2, -5])))
        return dt.datetime(2000, 1, 1, tzinfo=zone) + dt.timedelta(seconds=rng.random() * 3e9)

    return [
        {
            "id": f"m-{seed}-{i}", "name": rng.choice(WORDS), "kind": rng.choice(["a", "b"]),
            "state": "DE-BW", "region": "south", "population": rng.randint(0, 5_000_000),
            "lat": rng.choice([None, rng.uniform(-90, 90)]),
            "lon": rng.choice([None, rng.uniform(-180, 180)]),
            "joined": dt.date(1990, 1, 1) + dt.timedelta(days=rng.randint(0, 20_000)),
            "interests": words(), "strengths": words(), "wishes": words(), "estimated": [],
            "mentor_capacity": rng.randint(0, 5), "seeks_tandem": rng.random() < 0.5,
            "status": rng.choice(["active", "left"]), "revision": rng.randint(1, 9),
            "updated_at": shared if seed % 2 else instant(), "change_seq": i,
        }
        for i in range(count)
    ]  # fmt: skip


async def _engine(path: Path) -> AsyncEngine:
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    await migrate(engine, MIGRATIONS, "alembic_version_matcher")
    return engine


async def _stored(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    """The rows as SQLite stores them (raw values) and as SQLAlchemy reads them back."""
    async with engine.connect() as connection:
        raw = await connection.exec_driver_sql("SELECT * FROM matcher_members ORDER BY id")
        typed = await connection.execute(select(tables.members).order_by(tables.members.c.id))
        return [tuple(r) for r in raw.all()], [tuple(r) for r in typed.all()]


async def test_rows_are_stored_as_sqlalchemy_stores_them(tmp_path: Path) -> None:
    fast, reference = await _engine(tmp_path / "fast.db"), await _engine(tmp_path / "ref.db")
    try:
        for seed in range(8):
            rows = member_rows(seed, 150 + seed)
            async with fast.begin() as connection:
                await connection.execute(delete(tables.members))
                await insert_rows(connection, tables.members, rows)
            async with reference.begin() as connection:
                await connection.execute(delete(tables.members))
                await connection.execute(insert(tables.members), rows)
            stored = await _stored(fast)
            assert len(stored[0]) == len(rows)
            assert stored == await _stored(reference), f"seed {seed}"
    finally:
        await fast.dispose()
        await reference.dispose()


async def test_a_column_left_to_its_python_default_is_filled_in(tmp_path: Path) -> None:
    # The outbox's ``attempts`` has a Python-side default: such rows go through SQLAlchemy.
    engine = await _engine(tmp_path / "m.db")
    try:
        now = dt.datetime.now(dt.UTC)
        rows = [
            {"event_id": f"e-{i}", "topic": "t", "key": "k", "payload": "{}", "created_at": now}
            for i in range(150)
        ]
        async with engine.begin() as connection:
            await insert_rows(connection, tables.outbox, rows)
        async with engine.connect() as connection:
            attempts = (await connection.execute(select(tables.outbox.c.attempts))).scalars().all()
        assert attempts == [0] * 150
    finally:
        await engine.dispose()
