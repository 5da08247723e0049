"""Deterministic synthetic members for the benchmarks.

Realistic enough to exercise every criterion: populations 10,000 to 250,000 (log-uniform, as the
admission rules allow), coordinates inside Germany's bounding box, one to three strengths and
interests from the topic vocabulary, mentor capacity 1 or 2, joined 2015-2023 for existing
members and 2024 for newcomers. The same seed gives the same members.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from schemas.member import STATES
from schemas.topics import TOPICS
from services.matcher.domain.model import Member

#: Germany's bounding box (degrees).
LAT_RANGE = (47.3, 55.0)
LON_RANGE = (5.9, 15.0)
POPULATION_RANGE = (10_000, 250_000)
NEWCOMER_YEAR = 2024
EXISTING_YEARS = (2015, 2023)
SEED = 20240601

#: Rough centre (lat, lon) of each state: a member's state is the nearest centre, so that the
#: state and the coordinates (which the scoring prefers) agree roughly.
_CENTRES = {
    "DE-BW": (48.5, 9.0), "DE-BY": (48.9, 11.4), "DE-BE": (52.5, 13.4), "DE-BB": (52.4, 13.0),
    "DE-HB": (53.1, 8.8), "DE-HH": (53.55, 10.0), "DE-HE": (50.6, 9.0), "DE-MV": (53.8, 12.6),
    "DE-NI": (52.8, 9.5), "DE-NW": (51.5, 7.5), "DE-RP": (49.9, 7.4), "DE-SL": (49.4, 7.0),
    "DE-SN": (51.0, 13.3), "DE-ST": (52.0, 11.7), "DE-SH": (54.2, 9.8), "DE-TH": (50.9, 11.0),
}  # fmt: skip
_STATE_CODES = tuple(_CENTRES)


@dataclass(frozen=True, slots=True)
class Synthetic:
    """One synthetic member in the shape every benchmark needs."""

    id: str
    name: str
    state: str
    population: int
    lat: float
    lon: float
    joined: dt.date
    interests: tuple[str, ...]
    strengths: tuple[str, ...]
    mentor_capacity: int
    seeks_tandem: bool

    @property
    def region(self) -> str:
        return STATES[self.state][1]

    def domain(self) -> Member:
        """The matcher's domain view."""
        return Member(
            id=self.id,
            name=self.name,
            state=self.state,
            region=self.region,
            population=self.population,
            lat=self.lat,
            lon=self.lon,
            joined=self.joined,
            interests=frozenset(self.interests),
            strengths=frozenset(self.strengths),
            mentor_capacity=self.mentor_capacity,
            seeks_tandem=self.seeks_tandem,
        )

    def public(self) -> dict[str, object]:
        """The ``city.joined`` data (JSON-ready)."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": "city",
            "state": self.state,
            "region": self.region,
            "population": self.population,
            "lat": self.lat,
            "lon": self.lon,
            "joined": self.joined.isoformat(),
            "interests": list(self.interests),
            "strengths": list(self.strengths),
            "mentor_capacity": self.mentor_capacity,
            "seeks_tandem": self.seeks_tandem,
            "partners": [
                {"sector": "civil_society"},
                {"sector": "administration"},
                {"sector": "business"},
            ],
            "status": "active",
            "revision": 1,
        }

    def registration(self) -> dict[str, object]:
        """The body of ``POST /api/members`` (passes the admission rules)."""
        body = {k: v for k, v in self.public().items() if k not in {"status", "revision"}}
        body["partners"] = [
            {"name": "Bürgerstiftung", "sector": "civil_society"},
            {"name": "Rathaus", "sector": "administration"},
            {"name": "Stadtwerke", "sector": "business"},
        ]
        body["contact"] = {"name": "Maria Muster", "email": f"kontakt@{self.id}.example.org"}
        return body


def generate(count: int, *, newcomers: bool, prefix: str, seed: int = SEED) -> list[Synthetic]:
    """``count`` members named ``<prefix>-<k>``; newcomers joined in 2024 and seek a tandem,
    existing members joined 2015-2023 and do not."""
    rng = np.random.default_rng([seed, int(newcomers), *prefix.encode()])
    low, high = np.log(POPULATION_RANGE[0]), np.log(POPULATION_RANGE[1])
    population = np.exp(rng.uniform(low, high, count)).round().astype(int)
    lat = rng.uniform(*LAT_RANGE, count).round(4)
    lon = rng.uniform(*LON_RANGE, count).round(4)
    centres = np.array(list(_CENTRES.values()))
    state = np.argmin(
        (lat[:, None] - centres[None, :, 0]) ** 2
        + ((lon[:, None] - centres[None, :, 1]) * 0.65) ** 2,  # a degree of longitude is shorter
        axis=1,
    )
    if newcomers:
        years = np.full(count, NEWCOMER_YEAR)
    else:
        years = rng.integers(EXISTING_YEARS[0], EXISTING_YEARS[1] + 1, count)
    day = rng.integers(0, 365, count)
    capacity = rng.integers(1, 3, count)
    n_interests = rng.integers(1, 4, count)
    n_strengths = rng.integers(1, 4, count)
    # Distinct topics per member: the first 1-3 of a random permutation of the vocabulary.
    interest_order = np.argsort(rng.random((count, len(TOPICS))), axis=1)
    strength_order = np.argsort(rng.random((count, len(TOPICS))), axis=1)
    columns = zip(
        population.tolist(), lat.tolist(), lon.tolist(), state.tolist(), years.tolist(),
        day.tolist(), capacity.tolist(), interest_order[:, :3].tolist(),
        n_interests.tolist(), strength_order[:, :3].tolist(), n_strengths.tolist(), strict=True,
    )  # fmt: skip
    members = []
    for k, (people, y, x, s, year, d, cap, wants, nw, offers, no) in enumerate(columns):
        joined = min(dt.date(year, 1, 1) + dt.timedelta(days=d), dt.date(year, 12, 31))
        members.append(
            Synthetic(
                id=f"{prefix}-{k:06d}",
                name=f"{prefix.title()} {k}",
                state=_STATE_CODES[s],
                population=people,
                lat=y,
                lon=x,
                joined=joined,
                interests=tuple(TOPICS[t] for t in wants[:nw]),
                strengths=tuple(TOPICS[t] for t in offers[:no]),
                mentor_capacity=cap,
                seeks_tandem=newcomers,
            )
        )
    return members
