"""The registry's tables (its own database; names do not clash with the matcher's)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from services.infra.deadletter import originals_table
from services.infra.member_columns import profile_columns
from services.infra.outbox import outbox_table

metadata = MetaData()

members = Table(
    "members",
    metadata,
    *profile_columns(),
    Column("contact", JSON(none_as_null=True), nullable=True),
    Column("partners", JSON, nullable=False),
    Column("exception_reason", Text, nullable=True),
    Column("status", String(10), nullable=False, default="active"),
    Column("revision", Integer, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

member_history = Table(
    "member_history",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("member_id", String(64), nullable=False, index=True),
    Column("action", String(20), nullable=False),
    Column("fields", JSON, nullable=False),
    Column("reason", Text, nullable=True),
    Column("actor", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

processed_events = Table(
    "registry_processed_events",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("topic", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # SHA-256 of what the event said: an id used again for other data is refused.
    Column("digest", String(64), nullable=True),
)

outbox = outbox_table(metadata, "registry_outbox")
dead_letter_originals = originals_table(metadata, "registry_dead_letter_originals")
