"""The body of every service's Alembic ``env.py``: run migrations on the given connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData


def run_migrations(target_metadata: MetaData) -> None:
    """Run the migrations on the connection handed over by :func:`services.infra.db.migrate`."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "Tandem migrations run at service start (services.infra.db.migrate), "
            "not from the alembic command line"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
