"""What the matcher knows about members and their tandems."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

#: A (newcomer_id, mentor_id) pair, e.g. a rejected or forbidden pairing.
Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Member:
    """A member of the network as the matcher sees it (no contact data).

    ``state`` is an ISO 3166-2 code such as ``"DE-BW"``; ``region`` one of ``north``, ``east``,
    ``south``, ``west``. ``lat``/``lon`` are both given or both ``None``. ``mentor_capacity`` is
    how many tandems the member can hold at once as the experienced partner. ``wishes``: the
    members it would like as its Tandem-Stadt (at most three); ``estimated``: the fields whose
    value is an estimate, not a fact from the member.
    """

    id: str
    name: str
    state: str
    region: str
    population: int
    lat: float | None
    lon: float | None
    joined: dt.date
    interests: frozenset[str]
    strengths: frozenset[str]
    mentor_capacity: int
    seeks_tandem: bool
    active: bool = True
    wishes: tuple[str, ...] = ()
    estimated: frozenset[str] = frozenset()

    @property
    def has_location(self) -> bool:
        """Whether both coordinates are known."""
        return self.lat is not None and self.lon is not None


@dataclass(frozen=True, slots=True)
class Tandem:
    """An accepted tandem: ``mentor_id`` accompanies ``newcomer_id`` until ``ends``."""

    newcomer_id: str
    mentor_id: str
    started: dt.date
    ends: dt.date

    def is_running(self, today: dt.date) -> bool:
        """Whether the tandem still binds the mentor's capacity on ``today``."""
        return self.ends > today
