"""Scores of newcomer/mentor pairs, their weights, and the German reasons for staff."""

from __future__ import annotations

import datetime as dt
import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.member import STATES
from schemas.topics import TOPICS
from services.matcher.domain import score_engine
from services.matcher.domain.explain import explain_pair, inhabitants
from services.matcher.domain.model import Member, Tandem
from services.matcher.domain.network import former_partners, tandem_graph
from services.matcher.domain.score_engine import score_matrix
from services.matcher.domain.scoring import (
    CRITERIA,
    DEFAULT_WEIGHTS,
    Weights,
    distance_km,
    score_pair,
)

TODAY = dt.date(2024, 10, 1)
GOEPPINGEN = (48.70354, 9.65209)
STUTTGART = (48.7758, 9.1829)


def member(
    id: str,
    *,
    state: str = "DE-BW",
    population: int = 50_000,
    at: tuple[float, float] | None = None,
    joined: dt.date = dt.date(2015, 6, 1),
    interests: frozenset[str] = frozenset(),
    strengths: frozenset[str] = frozenset(),
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
        interests=interests,
        strengths=strengths,
        mentor_capacity=1,
        seeks_tandem=False,
    )


# --- weights -------------------------------------------------------------------------------


def test_default_weights_favour_topics_and_sum_to_one() -> None:
    assert DEFAULT_WEIGHTS.total == pytest.approx(1.0)
    assert max(DEFAULT_WEIGHTS.as_dict(), key=DEFAULT_WEIGHTS.as_dict().__getitem__) == "topics"


def test_weights_parse_keeps_defaults_for_criteria_not_mentioned() -> None:
    weights = Weights.parse(" topics=0.5, population = 0.1 ")
    assert weights.topics == 0.5
    assert weights.population == 0.1
    assert weights.geography == DEFAULT_WEIGHTS.geography
    assert Weights.parse("") == DEFAULT_WEIGHTS


def test_weights_are_normalised_when_scoring() -> None:
    assert Weights.parse(
        "topics=2,population=2,geography=0,experience=0,network=0"
    ).normalised() == {
        "topics": 0.5,
        "population": 0.5,
        "geography": 0.0,
        "experience": 0.0,
        "network": 0.0,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("topics", "must look like name=number"),
        ("colour=1", "unknown criterion 'colour'"),
        ("topics=abc", "weight 'topics' must be a number"),
        ("topics=-0.1", "finite number >= 0"),
        ("topics=nan", "finite number >= 0"),
        ("topics=inf", "finite number >= 0"),
        ("topics=1,topics=2", "given twice"),
        ("topics=0,population=0,geography=0,experience=0,network=0", "all weights are 0"),
    ],
)
def test_weights_parse_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Weights.parse(text)


def test_weights_refuse_negative_values_directly() -> None:
    with pytest.raises(ValueError, match="'network'"):
        Weights(network=-1)


# --- the criteria ----------------------------------------------------------------------------


def test_population_similarity_is_on_a_log_scale() -> None:
    base = member("base", population=20_000)
    scores = {
        ratio: score_pair(base, member("m", population=20_000 * ratio), DEFAULT_WEIGHTS, TODAY)
        for ratio in (1, 2, 10, 20)
    }
    assert scores[1].breakdown["population"] == 1.0
    assert scores[2].breakdown["population"] == pytest.approx(1 - math.log10(2))
    assert scores[10].breakdown["population"] == pytest.approx(0.0)
    assert scores[20].breakdown["population"] == 0.0


def test_geography_uses_distance_when_both_are_located() -> None:
    berlin, munich = member("b", at=(52.52, 13.405)), member("m", at=(48.1351, 11.582))
    assert distance_km(berlin, munich) == pytest.approx(504.4, abs=1.0)
    near = score_pair(member("g", at=GOEPPINGEN), member("s", at=STUTTGART), DEFAULT_WEIGHTS, TODAY)
    assert near.breakdown["geography"] == pytest.approx(1 - 35.33 / 600, abs=1e-3)
    far = score_pair(berlin, munich, DEFAULT_WEIGHTS, TODAY)
    assert far.breakdown["geography"] == pytest.approx(1 - 504.4 / 600, abs=2e-3)


def test_geography_falls_back_to_state_and_region() -> None:
    newcomer = member("n", state="DE-BW", at=GOEPPINGEN)

    def geography(state: str) -> float:
        return score_pair(newcomer, member("m", state=state), DEFAULT_WEIGHTS, TODAY).breakdown[
            "geography"
        ]

    assert geography("DE-BW") == 0.8
    assert geography("DE-BY") == 0.5  # also "south"
    assert geography("DE-SH") == 0.1


