"""Kollegiale Beratung: question topics, advisor ranking, fairness and the joint assignment."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.member import STATES
from schemas.topics import TOPICS
from services.matcher.domain.advice import (
    DEFAULT_ADVICE_WEIGHTS,
    SCORE_SCALE,
    AdviceMatch,
    AdviceRequest,
    AdviceWeights,
    assign_advisors,
    rank_advisors,
)
from services.matcher.domain.model import Member
from services.matcher.domain.question_words import question_topics
from services.matcher.domain.scoring import (
    distance_km,
    experience_score,
    geography_score,
    population_score,
)

TODAY = dt.date(2024, 10, 1)
GOEPPINGEN = (48.70354, 9.65209)
STUTTGART = (48.7758, 9.1829)
HAMBURG = (53.5511, 9.9937)


def member(
    id: str,
    *,
    state: str = "DE-BW",
    population: int = 30_000,
    at: tuple[float, float] | None = None,
    joined: dt.date = dt.date(2016, 6, 1),
    strengths: frozenset[str] | set[str] = frozenset(),
    active: bool = True,
) -> Member:
    return Member(
        id=id,
        name=id.title(),
        state=state,
        region=STATES[state][1],
        population=population,
        lat=at[0] if at else None,
        lon=at[1] if at else None,
        joined=joined,
        interests=frozenset(),
        strengths=frozenset(strengths),
        mentor_capacity=1,
        seeks_tandem=False,
        active=active,
    )


def request(
    city_id: str = "asker",
    topics: tuple[str, ...] = ("volunteer_recruitment",),
    question: str = "",
    k: int = 3,
    request_id: str = "r1",
) -> AdviceRequest:
    return AdviceRequest(
        request_id=request_id, city_id=city_id, topics=topics, question=question, k=k
    )


def rank(
    req: AdviceRequest,
    members: list[Member],
    *,
    load: dict[str, int] | None = None,
    partners: set[str] | None = None,
    weights: AdviceWeights | None = None,
) -> list[AdviceMatch]:
    return rank_advisors(
        req,
        members,
        today=TODAY,
        recent_load=load or {},
        tandem_partners=partners or set(),
        weights=weights,
    )


# --- question topics -----------------------------------------------------------------------


def test_question_topics_german_words_map_to_topics_with_the_words_as_written() -> None:
    found = question_topics(
        "Wie erreichen wir Jugendliche für die Digitalisierung unserer Vereine?"
    )
    assert found == {"digitalisation": ["Digitalisierung"], "young_engagement": ["Jugendliche"]}


def test_question_topics_english() -> None:
    found = question_topics("How do we recruit young volunteers online and tackle climate change?")
    assert found["volunteer_recruitment"] == ["recruit"]
    assert found["young_engagement"] == ["young"]
    assert found["digitalisation"] == ["online"]
    assert found["sustainability"] == ["climate"]


def test_question_topics_compound_words_match_by_stem() -> None:
    found = question_topics("Jugendbeteiligung und Engagiertengewinnung im ländlichen Raum")
    assert found["young_engagement"] == ["Jugendbeteiligung"]
    assert found["participation"] == ["Jugendbeteiligung"]
    assert found["volunteer_recruitment"] == ["Engagiertengewinnung"]
    assert question_topics("Klimaschutz mit einer Online-Plattform")["digitalisation"] == [
        "Online-Plattform"
    ]


@pytest.mark.parametrize("spelling", ["Schüler", "Schueler", "SCHÜLER", "schülerinnen", "Schüler"])
def test_question_topics_are_case_and_umlaut_tolerant(spelling: str) -> None:
    assert question_topics(f"Projekte mit {spelling}") == {"young_engagement": [spelling]}


def test_question_topics_umlauts_in_keywords_match_spelt_out_text() -> None:
    assert "recognition" in question_topics("Wertschaetzung fuer Ehrenamtliche")
    assert "recognition" in question_topics("Wertschätzung für Ehrenamtliche")
    assert "generational_change" in question_topics("Verjuengung des Vorstands")


def test_question_topics_phrases_and_repeats() -> None:
    found = question_topics("Wie finden wir neue Ehrenamtliche? Ehrenamtliche finden ist schwer.")
    assert found == {
        "volunteer_recruitment": ["finden wir neue Ehrenamtliche", "Ehrenamtliche finden"]
    }
    # The same word twice, in other case, is one mention.
    assert question_topics("Jugend, JUGEND und jugend") == {"young_engagement": ["Jugend"]}


def test_question_topics_ignore_unrelated_words_and_the_network_itself() -> None:
    assert question_topics("") == {}
    assert question_topics("Wer im Netzwerk hat Erfahrung damit?") == {}
    # Short stems only match at a word start: "nachfolgend" is not about succession.
    assert question_topics("die nachfolgenden Schritte, eine Mappe") == {}
    assert question_topics("Wir wollen uns besser vernetzen") == {"networking": ["vernetzen"]}


def test_question_topics_match_slugs_and_operator_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    assert question_topics("Thema: engagement_strategy") == {
        "engagement_strategy": ["engagement_strategy"]
    }
    monkeypatch.setenv("TANDEM_EXTRA_TOPICS", "inclusive_sports")
    assert question_topics("Inclusive Sports im Verein") == {
        "inclusive_sports": ["Inclusive Sports"]
    }


# --- ranking -------------------------------------------------------------------------------


def test_topic_coverage_beats_closer_same_size_member() -> None:
    asker = member("asker", at=GOEPPINGEN)
    near = member("near", at=GOEPPINGEN, population=30_000, joined=dt.date(2012, 1, 1))
    far = member(
        "far",
        state="DE-HH",
        at=HAMBURG,
        population=240_000,
        joined=dt.date(2024, 1, 1),
        strengths={"volunteer_recruitment"},
    )
    ranked = rank(request(), [asker, near, far], load={"far": 5})
    assert [m.city_id for m in ranked] == ["far", "near"]
    assert ranked[0].breakdown["topics"] > 0 == ranked[1].breakdown["topics"]
    assert "keine Stärke in den angefragten Themen" in ranked[1].reasons


def test_more_coverage_ranks_higher_and_explicit_topics_weigh_more_than_question_topics() -> None:
    asker = member("asker")
    both = member("both", strengths={"volunteer_recruitment", "young_engagement"})
    explicit = member("explicit", strengths={"volunteer_recruitment"})
    from_question = member("from-question", strengths={"young_engagement"})
    req = request(question="Wie gewinnen wir Jugendliche?")
    ranked = rank(req, [asker, from_question, explicit, both])
    assert [m.city_id for m in ranked] == ["both", "explicit", "from-question"]
    # Request topic 1, question topic 0.5: coverage 1, 1/1.5, 0.5/1.5.
    assert [m.breakdown["coverage"] for m in ranked] == pytest.approx([1.0, 2 / 3, 1 / 3])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(10_000, 250_000),
            st.booleans(),
            st.integers(2010, 2024),
            st.integers(0, 50),
        ),
        min_size=2,
        max_size=8,
    ),
    st.floats(0.0, 1.0),
    st.floats(0.0, 10.0),
)
def test_any_coverage_outranks_no_coverage_whatever_conditions_and_load(
    rows: list[tuple[int, bool, int, int]], question: float, lam: float
) -> None:
    members = [member("asker")] + [
        member(
            f"m{i}",
            population=population,
            joined=dt.date(year, 1, 1),
            strengths={"democracy"} if covers else set(),
        )
        for i, (population, covers, year, _) in enumerate(rows)
    ]
    load = {f"m{i}": row[3] for i, row in enumerate(rows)}
    weights = AdviceWeights(question=question, fairness_lambda=lam)
    req = request(topics=("democracy", "networking"), question="Demokratie und Vernetzung")
    ranked = rank(req, members, load=load, weights=weights)
    covering = [m.breakdown["coverage"] > 0 for m in ranked]
    assert covering == sorted(covering, reverse=True)
    assert all(0.0 <= m.score <= 1.0 for m in ranked)


def test_requester_and_inactive_members_are_never_recommended() -> None:
    asker = member("asker", strengths={"volunteer_recruitment"})
    gone = member("gone", strengths={"volunteer_recruitment"}, active=False)
    other = member("other")
    ranked = rank(request(), [asker, gone, other])
    assert [m.city_id for m in ranked] == ["other"]
    result = assign_advisors(
        [request()],
        [asker, gone, other],
        today=TODAY,
        recent_load={},
        tandem_partners_of={},
    )
    assert [m.city_id for m in result["r1"]] == ["other"]


def test_unknown_requester_gets_neutral_conditions() -> None:
    members = [member("a", strengths={"volunteer_recruitment"}), member("b")]
    ranked = rank(request(city_id="not-yet-known"), members)
    assert [m.city_id for m in ranked] == ["a", "b"]
    assert ranked[0].breakdown["population"] == ranked[0].breakdown["geography"] == 0.5
    assert not any("Größe" in r or "Region" in r for r in ranked[0].reasons)


def test_tandem_partner_is_flagged_with_a_reason_but_not_excluded_or_preferred() -> None:
    asker = member("asker")
    partner = member("partner")
    stranger = member("stranger")
    ranked = rank(request(), [asker, stranger, partner], partners={"partner"})
    assert [m.city_id for m in ranked] == ["partner", "stranger"]  # equal score: id order
    assert ranked[0].score == ranked[1].score
    assert ranked[0].tandem_partner and ranked[0].reasons[0] == "Ihre Tandem-Stadt"
    assert not ranked[1].tandem_partner and "Ihre Tandem-Stadt" not in ranked[1].reasons


def test_reasons_in_german() -> None:
    asker = member("asker", population=31_000, at=GOEPPINGEN)
    advisor = member(
        "advisor",
        population=34_000,
        at=STUTTGART,
        joined=dt.date(2016, 3, 1),
        strengths={"volunteer_recruitment", "young_engagement"},
    )
    req = request(topics=("volunteer_recruitment",), question="Wie erreichen wir Jugendliche?")
    (match,) = rank(req, [asker, advisor])
    km = round(distance_km(asker, advisor) or 0)
    assert match.reasons == [
        "Stärke: Gewinnung von Engagierten, junges Engagement",
        "Frage nennt „Jugendliche“ (junges Engagement)",
        "ähnliche Größe (31.000 / 34.000 Einw.)",
        f"{km} km entfernt",
        "seit 2016 im Netzwerk",
        "zuletzt selten angefragt",
    ]
    (loaded,) = rank(req, [asker, advisor], load={"advisor": 2})
    assert "zuletzt selten angefragt" not in loaded.reasons


def test_reasons_without_coordinates_name_state_or_region() -> None:
    asker = member("asker", state="DE-BW")
    same_state = member("same-state", state="DE-BW")
    same_region = member("same-region", state="DE-BY")
    elsewhere = member("elsewhere", state="DE-HH")
    reasons = {
        m.city_id: m.reasons for m in rank(request(), [asker, same_state, same_region, elsewhere])
    }
    assert "gleiches Bundesland (Baden-Württemberg)" in reasons["same-state"]
    assert "gleiche Region (Süden)" in reasons["same-region"]
    assert not any("Region" in r or "Bundesland" in r for r in reasons["elsewhere"])


def test_vectorised_conditions_equal_the_scoring_helpers() -> None:
    rng = random.Random(7)
    states = sorted(STATES)
    members = []
    for i in range(60):
        state = rng.choice(states)
        located = rng.random() < 0.7
        members.append(
            member(
                f"m{i:02d}",
                state=state,
                population=rng.randint(10_000, 250_000),
                at=(rng.uniform(47.3, 55.0), rng.uniform(6.0, 15.0)) if located else None,
                joined=dt.date(rng.randint(2010, 2025), rng.randint(1, 12), 1),
            )
        )
    for asker in members[:5]:
        for match in rank(request(city_id=asker.id), members):
            other = next(m for m in members if m.id == match.city_id)
            assert match.breakdown["population"] == pytest.approx(
                population_score(asker, other), abs=1e-12
            )
            assert match.breakdown["geography"] == pytest.approx(
                geography_score(asker, other), abs=1e-9
            )
            assert match.breakdown["experience"] == pytest.approx(
                experience_score(other, TODAY), abs=1e-12
            )


def test_score_is_the_documented_weighted_sum() -> None:
    asker = member("asker", at=GOEPPINGEN)
    advisor = member("advisor", at=STUTTGART, strengths={"volunteer_recruitment"})
    (match,) = rank(
        request(topics=("volunteer_recruitment", "democracy")),
        [asker, advisor],
        load={"advisor": 3},
    )
    w = DEFAULT_ADVICE_WEIGHTS
    b = match.breakdown
    assert b["coverage"] == 0.5
    assert b["topics"] == pytest.approx(w.coverage_floor + (1 - w.coverage_floor) * 0.5)
    assert b["fairness"] == pytest.approx(1 / (1 + 3 * w.fairness_lambda))
    assert b["conditions"] == pytest.approx((b["population"] + b["geography"]) / 2)
    share = w.normalised()
    assert match.score == pytest.approx(sum(share[c] * b[c] for c in share))


# --- fairness ------------------------------------------------------------------------------


def _sequential(weights: AdviceWeights, populations: list[int]) -> Counter[str]:
    """20 requests one after another (k = 1), the load updated after each answer."""
    asker = member("asker", population=30_000)
    capable = [
        member(f"capable-{i}", population=p, strengths={"young_engagement"})
        for i, p in enumerate(populations)
    ]
    others = [member(f"other-{i}", population=30_000) for i in range(5)]
    load: Counter[str] = Counter()
    for n in range(20):
        req = request(topics=("young_engagement",), k=1, request_id=f"r{n}")
        best = rank_advisors(
            req,
            [asker, *capable, *others],
            today=TODAY,
            recent_load=load,
            tandem_partners=set(),
            weights=weights,
            limit=1,
        )
        load[best[0].city_id] += 1
    return load


@pytest.mark.parametrize(
    "populations",
    [[30_000] * 5, [30_000, 31_000, 32_000, 33_000, 34_000]],
    ids=["identical", "slightly-different-sizes"],
)
def test_fairness_spreads_requests_across_equally_capable_members(populations: list[int]) -> None:
    load = _sequential(DEFAULT_ADVICE_WEIGHTS, populations)
    assert load == {f"capable-{i}": 4 for i in range(5)}


@pytest.mark.parametrize(
    "weights",
    [AdviceWeights(fairness=0.0), AdviceWeights(fairness_lambda=0.0)],
    ids=["fairness-weight-0", "lambda-0"],
)
def test_without_fairness_the_same_top_member_is_always_chosen(weights: AdviceWeights) -> None:
    assert _sequential(weights, [30_000] * 5) == {"capable-0": 20}
    assert _sequential(weights, [34_000, 33_000, 30_000, 32_000, 31_000]) == {"capable-2": 20}


def test_fairness_never_pushes_a_covering_member_below_a_non_covering_one() -> None:
    asker = member("asker", at=GOEPPINGEN)
    busy = member(
        "busy",
        state="DE-HH",
        at=HAMBURG,
        population=250_000,
        joined=dt.date(2024, 9, 1),
        strengths={"volunteer_recruitment"},
    )
    idle = member("idle", at=GOEPPINGEN, joined=dt.date(2010, 1, 1))
    ranked = rank(
        request(topics=("volunteer_recruitment", *TOPICS)),
        [asker, busy, idle],
        load={"busy": 10**6},
    )
    assert [m.city_id for m in ranked] == ["busy", "idle"]


# --- weights and requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"topics": -1.0}, "'topics'"),
        ({"fairness": math.inf}, "'fairness'"),
        ({"experience": True}, "'experience'"),
        ({"question": 1.5}, "'question'"),
        ({"coverage_floor": 0.0}, "coverage_floor"),
        ({"fairness_lambda": math.nan}, "fairness_lambda"),
        ({"topics": 0.2}, "dominate"),
        ({"conditions": 1.0}, "dominate"),
    ],
)
def test_invalid_weights_are_refused(values: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdviceWeights(**values)


def test_default_weights_keep_topics_dominant() -> None:
    w = DEFAULT_ADVICE_WEIGHTS
    assert w.topics * w.coverage_floor > w.conditions + w.experience + w.fairness
    assert sum(w.normalised().values()) == pytest.approx(1.0)


def test_request_validation_and_topic_dedupe() -> None:
    with pytest.raises(ValueError, match="k must be"):
        request(k=0)
    assert request(topics=("democracy", "networking", "democracy")).topics == (
        "democracy",
        "networking",
    )
    with pytest.raises(ValueError, match="recent_load"):
        rank(request(), [member("asker"), member("a")], load={"a": -1})


# --- joint assignment ----------------------------------------------------------------------


def _assign(
    requests: list[AdviceRequest],
    members: list[Member],
    *,
    load: dict[str, int] | None = None,
    limit: int = 2,
    partners_of: dict[str, set[str]] | None = None,
) -> dict[str, list[AdviceMatch]]:
    return assign_advisors(
        requests,
        members,
        today=TODAY,
        recent_load=load or {},
        tandem_partners_of=partners_of or {},
        per_advisor_limit=limit,
    )


def _network(size: int = 12) -> list[Member]:
    rng = random.Random(3)
    return [
        member(
            f"city-{i:02d}",
            population=rng.randint(10_000, 200_000),
            strengths=set(rng.sample(TOPICS, 3)),
            joined=dt.date(rng.randint(2012, 2024), 1, 1),
        )
        for i in range(size)
    ]


def test_joint_assignment_gives_k_distinct_advisors_within_the_per_advisor_limit() -> None:
    members = _network()
    requests = [
        request(city_id=f"city-{i:02d}", topics=("digitalisation",), k=3, request_id=f"r{i}")
        for i in range(6)
    ]
    result = _assign(requests, members, limit=2)
    per_advisor: Counter[str] = Counter()
    for req in requests:
        chosen = [m.city_id for m in result[req.request_id]]
        assert len(chosen) == 3 == len(set(chosen))
        assert req.city_id not in chosen
        assert [m.score for m in result[req.request_id]] == sorted(
            (m.score for m in result[req.request_id]), reverse=True
        )
        per_advisor.update(chosen)
    assert max(per_advisor.values()) <= 2


def test_joint_assignment_of_one_request_is_the_top_k_of_the_ranking() -> None:
    members = _network()
    req = request(city_id="city-00", topics=("participation", "democracy"), k=4)
    ranked = rank(req, members, partners={"city-03"})
    result = _assign([req], members, partners_of={"city-00": {"city-03"}})
    assert result["r1"] == ranked[:4]


def test_joint_assignment_with_too_few_advisors_shares_them_out() -> None:
    members = [member("x", strengths={"democracy"}), member("y")]
    requests = [
        request(city_id="p", topics=("democracy",), k=2, request_id="rp"),
        request(city_id="q", topics=("democracy",), k=2, request_id="rq"),
    ]
    result = _assign(requests, members, limit=1)
    # Two advisors for four slots: one each, not both to one request and none to the other.
    assert sorted(len(v) for v in result.values()) == [1, 1]
    assert {m.city_id for v in result.values() for m in v} == {"x", "y"}


def test_joint_assignment_never_gives_duplicates_or_the_requester() -> None:
    members = [member("a"), member("b"), member("x", strengths={"democracy"})]
    requests = [
        request(city_id="a", topics=("democracy",), k=3, request_id="ra"),
        request(city_id="b", topics=("democracy",), k=3, request_id="rb"),
    ]
    # Capacity to spare: each request gets all it can, never itself and never one twice.
    result = _assign(requests, members, limit=5)
    assert {k: [m.city_id for m in v] for k, v in result.items()} == {
        "ra": ["x", "b"],
        "rb": ["x", "a"],
    }
    # Capacity 1: still as many pairs as possible (three), so one request gets two.
    tight = _assign(requests, members, limit=1)
    assert sorted(len(v) for v in tight.values()) == [1, 2]


def test_joint_assignment_validation() -> None:
    with pytest.raises(ValueError, match="distinct"):
        _assign([request(), request()], _network())
    with pytest.raises(ValueError, match="per_advisor_limit"):
        _assign([request()], _network(), limit=0)
    assert _assign([], _network()) == {}


def test_results_do_not_depend_on_member_order_and_repeat_exactly() -> None:
    members = _network(20)
    requests = [
        request(
            city_id=f"city-{i:02d}", topics=(TOPICS[i],), question="Jugend", k=2, request_id=f"r{i}"
        )
        for i in range(5)
    ]
    load = {"city-04": 2, "city-09": 1}
    first = _assign(requests, members, load=load, limit=1)
    shuffled = members[:]
    random.Random(1).shuffle(shuffled)
    assert _assign(requests, shuffled, load=load, limit=1) == first
    assert _assign(requests, members, load=load, limit=1) == first
    req = requests[0]
    assert rank(req, shuffled, load=load) == rank(req, members, load=load)


def _brute_force(
    requests: list[AdviceRequest], members: list[Member], load: dict[str, int], limit: int
) -> tuple[int, int, float]:
    """Best (pairs, -sum of squared counts, total score) over every feasible assignment."""
    options = []
    for req in requests:
        scores = {m.city_id: m.score for m in rank(req, members, load=load)}
        subsets = [
            (combo, sum(scores[c] for c in combo))
            for size in range(req.k + 1)
            for combo in itertools.combinations(sorted(scores), size)
        ]
        options.append(subsets)
    best = (-1, 0, 0.0)
    for choice in itertools.product(*options):
        used = Counter(c for combo, _ in choice for c in combo)
        if used and max(used.values()) > limit:
            continue
        value = (
            sum(len(combo) for combo, _ in choice),
            -sum(len(combo) ** 2 for combo, _ in choice),
            sum(score for _, score in choice),
        )
        if value[:2] > best[:2] or (value[:2] == best[:2] and value[2] > best[2]):
            best = value
    return best


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[AdviceRequest], list[Member], dict[str, int], int]:
    topics = TOPICS[:4]
    size = draw(st.integers(1, 5))
    members = [
        member(
            f"m{i}",
            population=draw(st.integers(10_000, 250_000)),
            joined=dt.date(draw(st.integers(2010, 2024)), 1, 1),
            strengths=set(draw(st.lists(st.sampled_from(topics), max_size=3))),
            active=draw(st.booleans()) or i == 0,
            state=draw(st.sampled_from(["DE-BW", "DE-BY", "DE-HH", "DE-SN"])),
        )
        for i in range(size)
    ]
    ids = [m.id for m in members] + ["outsider"]
    requests = [
        request(
            city_id=draw(st.sampled_from(ids)),
            topics=tuple(draw(st.lists(st.sampled_from(topics), min_size=1, max_size=2))),
            k=draw(st.integers(1, 2)),
            request_id=f"r{n}",
        )
        for n in range(draw(st.integers(1, 3)))
    ]
    load = {m.id: draw(st.integers(0, 3)) for m in members}
    return requests, members, load, draw(st.integers(1, 2))


@settings(max_examples=100, deadline=None)
@given(instances())
def test_joint_assignment_equals_brute_force_optimum(
    instance: tuple[list[AdviceRequest], list[Member], dict[str, int], int],
) -> None:
    requests, members, load, limit = instance
    result = _assign(requests, members, load=load, limit=limit)
    assert set(result) == {r.request_id for r in requests}
    used: Counter[str] = Counter()
    eligible = {m.id for m in members if m.active}
    for req in requests:
        chosen = [m.city_id for m in result[req.request_id]]
        assert len(chosen) == len(set(chosen)) <= req.k
        assert set(chosen) <= eligible - {req.city_id}
        used.update(chosen)
    assert not used or max(used.values()) <= limit
    pairs, evenness, total = _brute_force(requests, members, load, limit)
    assert sum(len(v) for v in result.values()) == pairs
    assert -sum(len(v) ** 2 for v in result.values()) == evenness
    got = sum(m.score for v in result.values() for m in v)
    assert got == pytest.approx(total, abs=pairs / SCORE_SCALE + 1e-12)


# --- size ----------------------------------------------------------------------------------


def test_ten_thousand_members() -> None:
    # Size, not speed: timings belong to the benchmarks (about 20 ms per request here).
    rng = random.Random(5)
    states = sorted(STATES)
    members = []
    for i in range(10_000):
        state = rng.choice(states)
        members.append(
            member(
                f"m{i:05d}",
                state=state,
                population=rng.randint(10_000, 250_000),
                at=(rng.uniform(47.3, 55.0), rng.uniform(6.0, 15.0)) if i % 5 else None,
                joined=dt.date(rng.randint(2010, 2024), 1, 1),
                strengths=set(rng.sample(TOPICS, 3)),
            )
        )
    load = {f"m{i:05d}": rng.randint(0, 4) for i in range(0, 10_000, 3)}
    req = request(
        city_id="m00001",
        topics=("volunteer_recruitment", "young_engagement"),
        question="Wie gewinnen wir Jugendliche und Studierende für das Ehrenamt?",
    )
    top = rank_advisors(
        req, members, today=TODAY, recent_load=load, tandem_partners=set(), limit=req.k
    )
    assert len(top) == 3
    assert all(m.breakdown["coverage"] == 1.0 and m.breakdown["fairness"] == 1.0 for m in top)
    requests = [
        request(city_id=f"m{i:05d}", topics=(TOPICS[i],), k=3, request_id=f"r{i}") for i in range(5)
    ]
    result = assign_advisors(
        requests, members, today=TODAY, recent_load=load, tandem_partners_of={}
    )
    for r in requests:
        alone = rank_advisors(
            r, members, today=TODAY, recent_load=load, tandem_partners=set(), limit=r.k
        )
        # Plenty of equally good advisors: the joint answer loses nothing against ranking alone.
        assert sum(m.score for m in result[r.request_id]) == pytest.approx(
            sum(m.score for m in alone), abs=3 / SCORE_SCALE
        )
