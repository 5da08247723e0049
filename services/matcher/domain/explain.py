"""Why a mentor was proposed, and why not the others: short German sentences for staff.

Every sentence the matcher can say is listed in ``CATALOGUE`` with its exact condition; the
same list is in ``docs/matching.md`` and a test keeps both equal. Per pair (``pair_reasons``):
one statement per criterion (strongest contribution first), and every criterion scoring below
``WEAK`` named as a weak point ("Schwachpunkt ..."), costliest first. Per proposal
(planning, with ``statements``): a statement that every other eligible mentor of the newcomer
would get word for word tells staff nothing and is left out. ``why_not`` says in one sentence why an
alternative is not the proposal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from schemas.member import STATES
from schemas.topics import topic_label
from services.matcher.domain.model import Member
from services.matcher.domain.scoring import (
    CONNECTED_SCORE,
    CRITERIA,
    DEFAULT_WEIGHTS,
    FORMER_PARTNERS_SCORE,
    GEOGRAPHY_ZERO_KM,
    UNCONNECTED_SCORE,
    Weights,
    distance_km,
)

REGION_LABELS_DE = {"north": "Norden", "east": "Osten", "south": "Süden", "west": "Westen"}
CRITERIA_DE = {
    "topics": "Themen",
    "population": "Größe",
    "geography": "Nähe",
    "experience": "Erfahrung",
    "network": "Netzwerk",
}
#: German names of the fields a member's data may mark as estimated.
ESTIMATED_DE = {
    "joined": "Beitrittsjahr",
    "population": "Einwohnerzahl",
    "lat": "Lage",
    "lon": "Lage",
    "interests": "Interessen",
    "strengths": "Stärken",
    "mentor_capacity": "Kapazität",
}

#: Criterion score from which it counts as a reason (kept for the advice ranking, which uses
#: the same thresholds for its own sentences).
HELPS = {"population": 0.6, "geography": 0.5, "experience": 0.4, "topics": 1e-9}
#: A criterion scoring below this is named as the proposal's weak point.
WEAK = 0.3
#: Sizes within this factor of each other are "ähnlich".
SIMILAR_SIZE_FACTOR = 1.5
#: Experience score from which the mentor's joining year is a reason (two years or more).
EXPERIENCED = 0.4

#: Every sentence with its exact condition (template, condition); placeholders in braces.
#: ``docs/matching.md`` lists the same, a test keeps them equal.
CATALOGUE: tuple[tuple[str, str], ...] = (
    ("Wunsch des neuen Mitglieds",
     "the mentor is one of the newcomer's wishes"),
    ("bietet {Themen}",
     "the mentor names these of the newcomer's interests as its strengths"),
    ("beide interessiert an {Themen}",
     "both name these topics as interests and the mentor does not offer them"),
    ("ähnliche Größe ({a} / {b} Einw.)",
     "the larger population is at most 1.5 times the smaller"),
    ("{Seite} etwa {x}-mal so groß ({a} / {b} Einw.)",
     "the larger population is more than 1.5 times the smaller and the population score is "
     "at least 0.3 (less than about 5 times); Seite is Tandem-Stadt or neues Mitglied"),
    ("{d} km entfernt",
     "both have coordinates and the geography score is at least 0.3 (at most 420 km)"),
    ("gleiches Bundesland ({Land})",
     "a coordinate is missing and both are in the same state"),
    ("gleiche Region ({Region})",
     "a coordinate is missing, different states, same region"),
    ("seit {Jahr} im Netzwerk",
     "the experience score is at least 0.4 (the mentor joined two or more years ago)"),
    ("noch keine gemeinsame Verbindung im Netzwerk",
     "the two are not connected by past or running tandems (network score 1)"),
    ("Schwachpunkt Themen: bietet {k} von {n} gewünschten Themen",
     "the topics score is below 0.3"),
    ("Schwachpunkt Größe: {Seite} etwa {x}-mal so groß ({a} / {b} Einw.)",
     "the population score is below 0.3 (about 5 times the size or more)"),
    ("Schwachpunkt Nähe: {d} km entfernt",
     "both have coordinates and the geography score is below 0.3 (more than 420 km)"),
    ("Schwachpunkt Nähe: andere Region ({A} / {B})",
     "a coordinate is missing and the regions differ (geography score 0.1)"),
    ("Schwachpunkt Erfahrung: erst seit {Jahr} im Netzwerk",
     "the experience score is below 0.3 (the mentor joined less than 1.5 years ago)"),
    ("Schwachpunkt Netzwerk: waren bereits Tandem-Partner",
     "the two were tandem partners before (network score 0)"),
    ("Schwachpunkt Netzwerk: gemeinsamer früherer Tandem-Partner",
     "the two share a former tandem partner (network score 0.25)"),
    ("Wunsch {Name} nicht möglich: {Grund}",
     "a wished member is not the proposal and cannot be: Grund says why (not active, "
     "joined in the same year or later, rejected or excluded, no free capacity)"),
    ("Wunsch {Name} ging im gemeinsamen Plan an {Anderes}",
     "a wished member is eligible but its capacity went to other newcomers that wished it too "
     "(the joint score decided) or are pinned to it"),
)  # fmt: skip
#: Appended to a sentence whose numbers rest on a value marked as estimated in the data.
ESTIMATE_SUFFIX = " (geschätzt: {Felder})"
ESTIMATE_CONDITION = (
    "appended to a sentence whose value comes from a field the member's data marks as estimated"
)


class Reason(NamedTuple):
    """One sentence about a pair: ``kind`` is ``"reason"`` (a statement of fact that may or
    may not distinguish this mentor), ``"weak"`` (a weak point) or ``"wish"``. (A named tuple:
    a plan makes several per proposal, and tuples are the cheapest to make.)"""

    criterion: str
    text: str
    kind: str
    order: float


def template_pattern(template: str) -> re.Pattern[str]:
    """A regular expression matching every sentence of ``template`` (with or without the
    estimate suffix)."""
    parts = re.split(r"\{[^}]+\}", template)
    body = ".+?".join(re.escape(p) for p in parts)
    return re.compile(f"^{body}(?: \\(geschätzt: .+\\))?$")


_PATTERNS = [template_pattern(t) for t, _ in CATALOGUE]


def catalogued(sentence: str) -> bool:
    """Whether ``sentence`` is one of the catalogue's templates filled in."""
    return any(p.match(sentence) for p in _PATTERNS)


