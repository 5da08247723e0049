"""The member profile columns both services store (each in its own table)."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Date, Float, Integer, String, text


def profile_columns() -> list[Column[object]]:
    """Fresh columns for a member's public profile (a Column belongs to one table)."""
    return [
        Column("id", String(64), primary_key=True),
        Column("name", String(200), nullable=False),
        Column("kind", String(20), nullable=False),
        Column("state", String(5), nullable=False),
        Column("region", String(5), nullable=False),
        Column("population", Integer, nullable=False),
        Column("lat", Float, nullable=True),
        Column("lon", Float, nullable=True),
        Column("joined", Date, nullable=False),
        Column("interests", JSON, nullable=False),
        Column("strengths", JSON, nullable=False),
        Column("mentor_capacity", Integer, nullable=False),
        Column("seeks_tandem", Boolean, nullable=False),
        Column("wishes", JSON, nullable=False, server_default=text("'[]'")),
        Column("estimated", JSON, nullable=False, server_default=text("'[]'")),
    ]
