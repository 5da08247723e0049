"""Why a mentor was proposed: short German reasons for programme staff.

One reason per criterion that actually helped (its score reached the threshold below), ordered
by its contribution to the total (weight x score), then at most one caveat: the criterion that
cost the most (weight x shortfall) among those that scored poorly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache

from schemas.member import STATES
from schemas.topics import topic_label
from services.matcher.domain.model import Member
from services.matcher.domain.scoring import (
    CRITERIA,
    DEFAULT_WEIGHTS,
    FORMER_PARTNERS_SCORE,
    GEOGRAPHY_ZERO_KM,
    UNCONNECTED_SCORE,
    Weights,
    distance_km,
)

REGION_LABELS_DE = {"north": "Norden", "east": "Osten", "south": "Süden", "west": "Westen"}

#: Criterion score from which it counts as a reason (population 0.6: at most ~2.5x the size;
#: geography 0.5: within ~300 km or the same region; experience 0.4: two years or more).
HELPS = {"population": 0.6, "geography": 0.5, "experience": 0.4, "topics": 1e-9}
#: Criterion score below which it is worth a caveat (population: 5x the size or more;
#: geography: about 480 km or more, or another region).
HURTS = {"population": 0.3, "geography": 0.2}


@lru_cache(maxsize=1 << 14)
def german_number(value: int) -> str:
    """``58000`` -> ``"58.000"`` (German thousands separator)."""
    return f"{value:,}".replace(",", ".")


@lru_cache(maxsize=1 << 14)
def inhabitants(population: int) -> str:
    """A population rounded for reading: to thousands from 10,000, else to hundreds."""
    step = 1000 if population >= 10_000 else 100
    return german_number(max(step, round(population / step) * step))


def explain_pair(
    newcomer: Member,
    mentor: Member,
    breakdown: Mapping[str, float],
    weights: Weights = DEFAULT_WEIGHTS,
) -> list[str]:
    """German reasons why ``mentor`` suits ``newcomer``, strongest first, plus one caveat.

    ``breakdown`` holds the per-criterion scores of the pair (as from ``score_pair``);
    ``weights`` decide the order and which criteria count at all (weight 0: never a reason).
    """
    share = _shares(weights)
    helped: list[tuple[float, int, list[str]]] = []
    caveats: list[tuple[float, str]] = []
    for order, name in enumerate(CRITERIA):
        weight = share[name]
        if weight <= 0 or name not in breakdown:
            continue
        reasons, caveat = _EXPLAINERS[name](newcomer, mentor, breakdown)
        score = breakdown[name]
        if reasons:
            helped.append((weight * score, order, reasons))
        if caveat:
            caveats.append((weight * (1.0 - score), caveat))
    helped.sort(key=lambda item: (-item[0], item[1]))
    result = [reason for _, _, reasons in helped for reason in reasons]
    if caveats:
        result.append(max(caveats, key=lambda item: item[0])[1])
    return result


@lru_cache(maxsize=64)
def _shares(weights: Weights) -> dict[str, float]:
    return weights.normalised()


@lru_cache(maxsize=1 << 12)
def _labels(topics: frozenset[str]) -> str:
    return ", ".join(sorted(topic_label(t) for t in topics))


def _topics(
    newcomer: Member, mentor: Member, breakdown: Mapping[str, float]
) -> tuple[list[str], str | None]:
    offered = newcomer.interests & mentor.strengths
    shared = (newcomer.interests & mentor.interests) - offered
    reasons = []
    if offered:
        reasons.append(f"bietet {_labels(offered)}")
    if shared:
        reasons.append(f"beide interessiert an {_labels(shared)}")
    return reasons, None


def _population(
    newcomer: Member, mentor: Member, breakdown: Mapping[str, float]
) -> tuple[list[str], str | None]:
    sizes = f"{inhabitants(newcomer.population)} / {inhabitants(mentor.population)} Einw."
    score = breakdown.get("population", 0.0)
    if score >= HELPS["population"]:
        return [f"ähnliche Größe ({sizes})"], None
    if score < HURTS["population"]:
        return [], f"großer Größenunterschied ({sizes})"
    return [], None


def _geography(
    newcomer: Member, mentor: Member, breakdown: Mapping[str, float]
) -> tuple[list[str], str | None]:
    score = breakdown.get("geography", 0.0)
    located = newcomer.has_location and mentor.has_location
    # Above 0 the score is linear in the distance, so the distance need not be computed again.
    distance = (1.0 - score) * GEOGRAPHY_ZERO_KM if located and score > 0 else None
    distance = distance_km(newcomer, mentor) if distance is None else distance
    if distance is not None:
        where = "weniger als 1 km" if distance < 1 else f"{german_number(round(distance))} km"
        if score >= HELPS["geography"]:
            return [f"{where} entfernt"], None
        if score < HURTS["geography"]:
            return [], f"weit entfernt ({where})"
        return [], None
    if newcomer.state == mentor.state:
        return [f"gleiches Bundesland ({_state(mentor.state)})"], None
    if newcomer.region == mentor.region:
        return [f"gleiche Region ({_region(mentor.region)})"], None
    return [], f"andere Region ({_region(newcomer.region)} / {_region(mentor.region)})"


def _experience(
    newcomer: Member, mentor: Member, breakdown: Mapping[str, float]
) -> tuple[list[str], str | None]:
    if breakdown.get("experience", 0.0) >= HELPS["experience"]:
        return [f"seit {mentor.joined.year} im Netzwerk"], None
    return [], None


def _network(
    newcomer: Member, mentor: Member, breakdown: Mapping[str, float]
) -> tuple[list[str], str | None]:
    score = breakdown.get("network", UNCONNECTED_SCORE)
    if score >= UNCONNECTED_SCORE:
        return ["noch keine gemeinsame Verbindung im Netzwerk"], None
    if score <= FORMER_PARTNERS_SCORE:
        return [], "waren bereits Tandem-Partner"
    return [], None


_Explainer = Callable[[Member, Member, Mapping[str, float]], tuple[list[str], str | None]]
_EXPLAINERS: dict[str, _Explainer] = {
    "topics": _topics,
    "population": _population,
    "geography": _geography,
    "experience": _experience,
    "network": _network,
}


def _state(code: str) -> str:
    return STATES[code][0] if code in STATES else code


def _region(region: str) -> str:
    return REGION_LABELS_DE.get(region, region)
