"""Alembic environment of the matcher's database."""

from services.infra.alembic_env import run_migrations
from services.matcher.tables import metadata

run_migrations(metadata)
