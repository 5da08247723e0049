"""Autogenerate an Alembic revision for a service from its table definitions.

    python tools/make_migration.py registry "add member history"

Compares the tables with an empty (or current) SQLite database and writes the difference to the
service's ``migrations/versions``. Review the file before committing it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine


def main(service: str, message: str) -> None:
    """Write a new revision for ``service`` (registry or matcher)."""
    migrations = Path(__file__).resolve().parents[1] / "services" / service / "migrations"
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/db.sqlite")
        config = Config()
        config.set_main_option("script_location", str(migrations))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            config.attributes["version_table"] = f"alembic_version_{service}"
            command.upgrade(config, "head")
            command.revision(config, message=message, autogenerate=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
