"""The real member network, read from ``members.csv`` and completed into registrations.

The public sources name the members, their Bundesland, often the year they joined and sometimes
what they focus on; GeoNames adds population and coordinates (see ``ATTRIBUTION.md``). Everything
else a :class:`~schemas.member.MemberRegistration` needs (partners, a contact, topics where the
sources are silent, mentor capacity) is filled in here. The filling is deterministic: every
pseudo-random choice is derived from a SHA-256 hash of the member id, so every run on every
machine yields the same network. Every filled-in field is named in :attr:`DemoMember.estimated`.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from schemas.member import STATES, MemberRegistration
from schemas.topics import TOPICS

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
    "NetworkRow",
    "cohort_years",
    "load_network",
    "map_topics",
    "parse_network",
    "read_rows",
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
#: The columns a member file must have (more are allowed and ignored).
COLUMNS = ("name", "kind", "bundesland", "joined", "topics", "population", "lat", "lon")
_STATE_CODES: dict[str, str] = {german: code for code, (german, _region) in STATES.items()}
_ADMINISTRATION = {
    "city": "Stadtverwaltung",
    "municipality": "Gemeindeverwaltung",
    "district": "Verwaltung",
}

#: Every German tag of ``members.csv`` mapped onto the topic vocabulary (zero or more slugs).
#: Tags the vocabulary has no place for map to ``()`` on purpose; tags missing here are reported
#: as unmapped by :func:`map_topics`.
TOPIC_MAP: dict[str, tuple[str, ...]] = {
    # The vocabulary's own themes, in German.
    "Anerkennungskultur": ("recognition",),
    "Beteiligung": ("participation",),
    "Demokratie": ("democracy",),
    "Digitalisierung": ("digitalisation",),
    "Engagementstrategie": ("engagement_strategy",),
    "Generationswechsel": ("generational_change",),
    "Nachhaltigkeit": ("sustainability",),
    "Qualifizierung": ("qualification",),
    "neue Engagementformen": ("new_forms_of_engagement",),
    # Young people: the vocabulary's "junges Engagement".
    "Jugend": ("young_engagement",),
    "Studierende": ("young_engagement",),  # Marburg: students as volunteers
    # Generational change in the network's sense: an ageing volunteer base, older people's
    # engagement, handing over between generations.
    "Generationen": ("generational_change",),  # e.g. Mehrgenerationenhaus (Puchheim)
    "Senioren": ("generational_change",),
    "demografischer Wandel": ("generational_change",),
    "demografische Stadtplanung": ("generational_change",),  # Ratzeburg: planning for ageing
    # Integration, inclusion, welcome: enabling everyone to take part (Teilhabe). The vocabulary
    # has no migration topic; "participation" (Beteiligung/Teilhabe) is the closest, and the
    # members' pages describe it as opening engagement to migrants, refugees and disabled people.
    "Integration": ("participation",),
    "Inklusion": ("participation",),
    "Willkommenskultur": ("participation",),
    "Chancengleichheit": ("participation",),
    # Developing neighbourhoods and town centres with the residents: a participation process.
    "Quartiersentwicklung": ("participation",),
    "Innenstadtentwicklung": ("participation",),
    # Cooperation across sectors and places: "Vernetzung".
    "Wirtschaftskooperation": ("networking",),  # local businesses as partners of engagement
    "Regionale Kooperation": ("networking",),  # Metropolregion Rhein-Neckar members together
    "Wissenschaft": ("networking",),  # cooperation with universities (RWTH, Hochschule Coburg)
    "Koordination": ("networking",),  # coordinating the local actors of engagement
    "Ressourcenaustausch": ("networking",),  # sharing rooms and material between clubs
    "Vereinsnetzwerk": ("networking",),
    "Vereinsleben": ("networking",),  # Bad Hersfeld: connecting and supporting the clubs
    # Finding and placing volunteers.
    "Ehrenamtsbörse": ("volunteer_recruitment",),
    "Ehrenamtsvermittlung": ("volunteer_recruitment",),
    "neue Zielgruppen": ("volunteer_recruitment",),  # reaching people not yet engaged
    # Gräfenhainichen's "Vereins-Check" advises clubs and makes them attractive to join.
    "Vereinsförderung": ("qualification", "volunteer_recruitment"),
    "Bildung": ("qualification",),
    # A culture that values and enables engagement; closest is recognition.
    "Engagementkultur": ("recognition",),
    # Organised neighbourhood help: informal, low-threshold engagement.
    "Nachbarschaftshilfe": ("new_forms_of_engagement",),
    # Fields of work, target groups or settings, not topics of engagement promotion: no slug.
    "Familie": (),
    "Familien": (),
    "Kultur": (),
    "Prävention": (),
    "Ländlicher Raum": (),
}

_TOPIC_INDEX: dict[str, tuple[str, ...]] = {tag.casefold(): v for tag, v in TOPIC_MAP.items()}


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


def map_topics(tags: Iterable[str]) -> tuple[list[str], list[str]]:
    """Map German tags onto the vocabulary: ``(topics, unmapped tags)``.

    Matching ignores case and surrounding blanks; topics keep the order of their first tag and
    appear once. Tags mapped to ``()`` are known and yield no topic; tags not in
    :data:`TOPIC_MAP` are returned as unmapped (in the caller's spelling), never an error.
    """
    topics: dict[str, None] = {}
    unmapped: dict[str, None] = {}
    for raw in tags:
        tag = raw.strip()
        if not tag:
            continue
        mapped = _TOPIC_INDEX.get(tag.casefold())
        if mapped is None:
            unmapped[tag] = None
        else:
            topics.update(dict.fromkeys(mapped))
    return list(topics), list(unmapped)


_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_NON_SLUG = re.compile(r"[^a-z0-9]+")


def slug(name: str) -> str:
    """The member id for a name: ``"Rheinfelden (Baden)"`` -> ``"rheinfelden-baden"``.

    Lowercase, German umlauts transliterated (ä->ae, ö->oe, ü->ue, ß->ss), other accents
    dropped, every other run of characters outside ``[a-z0-9]`` one ``-``, trimmed, at most 64
    characters. Raises :class:`ValueError` if fewer than two characters remain.
    """
    text = unicodedata.normalize("NFC", name).lower().translate(_UMLAUTS)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    result = _NON_SLUG.sub("-", text).strip("-")[:64].rstrip("-")
    if len(result) < 2:
        raise ValueError(f"cannot derive a member id from {name!r}")
    return result


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
    members: list[DemoMember] = []
    for row in read_rows(text, source=source, newcomer_year=newcomer_year):
        if row.member is None:
            raise NetworkDataError(f"{row.where}: {row.problem}", row.problem)
        members.append(row.member)
    return members


@dataclass(frozen=True)
class NetworkRow:
    """One row of a member file: its registration, or why there is none."""

    #: The line the row ends on (1 is the header).
    line: int
    #: The name as the row gives it (may be empty).
    name: str
    member: DemoMember | None
    #: Why the row cannot be used (``None`` when :attr:`member` is set).
    problem: str | None
    #: ``"<source>, line <n> (<name>)"``, for messages.
    where: str


def read_rows(
    text: str,
    *,
    source: str = "members.csv",
    newcomer_year: int | None = DEFAULT_NEWCOMER_YEAR,
) -> list[NetworkRow]:
    """Every row of a member file, each with its registration or its problem, in file order.

    Members that joined in ``newcomer_year`` or later seek a tandem; ``None``: none do. A row
    whose member id an earlier row already uses is a problem of that row. Raises
    :class:`NetworkDataError` only for a file that lacks columns (naming them)."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        problem = f"missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}"
        if len(header) == 1 and ";" in header[0]:
            problem += " separated by commas, not semicolons"
        raise NetworkDataError(f"{source}: {problem}", problem)
    rows: list[NetworkRow] = []
    seen: dict[str, tuple[str, int]] = {}
    for record in reader:
        line = reader.line_num
        name = (record.get("name") or "").strip()
        where = f"{source}, line {line}" + (f" ({name})" if name else "")
        try:
            member = _member(record, where, newcomer_year)
        except NetworkDataError as error:
            rows.append(NetworkRow(line, name, None, error.problem, where))
            continue
        if member.id in seen:
            first, first_line = seen[member.id]
            problem = f"member id {member.id!r} is already used by {first!r} (line {first_line})"
            rows.append(NetworkRow(line, name, None, problem, where))
            continue
        seen[member.id] = (name, line)
        if member.unmapped_tags:
            logger.warning(
                "%s: tag(s) not in TOPIC_MAP, ignored: %s", where, ", ".join(member.unmapped_tags)
            )
        rows.append(NetworkRow(line, name, member, None, where))
    return rows


