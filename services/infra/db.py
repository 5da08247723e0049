"""Database engines and Alembic migrations, for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import functools
import json
import logging
import socket
import zlib
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, NamedTuple

from alembic import command
from alembic.config import Config
from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy import Select, Table, Text, bindparam, event, func, insert, select, text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


def dumps_json(value: Any) -> str:
    """The text JSON columns store: ``value`` as JSON that ``json.loads`` reads back as the
    value ``json.dumps`` would have written (non-ASCII text unescaped, no blanks between
    items), for objects with string keys, as every JSON column here holds. A list of plain
    strings (topics, wishes: four columns of every member row) is written directly; a dict or
    another list by pydantic's serializer in Rust (a proposal's alternatives in 6 µs instead
    of 25 µs with ``json.dumps``), and where that refuses a value, by ``json.dumps``, which
    then raises what it raises."""
    if type(value) is list:
        if not value:
            return "[]"
        try:  # strings only (the usual case); anything else raises TypeError here
            return "[" + ", ".join(map(encode_basestring_ascii, value)) + "]"
        except TypeError:
            pass
    if type(value) is dict or type(value) is list:
        try:
            return to_json(value, inf_nan_mode="constants").decode()
        except PydanticSerializationError:
            pass
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


def json_values(name: str) -> Select[Any]:
    """SQLite: the values of a JSON array bound as ``name``, as a subquery (``json_each``).
    ``column.in_(json_values("ids"))`` takes any number of values as one bound parameter
    (``{"ids": json.dumps(values)}``), where an expanding ``IN`` list costs SQLAlchemy a
    parameter each."""
    listed = func.json_each(bindparam(name, type_=Text)).table_valued("value")
    return select(listed.c.value)


@functools.lru_cache(maxsize=64)
def _driver_insert(table: Table, keys: tuple[str, ...], dialect: Dialect) -> _DriverInsert | None:
    """The INSERT of ``keys`` into ``table`` as the driver takes it, with each column's bind
    processor in parameter order; None where SQLAlchemy has to fill in a value (a column left
    out that has a Python-side default)."""
    if any(c.key not in keys and c.default is not None for c in table.c):
        return None
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
    if compiled.positiontup is None or set(compiled.positiontup) != set(keys):
        return None
    processors = tuple(
        (key, table.c[key].type.dialect_impl(dialect).bind_processor(dialect))
        for key in compiled.positiontup
    )
    return _DriverInsert(compiled.string, processors)


class _DriverInsert(NamedTuple):
    sql: str
    processors: tuple[tuple[str, Callable[[Any], Any] | None], ...]


async def insert_rows(
    connection: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``connection.execute(insert(table), rows)`` for many rows with the same keys. On SQLite
    the values go to the driver's ``executemany`` directly, converted column by column by the
    bind processor of each column's type (what SQLAlchemy applies, without its per-row
    parameter handling, which costs twice what SQLite spends on the rows: 10,000 member rows
    in 0.09 s instead of 0.15 s); elsewhere, and where SQLAlchemy must fill in defaults, as
    ``execute``."""
    if not rows:
        return
    dialect = connection.dialect
    plan = _driver_insert(table, tuple(rows[0]), dialect) if dialect.name == "sqlite" else None
    if plan is None:
        await connection.execute(insert(table), rows)
        return
    columns: list[list[Any]] = []
    for key, process in plan.processors:
        values = [row[key] for row in rows]
        if process is not None:
            first = values[0]
            if all(value is first for value in values):  # one timestamp for all, say
                values = [process(first)] * len(values)
            else:
                values = [process(value) for value in values]
        columns.append(values)
    await connection.exec_driver_sql(plan.sql, list(zip(*columns, strict=True)))


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
