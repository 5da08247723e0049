"""How well an experienced member (mentor) fits a newcomer: five criteria, each in [0, 1].

The total is the weighted mean of the criteria (weights normalised to sum 1), so it is in [0, 1]:

* ``topics``: share of the newcomer's interests the mentor offers as strengths, plus
  ``SHARED_INTEREST_CREDIT`` (0.25) per shared interest (both want to work on it), relative to
  the number of the newcomer's interests, capped at 1. A newcomer without interests gets the
  neutral ``NO_INTERESTS_TOPIC_SCORE`` (0.5) for every mentor.
* ``population``: ``max(0, 1 - |log10(p_newcomer / p_mentor)|)``: equal size 1, one town twice
  the other 0.70, three times 0.52, five times 0.30, ten times or more 0.
* ``geography``: with both coordinates ``max(0, 1 - d / 600 km)`` (great-circle distance ``d``):
  37 km 0.94, 150 km 0.75, 300 km 0.5, 600 km or more 0. Without coordinates: same state 0.8,
  same region (north/east/south/west) 0.5, otherwise 0.1, matching typical distances.
* ``experience``: the mentor's years in the network at ``today``, ``min(1, years / 5)``.
* ``network``: from the graph of past and running tandems: 0 for former partners (avoid
  re-pairing), 0.25 when they share a former partner, 0.5 when otherwise connected, 1 when not
  connected at all (a new link for the network).

``score_engine.score_matrix`` computes all newcomer x mentor pairs at once with numpy;
``score_pair`` is the plain-Python reference of the same formulas (tests assert they agree).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import networkx as nx

from schemas.geo import great_circle_km
from services.matcher.domain.model import Member

#: The criteria in the order they are reported.
CRITERIA: tuple[str, ...] = ("topics", "population", "geography", "experience", "network")

SHARED_INTEREST_CREDIT = 0.25
NO_INTERESTS_TOPIC_SCORE = 0.5
#: A size ratio of 10^POPULATION_ZERO_DECADES (10x) scores 0.
POPULATION_ZERO_DECADES = 1.0
#: Distance at which geography reaches 0.
GEOGRAPHY_ZERO_KM = 600.0
SAME_STATE_SCORE = 0.8
SAME_REGION_SCORE = 0.5
OTHER_REGION_SCORE = 0.1
#: Years in the network after which experience counts fully.
FULL_EXPERIENCE_YEARS = 5.0
FORMER_PARTNERS_SCORE = 0.0
COMMON_PARTNER_SCORE = 0.25
CONNECTED_SCORE = 0.5
UNCONNECTED_SCORE = 1.0


@dataclass(frozen=True, slots=True)
class Weights:
    """Relative weight of each criterion; normalised to sum 1 when scoring.

    Defaults: topics 0.35 (what the tandem works on is the programme's point: "experience with
    what the newcomer wants to work on"), population 0.25 and geography 0.25 ("similar
    conditions", and visits need short trips), experience 0.10 (eligibility already requires an
    earlier cohort; this only prefers long-standing members among those), network 0.05 (a gentle
    nudge towards new links that must not outweigh content).
    """

    topics: float = 0.35
    population: float = 0.25
    geography: float = 0.25
    experience: float = 0.10
    network: float = 0.05

    def __post_init__(self) -> None:
        for name in CRITERIA:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"weight {name!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"weight {name!r} must be a finite number >= 0, got {value!r}")
        if self.total <= 0:
            raise ValueError("at least one weight must be > 0 (all weights are 0)")

    @property
    def total(self) -> float:
        """Sum of the weights."""
        return float(sum(getattr(self, name) for name in CRITERIA))

    def as_dict(self) -> dict[str, float]:
        """The weights by criterion name, as given."""
        return {name: float(getattr(self, name)) for name in CRITERIA}

    def normalised(self) -> dict[str, float]:
        """The weights by criterion name, scaled to sum 1."""
        total = self.total
        return {name: float(getattr(self, name)) / total for name in CRITERIA}

    @classmethod
    def parse(cls, text: str) -> Weights:
        """Weights from ``"topics=0.4,population=0.2,..."`` (the ``TANDEM_WEIGHTS`` format).

        Criteria not mentioned keep their default; an empty text gives the defaults. Raises
        ``ValueError`` naming the offending item on unknown criteria, repeats, missing ``=``,
        non-numbers, negative or non-finite values, and when all weights end up 0.
        """
        values: dict[str, float] = {}
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            name, sep, number = (part.strip() for part in item.partition("="))
            if not sep:
                raise ValueError(f"weight item {item!r} must look like name=number")
            if name not in CRITERIA:
                raise ValueError(
                    f"unknown criterion {name!r} in weights; known: {', '.join(CRITERIA)}"
                )
            if name in values:
                raise ValueError(f"criterion {name!r} is given twice in weights")
            try:
                values[name] = float(number)
            except ValueError:
                raise ValueError(f"weight {name!r} must be a number, got {number!r}") from None
        return cls(**values)


DEFAULT_WEIGHTS = Weights()


@dataclass(frozen=True, slots=True)
class PairScore:
    """The total score of one newcomer/mentor pair and its per-criterion scores."""

    total: float
    breakdown: dict[str, float]


# --- the reference formulas, one pair at a time -------------------------------------------


def topic_score(newcomer: Member, mentor: Member) -> float:
    """Topic fit: offered interests plus a smaller credit for shared interests, capped at 1."""
    if not newcomer.interests:
        return NO_INTERESTS_TOPIC_SCORE
    offered = len(newcomer.interests & mentor.strengths)
    shared = len(newcomer.interests & mentor.interests)
    return min(1.0, (offered + SHARED_INTEREST_CREDIT * shared) / len(newcomer.interests))


def population_score(newcomer: Member, mentor: Member) -> float:
    """Size similarity on a log scale: 1 for equal size, 0 from a factor of ten."""
    decades = abs(math.log10(newcomer.population) - math.log10(mentor.population))
    return max(0.0, 1.0 - decades / POPULATION_ZERO_DECADES)


def distance_km(a: Member, b: Member) -> float | None:
    """Great-circle (haversine) distance in km, or ``None`` when a location is unknown."""
    if a.lat is None or a.lon is None or b.lat is None or b.lon is None:
        return None
    return great_circle_km(a.lat, a.lon, b.lat, b.lon)


def geography_score(newcomer: Member, mentor: Member) -> float:
    """Closeness: linear in distance when located, else same state / region / elsewhere."""
    distance = distance_km(newcomer, mentor)
    if distance is not None:
        return max(0.0, 1.0 - distance / GEOGRAPHY_ZERO_KM)
    if newcomer.state == mentor.state:
        return SAME_STATE_SCORE
    if newcomer.region == mentor.region:
        return SAME_REGION_SCORE
    return OTHER_REGION_SCORE


def years_in_network(member: Member, today: dt.date) -> float:
    """Years since the member joined (negative if it joins in the future)."""
    return (today - member.joined).days / 365.25


def experience_score(mentor: Member, today: dt.date) -> float:
    """The mentor's years in the network, full credit from ``FULL_EXPERIENCE_YEARS``."""
    return min(1.0, max(0.0, years_in_network(mentor, today) / FULL_EXPERIENCE_YEARS))


