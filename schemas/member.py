"""The member as registered, and the public part of it that travels on events."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, model_validator

from schemas.topics import topic_choices, topic_slug, topic_vocabulary

Kind = Literal["city", "municipality", "district"]
Region = Literal["north", "east", "south", "west"]
Sector = Literal["civil_society", "administration", "business"]

#: ISO 3166-2 codes of the 16 German states, with their German name and compass region.
STATES: dict[str, tuple[str, Region]] = {
    "DE-BW": ("Baden-Württemberg", "south"),
    "DE-BY": ("Bayern", "south"),
    "DE-BE": ("Berlin", "east"),
    "DE-BB": ("Brandenburg", "east"),
    "DE-HB": ("Bremen", "north"),
    "DE-HH": ("Hamburg", "north"),
    "DE-HE": ("Hessen", "west"),
    "DE-MV": ("Mecklenburg-Vorpommern", "north"),
    "DE-NI": ("Niedersachsen", "north"),
    "DE-NW": ("Nordrhein-Westfalen", "west"),
    "DE-RP": ("Rheinland-Pfalz", "west"),
    "DE-SL": ("Saarland", "west"),
    "DE-SN": ("Sachsen", "east"),
    "DE-ST": ("Sachsen-Anhalt", "east"),
    "DE-SH": ("Schleswig-Holstein", "north"),
    "DE-TH": ("Thüringen", "east"),
}
StateCode = Literal[
    "DE-BW", "DE-BY", "DE-BE", "DE-BB", "DE-HB", "DE-HH", "DE-HE", "DE-MV",
    "DE-NI", "DE-NW", "DE-RP", "DE-SL", "DE-SN", "DE-ST", "DE-SH", "DE-TH",
]  # fmt: skip

MEMBER_ID_PATTERN = r"^[a-z0-9-]{2,64}$"
#: How many members a newcomer may name as its wished Tandem-Stadt.
MAX_WISHES = 3
#: Fields a member's data may mark as estimated (not stated by the member or its sources).
EstimatedField = Literal[
    "joined", "population", "lat", "lon", "interests", "strengths", "mentor_capacity",
    "partners", "contact",
]  # fmt: skip
_MEMBER_ID = re.compile(MEMBER_ID_PATTERN)


def region_of(state: str) -> Region:
    """The compass region ("of the four") a state's members meet in."""
    return STATES[state][1]


def _known_topics(values: list[str]) -> list[str]:
    """Slugs or German labels of the vocabulary, as slugs."""
    vocabulary = topic_vocabulary()
    if vocabulary.issuperset(values):  # all slugs already (the usual case): each is its own
        return list(dict.fromkeys(values))
    slugs = [topic_slug(v, vocabulary) for v in values]
    unknown = [v for v, s in zip(values, slugs, strict=True) if s is None]
    if unknown:
        raise ValueError(
            f"unknown topic(s) {', '.join(map(repr, unknown))}; "
            f"allowed (slug or German label): {', '.join(topic_choices())}"
        )
    # Keep the caller's order but drop repeats: a topic counts once.
    return list(dict.fromkeys(s for s in slugs if s is not None))


TopicList = Annotated[list[str], AfterValidator(_known_topics)]
MemberId = Annotated[str, Field(pattern=MEMBER_ID_PATTERN, examples=["goeppingen"])]


def _distinct(values: list[str]) -> list[str]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"wishes name {', '.join(repeated)} more than once")
    return values


Wishes = Annotated[list[MemberId], Field(max_length=MAX_WISHES), AfterValidator(_distinct)]
Estimated = Annotated[list[EstimatedField], AfterValidator(lambda v: list(dict.fromkeys(v)))]


class Contact(BaseModel):
    """The member's contact person. Personal data: stored by the registry, never on events."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    email: EmailStr


class Partner(BaseModel):
    """An actor of the local cooperation (civil society, administration, business)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    sector: Sector


class PartnerSector(BaseModel):
    """What events say of a partner: its sector only, never its name."""

    model_config = ConfigDict(extra="forbid")
    sector: Sector