def test_topics_credit_offers_fully_and_shared_interests_partly() -> None:
    newcomer = member("n", interests=frozenset({"democracy", "digitalisation"}))
    offers_one = member("a", strengths=frozenset({"democracy"}))
    offers_one_shares_other = member(
        "b", strengths=frozenset({"democracy"}), interests=frozenset({"digitalisation"})
    )
    offers_all = member(
        "c",
        strengths=frozenset({"democracy", "digitalisation"}),
        interests=frozenset({"democracy"}),
    )

    def topics(mentor: Member) -> float:
        return score_pair(newcomer, mentor, DEFAULT_WEIGHTS, TODAY).breakdown["topics"]

    assert topics(offers_one) == 0.5
    assert topics(offers_one_shares_other) == 0.625
    assert topics(offers_all) == 1.0  # capped
    assert topics(member("d")) == 0.0
    silent = score_pair(member("s"), offers_all, DEFAULT_WEIGHTS, TODAY)
    assert silent.breakdown["topics"] == 0.5


def test_experience_grows_over_five_years() -> None:
    newcomer = member("n", joined=dt.date(2024, 1, 1))
    old = score_pair(newcomer, member("m", joined=dt.date(2015, 1, 1)), DEFAULT_WEIGHTS, TODAY)
    half = score_pair(newcomer, member("m", joined=dt.date(2022, 4, 1)), DEFAULT_WEIGHTS, TODAY)
    assert old.breakdown["experience"] == 1.0
    assert half.breakdown["experience"] == pytest.approx(0.5, abs=0.01)


def test_network_avoids_former_partners_and_favours_new_links() -> None:
    tandems = [
        Tandem("n", "partner", dt.date(2021, 1, 1), dt.date(2022, 1, 1)),
        Tandem("other", "partner", dt.date(2021, 1, 1), dt.date(2022, 1, 1)),
        Tandem("other", "far", dt.date(2021, 1, 1), dt.date(2022, 1, 1)),
        Tandem("island", "isle", dt.date(2021, 1, 1), dt.date(2022, 1, 1)),
    ]
    graph = tandem_graph(tandems)
    assert frozenset({"n", "partner"}) in former_partners(graph)
    newcomer = member("n")

    def network(mentor_id: str) -> float:
        pair = score_pair(newcomer, member(mentor_id), DEFAULT_WEIGHTS, TODAY, graph)
        return pair.breakdown["network"]

    assert network("partner") == 0.0
    assert network("other") == 0.25  # shares a former partner
    assert network("far") == 0.5  # connected further away
    assert network("isle") == 1.0  # another component
    assert network("unknown") == 1.0
    assert network("partner") < network("other") < network("far") < network("isle")


def test_a_zero_weight_criterion_does_not_change_the_total() -> None:
    weights = Weights.parse("population=0")
    small, large = member("s", population=10_000), member("l", population=250_000)
    newcomer = member("n", population=10_000)
    assert score_pair(newcomer, small, weights, TODAY).total == pytest.approx(
        score_pair(newcomer, large, weights, TODAY).total
    )


# --- the matrix equals the pairs ------------------------------------------------------------

topic_sets = st.frozensets(st.sampled_from(TOPICS), max_size=4)
maybe_location = st.one_of(st.none(), st.tuples(st.floats(47.3, 55.0), st.floats(5.9, 15.0)))


@st.composite
def members(draw: st.DrawFn, prefix: str, max_size: int) -> list[Member]:
    size = draw(st.integers(0, max_size))
    return [
        member(
            f"{prefix}{k}",
            state=draw(st.sampled_from(sorted(STATES))),
            population=draw(st.integers(1_000, 400_000)),
            at=draw(maybe_location),
            joined=draw(st.dates(dt.date(2015, 1, 1), dt.date(2024, 9, 1))),
            interests=draw(topic_sets),
            strengths=draw(topic_sets),
        )
        for k in range(size)
    ]


