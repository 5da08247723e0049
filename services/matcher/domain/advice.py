"""Kollegiale Beratung: which members a coordinator should ask about a concrete challenge.

A coordinator names topics from the vocabulary, optionally a free-text ``question``, and how
many advisors ``k`` they want. Every active member other than the requester is an eligible
advisor; ``rank_advisors`` ranks them all, ``assign_advisors`` answers several pending requests
at once so that the same few members are not asked by everybody.

Score of advisor ``a`` for request ``r`` (each criterion in [0, 1], weights ``AdviceWeights``
normalised to sum 1, so the total is in [0, 1]):

* ``topics``: the share of the wanted topics that ``a`` offers as strengths. Wanted topics are
  the requested ones (weight 1 each) and those the question mentions (``question_topics``) but
  the request does not list (weight ``question``, default 0.5). A share ``s > 0`` scores
  ``coverage_floor + (1 - coverage_floor) * s``, a share of 0 scores 0: any strength in a wanted
  topic lifts a member above the floor.
* ``conditions``: the mean of ``population_score`` and ``geography_score`` from ``scoring``
  (similar size on a log scale; distance, or same state/region without coordinates).
* ``experience``: ``experience_score`` from ``scoring`` (years in the network, full from 5).
* ``fairness``: ``1 / (1 + fairness_lambda * load)`` where ``load`` is how often the member was
  recommended recently (``recent_load``; the caller applies the window, default 90 days).

Topic coverage dominates by construction: ``AdviceWeights`` refuses weights unless
``topics * coverage_floor > conditions + experience + fairness``, so a member with any strength
in a wanted topic always scores above every member with none, whatever their size, distance,
experience or recent load. Fairness can therefore reorder members of similar fit, never
override content. Ties are broken by city id, so the result is deterministic.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from schemas.geo import great_circle_km_from
from schemas.member import STATES
from schemas.topics import topic_label
from services.matcher.domain.explain import HELPS, REGION_LABELS_DE, german_number, inhabitants
from services.matcher.domain.model import Member
from services.matcher.domain.question_words import question_topics
from services.matcher.domain.scoring import (
    FULL_EXPERIENCE_YEARS,
    GEOGRAPHY_ZERO_KM,
    OTHER_REGION_SCORE,
    POPULATION_ZERO_DECADES,
    SAME_REGION_SCORE,
    SAME_STATE_SCORE,
    distance_km,
)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int_]

#: Criteria of the advice score (the weighted ones), in the order they are reported.
CRITERIA: tuple[str, ...] = ("topics", "conditions", "experience", "fairness")
#: Conditions score when the requester is not known to the matcher (no size or place to
#: compare with): neutral, so it changes no ranking.
UNKNOWN_REQUESTER_SCORE = 0.5
#: Score resolution of the joint solve: scores are compared in millionths (integer costs keep
#: the network simplex exact).
SCORE_SCALE = 1_000_000


# --- weights -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdviceWeights:
    """How the advice score is weighed; see the module docstring for the formula.

    Defaults and why:

    * ``topics`` 0.70: content is the point of collegial advice ("talk to someone who has done
      it"); it dominates (see the dominance rule below).
    * ``conditions`` 0.15: a town of similar size and nearby region faces similar conditions
      (population and geography count half each).
    * ``experience`` 0.05: long-standing members have more to tell, but newer ones also know
      a topic, and preferring old members is what concentrates requests today.
    * ``fairness`` 0.10 with ``fairness_lambda`` 1.0: a member recommended once recently loses
      half of this, twice two thirds, four times four fifths: enough to rotate among members
      of similar fit.
    * ``question`` 0.5: a topic found only in the free text counts half as much as a topic
      the coordinator chose explicitly (keyword matching can misread a question).
    * ``coverage_floor`` 0.6: the topic score of the smallest positive coverage.

    Criterion weights are relative (normalised to sum 1). Raises ``ValueError`` for negative or
    non-finite values, ``question`` or ``coverage_floor`` outside [0, 1] / (0, 1], and unless
    ``topics * coverage_floor > conditions + experience + fairness`` (the dominance rule: a
    member with a wanted strength must always outrank one without).
    """

    topics: float = 0.70
    conditions: float = 0.15
    experience: float = 0.05
    fairness: float = 0.10
    question: float = 0.5
    fairness_lambda: float = 1.0
    coverage_floor: float = 0.6

    def __post_init__(self) -> None:
        for name in (*CRITERIA, "question", "fairness_lambda", "coverage_floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"advice weight {name!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"advice weight {name!r} must be finite and >= 0, got {value!r}")
        if self.question > 1:
            raise ValueError(f"advice weight 'question' must be in [0, 1], got {self.question}")
        if not 0 < self.coverage_floor <= 1:
            raise ValueError(f"'coverage_floor' must be in (0, 1], got {self.coverage_floor}")
        others = self.conditions + self.experience + self.fairness
        if not self.topics * self.coverage_floor > others:
            raise ValueError(
                "topic coverage must dominate: topics * coverage_floor "
                f"({self.topics * self.coverage_floor:g}) must exceed conditions + experience "
                f"+ fairness ({others:g})"
            )

    def normalised(self) -> dict[str, float]:
        """The criterion weights scaled to sum 1."""
        total = sum(float(getattr(self, name)) for name in CRITERIA)
        return {name: float(getattr(self, name)) / total for name in CRITERIA}


DEFAULT_ADVICE_WEIGHTS = AdviceWeights()


# --- requests and answers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdviceRequest:
    """A coordinator's request: ``city_id`` wants ``k`` advisors on ``topics`` / ``question``.

    ``topics`` is stored as a tuple without repeats (first occurrence kept). Vocabulary checks
    happen at the edges (HTTP, events); here unknown topics simply match no strength.
    Raises ``ValueError`` when ``k < 1``.
    """

    request_id: str
    city_id: str
    topics: tuple[str, ...]
    question: str = ""
    k: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "topics", tuple(dict.fromkeys(self.topics)))
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")


@dataclass(frozen=True, slots=True)
class AdviceMatch:
    """One recommended advisor: ``score`` in [0, 1], per-criterion ``breakdown``, German
    ``reasons``, and whether it is the requester's running tandem partner.

    ``breakdown`` holds the weighted criteria (``topics``, ``conditions``, ``experience``,
    ``fairness``) and the parts they are made of (``coverage``: the raw share of wanted topics;
    ``population``, ``geography``), all in [0, 1].
    """

    city_id: str
    score: float
    breakdown: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    tandem_partner: bool = False


# --- scoring -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pool:
    """Per-member feature arrays, built once per call in one pass over the members (the
    Python part is what costs at 10,000 members; the rest is numpy)."""

    members: tuple[Member, ...]
    index: dict[str, int]
    id_rank: IntArray  # position of each member in id order, for tie-breaks
    active: BoolArray
    log_population: FloatArray
    lat: FloatArray  # degrees, nan where unknown
    lon: FloatArray
    experience: FloatArray
    # Topic -> which members offer it; filled on demand, since a request names few topics.
    offers: dict[str, BoolArray] = field(default_factory=dict)

    @staticmethod
    def of(members: Sequence[Member], today: dt.date) -> _Pool:
        ordered = tuple(members)
        index = {m.id: i for i, m in enumerate(ordered)}
        if len(index) != len(ordered):
            raise ValueError("members must have distinct ids")
        features = np.array(
            [
                (
                    m.population,
                    m.lat if m.lat is not None and m.lon is not None else math.nan,
                    m.lon if m.lat is not None and m.lon is not None else math.nan,
                    m.joined.toordinal(),
                    m.active,
                )
                for m in ordered
            ],
            dtype=np.float64,
        ).reshape(len(ordered), 5)
        # Same formula as scoring.experience_score (years / 5, clipped to [0, 1]).
        years = (today.toordinal() - features[:, 3]) / 365.25
        return _Pool(
            members=ordered,
            index=index,
            id_rank=np.argsort(np.argsort(np.array([m.id for m in ordered], dtype=str))),
            active=features[:, 4] > 0,
            log_population=np.log10(features[:, 0]),
            lat=features[:, 1],
            lon=features[:, 2],
            experience=np.clip(years / FULL_EXPERIENCE_YEARS, 0.0, 1.0),
        )

    def offering(self, topic: str) -> BoolArray:
        """Which members have ``topic`` among their strengths."""
        if topic not in self.offers:
            self.offers[topic] = np.fromiter(
                (topic in m.strengths for m in self.members), dtype=bool, count=len(self.members)
            )
        return self.offers[topic]


@dataclass(frozen=True, slots=True)
class _Scored:
    """One request scored against every member of the pool."""

    request: AdviceRequest
    requester: Member | None
    wanted: dict[str, float]  # topic -> weight in the coverage share, explicit ones first
    mentioned: dict[str, list[str]]  # question topics -> words
    total: FloatArray
    parts: dict[str, FloatArray]
    load: IntArray
    eligible: BoolArray
    partners: frozenset[str]
    share: dict[str, float]  # normalised criterion weights: a criterion weighed 0 is no reason
    fairness_active: bool

    def ranked(self, pool: _Pool) -> IntArray:
        """Eligible member positions, best first, ties by id."""
        candidates = np.flatnonzero(self.eligible)
        order = np.lexsort((pool.id_rank[candidates], -self.total[candidates]))
        return candidates[order]


def _score(
    pool: _Pool,
    request: AdviceRequest,
    *,
    recent_load: Mapping[str, int],
    partners: Iterable[str],
    weights: AdviceWeights,
) -> _Scored:
    share = weights.normalised()
    mentioned = question_topics(request.question)
    wanted = dict.fromkeys(request.topics, 1.0)
    if weights.question > 0:
        for topic in mentioned:
            wanted.setdefault(topic, weights.question)
    else:
        # Question topics do not count at all, so they are not given as reasons either.
        mentioned = {t: words for t, words in mentioned.items() if t in wanted}
    m = len(pool.members)

    # Coverage: weighted share of the wanted topics among the member's strengths.
    coverage = np.zeros(m)
    denominator = sum(wanted.values())
    if denominator > 0:
        for topic, weight in wanted.items():
            coverage += weight * pool.offering(topic)
        coverage /= denominator
    floor = weights.coverage_floor
    topics = np.where(coverage > 0, floor + (1.0 - floor) * coverage, 0.0)

    requester_at = pool.index.get(request.city_id)
    requester = pool.members[requester_at] if requester_at is not None else None
    if requester_at is None:
        population = np.full(m, UNKNOWN_REQUESTER_SCORE)
        geography = np.full(m, UNKNOWN_REQUESTER_SCORE)
    else:
        population, geography = _conditions(pool, requester_at)

    load = np.zeros(m, dtype=np.int_)
    for city_id, count in recent_load.items():
        if count < 0:
            raise ValueError(f"recent_load[{city_id!r}] must be >= 0, got {count}")
        if city_id in pool.index:
            load[pool.index[city_id]] = count
    fairness = (1.0 / (1.0 + weights.fairness_lambda * load)).astype(np.float64)
    conditions = (population + geography) / 2.0
    total = (
        share["topics"] * topics
        + share["conditions"] * conditions
        + share["experience"] * pool.experience
        + share["fairness"] * fairness
    )
    np.clip(total, 0.0, 1.0, out=total)
    eligible = pool.active.copy()
    if requester_at is not None:
        eligible[requester_at] = False
    return _Scored(
        request=request,
        requester=requester,
        wanted=wanted,
        mentioned=mentioned,
        total=total,
        parts={
            "topics": topics,
            "coverage": coverage,
            "conditions": conditions,
            "population": population,
            "geography": geography,
            "experience": pool.experience,
            "fairness": fairness,
        },
        load=load,
        eligible=eligible,
        partners=frozenset(partners),
        share=share,
        fairness_active=share["fairness"] > 0 and weights.fairness_lambda > 0,
    )


def _conditions(pool: _Pool, at: int) -> tuple[FloatArray, FloatArray]:
    """Population and geography scores of every member against member ``at``.

    The formulas and constants of ``scoring.population_score`` and ``scoring.geography_score``
    (the tests check they agree), vectorised here because ``score_engine.score_matrix`` also builds
    topic and network features this score does not use, which alone costs ~30 ms for 10,000
    members.
    """
    decades = np.abs(pool.log_population[at] - pool.log_population)
    population = np.clip(1.0 - decades / POPULATION_ZERO_DECADES, 0.0, None)

    km = great_circle_km_from(float(pool.lat[at]), float(pool.lon[at]), pool.lat, pool.lon)
    geography = np.clip(1.0 - km / GEOGRAPHY_ZERO_KM, 0.0, None)
    blind = np.isnan(km)
    if blind.any():
        me = pool.members[at]
        geography[blind] = [
            SAME_STATE_SCORE
            if other.state == me.state
            else SAME_REGION_SCORE
            if other.region == me.region
            else OTHER_REGION_SCORE
            for other in (pool.members[j] for j in np.flatnonzero(blind).tolist())
        ]
    return population, geography


def _match(pool: _Pool, scored: _Scored, at: int) -> AdviceMatch:
    member = pool.members[at]
    partner = member.id in scored.partners
    breakdown = {name: float(values[at]) for name, values in scored.parts.items()}
    return AdviceMatch(
        city_id=member.id,
        score=float(scored.total[at]),
        breakdown=breakdown,
        reasons=_reasons(scored, member, breakdown, int(scored.load[at]), partner),
        tandem_partner=partner,
    )


# --- reasons -------------------------------------------------------------------------------


def _reasons(
    scored: _Scored, member: Member, breakdown: Mapping[str, float], load: int, partner: bool
) -> list[str]:
    """German reasons, in the order a coordinator reads them: relationship, content,
    conditions, experience, availability; a note when no wanted topic is covered."""
    reasons = []
    if partner:
        reasons.append("Ihre Tandem-Stadt")
    covered = [t for t in scored.wanted if t in member.strengths]
    if covered:
        reasons.append("Stärke: " + ", ".join(topic_label(t) for t in covered))
    for topic, words in scored.mentioned.items():
        if topic in member.strengths:
            quoted = ", ".join(f"„{w}“" for w in words[:3])
            reasons.append(f"Frage nennt {quoted} ({topic_label(topic)})")
    requester = scored.requester
    if requester is not None and scored.share["conditions"] > 0:
        if breakdown["population"] >= HELPS["population"]:
            sizes = f"{inhabitants(requester.population)} / {inhabitants(member.population)}"
            reasons.append(f"ähnliche Größe ({sizes} Einw.)")
        place = _place(requester, member, breakdown["geography"])
        if place:
            reasons.append(place)
    if scored.share["experience"] > 0 and breakdown["experience"] >= HELPS["experience"]:
        reasons.append(f"seit {member.joined.year} im Netzwerk")
    if scored.fairness_active and load == 0:
        reasons.append("zuletzt selten angefragt")
    if scored.wanted and not covered:
        reasons.append("keine Stärke in den angefragten Themen")
    return reasons


def _place(requester: Member, member: Member, geography: float) -> str | None:
    """Distance when both are located and close enough to help, else same state / region."""
    distance = distance_km(requester, member)
    if distance is not None:
        if geography < HELPS["geography"]:
            return None
        if distance < 1:
            return "weniger als 1 km entfernt"
        return f"{german_number(round(distance))} km entfernt"
    if requester.state == member.state:
        state = STATES[member.state][0] if member.state in STATES else member.state
        return f"gleiches Bundesland ({state})"
    if requester.region == member.region:
        return f"gleiche Region ({REGION_LABELS_DE.get(member.region, member.region)})"
    return None


# --- the public operations -----------------------------------------------------------------


def rank_advisors(
    request: AdviceRequest,
    members: Sequence[Member],
    *,
    today: dt.date,
    recent_load: Mapping[str, int],
    tandem_partners: set[str],
    weights: AdviceWeights | None = None,
    limit: int | None = None,
) -> list[AdviceMatch]:
    """All eligible advisors for ``request``, best first (ties by city id).

    Eligible: active members other than the requester. ``recent_load`` maps city ids to how
    often each was recommended within the fairness window (missing: 0). ``tandem_partners``
    are the requester's running tandem partners: flagged (``tandem_partner``, reason
    "Ihre Tandem-Stadt"), not excluded and not preferred. ``limit`` returns only the best
    ``limit`` (scoring is vectorised; building reasons is what costs for thousands).
    A requester the matcher does not know gets neutral conditions.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    pool = _Pool.of(members, today)
    scored = _score(
        pool,
        request,
        recent_load=recent_load,
        partners=tandem_partners,
        weights=weights or DEFAULT_ADVICE_WEIGHTS,
    )
    order = scored.ranked(pool)
    if limit is not None:
        order = order[:limit]
    return [_match(pool, scored, int(at)) for at in order]


