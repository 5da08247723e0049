"""``tandem up --seed``: load the bundled network into an empty registry."""

from __future__ import annotations

from sqlalchemy import func, select

from services.demo.network import load_network
from services.registry import tables
from services.registry.service import RegistryService


async def seed_registry(registry: RegistryService) -> int:
    """Register every bundled member if the registry is empty; returns how many."""
    async with registry.engine.connect() as connection:
        present = await connection.scalar(select(func.count()).select_from(tables.members))
    if present:
        return 0
    members = load_network()
    for member in members:
        await registry.admit(member.registration, actor="seed")
    return len(members)
