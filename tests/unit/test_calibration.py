"""The weight fit: it recovers known weights from decisions simulated with them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.matcher.domain.calibration import (
    Decision,
    agreement,
    calibrate,
    cross_validated,
    fit_coefficients,
    fit_weights,
    objective,
    ranks,
)
from services.matcher.domain.scoring import CRITERIA


def simulate(
    weights: dict[str, float], n: int, seed: int, scale: float = 12.0, reject_share: float = 0.0
) -> list[Decision]:
    """Staff following a conditional logit with ``weights``: 4 mentors shown per newcomer
    (random criterion scores), one taken by the Gumbel-max rule; when it is not the proposal,
    a share of those decisions is recorded as a plain rejection instead of a choice."""
    rng = np.random.default_rng(seed)
    beta = scale * np.array([weights[c] for c in CRITERIA])
    decisions = []
    for _ in range(n):
        shown = rng.uniform(0, 1, size=(4, len(CRITERIA)))
        taken = int(np.argmax(shown @ beta + rng.gumbel(size=4)))
        options = tuple(dict(zip(CRITERIA, row.tolist(), strict=True)) for row in shown)
        if taken != 0 and rng.uniform() < reject_share:
            decisions.append(Decision(options, None))
        else:
            decisions.append(Decision(options, taken))
    return decisions


TRUE = {"topics": 0.15, "population": 0.1, "geography": 0.5, "experience": 0.05, "network": 0.2}


def test_fit_recovers_the_weights_the_decisions_were_made_with() -> None:
    fitted = fit_weights(simulate(TRUE, 3000, seed=1), CRITERIA)
    assert fitted is not None
    for criterion in CRITERIA:
        assert fitted[criterion] == pytest.approx(TRUE[criterion], abs=0.04), fitted
    assert math.isclose(sum(fitted.values()), 1.0)


def test_rejections_carry_information_too() -> None:
    """Half of the non-proposal choices recorded only as 'turned down': still recovered."""
    fitted = fit_weights(simulate(TRUE, 3000, seed=2, reject_share=0.5), CRITERIA)
    assert fitted is not None
    for criterion in CRITERIA:
        assert fitted[criterion] == pytest.approx(TRUE[criterion], abs=0.05), fitted


def test_staff_who_always_take_the_nearest_put_geography_first() -> None:
    rng = np.random.default_rng(3)
    decisions = []
    for _ in range(60):
        shown = rng.uniform(0, 1, size=(4, len(CRITERIA)))
        nearest = int(np.argmax(shown[:, CRITERIA.index("geography")]))
        decisions.append(
            Decision(tuple(dict(zip(CRITERIA, r.tolist(), strict=True)) for r in shown), nearest)
        )
    fitted = fit_weights(decisions, CRITERIA)
    assert fitted is not None
    assert max(fitted, key=lambda c: fitted[c]) == "geography"
    assert fitted["geography"] > 0.6
    held_out = cross_validated(decisions, CRITERIA)
    assert held_out.top1 is not None and held_out.top1 > 0.9
    default = agreement(decisions, {c: 0.2 for c in CRITERIA})
    assert default.top1 is not None and default.top1 < held_out.top1 - 0.3


def test_calibration_waits_for_the_minimum_number_of_decisions() -> None:
    decisions = simulate(TRUE, 12, seed=4)
    report = calibrate(decisions, {c: 1.0 for c in CRITERIA}, minimum=20)
    assert report.decisions == 12 and report.missing == 8
    assert report.fitted is None and report.fitted_agreement is None
    assert report.current == {c: 0.2 for c in CRITERIA}
    assert report.current_agreement.decisions == 12
    enough = calibrate(simulate(TRUE, 40, seed=4), {c: 1.0 for c in CRITERIA}, minimum=20)
    assert enough.fitted is not None and enough.missing == 0
    assert enough.fitted_agreement is not None and enough.fitted_agreement.decisions == 40


def test_a_decision_with_one_mentor_shown_says_nothing() -> None:
    lone = Decision(({"geography": 1.0},), 0)
    assert not lone.informative
    assert fit_weights([lone] * 50, CRITERIA) is None
    assert calibrate([lone] * 50, {c: 1.0 for c in CRITERIA}).decisions == 0


def test_ranks_count_ties_as_half() -> None:
    shown = ({"geography": 0.5}, {"geography": 0.5}, {"geography": 0.9})
    assert ranks(Decision(shown, 0), {"geography": 1.0}) == (2.5, 0.0)
    assert ranks(Decision(shown, 2), {"geography": 1.0}) == (1.0, 1.0)
    tied = ({"geography": 0.5}, {"geography": 0.5})
    assert ranks(Decision(tied, 1), {"geography": 1.0}) == (1.5, 0.5)
    with pytest.raises(ValueError):
        ranks(Decision(shown, None), {"geography": 1.0})
    with pytest.raises(ValueError):
        Decision(shown, 3)


breakdowns = st.fixed_dictionaries({c: st.floats(0, 1, allow_nan=False) for c in CRITERIA})


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(breakdowns, min_size=1, max_size=5), st.integers(0, 4), st.booleans()),
        min_size=1,
        max_size=25,
    )
)
def test_fitted_weights_are_a_valid_weighting_and_ranks_are_in_range(
    raw: list[tuple[list[dict[str, float]], int, bool]],
) -> None:
    decisions = [
        Decision(tuple(shown), None if reject else pick % len(shown)) for shown, pick, reject in raw
    ]
    fitted = fit_weights(decisions, CRITERIA)
    if fitted is not None:
        assert set(fitted) == set(CRITERIA)
        assert all(w >= 0 for w in fitted.values())
        assert math.isclose(sum(fitted.values()), 1.0)
    found = agreement(decisions, {c: 0.2 for c in CRITERIA})
    if found.top1 is not None and found.mean_rank is not None:
        assert 0 <= found.top1 <= 1
        assert 1 <= found.mean_rank <= 5


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(
                st.tuples(st.floats(0, 1, allow_nan=False), st.floats(0, 1, allow_nan=False)),
                min_size=2,
                max_size=4,
            ),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_fit_is_at_least_as_likely_as_every_point_of_a_grid(
    raw: list[tuple[list[tuple[float, float]], int]],
) -> None:
    """Brute force on two criteria: no coefficients on a grid make the decisions more likely
    (penalised) than the fitted ones."""
    criteria = ("topics", "geography")
    decisions = [
        Decision(tuple({"topics": a, "geography": b} for a, b in shown), pick % len(shown))
        for shown, pick in raw
    ]
    beta = fit_coefficients(decisions, criteria)
    assert beta is not None and (beta >= 0).all()
    penalised = objective(decisions, criteria)
    best = penalised(beta.tolist())
    grid = np.linspace(0, 8, 17)
    for a in grid:
        for b in grid:
            assert best <= penalised([a, b]) + 1e-6