class MemberProfile(BaseModel):
    """Profile fields shared by registrations and events (no personal data). ``population``
    is declared by each subclass: required on events, optional in a registration."""

    id: MemberId
    name: str = Field(min_length=1, max_length=200)
    kind: Kind
    state: StateCode
    region: Region | None = Field(default=None, description="Derived from `state` when absent.")
    lat: float | None = Field(default=None, ge=47.0, le=55.5)
    lon: float | None = Field(default=None, ge=5.5, le=15.5)
    joined: dt.date
    interests: TopicList = Field(default_factory=list, max_length=32)
    strengths: TopicList = Field(default_factory=list, max_length=32)
    mentor_capacity: int = Field(default=1, ge=0, le=50)
    seeks_tandem: bool | None = Field(
        default=None,
        description="When absent: true if `joined` is at most 365 days before registration.",
    )
    wishes: Wishes = Field(
        default_factory=list,
        description="Up to 3 member ids the newcomer would like as its Tandem-Stadt "
        "(not its own id; the registry refuses unknown ids).",
    )
    estimated: Estimated = Field(
        default_factory=list,
        description="Fields whose value is an estimate (e.g. filled in by an import), shown as "
        "such to staff.",
    )

    @model_validator(mode="after")
    def _derive(self) -> MemberProfile:
        if self.region is None:
            self.region = region_of(self.state)
            # Derived, not given: the history must not list it among the caller's fields.
            self.__pydantic_fields_set__.discard("region")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        if self.id in self.wishes:
            raise ValueError("wishes: a member cannot wish itself as its Tandem-Stadt")
        return self


class MemberRegistration(MemberProfile):
    """Body of ``POST /api/members`` and data of ``member.admitted``."""

    model_config = ConfigDict(extra="forbid")
    population: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Inhabitants. When absent, the registry looks it up in the GeoNames "
        "gazetteer by `name` and `state` (422 if it finds no single entry with a population).",
    )
    contact: Contact | None = None
    partners: list[Partner] = Field(default_factory=list, max_length=100)
    exception_reason: str | None = Field(default=None, max_length=2000)

    def resolved_seeks_tandem(self, today: dt.date) -> bool:
        """``seeks_tandem`` as given, else whether the member joined within the last 365 days."""
        if self.seeks_tandem is not None:
            return self.seeks_tandem
        return (today - self.joined).days <= 365


class PublicMember(MemberProfile):
    """A member as events carry it: no contact, partners by sector only."""

    model_config = ConfigDict(extra="forbid")
    population: int = Field(ge=1, le=10_000_000)
    seeks_tandem: bool | None = None
    partners: list[PartnerSector] = Field(default_factory=list)
    status: Literal["active", "left"] = "active"
    revision: int = Field(
        default=1, ge=1, description="Grows with every change; consumers keep the newest."
    )


class MemberUpdate(BaseModel):
    """Body of ``PATCH /api/members/{id}``: the fields to change (the id cannot change)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    kind: Kind | None = None
    state: StateCode | None = None
    region: Region | None = None
    population: int | None = Field(default=None, ge=1, le=10_000_000)
    lat: float | None = Field(default=None, ge=47.0, le=55.5)
    lon: float | None = Field(default=None, ge=5.5, le=15.5)
    joined: dt.date | None = None
    interests: TopicList | None = Field(default=None, max_length=32)
    strengths: TopicList | None = Field(default=None, max_length=32)
    mentor_capacity: int | None = Field(default=None, ge=0, le=50)
    seeks_tandem: bool | None = None
    contact: Contact | None = None
    partners: list[Partner] | None = Field(default=None, max_length=100)
    exception_reason: str | None = Field(default=None, max_length=2000)
    wishes: Wishes | None = None
    estimated: Estimated | None = None


def is_member_id(value: str) -> bool:
    """Whether ``value`` is a valid member id (slug)."""
    return bool(_MEMBER_ID.match(value))
