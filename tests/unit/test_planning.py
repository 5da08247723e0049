"""Planning tandems for everyone waiting, reconciling with pending proposals, the lifecycle."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from schemas.member import STATES
from services.matcher.domain.lifecycle import IllegalTransition, ProposalStatus, transition
from services.matcher.domain.model import Member, Pair, Tandem
from services.matcher.domain.planning import (
    Plan,
    Unmatched,
    newcomers_of,
    plan_tandems,
    reconcile,
    unmatched_message,
)
from services.matcher.domain.proposing import PlannedProposal
from services.matcher.domain.scoring import DEFAULT_WEIGHTS, Weights

TODAY = dt.date(2024, 10, 1)


def member(
    id: str,
    *,
    joined: int = 2016,
    population: int = 50_000,
    state: str = "DE-BW",
    capacity: int = 1,
    seeks: bool = False,
    active: bool = True,
    interests: frozenset[str] = frozenset(),
    strengths: frozenset[str] = frozenset(),
) -> Member:
    return Member(
        id=id,
        name=id.title(),
        state=state,
        region=STATES[state][1],
        population=population,
        lat=None,
        lon=None,
        joined=dt.date(joined, 3, 1),
        interests=interests,
        strengths=strengths,
        mentor_capacity=capacity,
        seeks_tandem=seeks,
        active=active,
    )


def newcomer(id: str, **kwargs: Any) -> Member:
    return member(id, joined=2024, seeks=True, **kwargs)


def plan(
    members: Sequence[Member],
    tandems: Sequence[Tandem] = (),
    *,
    pending: Mapping[str, str] | None = None,
    rejected: set[Pair] | None = None,
    forbidden: set[Pair] | None = None,
    pinned: Mapping[str, str] | None = None,
    weights: Weights = DEFAULT_WEIGHTS,
) -> Plan:
    return plan_tandems(
        members,
        tandems,
        pending or {},
        rejected or set(),
        forbidden or set(),
        pinned or {},
        weights,
        TODAY,
    )


def pairs(result: Plan) -> dict[str, str]:
    return {p.newcomer_id: p.mentor_id for p in result.proposals}


def running(newcomer_id: str, mentor_id: str) -> Tandem:
    return Tandem(newcomer_id, mentor_id, dt.date(2024, 1, 1), dt.date(2025, 1, 1))


def ended(newcomer_id: str, mentor_id: str) -> Tandem:
    return Tandem(newcomer_id, mentor_id, dt.date(2021, 1, 1), dt.date(2022, 1, 1))


# --- who is a newcomer, who may mentor --------------------------------------------------------


def test_newcomers_are_active_seekers_without_an_accepted_tandem() -> None:
    members = [
        newcomer("waiting"),
        newcomer("had-one-long-ago"),
        newcomer("left", active=False),
        member("not-seeking", joined=2024),
    ]
    found = newcomers_of(members, [ended("had-one-long-ago", "x")])
    assert [x.id for x in found] == ["waiting"]


def test_mentors_must_have_joined_in_an_earlier_year_and_be_active() -> None:
    members = [
        newcomer("new"),
        member("same-year", joined=2024, population=50_000),
        member("left", active=False),
        member("veteran", joined=2016, population=250_000),
    ]
    assert pairs(plan(members)) == {"new": "veteran"}


def test_running_tandems_use_capacity_and_ended_ones_free_it() -> None:
    members = [newcomer("new"), member("busy", capacity=1), member("free", population=200_000)]
    busy = plan(members, [running("someone", "busy")])
    assert pairs(busy) == {"new": "free"}
    done = plan(members, [ended("someone", "busy")])
    assert pairs(done) == {"new": "busy"}  # the better fit once its tandem has ended


def test_rejected_and_forbidden_pairs_are_never_planned() -> None:
    members = [
        newcomer("new"),
        member("best"),
        member("second", population=80_000),
        member("third", population=150_000),
    ]
    assert pairs(plan(members)) == {"new": "best"}
    assert pairs(plan(members, rejected={("new", "best")})) == {"new": "second"}
    result = plan(members, rejected={("new", "best")}, forbidden={("new", "second")})
    assert pairs(result) == {"new": "third"}


# --- unmatched and why ------------------------------------------------------------------------


def test_unmatched_reasons() -> None:
    nobody_earlier = plan([newcomer("new"), member("peer", joined=2024)])
    assert nobody_earlier.unmatched == {"new": Unmatched.NO_ELIGIBLE_MENTOR}

    all_busy = plan([newcomer("new"), member("busy")], [running("x", "busy")])
    assert all_busy.unmatched == {"new": Unmatched.NO_CAPACITY}

    rejected = plan([newcomer("new"), member("m")], rejected={("new", "m")})
    assert rejected.unmatched == {"new": Unmatched.ALL_REJECTED}

    taken = plan([newcomer("a"), newcomer("b"), member("only")])
    assert len(taken.proposals) == 1
    assert set(taken.unmatched.values()) == {Unmatched.CAPACITY_TAKEN}


def test_unmatched_messages_are_german() -> None:
    assert "früheren Jahr" in unmatched_message("no_eligible_mentor")
    assert "ausgelastet" in unmatched_message(Unmatched.NO_CAPACITY)
    assert "abgelehnt" in unmatched_message("all_rejected")
    assert "anderen neuen" in unmatched_message("capacity_taken")
    with pytest.raises(ValueError):
        unmatched_message("bogus")


# --- the joint solve --------------------------------------------------------------------------


def test_joint_plan_leaves_the_only_good_partner_to_the_newcomer_that_needs_it() -> None:
    # "flex" fits both mentors, "alpha" slightly better (same state); "picky" wants
    # participation, which only "alpha" offers. Greedy in arrival order (flex first) would give
    # alpha to flex and leave picky with a poor partner; the joint plan does not.
    both = frozenset({"democracy", "digitalisation"})
    members = [
        newcomer("flex", interests=both),
        newcomer("picky", interests=frozenset({"participation"})),
        member("alpha", strengths=both | {"participation"}),
        member("beta", state="DE-BY", strengths=both),
    ]
    result = plan(members)
    assert pairs(result) == {"flex": "beta", "picky": "alpha"}
    flex = result.proposal_for("flex")
    assert flex is not None
    assert flex.alternatives[0].mentor_id == "alpha"
    assert flex.alternatives[0].score > flex.score  # what greedy would have taken


def test_proposals_carry_score_breakdown_reasons_and_alternatives() -> None:
    topics = frozenset({"democracy"})
    members = [
        newcomer("a", interests=topics),
        newcomer("b", population=120_000),
        member("m1", strengths=topics),
        member("m2", population=52_000),
        member("m3", population=100_000),
        member("m4", population=120_000),
        member("m5", joined=2024),  # not eligible: same year
    ]
    result = plan(members)
    proposal = result.proposal_for("a")
    assert proposal is not None
    assert proposal.mentor_id == "m1"
    assert 0 < proposal.score <= 1
    assert set(proposal.breakdown) == {"topics", "population", "geography", "experience", "network"}
    assert "bietet Demokratie" in proposal.reasons
    # Alternatives: next best eligible mentors, best first, even "m4" whose capacity the
    # other proposal ("b" -> "m4") uses; never the same-year "m5".
    alternatives = [x.mentor_id for x in proposal.alternatives]
    assert pairs(result)["b"] == "m4"
    assert len(alternatives) == 3
    assert "m1" not in alternatives and "m5" not in alternatives
    assert [x.score for x in proposal.alternatives] == sorted(
        (x.score for x in proposal.alternatives), reverse=True
    )
    assert all(x.score <= proposal.score for x in proposal.alternatives)


def test_pending_mentor_is_kept_when_tied() -> None:
    members = [newcomer("new"), member("twin-a"), member("twin-b")]
    assert pairs(plan(members, pending={"new": "twin-a"})) == {"new": "twin-a"}
    assert pairs(plan(members, pending={"new": "twin-b"})) == {"new": "twin-b"}


def test_pending_mentor_is_replaced_by_a_clearly_better_one() -> None:
    members = [newcomer("new"), member("good"), member("poor", population=200_000)]
    assert pairs(plan(members, pending={"new": "poor"})) == {"new": "good"}


def test_pins_are_honoured_and_impossible_pins_dropped() -> None:
    members = [
        newcomer("a"),
        newcomer("b"),
        newcomer("c"),
        member("good"),
        member("poor", population=200_000),
        member("peer", joined=2024),
    ]
    result = plan(
        members,
        pinned={"a": "poor", "b": "peer", "c": "ghost", "x": "good"},
    )
    assert pairs(result)["a"] == "poor"
    proposal = result.proposal_for("a")
    assert proposal is not None and proposal.pinned
    assert result.dropped_pins == {
        "b": "not_eligible",
        "c": "unknown_mentor",
        "x": "not_a_newcomer",
    }
    over = plan(members, pinned={"a": "poor", "b": "poor"})
    assert pairs(over)["a"] == "poor"
    assert over.dropped_pins == {"b": "no_capacity"}


def test_plan_does_not_depend_on_input_order() -> None:
    topics = ["democracy", "digitalisation", "participation", "networking"]
    members = [
        newcomer(f"n{k}", population=10_000 + 7_000 * k, interests=frozenset(topics[k % 4 :]))
        for k in range(6)
    ] + [
        member(f"m{k}", population=12_000 + 9_000 * k, strengths=frozenset(topics[: k % 4 + 1]))
        for k in range(5)
    ]
    expected = plan(members)
    shuffled = members[:]
    random.Random(7).shuffle(shuffled)
    assert plan(shuffled) == expected


def test_no_newcomers_gives_an_empty_plan() -> None:
    assert plan([member("m")]) == Plan(proposals=[], unmatched={})


# --- reconcile with pending proposals ----------------------------------------------------------


def planned(newcomer_id: str, mentor_id: str) -> PlannedProposal:
    return PlannedProposal(newcomer_id, mentor_id, 0.7, {}, [], ())


def test_reconcile_keeps_replaces_and_supersedes() -> None:
    result = Plan(
        proposals=[planned("same", "m1"), planned("moved", "m3"), planned("fresh", "m4")],
        unmatched={"stuck": "capacity_taken"},
    )
    pending = {
        "same": ("p1", "m1"),
        "moved": ("p2", "m2"),
        "stuck": ("p3", "m5"),
        "gone": ("p4", "m6"),
    }
    changes = reconcile(result, pending)
    assert changes.keep == ("p1",)
    assert [(n.planned.newcomer_id, n.supersedes) for n in changes.new] == [
        ("moved", "p2"),
        ("fresh", None),
    ]
    # Replaced (p2) and left without a replacement: unmatched now (p3), no longer a newcomer (p4).
    assert sorted(changes.supersede) == ["p2", "p3", "p4"]


def test_reconcile_with_nothing_pending_creates_everything() -> None:
    changes = reconcile(Plan(proposals=[planned("a", "m")], unmatched={}), {})
    assert (changes.keep, changes.supersede) == ((), ())
    assert [(n.planned.mentor_id, n.supersedes) for n in changes.new] == [("m", None)]


# --- lifecycle -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "after"),
    [
        ("accept", ProposalStatus.ACCEPTED),
        ("reject", ProposalStatus.REJECTED),
        ("supersede", ProposalStatus.SUPERSEDED),
        ("withdraw", ProposalStatus.WITHDRAWN),
    ],
)
def test_pending_proposals_can_be_decided(action: str, after: ProposalStatus) -> None:
    assert transition("pending", action) is after


@pytest.mark.parametrize("status", ["accepted", "rejected", "superseded", "withdrawn"])
@pytest.mark.parametrize("action", ["accept", "reject", "supersede", "withdraw"])
def test_decided_proposals_are_final(status: str, action: str) -> None:
    with pytest.raises(IllegalTransition, match=f"cannot {action} a proposal that is {status}"):
        transition(status, action)


def test_unknown_status_or_action_is_an_error() -> None:
    with pytest.raises(ValueError):
        transition("maybe", "accept")
    with pytest.raises(ValueError):
        transition("pending", "approve")
