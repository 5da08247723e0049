"""Database engines and Alembic migrations, for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import json
import logging
import socket
import zlib
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


def dumps_json(value: Any) -> str:
    """``json.dumps(value)``, the text JSON columns store. A list of plain strings (topics,
    wishes: four columns of every member row) is written directly, as ``json.dumps`` writes
    it, without building an encoder per value."""
    if type(value) is list and all(type(item) is str for item in value):
        return "[" + ", ".join(map(encode_basestring_ascii, value)) + "]"
    return json.dumps(value)


def make_engine(url: str, *, one_connection: bool = False) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout, foreign keys and ``secure_delete``
    (erased data is overwritten with zeros, not left in free space); PostgreSQL a pool that
    tests each connection before use (a connection the server dropped is replaced).

    ``one_connection`` (SQLite only): every transaction goes through one connection, taken in
    turn from the pool. SQLite has one writer at a time anyway; connections racing for its lock
    wait in its busy handler (sleeps of up to 100 ms, not woken when the lock frees), which
    under concurrent writes costs throughput and gives seconds of tail latency. Waiting for the
    pool's one connection is an asyncio wait, served in order. A caller must then not open a
    second connection while it holds one."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        memory = not path or path == ":memory:"
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        pool: dict[str, Any] = (
            {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60}
            if one_connection and not memory
            else {}
        )
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, json_serializer=dumps_json, **pool
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return create_async_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, json_serializer=dumps_json
    )


#: SQLSTATE classes of a server that is away or busy for a moment: connection exceptions,
#: operator intervention (shutdown, starting up), insufficient resources (too many
#: connections), and a serialization failure or deadlock (the transaction was rolled back).
_TRANSIENT_SQLSTATES = ("08", "57P", "53", "40001", "40P01")


def is_connection_loss(error: BaseException) -> bool:
    """Whether ``error`` says the database is away or busy for a moment (a dropped or refused
    connection, a failover, a pool timeout, SQLite's lock) rather than that the statement was
    wrong: worth a retry, and never the client's fault."""
    if isinstance(error, DBAPIError):
        sqlstate = str(getattr(error.orig, "sqlstate", None) or "")
        return (
            error.connection_invalidated
            or isinstance(error, OperationalError | InterfaceError)
            or sqlstate.startswith(_TRANSIENT_SQLSTATES)
        )
    # A connection refused, reset or timed out (asyncpg raises these unwrapped), a name that
    # does not resolve, or the plain OSError asyncpg raises when every address failed.
    return isinstance(error, PoolTimeout | ConnectionError | TimeoutError | socket.gaierror) or (
        type(error) is OSError
    )


async def checkpoint_wal(engine: AsyncEngine) -> None:
    """SQLite: copy the write-ahead log into the database file and truncate it, so that data
    just erased (with ``secure_delete`` on) is gone from the ``-wal`` file too. A no-op on
    other databases."""
    if engine.dialect.name != "sqlite":
        return
    try:
        async with engine.connect() as connection:
            result = await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = result.scalar()
    except OperationalError as error:  # what was committed stays committed
        log.warning("WAL checkpoint failed: %s", error)
        return
    if busy:
        log.warning("WAL checkpoint incomplete: a reader held an older snapshot")


def is_postgres(engine: AsyncEngine) -> bool:
    """Whether ``engine`` talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


async def migrate(engine: AsyncEngine, migrations: Path, version_table: str) -> None:
    """Bring the schema to the newest Alembic revision of ``migrations``."""

    def upgrade(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(migrations))
        config.attributes["connection"] = connection
        config.attributes["version_table"] = version_table
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas start together: one migrates, the others wait and then find it done.
            key = zlib.crc32(version_table.encode())
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        await connection.run_sync(upgrade)
