"""The bare stack the registry is measured against: a FastAPI endpoint that validates a
``MemberRegistration`` (pydantic) and inserts one row into SQLite through one writer connection
(insert, commit), served by uvicorn as the registry is (``tandem registry``).

What the registry does beyond it (authentication, admission rules, the gazetteer, history and
outbox rows, its middleware, the relay and the consumer in the same process) is what
``registry.ratio`` prices. Run as ``python -m services.bench.reference --port P --database F``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import uvicorn
from fastapi import FastAPI

from schemas.member import MemberRegistration
from services.runtime import KEEP_ALIVE_SECONDS


def create_app(database: Path) -> FastAPI:
    """The reference app on the SQLite file ``database`` (WAL, ``synchronous=NORMAL``: the
    registry's settings)."""
    writer: list[aiosqlite.Connection] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        connection = await aiosqlite.connect(database)
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA synchronous=NORMAL")
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS members (id TEXT PRIMARY KEY, body TEXT NOT NULL)"
        )
        await connection.commit()
        writer.append(connection)
        try:
            yield
        finally:
            await connection.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/members", status_code=201)
    async def register(member: MemberRegistration) -> dict[str, str]:
        # The plain way: insert, commit. The connection's thread runs the calls in order, so
        # a commit also commits the inserts of concurrent requests queued before it.
        await writer[0].execute(
            "INSERT INTO members (id, body) VALUES (?, ?)", (member.id, member.model_dump_json())
        )
        await writer[0].commit()
        return {"id": member.id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.database), host="127.0.0.1", port=args.port, log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )  # fmt: skip


if __name__ == "__main__":
    main()