@lru_cache(maxsize=1 << 14)
def german_number(value: int) -> str:
    """``58000`` -> ``"58.000"`` (German thousands separator)."""
    return f"{value:,}".replace(",", ".")


def _points(value: float) -> str:
    """A score difference with as many places as it takes not to read 0 (at most six)."""
    places = 2
    while places < 6 and round(value, places) == 0:
        places += 1
    return german_decimal(value, places)


def german_decimal(value: float, places: int = 2) -> str:
    """``0.8`` -> ``"0,80"``."""
    return f"{value:.{places}f}".replace(".", ",")


@lru_cache(maxsize=1 << 14)
def inhabitants(population: int) -> str:
    """A population rounded for reading: to thousands from 10,000, else to hundreds."""
    step = 1000 if population >= 10_000 else 100
    return german_number(max(step, round(population / step) * step))


def size_factor(a: int, b: int) -> str:
    """How many times the larger is the smaller, for reading: ``2,1`` below 10, else whole."""
    factor = max(a, b) / min(a, b)
    return f"{factor:.1f}".replace(".", ",") if factor < 10 else str(round(factor))


def explain_pair(
    newcomer: Member,
    mentor: Member,
    breakdown: Mapping[str, float],
    weights: Weights = DEFAULT_WEIGHTS,
) -> list[str]:
    """German sentences about ``mentor`` for ``newcomer``: statements strongest first, then the
    weak points (see ``pair_reasons``)."""
    return [r.text for r in pair_reasons(newcomer, mentor, breakdown, weights)]


