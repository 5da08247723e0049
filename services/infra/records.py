"""Reading consumed records: our code decodes every record, within bounds, and says why not.

FastStream hands the handlers raw bytes (see ``services.infra.consumer``); nothing decodes a
record before :func:`decode_record`, so no record can fail outside it. A record fails as a
:class:`PoisonRecord` with a reason fit for the dead letter (no input values echoed) when it is
larger than :data:`MAX_RECORD_BYTES`, nests deeper than :data:`MAX_DEPTH`, is not UTF-8, holds
U+0000, is not the envelope of its topic, or its message key is not the city id of its data.
Whatever else goes wrong while decoding (a ``RecursionError``, a number too large to convert,
…) is a ``PoisonRecord`` too: a record never stops its partition.

The consumers decode (:func:`decode_delivery`, through ``services.infra.consumer``); the service
layer receives each record as a :class:`Delivery` (its envelope) or a :class:`Poison` (its
reason), never an aiokafka record. Both keep where the record came from and its raw bytes, which
its dead letter (``services.infra.deadletter.dead_letter``) carries.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.events import (
    AdviceMatched,
    AdviceRequested,
    CityLeft,
    Envelope,
    TandemDecided,
    TandemProposed,
    parse_event,
)
from schemas.member import MemberProfile

#: Largest record value decoded (bytes). A registration with 100 partners is some 30 KB.
MAX_RECORD_BYTES = 256 * 1024
#: Deepest nesting of JSON arrays and objects decoded (an envelope nests 4 deep).
MAX_DEPTH = 32

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
#: ``\u0000`` in a JSON string (an odd number of backslashes before ``u0000``): PostgreSQL
#: cannot store U+0000 in text, so such a record would fail in the database on every delivery.
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class PoisonRecord(ValueError):
    """A record that cannot be processed; ``str()`` is the reason for its dead letter.
    ``validation`` is the model's error where the record was well-formed JSON of the wrong
    shape (a consumer may word its dead letter from it, as its HTTP twin would)."""

    def __init__(self, reason: str, validation: ValidationError | None = None) -> None:
        super().__init__(reason)
        self.validation = validation


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in JSON text ``raw`` (strings skipped; an upper bound
    for malformed text). Linear in the size, never recursive."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def validation_reason(error: ValidationError) -> str:
    """The errors of ``error`` as ``location: message`` lines, without the input values (they
    may be personal data or megabytes)."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        lines.append(f"{location}: {item['msg']}" if location else item["msg"])
    return "; ".join(lines)


def check_bounds(value: bytes) -> None:
    """Raise :class:`PoisonRecord` if ``value`` is too large, too deep or not UTF-8."""
    if len(value) > MAX_RECORD_BYTES:
        raise PoisonRecord(f"record too large: {len(value)} bytes (at most {MAX_RECORD_BYTES})")
    # A record cannot nest deeper than it has opening brackets (in strings or not): only a
    # record with more of them than the bound needs the scan.
    if value.count(b"[") + value.count(b"{") > MAX_DEPTH:
        depth = nesting_depth(value)
        if depth > MAX_DEPTH:
            raise PoisonRecord(f"record nests too deep: {depth} levels (at most {MAX_DEPTH})")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PoisonRecord(f"record is not UTF-8 (byte {error.start})") from None
    if b"\\u0000" in value and _NUL.search(value):
        raise PoisonRecord("record contains U+0000 (NUL), which no text field may hold")


def decode_record(topic: str, value: bytes | None, key: bytes | None) -> Envelope[Any]:
    """The envelope of a consumed record of ``topic``, checked within bounds and against its
    message key. Raises :class:`PoisonRecord` with the reason for anything else."""
    raw = value or b""
    check_bounds(raw)
    try:
        envelope = parse_event(topic, raw)
    except ValidationError as error:
        raise PoisonRecord(validation_reason(error), error) from None
    except ValueError as error:  # a wrong type or an unknown version: the message says which
        raise PoisonRecord(str(error)) from None
    except Exception as error:  # RecursionError, MemoryError's cousins: never block a partition
        raise PoisonRecord(f"undecodable record ({type(error).__name__})") from None
    city = city_of(envelope)
    key_text = key.decode("utf-8", "replace") if key is not None else None
    if city is not None and key_text != city:
        shown = "no key" if key_text is None else f"key {key_text[:80]!r}"
        raise PoisonRecord(f"message {shown} is not the city id {city!r} of its data")
    return envelope


class RawRecord(Protocol):
    """The fields of a consumed Kafka record (aiokafka's ``ConsumerRecord``) decoding reads."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Consumed:
    """Where a consumed record came from and its raw bytes: what its dead letter needs."""

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Delivery(Consumed):
    """A record that decoded: its envelope, checked against its topic and message key."""

    envelope: Envelope[Any]


@dataclass(frozen=True, slots=True)
class Poison(Consumed):
    """A record that did not decode; ``error`` says why (``str(error)`` is the reason)."""

    error: PoisonRecord


def decode_delivery(record: RawRecord) -> Delivery | Poison:
    """A consumed record as the service layer takes it: its envelope, or why it has none."""
    value = record.value or b""
    where = (record.topic, record.partition, record.offset, record.key, value)
    try:
        return Delivery(*where, decode_record(record.topic, record.value, record.key))
    except PoisonRecord as error:
        return Poison(*where, error)


def city_of(envelope: Envelope[Any]) -> str | None:
    """The id of the city a record is about (its message key by contract), if it names one."""
    data = envelope.data
    if isinstance(data, MemberProfile | CityLeft):
        return data.id
    if isinstance(data, AdviceRequested | AdviceMatched):
        return data.city_id
    if isinstance(data, TandemProposed | TandemDecided):
        return data.newcomer_id
    return None


def payload_digest(envelope: Envelope[Any]) -> str:
    """SHA-256 of what an envelope says (type, version, data; not its time or source): a
    record sent again carries the same digest, an id reused for other data another one."""
    data = envelope.data
    # The bytes of ``f"{type}\n{version}\n{data.model_dump_json()}".encode()``, as stored
    # with every dedup row since digests exist, without decoding and encoding the JSON again.
    digest = hashlib.sha256(f"{envelope.type}\n{envelope.version}\n".encode())
    digest.update(data.__pydantic_serializer__.to_json(data))
    return digest.hexdigest()
