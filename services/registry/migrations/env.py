"""Alembic environment of the registry's database."""

from services.infra.alembic_env import run_migrations
from services.registry.tables import metadata

run_migrations(metadata)