@settings(max_examples=150, deadline=None)
@given(
    newcomers=members("n", 5),
    mentors=members("m", 7),
    edges=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=8),
    raw_weights=st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5).filter(
        lambda w: sum(w) > 0.01
    ),
)
def test_score_matrix_equals_score_pair_for_every_entry(
    newcomers: list[Member],
    mentors: list[Member],
    edges: list[tuple[int, int]],
    raw_weights: list[float],
) -> None:
    weights = Weights(**dict(zip(CRITERIA, raw_weights, strict=True)))
    ids = [x.id for x in [*newcomers, *mentors]] or ["nobody"]
    graph = nx.Graph()
    graph.add_edges_from((ids[a % len(ids)], ids[b % len(ids)]) for a, b in edges if a != b)
    matrix = score_matrix(newcomers, mentors, weights, TODAY, graph)
    assert matrix.total.shape == (len(newcomers), len(mentors))
    assert ((matrix.total >= 0) & (matrix.total <= 1)).all()
    for i, newcomer in enumerate(newcomers):
        for j, mentor in enumerate(mentors):
            pair = score_pair(newcomer, mentor, weights, TODAY, graph)
            assert matrix.total[i, j] == pytest.approx(pair.total, abs=1e-12)
            cell = matrix.breakdown(i, j)
            for name in CRITERIA:
                assert matrix.parts[name][i, j] == pytest.approx(pair.breakdown[name], abs=1e-12)
                assert cell[name] == pytest.approx(pair.breakdown[name], abs=1e-12)


def test_score_matrix_handles_empty_sides() -> None:
    assert score_matrix([], [member("m")], DEFAULT_WEIGHTS, TODAY).total.shape == (0, 1)
    assert score_matrix([member("n")], [], DEFAULT_WEIGHTS, TODAY).total.shape == (1, 0)


def test_score_matrix_blocks_cover_large_matrices() -> None:
    # More columns than one block holds rows for: rows are computed in several blocks.
    rng = np.random.default_rng(3)
    mentors = [
        member(f"m{k}", population=int(rng.integers(10_000, 250_000)), at=(50.0, 8 + k / 1000))
        for k in range(40_000)
    ]
    newcomers = [member(f"n{k}", population=20_000 + k, at=(51.0, 9.0)) for k in range(3)]
    matrix = score_matrix(newcomers, mentors, DEFAULT_WEIGHTS, TODAY)
    for i, j in [(0, 0), (1, 20_000), (2, 39_999)]:
        pair = score_pair(newcomers[i], mentors[j], DEFAULT_WEIGHTS, TODAY)
        assert matrix.total[i, j] == pytest.approx(pair.total, abs=1e-12)


# --- reasons for staff ------------------------------------------------------------------------


def test_reasons_name_size_place_topics_experience_and_network_in_german() -> None:
    newcomer = member(
        "goeppingen",
        population=58_040,
        at=GOEPPINGEN,
        joined=dt.date(2024, 3, 1),
        interests=frozenset({"digitalisation", "democracy", "participation"}),
    )
    mentor = member(
        "stuttgart-nord",
        population=61_000,
        at=STUTTGART,
        joined=dt.date(2015, 5, 1),
        strengths=frozenset({"digitalisation", "democracy"}),
        interests=frozenset({"participation"}),
    )
    pair = score_pair(newcomer, mentor, DEFAULT_WEIGHTS, TODAY)
    reasons = explain_pair(newcomer, mentor, pair.breakdown)
    assert "ähnliche Größe (58.000 / 61.000 Einw.)" in reasons
    assert "35 km entfernt" in reasons
    assert "bietet Demokratie, Digitalisierung" in reasons
    assert "beide interessiert an Beteiligung" in reasons
    assert "seit 2015 im Netzwerk" in reasons
    assert "noch keine gemeinsame Verbindung im Netzwerk" in reasons
    # Ordered by contribution: topics (0.35 x 0.75) before the nearly equal size (0.25 x 0.98).
    assert reasons.index("bietet Demokratie, Digitalisierung") < reasons.index(
        "ähnliche Größe (58.000 / 61.000 Einw.)"
    )
    assert reasons[-1] == "noch keine gemeinsame Verbindung im Netzwerk"


def test_reasons_without_coordinates_name_state_or_region() -> None:
    newcomer = member("n", state="DE-BW")
    same_state = member("s", state="DE-BW")
    same_region = member("r", state="DE-BY")
    for mentor, text in [
        (same_state, "gleiches Bundesland (Baden-Württemberg)"),
        (same_region, "gleiche Region (Süden)"),
    ]:
        pair = score_pair(newcomer, mentor, DEFAULT_WEIGHTS, TODAY)
        assert text in explain_pair(newcomer, mentor, pair.breakdown)


