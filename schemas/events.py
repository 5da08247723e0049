"""Event contracts: the envelope and the ``data`` of every topic.

Every record on a topic is ``Envelope`` JSON with ``type`` equal to the topic; the message key is
the id of the city the event is about. Consumers are idempotent on the envelope ``id``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from schemas.member import MemberId, MemberRegistration, PublicMember, TopicList

SCHEMA_VERSION = 1


class Topics:
    """Topic names (Kafka topics) of the contract."""

    CITY_JOINED = "city.joined"
    CITY_UPDATED = "city.updated"
    CITY_LEFT = "city.left"
    MEMBER_ADMITTED = "member.admitted"
    TANDEM_PROPOSED = "tandem.proposed"
    TANDEM_DECIDED = "tandem.decided"
    ADVICE_REQUESTED = "advice.requested"
    ADVICE_MATCHED = "advice.matched"

    @staticmethod
    def dlq(topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return f"{topic}.dlq"


class CityJoined(PublicMember):
    """``city.joined``: a member was admitted (registry)."""


class CityUpdated(PublicMember):
    """``city.updated``: a member's profile changed (registry); the whole public member."""


class CityLeft(BaseModel):
    """``city.left``: a member left the network (registry)."""

    model_config = ConfigDict(extra="forbid")
    id: MemberId
    reason: str = Field(default="", max_length=2000)


class MemberAdmitted(MemberRegistration):
    """``member.admitted``: the platform asks the registry to register a member."""


class Alternative(BaseModel):
    """A next-best mentor for a newcomer."""

    mentor_id: MemberId
    score: float = Field(ge=0, le=1)
    breakdown: dict[str, float] = Field(default_factory=dict)
    why_not: str = Field(
        default="", max_length=2000, description="Why it is not the proposal (German, for staff)."
    )
    taken_by: MemberId | None = Field(
        default=None,
        description="The newcomer whose pending proposal of the same plan uses this mentor.",
    )


class TandemProposed(BaseModel):
    """``tandem.proposed``: the matcher proposes a Tandem-Stadt for a newcomer."""

    proposal_id: uuid.UUID
    newcomer_id: MemberId
    mentor_id: MemberId
    score: float = Field(ge=0, le=1)
    breakdown: dict[str, float] = Field(description="Per-criterion scores in [0, 1].")
    reasons: list[str] = Field(description="Human-readable reasons (German, for staff).")
    alternatives: list[Alternative] = Field(default_factory=list)
    supersedes: uuid.UUID | None = None


class TandemDecided(BaseModel):
    """``tandem.decided``: staff accepted or rejected a proposal."""

    proposal_id: uuid.UUID
    decision: Literal["accepted", "rejected"]
    reason: str = ""
    newcomer_id: MemberId | None = None
    mentor_id: MemberId | None = None
    decided_at: dt.datetime | None = None


class AdviceRequested(BaseModel):
    """``advice.requested``: a coordinator asks the network for collegial advice."""

    request_id: uuid.UUID
    city_id: MemberId
    topics: TopicList = Field(min_length=1)
    question: str = Field(default="", max_length=4000)
    k: int = Field(default=3, ge=1, le=20)


class AdviceMatch(BaseModel):
    """One member recommended for collegial advice."""

    city_id: MemberId
    score: float = Field(ge=0, le=1)
    reasons: list[str] = Field(default_factory=list)


class AdviceMatched(BaseModel):
    """``advice.matched``: the answer to an advice request, correlated by ``request_id``."""

    request_id: uuid.UUID
    city_id: MemberId | None = None
    matches: list[AdviceMatch]


class DeadLetter(BaseModel):
    """A record a consumer could not process, with the reason; on ``<topic>.dlq``."""

    topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    original: str = Field(
        description="The original record value (UTF-8, or base64 if binary); empty when it is "
        "kept in the consumer's database instead (see `original_ref`)."
    )
    original_encoding: Literal["utf-8", "base64"] = "utf-8"
    error: str
    consumer: str
    time: dt.datetime
    original_sha256: str | None = Field(
        default=None, description="SHA-256 (hex) of the record value as it was consumed."
    )
    original_size: int | None = Field(default=None, ge=0, description="Its size in bytes.")
    original_ref: str | None = Field(
        default=None,
        description="Where the original is kept when it is not in `original` (too large for "
        "a dead letter, or personal data that cannot be redacted): `<table>/<id>` in the "
        "consumer's database.",
    )
    redacted: list[str] = Field(
        default_factory=list,
        description='Fields of the original replaced by "[redacted]" (personal data: '
        "contact, partners' names, exception reason).",
    )


