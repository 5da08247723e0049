"""Each service's Alembic migrations build exactly the tables its ``tables.py`` declares, in one
linear chain (several branches adding migrations in parallel must be re-chained, not forked)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from services.infra.db import migrate
from services.matcher import service as matcher_service
from services.matcher import tables as matcher_tables
from services.registry import service as registry_service
from services.registry import tables as registry_tables

SERVICES = {
    "registry": (registry_service.MIGRATIONS, registry_tables),
    "matcher": (matcher_service.MIGRATIONS, matcher_tables),
}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_one_head_and_one_chain(name: str) -> None:
    migrations, _tables = SERVICES[name]
    config = Config()
    config.set_main_option("script_location", str(migrations))
    script = ScriptDirectory.from_config(config)
    assert len(script.get_heads()) == 1, script.get_heads()
    revisions = list(script.walk_revisions())
    assert len(revisions) == len(list(migrations.joinpath("versions").glob("0*.py")))
    assert all(r.revision.startswith(f"{name}_") for r in revisions)


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_migrations_build_what_tables_declare(name: str, tmp_path: Path) -> None:
    migrations, tables = SERVICES[name]
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        await migrate(engine, migrations, f"alembic_version_{name}")
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences, tables)
    finally:
        await engine.dispose()
    assert differences == []


def _differences(connection: Connection, tables: ModuleType) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": False, "version_table": "ignored"}
    )
    found = compare_metadata(context, tables.metadata)
    # The version tables are Alembic's, not the service's.
    return [d for d in found if "alembic_version" not in repr(d)]
