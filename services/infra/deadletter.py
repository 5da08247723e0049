"""Dead letters: a record a consumer cannot process goes to ``<topic>.dlq`` with the reason.

A dead letter stays well under the broker's record limit: an original whose letter would be
larger than :data:`INLINE_MAX_BYTES` is kept in the consumer's database (table
``<service>_dead_letter_originals``) and referenced on the DLQ by ``original_ref``, with its
SHA-256 and size. Originals of topics that carry personal data (``member.admitted``) travel
redacted: contact, partners' names and the exception reason become ``"[redacted]"`` (the
``redacted`` field names them); one that cannot be read for redaction is kept in the database
only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
)
from sqlalchemy.exc import DataError, DBAPIError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.events import DeadLetter, Topics
from schemas.member import PublicMember
from services.infra.outbox import enqueue_raw, utcnow
from services.infra.records import Consumed, check_bounds

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("5c0d7c1e-8a8e-4f57-9d7e-7a1d6c1e0d11")

#: Largest dead letter (its JSON, bytes) that carries its original inline; the broker's limit
#: is 1 MiB, and a quote-heavy original doubles when escaped.
INLINE_MAX_BYTES = 64 * 1024
#: Topics whose records carry personal data: their originals travel redacted, or not at all.
PERSONAL_TOPICS = frozenset({Topics.MEMBER_ADMITTED})
REDACTED = "[redacted]"
#: How many redacted fields a letter names.
REDACTED_LISTED = 50
#: The ``redacted`` entry of a letter whose whole original is withheld (kept in the database).
WHOLE_ORIGINAL = "original"
_ENVELOPE_FIELDS = frozenset({"id", "type", "version", "time", "source"})
_KEY_MAX = 200


def originals_table(metadata: MetaData, name: str) -> Table:
    """The table of one service that keeps originals too large (or too personal) for a DLQ."""
    return Table(
        name,
        metadata,
        Column("id", String(36), primary_key=True),
        Column("topic", String(200), nullable=False),
        Column("partition", Integer, nullable=True),
        Column("offset", BigInteger, nullable=True),
        Column("original", LargeBinary, nullable=False),
        Column("encoding", String(10), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("size", Integer, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )


def _public_data(data: Any, redacted: list[str]) -> Any:
    """``data`` of a registration with everything but the public profile redacted."""
    if not isinstance(data, dict):
        redacted.append("data")
        return REDACTED
    public = set(PublicMember.model_fields) - {"partners"}
    kept: dict[str, Any] = {}
    for name, value in data.items():
        if name in public:
            kept[name] = value
        elif name == "partners" and isinstance(value, list):
            partners: list[Any] = []
            for index, partner in enumerate(value):
                if isinstance(partner, dict):
                    partners.append(
                        {k: v if k == "sector" else REDACTED for k, v in partner.items()}
                    )
                    redacted += [f"data.partners.{index}.{k}" for k in partner if k != "sector"]
                else:
                    partners.append(REDACTED)
                    redacted.append(f"data.partners.{index}")
            kept[name] = partners
        else:
            kept[name] = REDACTED
            redacted.append(f"data.{name}")
    return kept


def redact(value: bytes) -> tuple[str, list[str]]:
    """The text of a personal topic's record with its personal fields redacted, and their
    names; ``WHOLE_ORIGINAL`` alone when the record cannot be read for redaction."""
    try:
        check_bounds(value)
        record = json.loads(value)
    except Exception:  # not JSON within bounds: nothing in it can be told apart
        return "", [WHOLE_ORIGINAL]
    if not isinstance(record, dict):
        return "", [WHOLE_ORIGINAL]
    redacted: list[str] = []
    kept: dict[str, Any] = {}
    for name, item in record.items():
        if name in _ENVELOPE_FIELDS:
            kept[name] = item
        elif name == "data":
            kept[name] = _public_data(item, redacted)
        else:
            kept[name] = REDACTED
            redacted.append(name)
    if not redacted:
        return value.decode("utf-8"), []
    return json.dumps(kept, ensure_ascii=False), redacted


def _listed(paths: list[str]) -> list[str]:
    """At most :data:`REDACTED_LISTED` paths, and how many more (a record of thousands of
    fields must not make its letter large)."""
    if len(paths) <= REDACTED_LISTED:
        return paths
    return [*paths[:REDACTED_LISTED], f"… and {len(paths) - REDACTED_LISTED} more"]


def dead_letter(record: Consumed, error: BaseException | str, consumer: str) -> DeadLetter:
    """The dead letter of a consumed record (a ``Delivery`` or a ``Poison``)."""
    value: bytes = record.value or b""
    encoding: Literal["utf-8", "base64"] = "utf-8"
    redacted: list[str] = []
    if record.topic in PERSONAL_TOPICS:
        original, redacted = redact(value)
    if not redacted or redacted == [WHOLE_ORIGINAL]:
        try:
            original = value.decode("utf-8")
        except UnicodeDecodeError:
            original, encoding = base64.b64encode(value).decode("ascii"), "base64"
    key = record.key.decode("utf-8", "replace") if record.key else None
    if key is not None:  # the outbox's key column is bounded, and PostgreSQL refuses NUL
        key = key.replace("\x00", "\ufffd")[:_KEY_MAX]
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        original=original,
        original_encoding=encoding,
        error=str(error)[:4000],
        consumer=consumer,
        time=utcnow(),
        original_sha256=hashlib.sha256(value).hexdigest(),
        original_size=len(value),
        redacted=_listed(redacted),
    )


async def enqueue_dead_letter(
    connection: AsyncConnection, outbox: Table, letter: DeadLetter, originals: Table | None = None
) -> bool:
    """Queue ``letter`` on ``<topic>.dlq`` once per (topic, partition, offset), so a record
    delivered again is not dead-lettered twice. Returns False if it was queued before.

    An original too large for the letter, or withheld as personal data, goes to ``originals``
    (by default the ``<service>_dead_letter_originals`` table next to ``outbox``) and the
    letter references it."""
    event_id = str(uuid.uuid5(_NAMESPACE, f"{letter.topic}/{letter.partition}/{letter.offset}"))
    exists = await connection.scalar(
        select(func.count()).select_from(outbox).where(outbox.c.event_id == event_id)
    )
    if exists:
        return False
    withheld = WHOLE_ORIGINAL in letter.redacted
    if withheld or len(letter.model_dump_json()) > INLINE_MAX_BYTES:
        if originals is None:
            name = outbox.name.removesuffix("outbox") + "dead_letter_originals"
            originals = outbox.metadata.tables[name]
        await connection.execute(
            insert(originals).values(
                id=event_id, topic=letter.topic, partition=letter.partition,
                offset=letter.offset, original=letter.original.encode(),
                encoding=letter.original_encoding, sha256=letter.original_sha256 or "",
                size=letter.original_size or 0, created_at=utcnow(),
            )
        )  # fmt: skip
        letter = letter.model_copy(
            update={"original": "", "original_ref": f"{originals.name}/{event_id}"}
        )
    await enqueue_raw(
        connection, outbox, event_id, Topics.dlq(letter.topic), letter.key or "unknown", letter
    )
    return True


#: Errors worth retrying: the database is busy or away for a moment.
TRANSIENT = (OperationalError, DBAPIError, ConnectionError, TimeoutError)


def refused_by_database(error: BaseException) -> bool:
    """Whether the database (or its driver) refused the data itself: a value out of a
    column's range, a number too large for the driver. Writing it again fails again; the
    record behind it goes to the DLQ instead of being redelivered for ever."""
    seen: BaseException | None = error
    for _ in range(5):  # the error, the driver's error under it, and what that wraps
        if seen is None:
            return False
        if isinstance(seen, DataError | OverflowError | UnicodeError):
            return True
        below = seen.orig if isinstance(seen, StatementError) else None
        seen = below or seen.__cause__
    return False


T = TypeVar("T")


async def retry_transient(work: Callable[[], Awaitable[T]], attempts: int = 6) -> T:
    """Run ``work``, retrying transient errors with exponential backoff (0.1 s doubling); the
    last error propagates, so the consumer's batch is not acknowledged and comes again."""
    delay = 0.1
    for attempt in range(attempts):
        try:
            return await work()
        except TRANSIENT as error:
            if attempt == attempts - 1 or refused_by_database(error):
                raise
            log.warning("database busy (%s); retrying in %.1f s", type(error).__name__, delay)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