DataT = TypeVar("DataT", bound=BaseModel)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Envelope(BaseModel, Generic[DataT]):
    """The envelope every event travels in."""

    model_config = ConfigDict(extra="forbid")
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: Annotated[int, Field(ge=1)] = SCHEMA_VERSION
    time: dt.datetime = Field(default_factory=_now)
    source: str
    data: DataT


class EventSpec(BaseModel):
    """How a topic's records look: its data model and the versions consumers understand."""

    topic: str
    data: type[BaseModel]
    versions: tuple[int, ...] = (SCHEMA_VERSION,)
    producer: str
    description: str

    model_config = ConfigDict(arbitrary_types_allowed=True)


EVENTS: dict[str, EventSpec] = {
    spec.topic: spec
    for spec in (
        EventSpec(topic=Topics.CITY_JOINED, data=CityJoined, producer="registry",
                  description="A member was admitted to the network."),
        EventSpec(topic=Topics.CITY_UPDATED, data=CityUpdated, producer="registry",
                  description="A member's profile changed."),
        EventSpec(topic=Topics.CITY_LEFT, data=CityLeft, producer="registry",
                  description="A member left the network."),
        EventSpec(topic=Topics.MEMBER_ADMITTED, data=MemberAdmitted, producer="platform",
                  description="The platform registers an admitted member."),
        EventSpec(topic=Topics.TANDEM_PROPOSED, data=TandemProposed, producer="matcher",
                  description="A Tandem-Stadt is proposed for a newcomer."),
        EventSpec(topic=Topics.TANDEM_DECIDED, data=TandemDecided, producer="matcher",
                  description="Staff accepted or rejected a proposal."),
        EventSpec(topic=Topics.ADVICE_REQUESTED, data=AdviceRequested, producer="coordinators",
                  description="A coordinator asks for collegial advice."),
        EventSpec(topic=Topics.ADVICE_MATCHED, data=AdviceMatched, producer="matcher",
                  description="The members recommended for an advice request."),
    )
}  # fmt: skip


def envelope_type(topic: str) -> type[Envelope[Any]]:
    """The envelope class whose ``data`` is the model of ``topic``."""
    return _ENVELOPE_TYPES[topic]


_ENVELOPE_TYPES: dict[str, type[Envelope[Any]]] = {
    topic: cast(Any, Envelope)[spec.data] for topic, spec in EVENTS.items()
}


class UnknownVersion(ValueError):
    """An event version this consumer does not understand: dead-lettered, never guessed."""


class _Header(BaseModel):
    """The envelope without its data: read first, so the version decides how data is read."""

    type: str
    version: int
    data: dict[str, Any]


def parse_event(topic: str, raw: bytes | str) -> Envelope[Any]:
    """Validate a raw record of ``topic`` into its envelope with typed ``data``.

    The type and version are checked before the data, so a record of an unknown version is
    reported as such (``UnknownVersion``) rather than as a schema violation. Raises
    ``pydantic.ValidationError`` for malformed JSON or a schema violation.
    """
    spec = EVENTS[topic]
    # Most records are valid: validate the whole envelope once. Only a record that fails, or
    # is of another type or an unknown (or unstated) version, is read again the careful way
    # below, so that it fails exactly as the header says.
    try:
        envelope = envelope_type(topic).model_validate_json(raw)
    except Exception:  # read again below, which raises what applies
        envelope = None
    if (
        envelope is not None
        and envelope.type == topic
        and envelope.version in spec.versions
        and "version" in envelope.model_fields_set
    ):
        return envelope
    header = _Header.model_validate_json(raw)
    if header.type != topic:
        raise ValueError(f"envelope type {header.type!r} does not match topic {topic!r}")
    if header.version not in spec.versions:
        raise UnknownVersion(
            f"{topic} version {header.version} is unknown here "
            f"(understood: {', '.join(map(str, spec.versions))})"
        )
    return envelope_type(topic).model_validate_json(raw)


def make_event(topic: str, source: str, data: BaseModel) -> Envelope[Any]:
    """A new envelope for ``data`` on ``topic``."""
    if not isinstance(data, EVENTS[topic].data):
        raise TypeError(f"{topic} carries {EVENTS[topic].data.__name__}, not {type(data).__name__}")
    return envelope_type(topic)(type=topic, source=source, data=data)