def pair_reasons(
    newcomer: Member,
    mentor: Member,
    breakdown: Mapping[str, float],
    weights: Weights = DEFAULT_WEIGHTS,
    wished: bool = False,
) -> list[Reason]:
    """The sentences of one pair.

    ``breakdown`` holds the per-criterion scores of the pair (as from ``score_pair``);
    ``weights`` decide the order and which criteria count at all (weight 0: never named).
    Statements are ordered by contribution (weight x score), weak points (score below
    ``WEAK``) by cost (weight x shortfall); a wish comes first.
    """
    share = _shares(weights)
    found: list[Reason] = []
    if wished:
        found.append(Reason("wish", "Wunsch des neuen Mitglieds", "wish", -math.inf))
    for position, name in enumerate(CRITERIA):
        weight = share.get(name, 0.0)
        if weight <= 0 or name not in breakdown or name not in _EXPLAINERS:
            continue
        score = breakdown[name]
        estimated = _estimated(name, newcomer, mentor)
        for text, weak in _EXPLAINERS[name](newcomer, mentor, score):
            if estimated:
                text += ESTIMATE_SUFFIX.format(Felder=estimated)
            if weak:
                found.append(Reason(name, text, "weak", 10.0 - weight * (1.0 - score)))
            else:
                found.append(Reason(name, text, "reason", -weight * score + position * 1e-9))
    found.sort(key=lambda r: r.order)
    return found


def statements(
    newcomer: Member,
    mentor: Member,
    breakdown: Mapping[str, float],
    weights: Weights,
    criteria: Iterable[str],
) -> set[str]:
    """The statements (not weak points) ``pair_reasons`` would make about ``criteria`` only:
    what another mentor is compared on when deciding whether a statement distinguishes."""
    share = _shares(weights)
    said: set[str] = set()
    for name in criteria:
        if share.get(name, 0.0) <= 0 or name not in breakdown or name not in _EXPLAINERS:
            continue
        estimated = _estimated(name, newcomer, mentor)
        for text, weak in _EXPLAINERS[name](newcomer, mentor, breakdown[name]):
            if not weak:
                said.add(text + ESTIMATE_SUFFIX.format(Felder=estimated) if estimated else text)
    return said


@lru_cache(maxsize=64)
def _shares(weights: Weights) -> dict[str, float]:
    return weights.normalised()


@lru_cache(maxsize=1 << 12)
def _labels(topics: frozenset[str]) -> str:
    return ", ".join(sorted(topic_label(t) for t in topics))


def _estimated(criterion: str, newcomer: Member, mentor: Member) -> str:
    if not newcomer.estimated and not mentor.estimated:
        return ""
    fields = _ESTIMATE_FIELDS.get(criterion, ())
    marked = [
        ESTIMATED_DE[f]
        for f in fields
        if f in newcomer.estimated or (f in mentor.estimated and not f.startswith("interests"))
    ]
    return ", ".join(dict.fromkeys(marked))


_ESTIMATE_FIELDS = {
    "topics": ("interests", "strengths"),
    "population": ("population",),
    "geography": ("lat", "lon"),
    "experience": ("joined",),
}

_Said = list[tuple[str, bool]]


def _topics(newcomer: Member, mentor: Member, score: float) -> _Said:
    offered = newcomer.interests & mentor.strengths
    shared = (newcomer.interests & mentor.interests) - offered
    said: _Said = []
    if offered:
        said.append((f"bietet {_labels(offered)}", False))
    if shared:
        said.append((f"beide interessiert an {_labels(shared)}", False))
    if score < WEAK:
        said.append(
            (
                f"Schwachpunkt Themen: bietet {len(offered)} von {len(newcomer.interests)} "
                "gewünschten Themen",
                True,
            )
        )
    return said


