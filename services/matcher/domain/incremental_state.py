"""The state the incremental planner keeps between plans (see ``incremental``): per newcomer
(row) its listed mentors, scores and price, per mentor (column) its free capacity, price and
rows, the inputs of the last plan, and the budgets of the augmenting paths.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from services.matcher.domain.assignment import INCUMBENT_TOLERANCE
from services.matcher.domain.model import Member, Pair, Tandem
from services.matcher.domain.proposing import (
    PlannedProposal,
)
from services.matcher.domain.scoring import Weights

#: Slack below which a reduced cost counts as negative (float noise of sums around ``big``).
_EPS = 1e-9
_INF = math.inf


class Inconsistent(RuntimeError):
    """The incremental state broke one of its invariants (the planner then rebuilds)."""


class _TooCostly(Exception):
    """The augmenting paths explore more than their budget: the problem is crowded (more
    newcomers than places, or everyone wants the same few mentors), where one solve of the
    whole problem by ``plan_tandems`` (compiled solvers) is cheaper than many paths."""


#: Cells an update may scan in its augmenting paths before it gives up for a full plan.
UPDATE_BUDGET = 200_000
#: And a build, per row (plus the update budget).
BUILD_BUDGET_PER_ROW = 64
#: Plans done by ``plan_tandems`` alone after a build ran out of budget, before the next try.
COOLDOWN = 10
#: Incremental planning is kept for networks where the newcomers take at most this share of
#: the free places: beyond it, many paths are long and one compiled solve is cheaper.
CROWDED_SHARE = 0.5


def _profile(member: Member) -> tuple[object, ...]:
    """What scores and eligibility depend on (capacity and seeking are handled apart)."""
    return (
        member.population, member.lat, member.lon, member.state, member.region, member.joined,
        member.interests, member.strengths,
    )  # fmt: skip


@dataclass(slots=True)
class _Row:
    """A newcomer: its listed mentors' scores, its price and its mentor (``None``: unmatched)."""

    member: Member
    scores: dict[str, float]
    bound: float  # >= the score of every feasible mentor not listed (-inf: all are listed)
    incumbent: str | None = None
    u: float = 0.0
    col: str | None = None
    pinned: str | None = None  # a pinned row is no part of the problem; it holds its pin
    out: bool = True  # taken out of the problem (entering again, or new)

    def key(self, mentor_id: str) -> float:
        bonus = INCUMBENT_TOLERANCE if mentor_id == self.incumbent else 0.0
        return self.scores[mentor_id] + bonus


@dataclass(slots=True)
class _Col:
    """A mentor with free capacity: its price and the rows on it."""

    member: Member
    capacity: int  # free places for the problem (pins already taken off)
    v: float = 0.0
    rows: set[str] = field(default_factory=set)
    listed_by: set[str] = field(default_factory=set)

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.capacity


@dataclass(slots=True)
class _Inputs:
    """The inputs of the last plan, to compare the next ones with."""

    member_list: list[Member]
    tandems: list[Tandem]
    pending: dict[str, str]
    excluded: frozenset[Pair]
    pinned: dict[str, str]
    weights: Weights
    today: dt.date
    members: dict[str, Member] = field(default_factory=dict)  # by id, filled by the state

    def index(self) -> None:
        """Fill ``members`` from ``member_list``."""
        self.members = {x.id: x for x in self.member_list}


class _Kept:
    """Rows, columns, prices and proposals of the last plan (the methods are in the
    modules of the steps that use them: paths, rows and columns, explaining, updating)."""

    def __init__(self, inputs: _Inputs) -> None:
        self.inputs = inputs
        self.weights, self.today = inputs.weights, inputs.today
        self.rows: dict[str, _Row] = {}
        self.cols: dict[str, _Col] = {}
        self.big = 0.0
        self.latest: int | None = None
        self.graph: nx.Graph = nx.Graph()
        self.had_tandem: set[str] = set()
        self.running: Counter[str] = Counter()
        self.row_years: Counter[int] = Counter()  # joining years of the rows (newcomers)
        self.excluded_of: dict[str, set[str]] = {}
        self.mentor_list: list[Member] = []
        self.mentor_index: dict[str, int] = {}
        self.mentor_years: NDArray[np.int_] = np.empty(0, dtype=np.int_)
        self.proposals: dict[str, PlannedProposal] = {}
        self.unmatched: dict[str, str] = {}
        self.dropped: dict[str, str] = {}
        self.dirty: set[str] = set()  # rows whose proposal must be rebuilt
        self.touched_cols: set[str] = set()
        self.budget = UPDATE_BUDGET  # cells the augmenting paths may still scan
        self.crowded_share = CROWDED_SHARE
        #: The earliest joining years of active members and of mentors (``_unmatched_reason``).
        self._years: tuple[int | None, int | None] | None = None
        self._component: tuple[nx.Graph, dict[str, int]] | None = None
        self._mentor_component: tuple[list[Member], NDArray[np.int_]] | None = None
        #: Per column of ``mentor_list`` its free capacity, pins included (None: to compute).
        self._capacities: NDArray[np.int_] | None = None
        #: Per mentor the rows pinned to it (pins change only with a rebuild).
        self._pinned_on: dict[str, list[str]] | None = None

    def _set_mentor_list(self, mentors: Iterable[Member]) -> None:
        self._capacities = None
        self.mentor_list = sorted(mentors, key=lambda x: x.id)
        self.mentor_index = {x.id: j for j, x in enumerate(self.mentor_list)}
        self.mentor_years = np.fromiter(
            (x.joined.year for x in self.mentor_list), np.int_, len(self.mentor_list)
        )
