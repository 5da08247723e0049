"""The rules of a proposal's life, written once: its statuses and transitions, when a pair can
still be formed, and what a rejection needs. Plain Python; the store's SQL mirrors these rules
(``services.matcher.store.running_tandem``) and the APIs map the exceptions to HTTP statuses
(``services.api_errors``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from enum import StrEnum

from services.matcher.domain.model import Tandem


class ProposalStatus(StrEnum):
    """Where a proposal stands."""

    PENDING = "pending"
    ACCEPTED = "accepted"  # a tandem; it runs until ``ends_on`` (``Tandem.is_running``)
    REJECTED = "rejected"  # the pair is never proposed again
    SUPERSEDED = "superseded"  # a re-plan replaced it or left the newcomer without one
    WITHDRAWN = "withdrawn"  # a member in it left the network


#: The statuses a staff member decided (the proposal shows who, when and why).
DECIDED = frozenset({ProposalStatus.ACCEPTED, ProposalStatus.REJECTED})


class ProposalAction(StrEnum):
    """What can happen to a proposal."""

    ACCEPT = "accept"
    REJECT = "reject"
    SUPERSEDE = "supersede"
    WITHDRAW = "withdraw"


class IllegalTransition(ValueError):
    """The action is not allowed in the proposal's current status (HTTP: 409)."""


_TRANSITIONS = {
    (ProposalStatus.PENDING, ProposalAction.ACCEPT): ProposalStatus.ACCEPTED,
    (ProposalStatus.PENDING, ProposalAction.REJECT): ProposalStatus.REJECTED,
    (ProposalStatus.PENDING, ProposalAction.SUPERSEDE): ProposalStatus.SUPERSEDED,
    (ProposalStatus.PENDING, ProposalAction.WITHDRAW): ProposalStatus.WITHDRAWN,
}


def transition(status: str, action: str) -> ProposalStatus:
    """The status after ``action``; only pending proposals can change (all others are final).

    Raises ``IllegalTransition`` (a ``ValueError``) otherwise, and ``ValueError`` for unknown
    statuses or actions.
    """
    current, act = ProposalStatus(status), ProposalAction(action)
    try:
        return _TRANSITIONS[(current, act)]
    except KeyError:
        raise IllegalTransition(
            f"cannot {act.value} a proposal that is {current.value}; "
            "only pending proposals can be accepted, rejected, superseded or withdrawn"
        ) from None


# --- when a pair can be formed -----------------------------------------------------------------


class PairUnavailable(RuntimeError):
    """The chosen pair cannot be formed now: no free capacity, rejected or forbidden (409)."""


def running_as_mentor(mentor_id: str, tandems: Iterable[Tandem], today: dt.date) -> int:
    """How many of ``tandems`` bind ``mentor_id``'s capacity on ``today``."""
    return sum(1 for t in tandems if t.mentor_id == mentor_id and t.is_running(today))


def check_pair_available(
    newcomer_id: str,
    mentor_id: str,
    *,
    rejected: bool,
    forbidden: bool,
    mentor_capacity: int | None,
    tandems: Iterable[Tandem],
    today: dt.date,
) -> None:
    """Raise :class:`PairUnavailable` unless the pair can be formed on ``today``: it was never
    rejected, staff did not forbid it, and the mentor (``mentor_capacity`` None: unknown) has
    a unit of capacity its running ``tandems`` do not use."""
    if rejected or forbidden:
        raise PairUnavailable(f"the pair {newcomer_id} / {mentor_id} was rejected or is forbidden")
    if mentor_capacity is None or running_as_mentor(mentor_id, tandems, today) >= mentor_capacity:
        raise PairUnavailable(f"{mentor_id} has no free mentor capacity")


# --- what a decision needs ---------------------------------------------------------------------


class BlankReason(ValueError):
    """A rejection without a reason (HTTP: 422)."""


#: What staff are told when they reject without a reason (the staff page shows it).
BLANK_REASON = "Bitte einen Grund für die Ablehnung angeben."


def rejection_reason(reason: str) -> str:
    """The reason a rejection records: ``reason`` without surrounding white space. Raises
    :class:`BlankReason` if nothing is left (the pair is never proposed again, so staff say
    why)."""
    text = reason.strip()
    if not text:
        raise BlankReason(BLANK_REASON)
    return text