def _population(newcomer: Member, mentor: Member, score: float) -> _Said:
    a, b = newcomer.population, mentor.population
    sizes = f"{inhabitants(a)} / {inhabitants(b)} Einw."
    if max(a, b) <= SIMILAR_SIZE_FACTOR * min(a, b):
        return [(f"ähnliche Größe ({sizes})", False)]
    side = "Tandem-Stadt" if b > a else "neues Mitglied"
    text = f"{side} etwa {size_factor(a, b)}-mal so groß ({sizes})"
    if score < WEAK:
        return [(f"Schwachpunkt Größe: {text}", True)]
    return [(text, False)]


def _geography(newcomer: Member, mentor: Member, score: float) -> _Said:
    located = newcomer.has_location and mentor.has_location
    # Above 0 the score is linear in the distance, so the distance need not be computed again.
    distance = (1.0 - score) * GEOGRAPHY_ZERO_KM if located and score > 0 else None
    distance = distance_km(newcomer, mentor) if distance is None else distance
    if distance is not None:
        where = "weniger als 1 km" if distance < 1 else f"{german_number(round(distance))} km"
        if score < WEAK:
            return [(f"Schwachpunkt Nähe: {where} entfernt", True)]
        return [(f"{where} entfernt", False)]
    if newcomer.state == mentor.state:
        return [(f"gleiches Bundesland ({_state(mentor.state)})", False)]
    if newcomer.region == mentor.region:
        return [(f"gleiche Region ({_region(mentor.region)})", False)]
    return [
        (f"Schwachpunkt Nähe: andere Region ({_region(newcomer.region)} / "
         f"{_region(mentor.region)})", True)
    ]  # fmt: skip


def _experience(newcomer: Member, mentor: Member, score: float) -> _Said:
    if score >= EXPERIENCED:
        return [(f"seit {mentor.joined.year} im Netzwerk", False)]
    if score < WEAK:
        return [(f"Schwachpunkt Erfahrung: erst seit {mentor.joined.year} im Netzwerk", True)]
    return []


def _network(newcomer: Member, mentor: Member, score: float) -> _Said:
    if score >= UNCONNECTED_SCORE:
        return [("noch keine gemeinsame Verbindung im Netzwerk", False)]
    if score <= FORMER_PARTNERS_SCORE:
        return [("Schwachpunkt Netzwerk: waren bereits Tandem-Partner", True)]
    if score < CONNECTED_SCORE and score < WEAK:
        return [("Schwachpunkt Netzwerk: gemeinsamer früherer Tandem-Partner", True)]
    return []


