"""Member files (CSV): what each line states, in the registration's terms, nothing filled in.

The one reader ``tandem import`` and ``tandem demo`` share. A line becomes the fields of
``POST /api/members`` it states (:attr:`MemberLine.values`), its topic tags mapped onto the
vocabulary, and the cells that cannot be read (:attr:`MemberLine.problems`, every one). What a
line does not state is absent: the import sends it as it is (the registry refuses what
admission needs and does not get), the demo fills in its own estimates, marked.

Columns (UTF-8, comma-separated, a header line; more columns are ignored):

- required: ``name``, ``kind``, ``bundesland`` (German name, e.g. ``Hessen``, or ISO code
  ``DE-HE``), ``joined`` (a year, meaning 1 January of it, or an ISO date), ``topics`` (German
  tags, slugs or labels separated by ``;``), ``population``, ``lat``, ``lon`` (may be blank);
- optional: ``id`` (default: derived from the name), ``source_url``, ``contact_name``,
  ``contact_email``, ``partners`` (``Name|sector`` separated by ``;``; sector
  ``civil_society``/``administration``/``business`` or ``Zivilgesellschaft``/``Verwaltung``/
  ``Wirtschaft``), ``mentor_capacity``, ``seeks_tandem`` (``true``/``false``, ``ja``/``nein``),
  ``wishes`` (member ids separated by ``;``), ``interests``, ``strengths`` (slugs or German
  labels separated by ``;``), ``exception_reason``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from schemas.member import STATES
from schemas.topics import topic_slug

__all__ = [
    "COLUMNS",
    "OPTIONAL_COLUMNS",
    "STATE_CODES",
    "TOPIC_MAP",
    "MemberFileError",
    "MemberLine",
    "map_topics",
    "read_lines",
    "slug",
]

#: The columns a member file must have (more are allowed).
COLUMNS = ("name", "kind", "bundesland", "joined", "topics", "population", "lat", "lon")
#: Further columns the reader understands.
OPTIONAL_COLUMNS = (
    "id", "source_url", "contact_name", "contact_email", "partners", "mentor_capacity",
    "seeks_tandem", "wishes", "interests", "strengths", "exception_reason",
)  # fmt: skip
#: German state names (as the network's pages write them) and their ISO 3166-2 codes.
STATE_CODES: dict[str, str] = {german: code for code, (german, _region) in STATES.items()}
_SECTORS = {
    "civil_society": "civil_society", "zivilgesellschaft": "civil_society",
    "administration": "administration", "verwaltung": "administration",
    "business": "business", "wirtschaft": "business",
}  # fmt: skip
_TRUE = {"true", "ja", "yes", "1", "wahr"}
_FALSE = {"false", "nein", "no", "0", "falsch"}

#: Every German tag of ``members.csv`` mapped onto the topic vocabulary (zero or more slugs).
#: Tags the vocabulary has no place for map to ``()`` on purpose; a tag missing here that is a
#: slug or German label of the vocabulary stands for that topic; others are reported as
#: unmapped by :func:`map_topics`.
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


class MemberFileError(ValueError):
    """The file cannot be read as a member file (e.g. it lacks columns)."""


def map_topics(tags: Iterable[str]) -> tuple[list[str], list[str]]:
    """Map German tags onto the vocabulary: ``(topics, unmapped tags)``.

    Matching ignores case and surrounding blanks; topics keep the order of their first tag and
    appear once. Tags mapped to ``()`` are known and yield no topic; a tag not in
    :data:`TOPIC_MAP` that is a slug or German label of the vocabulary yields that topic;
    others are returned as unmapped (in the caller's spelling), never an error.
    """
    topics: dict[str, None] = {}
    unmapped: dict[str, None] = {}
    for raw in tags:
        tag = raw.strip()
        if not tag:
            continue
        mapped = _TOPIC_INDEX.get(tag.casefold())
        if mapped is None:
            known = topic_slug(tag)
            mapped = (known,) if known is not None else None
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


@dataclass(frozen=True)
class MemberLine:
    """One line of a member file: what it states, and what of it cannot be read."""

    #: The line the record ends on (1 is the header).
    line: int
    #: The name as the line gives it (may be empty).
    name: str
    #: ``"<source>, line <n> (<name>)"``, for messages.
    where: str
    #: The registration fields the line states, JSON-ready (``joined`` an ISO date, ``state``
    #: the ISO code, ``contact`` and ``partners`` as the API takes them). Topics are in
    #: :attr:`topics`, not here, unless the line has ``interests``/``strengths`` columns.
    values: dict[str, Any]
    #: The ``topics`` column's tags as written, and the vocabulary topics they map to.
    tags: tuple[str, ...]
    topics: tuple[str, ...]
    unmapped_tags: tuple[str, ...]
    #: The year of ``joined``, ``None`` where the line states none.
    join_year: int | None
    source_url: str
    #: ``(field, message)`` for every cell that cannot be read (the field is the
    #: registration's, e.g. ``state`` for the ``bundesland`` column).
    problems: tuple[tuple[str, str], ...] = ()

    @property
    def member_id(self) -> str | None:
        """The member id the line states or its name yields."""
        value = self.values.get("id")
        return value if isinstance(value, str) else None


def read_lines(text: str, *, source: str = "members.csv") -> list[MemberLine]:
    """Every line of a member file, in file order. A line whose member id an earlier line
    already uses has that as a problem. Raises :class:`MemberFileError` for a file that lacks
    columns (naming them)."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        problem = f"missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}"
        if len(header) == 1 and ";" in header[0]:
            problem += " separated by commas, not semicolons"
        raise MemberFileError(f"{source}: {problem}")
    lines: list[MemberLine] = []
    seen: dict[str, tuple[str, int]] = {}
    for record in reader:
        line = _line(record, reader.line_num, source)
        member_id = line.member_id
        if member_id is not None and member_id in seen:
            first, first_line = seen[member_id]
            problem = f"member id {member_id!r} is already used by {first!r} (line {first_line})"
            line = _with_problem(line, ("id", problem))
        elif member_id is not None:
            seen[member_id] = (line.name, line.line)
        lines.append(line)
    return lines


