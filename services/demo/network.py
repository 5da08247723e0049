"""The real member network, read from ``members.csv`` and completed into registrations.

The public sources name the members, their Bundesland, often the year they joined and sometimes
what they focus on; GeoNames adds population and coordinates (see ``ATTRIBUTION.md``). The file
is read by :mod:`services.member_csv` (the reader ``tandem import`` uses too, which fills in
nothing). Everything else a :class:`~schemas.member.MemberRegistration` needs (partners, a
contact, topics where the sources are silent, mentor capacity) is estimated here, for the demo
only. The filling is deterministic: every
pseudo-random choice is derived from a SHA-256 hash of the member id, so every run on every
machine yields the same network. Every filled-in field is named in :attr:`DemoMember.estimated`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.member import MemberRegistration
from schemas.topics import TOPICS
from services.member_csv import (
    COLUMNS,
    TOPIC_MAP,
    MemberFileError,
    MemberLine,
    map_topics,
    read_lines,
    slug,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_NEWCOMER_YEAR",
    "ESTIMATED_FIELDS",
    "ESTIMATED_POPULATION",
    "POPULATION_MAX",
    "POPULATION_MIN",
    "TOPIC_MAP",
    "UNKNOWN_JOIN_YEAR",
    "DemoMember",
    "NetworkDataError",
    "cohort_years",
    "load_network",
    "map_topics",
    "parse_network",
    "slug",
    "split_cohort",
]

logger = logging.getLogger(__name__)

#: The cohort that seeks tandems in the demo (the newest one in the data).
DEFAULT_NEWCOMER_YEAR = 2024
#: Join year assumed (and marked estimated) for members whose sources state no year: they count
#: as existing members, from the first programme phase.
UNKNOWN_JOIN_YEAR = 2015
#: Population assumed (and marked estimated) where GeoNames has none.
ESTIMATED_POPULATION = 20_000
#: The admission rule's population range.
POPULATION_MIN = 10_000
POPULATION_MAX = 250_000

#: The fields :attr:`DemoMember.estimated` may name, in the order it names them.
ESTIMATED_FIELDS = (
    "joined",
    "population",
    "interests",
    "strengths",
    "mentor_capacity",
    "partners",
    "contact",
)
_ADMINISTRATION = {
    "city": "Stadtverwaltung",
    "municipality": "Gemeindeverwaltung",
    "district": "Verwaltung",
}


class NetworkDataError(ValueError):
    """A row of the member file cannot be turned into a registration (or the file lacks
    columns). The message names the file and row; :attr:`problem` is the reason alone."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message


@dataclass(frozen=True)
class DemoMember:
    """One member of the bundled network, ready to register."""

    registration: MemberRegistration
    #: The year the sources state, ``None`` where they state none.
    join_year: int | None
    #: Names of the fields whose value the demo filled in itself (not from the sources).
    estimated: tuple[str, ...]
    source_url: str
    #: Tags of the row that :data:`TOPIC_MAP` does not know (empty for the bundled file).
    unmapped_tags: tuple[str, ...] = ()
    #: The German tags as the row gives them.
    tags: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The member id (slug of the name)."""
        return self.registration.id

    @property
    def seeks_tandem(self) -> bool:
        """Whether the member is a newcomer looking for a tandem (set explicitly on load)."""
        return bool(self.registration.seeks_tandem)


def cohort_years(members: Iterable[DemoMember]) -> list[int | None]:
    """The distinct join years, ascending; ``None`` (year unknown) first if present.

    Members without a year count as existing members, so they sort before every cohort.
    """
    years = {m.join_year for m in members}
    known = sorted(y for y in years if y is not None)
    return ([None] if None in years else []) + list(known)


def split_cohort(
    members: Iterable[DemoMember], year: int
) -> tuple[list[DemoMember], list[DemoMember]]:
    """``(existing, newcomers)`` as the network stood when the ``year`` cohort joined.

    Existing: joined before ``year`` or in an unknown year. Newcomers: joined in ``year``.
    Members that joined after ``year`` are in neither list. File order is kept.
    """
    existing: list[DemoMember] = []
    newcomers: list[DemoMember] = []
    for member in members:
        if member.join_year is None or member.join_year < year:
            existing.append(member)
        elif member.join_year == year:
            newcomers.append(member)
    return existing, newcomers


def load_network(
    path: Path | None = None, *, newcomer_year: int | None = DEFAULT_NEWCOMER_YEAR
) -> list[DemoMember]:
    """Read the member file (default: the bundled ``members.csv``) into registrations.

    Members that joined in ``newcomer_year`` or later seek a tandem; the others (all of them
    for ``None``) do not. Raises :class:`NetworkDataError` naming the row for data that cannot
    be used.
    """
    if path is None:
        resource = resources.files(__package__ or "services.demo").joinpath("members.csv")
        return parse_network(
            resource.read_text(encoding="utf-8"),
            source="members.csv",
            newcomer_year=newcomer_year,
        )
    return parse_network(
        path.read_text(encoding="utf-8"), source=str(path), newcomer_year=newcomer_year
    )


def parse_network(
    text: str,
    *,
    source: str = "members.csv",
    newcomer_year: int | None = DEFAULT_NEWCOMER_YEAR,
) -> list[DemoMember]:
    """:func:`load_network` for CSV text already read (columns as in ``members.csv``;
    more columns are ignored). ``source`` names the file in error messages. Raises
    :class:`NetworkDataError` for the first row that cannot be used."""
    try:
        lines = read_lines(text, source=source)
    except MemberFileError as error:
        raise NetworkDataError(str(error)) from None
    members: list[DemoMember] = []
    for line in lines:
        member = _member(line, newcomer_year)
        if member.unmapped_tags:
            logger.warning(
                "%s: tag(s) not in TOPIC_MAP, ignored: %s",
                line.where,
                ", ".join(member.unmapped_tags),
            )
        members.append(member)
    return members


def _member(line: MemberLine, newcomer_year: int | None) -> DemoMember:
    """The demo's registration for ``line``: what the line states, the rest estimated."""
    if line.problems:
        raise _fail(line, "; ".join(message for _field, message in line.problems))
    join_year = line.join_year
    if join_year is not None and not 1900 <= join_year <= 9999:
        raise _fail(line, f"implausible join year {join_year}")
    newcomer = join_year is not None and newcomer_year is not None and join_year >= newcomer_year
    given = dict(line.values)
    stated_population = given.get("population")
    member_id = line.member_id or ""
    estimated = [
        *_estimate_joined(given, join_year),
        *_estimate_population(given),
        *_estimate_topics(given, member_id, line.topics, newcomer),
        *_estimate_organisation(given, member_id, line.name),
    ]
    given["seeks_tandem"] = newcomer
    given["estimated"] = [f for f in ESTIMATED_FIELDS if f in estimated]
    _admit_population(given, stated_population)
    return DemoMember(
        registration=_registration(line, given),
        join_year=join_year,
        estimated=tuple(f for f in ESTIMATED_FIELDS if f in estimated),
        source_url=line.source_url,
        unmapped_tags=line.unmapped_tags,
        tags=line.tags,
    )


