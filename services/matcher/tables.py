"""The matcher's own database: its read model of members, proposals and decisions.

Table names do not clash with the registry's, so both may share one PostgreSQL database.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
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
    "matcher_members",
    metadata,
    *profile_columns(),
    Column("status", String(10), nullable=False),
    Column("revision", Integer, nullable=False, server_default="1"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The ``member_changes`` number of the transaction that last wrote the row: a solve reads
    # only the rows changed since its last (``replan._MemberCache``).
    Column("change_seq", BigInteger, nullable=False, server_default="0", index=True),
)

# One counter row ("members"): every transaction that writes members takes the next number
# first (the row stays locked until it commits, so numbers become visible in order).
member_changes = Table(
    "matcher_member_changes",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

# Members whose city.left arrived, kept apart so a late or replayed city.joined cannot bring
# them back.
departed = Table(
    "matcher_departed",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

proposals = Table(
    "proposals",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("proposal_id", String(36), nullable=False, unique=True),
    Column("newcomer_id", String(64), nullable=False, index=True),
    Column("mentor_id", String(64), nullable=False, index=True),
    Column("score", Float, nullable=False),
    Column("breakdown", JSON, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("alternatives", JSON, nullable=False),
    Column("supersedes", String(36), nullable=True),
    Column("status", String(12), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("decided_by", String(200), nullable=True),
    Column("decision_reason", Text, nullable=True),
    Column("ends_on", Date, nullable=True),
)

pair_rules = Table(
    "pair_rules",
    metadata,
    Column("newcomer_id", String(64), primary_key=True),
    Column("mentor_id", String(64), primary_key=True),
    Column("rule", String(10), nullable=False),  # "forbidden" or "pinned"
    Column("created_by", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

waiting = Table(
    "newcomer_status",
    metadata,
    Column("newcomer_id", String(64), primary_key=True),
    Column("status", String(30), nullable=False),
    Column("message", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

processed_events = Table(
    "matcher_processed_events",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("topic", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # SHA-256 of what the event said: an id used again for other data is refused.
    Column("digest", String(64), nullable=True),
)

solver_lock = Table(
    "solver_lock",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("generation", Integer, nullable=False),
)

outbox = outbox_table(metadata, "matcher_outbox")
dead_letter_originals = originals_table(metadata, "matcher_dead_letter_originals")

advice_requests = Table(
    "advice_requests",
    metadata,
    Column("request_id", String(36), primary_key=True),
    Column("city_id", String(64), nullable=False, index=True),
    Column("topics", JSON, nullable=False),
    Column("question", Text, nullable=False),
    Column("k", Integer, nullable=False),
    Column("source", String(10), nullable=False),  # "http" or "event"
    Column("requested_by", String(200), nullable=False),
    Column("matches", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row per recommended member and request: the fairness window counts these.
advice_recommendations = Table(
    "advice_recommendations",
    metadata,
    Column("request_id", String(36), primary_key=True),
    Column("city_id", String(64), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
)

# Weights adopted by staff (PUT /api/weights): the newest row is in force, above the settings.
weights = Table(
    "matcher_weights",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("weights", JSON, nullable=False),
    Column("reason", Text, nullable=False),
    Column("set_by", String(200), nullable=False),
    Column("set_at", DateTime(timezone=True), nullable=False),
)