def test_reasons_name_every_weak_point_costliest_first() -> None:
    # Issue 16: every criterion below 0.3 is named as a weak point (before: only the costliest
    # one as "caveat"), after the statements.
    newcomer = member("n", population=12_000, state="DE-SH", joined=dt.date(2024, 1, 1))
    mentor = member("m", population=240_000, state="DE-BY", joined=dt.date(2023, 6, 1))
    graph = tandem_graph([Tandem("n", "m", dt.date(2020, 1, 1), dt.date(2021, 1, 1))])
    pair = score_pair(newcomer, mentor, DEFAULT_WEIGHTS, TODAY, graph)
    reasons = explain_pair(newcomer, mentor, pair.breakdown)
    assert not any(r.startswith(("ähnliche Größe", "seit ", "gleiche")) for r in reasons)
    weak = [r for r in reasons if r.startswith("Schwachpunkt")]
    # size: weight 0.25 x shortfall 1 costs most, then the other region (0.25 x 0.9), the
    # short membership (0.10 x most of 1), the former partners (0.05 x 1).
    assert weak == [
        "Schwachpunkt Größe: Tandem-Stadt etwa 20-mal so groß (12.000 / 240.000 Einw.)",
        "Schwachpunkt Nähe: andere Region (Norden / Süden)",
        "Schwachpunkt Erfahrung: erst seit 2023 im Netzwerk",
        "Schwachpunkt Netzwerk: waren bereits Tandem-Partner",
    ]
    assert reasons[-len(weak) :] == weak


def test_reasons_name_former_partners_as_weak_point() -> None:
    newcomer, mentor = member("n"), member("m")
    graph = tandem_graph([Tandem("n", "m", dt.date(2020, 1, 1), dt.date(2021, 1, 1))])
    weights = Weights.parse("network=1,population=0,geography=0,topics=0,experience=0")
    pair = score_pair(newcomer, mentor, weights, TODAY, graph)
    assert explain_pair(newcomer, mentor, pair.breakdown, weights) == [
        "Schwachpunkt Netzwerk: waren bereits Tandem-Partner"
    ]


def test_zero_weight_criteria_are_never_reasons() -> None:
    newcomer, mentor = member("n", population=50_000), member("m", population=50_000)
    weights = Weights.parse("population=0")
    pair = score_pair(newcomer, mentor, weights, TODAY)
    assert not any("Größe" in r for r in explain_pair(newcomer, mentor, pair.breakdown, weights))


def test_inhabitants_are_rounded_for_reading() -> None:
    assert inhabitants(58_040) == "58.000"
    assert inhabitants(249_600) == "250.000"
    assert inhabitants(8_460) == "8.500"


# --- the shortlist: each newcomer's best mentors, found without the whole float64 matrix ------


def random_members(rng: np.random.Generator, prefix: str, count: int) -> list[Member]:
    """Members with a wide spread (populations 1,000 to 5 million, coordinates anywhere, some
    unknown) and duplicates, so that exact ties between mentors occur."""
    states = sorted(STATES)
    made: list[Member] = []
    for k in range(count):
        if made and rng.random() < 0.2:  # a twin of an earlier member: equal scores
            twin = made[int(rng.integers(len(made)))]
            made.append(member(f"{prefix}{k}", state=twin.state, population=twin.population,
                               at=(twin.lat, twin.lon) if twin.lat is not None else None,
                               joined=twin.joined, interests=twin.interests,
                               strengths=twin.strengths))  # fmt: skip
            continue
        located = rng.random() < 0.9
        made.append(
            member(
                f"{prefix}{k}",
                state=states[int(rng.integers(len(states)))],
                population=int(np.exp(rng.uniform(np.log(1_000), np.log(5_000_000)))),
                at=(float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180)))
                if located
                else None,
                joined=dt.date(int(rng.integers(2010, 2024)), 1, 1),
                interests=frozenset(rng.choice(TOPICS, int(rng.integers(0, 4)), replace=False)),
                strengths=frozenset(rng.choice(TOPICS, int(rng.integers(0, 4)), replace=False)),
            )
        )
    return made