_EXPLAINERS: dict[str, Callable[[Member, Member, float], _Said]] = {
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


# --- wishes and why not the others -----------------------------------------------------------


WISH_GROUNDS_DE = {
    "inactive": "kein aktives Mitglied",
    "too_new": "im selben Jahr oder später beigetreten",
    "excluded": "abgelehnt oder ausgeschlossen",
    "no_capacity": "keine freie Kapazität",
}


def wish_not_possible(name: str, ground: str) -> str:
    """The sentence for a wish that cannot be proposed (``ground``: a ``WISH_GROUNDS_DE`` key)."""
    return f"Wunsch {name} nicht möglich: {WISH_GROUNDS_DE[ground]}"


def wish_taken(name: str, others: Sequence[str]) -> str:
    """The sentence for a wish whose capacity went to other newcomers who wished it too."""
    return f"Wunsch {name} ging im gemeinsamen Plan an {', '.join(others)}"


@dataclass(frozen=True, slots=True)
class Rival:
    """The newcomer of the same plan that has an alternative's mentor, for ``why_not``.

    ``score``: its score with that mentor; ``swap``: the score it would have with the
    proposal's mentor (None if it may not have it); ``full``: the mentor has no room left;
    ``fixed``: the rival wished that mentor."""

    name: str
    score: float
    swap: float | None
    full: bool
    fixed: bool = False


#: An alternative scoring less than the proposal by more than this is "lower" (``why_lower``).
LOWER = 1e-9


def why_lower(gap: float, worst: str | None, holder: str | None) -> str:
    """``why_not`` of an alternative scoring ``gap`` (> ``LOWER``) less: ``worst`` is the
    criterion where it loses most (weight x difference; None when it loses on none), ``holder``
    the newcomer of the plan that fills the mentor's last place (None if it has room)."""
    sentence = f"{_points(gap)} Punkte weniger"
    if worst is not None:
        sentence += f", vor allem bei {CRITERIA_DE.get(worst, worst)}"
    if holder is not None:
        sentence += f"; zudem im gemeinsamen Plan für {holder} vorgesehen"
    return sentence + "."


def why_not(
    proposal_score: float,
    proposal_breakdown: Mapping[str, float],
    alternative_score: float,
    alternative_breakdown: Mapping[str, float],
    rival: Rival | None,
    weights: Weights = DEFAULT_WEIGHTS,
    *,
    wished: bool = False,
    pinned: bool = False,
    incumbent: bool = False,
) -> str:
    """One German sentence: why the alternative is not the proposal.

    Lower score: by how much, and on which criterion it loses most (weight x difference). At
    least the proposal's score: who has it in the joint plan and what the plan gains by that
    (a swap's exact loss, when the rival may have the proposal's mentor), or that the proposal
    is a wish, a pin, or kept at a tie.
    """
    gap = proposal_score - alternative_score
    if gap > LOWER:
        share = _shares(weights)
        loss = {
            name: share.get(name, 0.0)
            * (proposal_breakdown.get(name, 0.0) - alternative_breakdown.get(name, 0.0))
            for name in CRITERIA
        }
        worst = max(loss, key=lambda name: loss[name])
        return why_lower(
            gap,
            worst if loss[worst] > 0 else None,
            rival.name if rival is not None and rival.full else None,
        )
    if wished:
        return "Der Vorschlag ist ein Wunsch des neuen Mitglieds; Wünsche gehen vor."
    if pinned:
        return "Der Vorschlag ist vom Programmteam festgelegt."
    if rival is not None and rival.full:
        sentence = (
            f"Im gemeinsamen Plan für {rival.name} vorgesehen "
            f"({german_decimal(rival.score)} dort, {german_decimal(alternative_score)} hier)"
        )
        if rival.fixed:
            return sentence + f"; {rival.name} hat sie sich gewünscht."
        if rival.swap is None:
            return sentence + f"; {rival.name} darf die vorgeschlagene Tandem-Stadt nicht bekommen."
        # Shown rounded to two places, and the gain is the difference of what is shown, so the
        # sentence adds up for the reader.
        swapped = round(alternative_score + rival.swap, 2)
        kept = round(proposal_score + rival.score, 2)
        gain = kept - swapped
        if gain > 0.005:
            return (
                sentence + f"; ein Tausch ergäbe zusammen {german_decimal(swapped)} statt "
                f"{german_decimal(kept)} (der Plan gewinnt {german_decimal(gain)})."
            )
        return (
            sentence + f"; ein Tausch ergäbe zusammen etwa gleich viel ({german_decimal(kept)}), "
            "der Plan bleibt, wie er ist."
        )
    if incumbent:
        return (
            "Gleich gut bewertet; der bestehende Vorschlag bleibt (kein Wechsel bei Gleichstand)."
        )
    if proposal_breakdown.get("geography", 0.0) > alternative_breakdown.get("geography", 0.0):
        return "Gleich gut bewertet; bei Gleichstand geht die nähere Tandem-Stadt vor."
    return "Gleich gut bewertet; bei Gleichstand entscheidet die feste Reihenfolge der Kennungen."