def network_score(newcomer_id: str, mentor_id: str, graph: nx.Graph | None) -> float:
    """How new the link would be: 0 for former partners up to 1 for unconnected members."""
    if graph is None or newcomer_id not in graph or mentor_id not in graph:
        return UNCONNECTED_SCORE
    if graph.has_edge(newcomer_id, mentor_id):
        return FORMER_PARTNERS_SCORE
    if set(graph[newcomer_id]) & set(graph[mentor_id]):
        return COMMON_PARTNER_SCORE
    if nx.has_path(graph, newcomer_id, mentor_id):
        return CONNECTED_SCORE
    return UNCONNECTED_SCORE


def score_pair(
    newcomer: Member,
    mentor: Member,
    weights: Weights,
    today: dt.date,
    graph: nx.Graph | None = None,
) -> PairScore:
    """Score one pair with the plain formulas; equals the matching ``score_matrix`` entry."""
    breakdown = {
        "topics": topic_score(newcomer, mentor),
        "population": population_score(newcomer, mentor),
        "geography": geography_score(newcomer, mentor),
        "experience": experience_score(mentor, today),
        "network": network_score(newcomer.id, mentor.id, graph),
    }
    share = weights.normalised()
    total = sum(share[name] * breakdown[name] for name in CRITERIA)
    return PairScore(total=min(1.0, max(0.0, total)), breakdown=breakdown)