def _with_problem(line: MemberLine, problem: tuple[str, str]) -> MemberLine:
    return MemberLine(
        line.line, line.name, line.where, line.values, line.tags, line.topics,
        line.unmapped_tags, line.join_year, line.source_url, (*line.problems, problem),
    )  # fmt: skip


def _line(record: dict[str | Any, str | Any], number: int, source: str) -> MemberLine:
    reading = _Reading(record)
    name = reading.cell("name")
    join_year = reading.read()
    tags = tuple(_items(reading.cell("topics")))
    topics, unmapped = map_topics(tags)
    return MemberLine(
        line=number, name=name, where=f"{source}, line {number}" + (f" ({name})" if name else ""),
        values=reading.values, tags=tags, topics=tuple(topics), unmapped_tags=tuple(unmapped),
        join_year=join_year, source_url=reading.cell("source_url"),
        problems=tuple(reading.problems),
    )  # fmt: skip


class _Reading:
    """One line being read: what it states (``values``) and what cannot be read
    (``problems``, one ``(field, message)`` each)."""

    def __init__(self, record: dict[str | Any, str | Any]) -> None:
        self.record = record
        self.values: dict[str, Any] = {}
        self.problems: list[tuple[str, str]] = []

    def cell(self, column: str) -> str:
        value = self.record.get(column)
        return value.strip() if isinstance(value, str) else ""

    def read(self) -> int | None:
        """Read every column; the join year, if the line states one."""
        self._identity()
        self._state()
        join_year = self._joined()
        self._numbers()
        self._seeks_tandem()
        self._contact()
        self._partners()
        for column in ("interests", "strengths", "wishes"):
            items = _items(self.cell(column))
            if items:
                self.values[column] = items
        if self.cell("exception_reason"):
            self.values["exception_reason"] = self.cell("exception_reason")
        return join_year

    def _identity(self) -> None:
        name = self.cell("name")
        if self.cell("id"):
            self.values["id"] = self.cell("id")
        elif name:
            try:
                self.values["id"] = slug(name)
            except ValueError as error:
                self.problems.append(("id", str(error)))
        if name:
            self.values["name"] = name
        else:
            self.problems.append(("name", "empty name"))
        if self.cell("kind"):
            self.values["kind"] = self.cell("kind")

    def _state(self) -> None:
        land = self.cell("bundesland")
        if not land:
            return
        state = STATE_CODES.get(land) or (land.upper() if land.upper() in STATES else None)
        if state is None:
            self.problems.append(
                ("state", f"unknown Bundesland {land!r}; expected one of "
                          f"{', '.join(sorted(STATE_CODES))}")
            )  # fmt: skip
        else:
            self.values["state"] = state

    def _joined(self) -> int | None:
        joined = self.cell("joined")
        if not joined:
            return None
        try:
            if re.fullmatch(r"\d{4}", joined):
                self.values["joined"] = dt.date(int(joined), 1, 1).isoformat()
                return int(joined)
            date = dt.date.fromisoformat(joined)
        except ValueError:
            self.problems.append(("joined", f"joined {joined!r} is not a year or an ISO date"))
            return None
        self.values["joined"] = date.isoformat()
        return date.year

    def _numbers(self) -> None:
        for column, parse in (
            ("population", _integer), ("lat", _number), ("lon", _number),
            ("mentor_capacity", _integer),
        ):  # fmt: skip
            raw = self.cell(column)
            if raw:
                try:
                    self.values[column] = parse(raw)
                except ValueError as error:
                    self.problems.append((column, f"{column} {raw!r} {error}"))

    def _seeks_tandem(self) -> None:
        seeks = self.cell("seeks_tandem").casefold()
        if seeks in _TRUE or seeks in _FALSE:
            self.values["seeks_tandem"] = seeks in _TRUE
        elif seeks:
            self.problems.append(
                ("seeks_tandem", f"seeks_tandem {self.cell('seeks_tandem')!r} is not "
                                 "true/false (ja/nein)")
            )  # fmt: skip

    def _contact(self) -> None:
        contact_name, contact_email = self.cell("contact_name"), self.cell("contact_email")
        if contact_name or contact_email:
            self.values["contact"] = {
                k: v for k, v in (("name", contact_name), ("email", contact_email)) if v
            }

    def _partners(self) -> None:
        partners: list[dict[str, str]] = []
        for entry in _items(self.cell("partners")):
            partner_name, bar, sector = entry.rpartition("|")
            if not bar:
                self.problems.append(("partners", f"partner {entry!r} needs the form Name|sector"))
                continue
            partners.append(
                {"name": partner_name.strip(),
                 "sector": _SECTORS.get(sector.strip().casefold(), sector.strip())}
            )  # fmt: skip
        if partners:
            self.values["partners"] = partners


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(";") if item.strip()]


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError("is not a whole number") from None


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(number):
        raise ValueError("is not a finite number")
    return number