@pytest.mark.parametrize("float32", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_shortlist_from_float32_equals_the_exact_best_columns(
    monkeypatch: pytest.MonkeyPatch, seed: int, float32: bool
) -> None:
    # Force the float32 path (or the exact one) on a matrix small enough to check.
    monkeypatch.setattr(score_engine, "_FLOAT32_CELLS", 0 if float32 else 1 << 40)
    rng = np.random.default_rng(seed)
    newcomers, mentors = random_members(rng, "n", 9), random_members(rng, "m", 400)
    feasible = rng.random((len(newcomers), len(mentors))) < rng.uniform(0.05, 1.0)
    weights = Weights(*rng.uniform(0.0, 1.0, 5)) if seed % 2 else DEFAULT_WEIGHTS
    k = int(rng.integers(1, 20))
    scores = score_matrix(newcomers, mentors, weights, TODAY, shortlist=k, feasible=feasible)
    exact = score_matrix(newcomers, mentors, weights, TODAY).total
    for i in range(len(newcomers)):
        ranked = sorted(np.flatnonzero(feasible[i]).tolist(), key=lambda j: (-exact[i, j], j))
        expected = ranked[:k] + [-1] * (k - len(ranked[:k]))
        assert scores.shortlist[i].tolist() == expected
        listed = scores.shortlist[i] >= 0
        assert np.allclose(scores.shortlist_scores[i][listed], exact[i, ranked[:k]], atol=1e-12)
        assert np.isnan(scores.shortlist_scores[i][~listed]).all()


def test_rows_and_cells_equal_the_whole_matrix() -> None:
    rng = np.random.default_rng(7)
    newcomers, mentors = random_members(rng, "n", 5), random_members(rng, "m", 60)
    lazy = score_matrix(newcomers, mentors, DEFAULT_WEIGHTS, TODAY)
    rows = np.array([4, 0, 2])
    assert np.allclose(
        lazy.rows(rows),
        score_matrix(newcomers, mentors, DEFAULT_WEIGHTS, TODAY).total[rows],
        atol=1e-12,
    )
    cols = np.array([59, 3, 3])
    assert np.allclose(lazy.cells(rows, cols), lazy.total[rows, cols], atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_float32_pass_stays_well_within_the_shortlist_margin(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    newcomers, mentors = random_members(rng, "n", 20), random_members(rng, "m", 300)
    for weights in (DEFAULT_WEIGHTS, Weights(0, 0, 1, 0, 0), Weights(*rng.uniform(0, 1, 5))):
        exact = score_matrix(newcomers, mentors, weights, TODAY)
        fast = score_engine._WeightedTerms.of(exact.criteria, weights, np.float32)
        out = np.empty(exact.shape, dtype=np.float32)
        fast.write(np.arange(len(newcomers)), out, np.empty_like(out), clip=False)
        error = np.abs(np.clip(out.astype(float), 0.0, 1.0) - exact.total).max()
        assert error < score_engine._FLOAT32_MARGIN / 2


@pytest.mark.parametrize("seed", range(4))
def test_best_columns_of_some_rows_alone_equal_those_of_the_whole_matrix(seed: int) -> None:
    # A crowded plan lists the best mentors of its planned newcomers only (``list_best``).
    rng = np.random.default_rng(300 + seed)
    newcomers, mentors = random_members(rng, "n", 30), random_members(rng, "m", 200)
    feasible = rng.random((len(newcomers), len(mentors))) < rng.uniform(0.05, 1.0)
    k = int(rng.integers(1, 20))
    whole = score_matrix(newcomers, mentors, DEFAULT_WEIGHTS, TODAY, shortlist=k, feasible=feasible)
    some = np.sort(rng.choice(len(newcomers), 11, replace=False))
    lazy = score_matrix(newcomers, mentors, DEFAULT_WEIGHTS, TODAY)
    lazy.list_best(some, k, feasible)
    assert (lazy.shortlist[some] == whole.shortlist[some]).all()
    assert np.allclose(lazy.shortlist_scores[some], whole.shortlist_scores[some], equal_nan=True)
    others = np.setdiff1d(np.arange(len(newcomers)), some)
    assert (lazy.shortlist[others] == -1).all() and np.isnan(lazy.shortlist_scores[others]).all()


@pytest.mark.parametrize("seed", range(4))
def test_approximate_rows_lie_within_half_their_margin(seed: int) -> None:
    rng = np.random.default_rng(400 + seed)
    newcomers, mentors = random_members(rng, "n", 25), random_members(rng, "m", 300)
    for weights in (DEFAULT_WEIGHTS, Weights(0, 0, 1, 0, 0), Weights(*rng.uniform(0, 1, 5))):
        scores = score_matrix(newcomers, mentors, weights, TODAY)
        rows = np.array([3, 0, 24, 7])
        rough, margin = scores.rows_approx(rows)
        assert rough.dtype == np.float32
        assert np.abs(rough.astype(float) - scores.rows(rows)).max() < margin / 2
