"""The rules of a proposal's life, without I/O: statuses, when a pair can still be formed,
when a tandem runs, and what a rejection needs."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.matcher.domain.lifecycle import (
    BLANK_REASON,
    DECIDED,
    BlankReason,
    IllegalTransition,
    PairUnavailable,
    ProposalStatus,
    check_pair_available,
    rejection_reason,
    running_as_mentor,
    transition,
)
from services.matcher.domain.model import Tandem

TODAY = dt.date(2026, 11, 21)


def tandem(mentor: str, ends: dt.date, newcomer: str = "neu") -> Tandem:
    return Tandem(newcomer, mentor, dt.date(2026, 1, 1), ends)


def test_the_statuses_are_the_contract_s_words() -> None:
    assert [s.value for s in ProposalStatus] == [
        "pending", "accepted", "rejected", "superseded", "withdrawn",
    ]  # fmt: skip
    assert DECIDED == {"accepted", "rejected"}
    assert ProposalStatus("accepted") == "accepted"  # a str: it goes into SQL and JSON as is


@pytest.mark.parametrize("status", ["accepted", "rejected", "superseded", "withdrawn"])
def test_only_pending_proposals_change(status: str) -> None:
    assert transition("pending", "reject") is ProposalStatus.REJECTED
    with pytest.raises(IllegalTransition, match=f"cannot accept a proposal that is {status}"):
        transition(status, "accept")


def test_a_tandem_runs_until_the_day_it_ends() -> None:
    assert tandem("m", TODAY + dt.timedelta(days=1)).is_running(TODAY)
    assert not tandem("m", TODAY).is_running(TODAY)
    assert not tandem("m", TODAY - dt.timedelta(days=1)).is_running(TODAY)


@given(
    capacity=st.integers(0, 4),
    ends=st.lists(st.tuples(st.sampled_from(["m", "other"]), st.integers(-5, 5)), max_size=8),
)
def test_capacity_counts_only_the_mentor_s_running_tandems(
    capacity: int, ends: list[tuple[str, int]]
) -> None:
    tandems = [tandem(m, TODAY + dt.timedelta(days=d)) for m, d in ends]
    running = sum(1 for m, d in ends if m == "m" and d > 0)  # brute force: ends after today
    assert running_as_mentor("m", tandems, TODAY) == running
    if running < capacity:
        check_pair_available(
            "neu", "m", rejected=False, forbidden=False, mentor_capacity=capacity,
            tandems=tandems, today=TODAY,
        )  # fmt: skip
    else:
        with pytest.raises(PairUnavailable, match="m has no free mentor capacity"):
            check_pair_available(
                "neu", "m", rejected=False, forbidden=False, mentor_capacity=capacity,
                tandems=tandems, today=TODAY,
            )  # fmt: skip


@pytest.mark.parametrize(("rejected", "forbidden"), [(True, False), (False, True), (True, True)])
def test_a_rejected_or_forbidden_pair_is_never_available(rejected: bool, forbidden: bool) -> None:
    with pytest.raises(PairUnavailable, match="the pair neu / m was rejected or is forbidden"):
        check_pair_available(
            "neu", "m", rejected=rejected, forbidden=forbidden, mentor_capacity=3, tandems=[],
            today=TODAY,
        )  # fmt: skip


def test_an_unknown_mentor_has_no_capacity() -> None:
    with pytest.raises(PairUnavailable, match="no free mentor capacity"):
        check_pair_available(
            "neu", "m", rejected=False, forbidden=False, mentor_capacity=None, tandems=[],
            today=TODAY,
        )  # fmt: skip


@pytest.mark.parametrize("blank", ["", " ", "  ", "\t\n", "\u00a0"])
def test_a_rejection_needs_a_reason(blank: str) -> None:
    with pytest.raises(BlankReason, match=BLANK_REASON):
        rejection_reason(blank)


def test_the_reason_is_kept_without_surrounding_space() -> None:
    assert rejection_reason("  passt thematisch nicht \n") == "passt thematisch nicht"