def _member(row: dict[str, str | None], where: str, newcomer_year: int | None) -> DemoMember:
    def cell(column: str) -> str:
        return (row.get(column) or "").strip()

    def fail(problem: str) -> NetworkDataError:
        return NetworkDataError(f"{where}: {problem}", problem)

    name = cell("name")
    if not name:
        raise fail("empty name")
    try:
        member_id = slug(name)
    except ValueError as exc:
        raise fail(str(exc)) from None
    state = _STATE_CODES.get(cell("bundesland"))
    if state is None:
        raise fail(
            f"unknown Bundesland {cell('bundesland')!r}; "
            f"expected one of {', '.join(sorted(_STATE_CODES))}"
        )
    estimated: list[str] = []

    join_year = _integer(cell("joined"), "joined", where)
    if join_year is None:
        joined = dt.date(UNKNOWN_JOIN_YEAR, 1, 1)
        estimated.append("joined")
    elif 1900 <= join_year <= 9999:
        joined = dt.date(join_year, 1, 1)  # the day is not known; the year is what counts
    else:
        raise fail(f"implausible join year {join_year}")
    newcomer = join_year is not None and newcomer_year is not None and join_year >= newcomer_year

    given_population = _integer(cell("population"), "population", where)
    population = given_population if given_population else ESTIMATED_POPULATION
    if not given_population:
        estimated.append("population")

    lat = _number(cell("lat"), "lat", where)
    lon = _number(cell("lon"), "lon", where)

    tags = tuple(t.strip() for t in cell("topics").split(";") if t.strip())
    topics, unmapped = map_topics(tags)
    own = "interests" if newcomer else "strengths"
    other = "strengths" if newcomer else "interests"
    primary = topics or _pick(member_id, own, _count(member_id, own, 2, 3), exclude=())
    if not topics:
        estimated.append(own)
    # Existing members also want to work on something, newcomers may already offer something.
    low, high = (0, 1) if newcomer else (1, 2)
    secondary = _pick(member_id, other, _count(member_id, other, low, high), exclude=primary)
    if secondary:
        estimated.append(other)
    interests, strengths = (primary, secondary) if newcomer else (secondary, primary)

    mentor_capacity = 2 if population > 100_000 else 1
    estimated += ["mentor_capacity", "partners", "contact"]
    kind = cell("kind")
    partners = [
        {"name": f"Bürgerstiftung {name} (geschätzt)", "sector": "civil_society"},
        {
            "name": f"{_ADMINISTRATION.get(kind, 'Verwaltung')} {name} (geschätzt)",
            "sector": "administration",
        },
        {"name": f"Unternehmensnetzwerk {name} (geschätzt)", "sector": "business"},
    ]
    domain = member_id[:63].rstrip("-")
    contact = {"name": f"Koordination {name}", "email": f"koordination@{domain}.example"}

    exception_reason = None
    if given_population and not POPULATION_MIN <= given_population <= POPULATION_MAX:
        exception_reason = (
            "Mitglied trotz Einwohnerzahl außerhalb 10.000–250.000 "
            f"(Angabe aus GeoNames: {given_population:,})".replace(",", ".")
        )

    try:
        registration = MemberRegistration.model_validate(
            {
                "id": member_id,
                "name": name,
                "kind": kind,
                "state": state,
                "population": population,
                "lat": lat,
                "lon": lon,
                "joined": joined,
                "interests": interests,
                "strengths": strengths,
                "mentor_capacity": mentor_capacity,
                "seeks_tandem": newcomer,
                "contact": contact,
                "partners": partners,
                "exception_reason": exception_reason,
                "estimated": [f for f in ESTIMATED_FIELDS if f in estimated],
                "wishes": [w.strip() for w in cell("wishes").split(";") if w.strip()],
            }
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors()
        )
        raise fail(problems) from None
    return DemoMember(
        registration=registration,
        join_year=join_year,
        estimated=tuple(f for f in ESTIMATED_FIELDS if f in estimated),
        source_url=cell("source_url"),
        unmapped_tags=tuple(unmapped),
        tags=tags,
    )


def _integer(value: str, column: str, where: str) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        problem = f"{column} {value!r} is not a whole number"
        raise NetworkDataError(f"{where}: {problem}", problem) from None


def _number(value: str, column: str, where: str) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        problem = f"{column} {value!r} is not a number"
        raise NetworkDataError(f"{where}: {problem}", problem) from None


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