def _fail(line: MemberLine, problem: str) -> NetworkDataError:
    return NetworkDataError(f"{line.where}: {problem}", problem)


def _estimate_joined(given: dict[str, Any], join_year: int | None) -> list[str]:
    """Members whose sources state no year joined in ``UNKNOWN_JOIN_YEAR``."""
    if join_year is not None:
        return []
    given["joined"] = dt.date(UNKNOWN_JOIN_YEAR, 1, 1).isoformat()
    return ["joined"]


def _estimate_population(given: dict[str, Any]) -> list[str]:
    """``ESTIMATED_POPULATION`` where GeoNames has none."""
    if given.get("population"):
        return []
    given["population"] = ESTIMATED_POPULATION
    return ["population"]


def _estimate_topics(
    given: dict[str, Any], member_id: str, topics: Sequence[str], newcomer: bool
) -> list[str]:
    """The line's topics are a newcomer's interests or an existing member's strengths; where
    it has none, 2-3 are picked by hash, and 0-1 (newcomers) or 1-2 of the other kind."""
    own = "interests" if newcomer else "strengths"
    other = "strengths" if newcomer else "interests"
    estimated = []
    primary = list(topics) or _pick(member_id, own, _count(member_id, own, 2, 3), exclude=())
    if not topics:
        estimated.append(own)
    # Existing members also want to work on something, newcomers may already offer something.
    low, high = (0, 1) if newcomer else (1, 2)
    secondary = _pick(member_id, other, _count(member_id, other, low, high), exclude=primary)
    if secondary:
        estimated.append(other)
    given[own], given[other] = primary, secondary
    return estimated


def _estimate_organisation(given: dict[str, Any], member_id: str, name: str) -> list[str]:
    """Mentor capacity by size, three partners (one per sector) and a contact address."""
    estimated = []
    if "mentor_capacity" not in given:
        given["mentor_capacity"] = 2 if given["population"] > 100_000 else 1
        estimated.append("mentor_capacity")
    kind = str(given.get("kind", ""))
    if "partners" not in given:
        given["partners"] = [
            {"name": f"Bürgerstiftung {name} (geschätzt)", "sector": "civil_society"},
            {
                "name": f"{_ADMINISTRATION.get(kind, 'Verwaltung')} {name} (geschätzt)",
                "sector": "administration",
            },
            {"name": f"Unternehmensnetzwerk {name} (geschätzt)", "sector": "business"},
        ]
        estimated.append("partners")
    if "contact" not in given:
        domain = member_id[:63].rstrip("-")
        given["contact"] = {
            "name": f"Koordination {name}",
            "email": f"koordination@{domain}.example",
        }
        estimated.append("contact")
    return estimated


def _admit_population(given: dict[str, Any], stated_population: Any) -> None:
    """Members are members: a stated population outside the admission rule's range gets the
    exception reason the rule asks for (unless the line gives one)."""
    if (
        stated_population
        and not POPULATION_MIN <= stated_population <= POPULATION_MAX
        and "exception_reason" not in given
    ):
        given["exception_reason"] = (
            "Demo: Mitglied trotz Einwohnerzahl außerhalb 10.000–250.000 "
            f"(Einwohnerzahl laut Mitgliederdatei: {stated_population:,})".replace(",", ".")
        )


def _registration(line: MemberLine, given: dict[str, Any]) -> MemberRegistration:
    """``given`` validated; the errors, if any, as one :class:`NetworkDataError`."""
    try:
        return MemberRegistration.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors()
        )
        raise _fail(line, problems) from None


def _hash(member_id: str, purpose: str, item: str = "") -> bytes:
    return hashlib.sha256(f"{member_id}\x1f{purpose}\x1f{item}".encode()).digest()


def _count(member_id: str, purpose: str, low: int, high: int) -> int:
    """A number in ``low..high`` that depends only on the id and the purpose."""
    value = int.from_bytes(_hash(member_id, purpose, "#count")[:8], "big")
    return low + value % (high - low + 1)


def _pick(member_id: str, purpose: str, k: int, *, exclude: Sequence[str]) -> list[str]:
    """``k`` topics of the built-in vocabulary, chosen by hash of the id (not of the env)."""
    candidates = [t for t in TOPICS if t not in exclude]
    candidates.sort(key=lambda t: _hash(member_id, purpose, t))
    return candidates[:k]