def assign_advisors(
    requests: Sequence[AdviceRequest],
    members: Sequence[Member],
    *,
    today: dt.date,
    recent_load: Mapping[str, int],
    tandem_partners_of: Mapping[str, set[str]],
    per_advisor_limit: int = 2,
    weights: AdviceWeights | None = None,
) -> dict[str, list[AdviceMatch]]:
    """Answer several pending requests together; request id -> its advisors, best first.

    Scores are those of ``rank_advisors`` (``recent_load`` as it was before this batch).
    Formulation, as a min-cost flow (``networkx.network_simplex``, exact on integer costs)::

        source -> slot (r, j)   capacity 1, j = 1..k_r: the j-th advisor of request r
        slot (r, j) -> r        capacity 1
        r -> advisor a          capacity 1 (a is eligible for r: never twice, never r's city)
        advisor a -> sink       capacity per_advisor_limit
        source -> sink          capacity sum(k_r), cost 0 (slots left empty)

    Objective, lexicographic (encoded as one integer cost by scaling each level above the
    largest possible sum of the levels below):

    1. as many assigned (request, advisor) pairs as possible;
    2. then as even as possible between requests (minimise the sum over requests of the
       squared number of advisors): when advisors run short, every request gets its first
       advisor before any gets a third. The j-th slot of a request carries a bonus
       decreasing in j; the bonuses are convex, so the flow fills slots in order;
    3. then the largest total score (scores in millionths);
    4. then, among equal scores, each request's better-ranked advisors (id tie-break), so
       that a single request gets exactly the top ``k`` of ``rank_advisors``.

    Constraints: each request at most ``k`` distinct advisors (arc capacity 1), each advisor at
    most ``per_advisor_limit`` requests of this batch, only eligible advisors.

    Complexity: scoring is O(n m) numpy. Request ``r`` only needs its best
    ``C_r = k_r + floor((K - k_r) / per_advisor_limit)`` advisors (K = sum of all k): others
    can fill at most ``floor((K - k_r) / L)`` advisors completely and ``r`` itself uses at most
    ``k_r - 1`` more, so an advisor outside the list can always be swapped for a free listed one
    that scores no lower. The flow network has O(n K) arcs regardless of m; network simplex
    on it takes milliseconds for a few requests.

    Raises ``ValueError`` on repeated request ids or ``per_advisor_limit < 1``.
    """
    if isinstance(per_advisor_limit, bool) or per_advisor_limit < 1:
        raise ValueError(f"per_advisor_limit must be >= 1, got {per_advisor_limit!r}")
    ids = [r.request_id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids must be distinct")
    if not requests:
        return {}
    pool = _Pool.of(members, today)
    chosen_weights = weights or DEFAULT_ADVICE_WEIGHTS
    scored = [
        _score(
            pool,
            request,
            recent_load=recent_load,
            partners=tandem_partners_of.get(request.city_id, ()),
            weights=chosen_weights,
        )
        for request in requests
    ]
    total_k = sum(r.k for r in requests)
    candidates = [
        s.ranked(pool)[: s.request.k + (total_k - s.request.k) // per_advisor_limit] for s in scored
    ]
    picked = _solve_flow(scored, candidates, pool, per_advisor_limit)
    result: dict[str, list[AdviceMatch]] = {}
    for s, positions in zip(scored, picked, strict=True):
        matches = [_match(pool, s, at) for at in positions]
        matches.sort(key=lambda m: (-m.score, m.city_id))
        result[s.request.request_id] = matches
    return result


def _solve_flow(
    scored: Sequence[_Scored],
    candidates: Sequence[IntArray],
    pool: _Pool,
    limit: int,
) -> list[list[int]]:
    """The min-cost flow of ``assign_advisors``; per request the chosen member positions."""
    total_k = sum(s.request.k for s in scored)
    longest = max((c.size for c in candidates), default=0)
    biggest_k = max(s.request.k for s in scored)
    # Integer levels of the objective, each above the largest sum of all levels below it.
    rank_unit = total_k * longest + 1  # level 3 step; level 4 sums stay below it
    even_unit = total_k * (SCORE_SCALE * rank_unit + longest) + 1
    pair_unit = total_k * biggest_k * even_unit + even_unit

    graph = nx.DiGraph()
    graph.add_node("source", demand=-total_k)
    graph.add_node("sink", demand=total_k)
    graph.add_edge("source", "sink", capacity=total_k, weight=0)
    # Advisor nodes in id order, so that the result does not depend on the members' order.
    used = sorted({int(a) for c in candidates for a in c}, key=lambda a: int(pool.id_rank[a]))
    for a in used:
        graph.add_edge(("advisor", a), "sink", capacity=limit, weight=0)
    for r, (s, listed) in enumerate(zip(scored, candidates, strict=True)):
        for j in range(1, s.request.k + 1):
            bonus = pair_unit + even_unit * (biggest_k - j)
            graph.add_edge("source", ("slot", r, j), capacity=1, weight=-bonus)
            graph.add_edge(("slot", r, j), ("request", r), capacity=1, weight=0)
        for position, a in enumerate(listed.tolist()):
            value = round(float(s.total[a]) * SCORE_SCALE) * rank_unit + (longest - position)
            graph.add_edge(("request", r), ("advisor", a), capacity=1, weight=-value)
    _, flow = nx.network_simplex(graph)
    return [
        [a for a in listed.tolist() if flow[("request", r)].get(("advisor", a), 0) > 0]
        for r, listed in enumerate(candidates)
    ]
