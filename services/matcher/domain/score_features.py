"""Per-member feature arrays of the scoring engine (``score_engine``) and the criteria
computed from them over any set of cells.

``_Criteria`` holds both sides' features (built once, O(n + m), the sides cached) and computes
each criterion of ``scoring`` vectorised, for whole matrices or single cells.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from schemas.geo import EARTH_RADIUS_KM
from services.matcher.domain.model import Member
from services.matcher.domain.network import component_labels
from services.matcher.domain.scoring import (
    COMMON_PARTNER_SCORE,
    CONNECTED_SCORE,
    CRITERIA,
    FORMER_PARTNERS_SCORE,
    FULL_EXPERIENCE_YEARS,
    GEOGRAPHY_ZERO_KM,
    NO_INTERESTS_TOPIC_SCORE,
    OTHER_REGION_SCORE,
    POPULATION_ZERO_DECADES,
    SAME_REGION_SCORE,
    SAME_STATE_SCORE,
    SHARED_INTEREST_CREDIT,
    UNCONNECTED_SCORE,
)

Matrix = NDArray[np.float64]
Vector = NDArray[np.float64]

#: Cells per block of rows (512 KiB of float64): large enough to amortise Python overhead,
#: small enough for the few such blocks of a worker to stay in the CPU's L2 cache.
_BLOCK_CELLS = 1 << 16


def _rows_per_block(columns: int, itemsize: int = 8) -> int:
    return max(1, _BLOCK_CELLS * 8 // itemsize // max(columns, 1))


@dataclass(frozen=True, slots=True)
class _Cells:
    """Which pairs to compute: ``rows`` x all mentors (a block), or the pairs
    ``(rows[k], cols[k])`` when ``cols`` is given. The criteria are written once for both:
    ``row``/``col`` shape per-member arrays so that they broadcast to the result."""

    rows: NDArray[np.int_]
    cols: NDArray[np.int_] | None = None

    @property
    def size(self) -> int:
        return int(self.rows.size)

    def row(self, values: NDArray[Any]) -> NDArray[Any]:
        return values[self.rows] if self.cols is not None else values[self.rows, None]

    def col(self, values: NDArray[Any]) -> NDArray[Any]:
        return values[self.cols] if self.cols is not None else values[None, :]

    def dot(self, left: Matrix, right: Matrix, out: Matrix) -> Matrix:
        """Products of the rows' factors (members x d) and the columns' (d x members)."""
        if self.cols is None:
            return np.matmul(left[self.rows], right, out=out)
        out[:] = np.einsum("kd,dk->k", left[self.rows], right[:, self.cols])
        return out


class _LazyParts(Mapping[str, Matrix]):
    """Criterion name -> n x m scores, each computed on first access (writing five more
    n x m arrays would cost more than scoring itself, and few callers need them)."""

    def __init__(self, criteria: _Criteria) -> None:
        self._criteria = criteria
        self._done: dict[str, Matrix] = {}

    def __getitem__(self, name: str) -> Matrix:
        if name not in CRITERIA:
            raise KeyError(name)
        if name not in self._done:
            self._done[name] = self._criteria.full(name)
        return self._done[name]

    def __iter__(self) -> Iterator[str]:
        return iter(CRITERIA)

    def __len__(self) -> int:
        return len(CRITERIA)


@dataclass(frozen=True, slots=True)
class _Criteria:
    """Per-member feature arrays of newcomers (``_n``, rows) and mentors (``_m``, columns),
    built once, and the vectorised criteria over them."""

    n: int
    m: int
    log_size_n: Vector
    log_size_m: Vector
    # Haversine via products: rows . cols gives sin(dlat/2) and, with sqrt(cos lat) folded
    # into both sides, sqrt(cos lat1 cos lat2) sin(dlon/2); no cancellation at short range.
    lat_n: Matrix  # n x 2
    lat_m: Matrix  # 2 x m
    lon_n: Matrix  # n x 2
    lon_m: Matrix  # 2 x m
    located_n: NDArray[np.bool_]
    located_m: NDArray[np.bool_]
    state_n: NDArray[np.int64]
    state_m: NDArray[np.int64]
    region_n: NDArray[np.int64]
    region_m: NDArray[np.int64]
    wants: Matrix  # n x topics: 1 where the newcomer is interested
    wanted: list[list[int]]  # per newcomer: the topic columns of its interests
    offers: Matrix  # topics x m: 1 per strength plus the shared-interest credit per interest
    interest_count: Vector
    experience: Vector
    component_n: NDArray[np.int64]  # -1 outside the graph
    component_m: NDArray[np.int64]
    # Newcomer row -> (sorted mentor columns, their score) for former and common partners.
    close: dict[int, tuple[NDArray[np.int_], Vector]]

    @staticmethod
    def of(
        newcomers: Sequence[Member],
        mentors: Sequence[Member],
        today: dt.date,
        graph: nx.Graph | None,
    ) -> _Criteria:
        side_n, side_m = _side_of(newcomers), _side_of(mentors)
        width = len(_TOPICS)
        wants = side_n.topics(side_n.interests, width)
        offers = side_m.topics(side_m.strengths, width)
        offers += SHARED_INTEREST_CREDIT * side_m.topics(side_m.interests, width)
        lat_n, lon_n = side_n.row_angles
        lat_m, lon_m = side_m.column_angles
        component_n, component_m, close = _network_features(newcomers, mentors, graph)
        years = (today.toordinal() - side_m.joined) / 365.25
        return _Criteria(
            n=len(newcomers),
            m=len(mentors),
            log_size_n=side_n.log_size,
            log_size_m=side_m.log_size,
            lat_n=lat_n,
            lat_m=lat_m,
            lon_n=lon_n,
            lon_m=lon_m,
            located_n=side_n.located,
            located_m=side_m.located,
            state_n=side_n.state,
            state_m=side_m.state,
            region_n=side_n.region,
            region_m=side_m.region,
            wants=wants,
            wanted=side_n.interest_codes,
            offers=np.ascontiguousarray(offers.T),
            interest_count=wants.sum(axis=1),
            experience=np.clip(years / FULL_EXPERIENCE_YEARS, 0.0, 1.0),
            component_n=component_n,
            component_m=component_m,
            close=close,
        )

    @property
    def network_is_uniform(self) -> bool:
        """Whether no newcomer is in the tandem graph, so every link would be new."""
        return not self.close and not bool((self.component_n >= 0).any())

    def full(self, name: str) -> Matrix:
        """One criterion for all pairs (read-only; a broadcast view where it is uniform)."""
        if name == "experience":
            return np.broadcast_to(self.experience, (self.n, self.m))
        if name == "network" and self.network_is_uniform:
            return np.broadcast_to(np.float64(UNCONNECTED_SCORE), (self.n, self.m))
        result = np.empty((self.n, self.m))
        step = _rows_per_block(self.m)
        for start in range(0, self.n, step):
            cells = _Cells(np.arange(start, min(start + step, self.n)))
            self.compute(name, cells, result[start : start + cells.size])
        result.flags.writeable = False
        return result

    def compute(self, name: str, cells: _Cells, out: Matrix) -> Matrix:
        """One criterion for ``cells``, written into ``out`` (shaped like the cells)."""
        if name == "topics":
            return self._topics(cells, out)
        if name == "population":
            return self._population(cells, out)
        if name == "geography":
            return self._geography(cells, out)
        if name == "experience":
            out[:] = cells.col(self.experience)
            return out
        return self._network(cells, out)

    def _topics(self, cells: _Cells, out: Matrix) -> Matrix:
        # Entries are sums of 1 and 0.25, exact in binary: after the division they equal the
        # scalar formula bit for bit.
        cells.dot(self.wants, self.offers, out)
        counts = cells.row(self.interest_count)
        silent = counts == 0
        out /= np.where(silent, 1.0, counts)
        np.clip(out, 0.0, 1.0, out=out)
        np.copyto(out, NO_INTERESTS_TOPIC_SCORE, where=silent)
        return out

    def _population(self, cells: _Cells, out: Matrix) -> Matrix:
        np.subtract(cells.row(self.log_size_n), cells.col(self.log_size_m), out=out)
        np.abs(out, out=out)
        out *= -1.0 / POPULATION_ZERO_DECADES
        out += 1.0
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def _geography(self, cells: _Cells, out: Matrix) -> Matrix:
        cells.dot(self.lat_n, self.lat_m, out)
        np.square(out, out=out)
        lon = cells.dot(self.lon_n, self.lon_m, np.empty_like(out))
        np.square(lon, out=lon)
        out += lon  # the haversine of the central angle
        np.sqrt(out, out=out)
        np.clip(out, 0.0, 1.0, out=out)
        np.arcsin(out, out=out)
        out *= -2.0 * EARTH_RADIUS_KM / GEOGRAPHY_ZERO_KM  # distance as a share of the range
        out += 1.0
        np.clip(out, 0.0, 1.0, out=out)
        if cells.cols is not None:
            blind = ~(self.located_n[cells.rows] & self.located_m[cells.cols])
            out[blind] = self._regions(cells.rows[blind], cells.cols[blind])
            return out
        # A block: whole rows and whole columns lack coordinates.
        blind_rows = np.flatnonzero(~self.located_n[cells.rows])
        blind_cols = np.flatnonzero(~self.located_m)
        everyone = np.arange(self.m)
        for row in blind_rows:
            out[row] = self._regions(cells.rows[row], everyone)
        if blind_cols.size:
            out[:, blind_cols] = self._regions(cells.rows[:, None], blind_cols[None, :])
        return out

    def _regions(self, rows: NDArray[np.int_] | int, cols: NDArray[np.int_]) -> Matrix:
        """Geography without coordinates: same state, same region, or elsewhere."""
        same_state = self.state_n[rows] == self.state_m[cols]
        same_region = self.region_n[rows] == self.region_m[cols]
        return np.where(
            same_state,
            SAME_STATE_SCORE,
            np.where(same_region, SAME_REGION_SCORE, OTHER_REGION_SCORE),
        )

    def _network(self, cells: _Cells, out: Matrix) -> Matrix:
        component = cells.row(self.component_n)
        linked = (component == cells.col(self.component_m)) & (component >= 0)
        np.copyto(out, np.where(linked, CONNECTED_SCORE, UNCONNECTED_SCORE))
        if not self.close:
            return out
        if cells.cols is None:
            for local, row in enumerate(cells.rows.tolist()):
                if row in self.close:
                    out[local, self.close[row][0]] = self.close[row][1]
            return out
        close = np.flatnonzero(np.isin(cells.rows, list(self.close)))
        for k, row, col in zip(
            close.tolist(), cells.rows[close].tolist(), cells.cols[close].tolist(), strict=True
        ):
            cols, values = self.close[row]
            at = int(np.searchsorted(cols, col))
            if at < cols.size and cols[at] == col:
                out[k] = values[at]
        return out


class _Codes:
    """Stable small integers for strings (states, regions, topics), shared by every solve, so
    that one side's features do not depend on the other side's."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._codes)

    def of(self, values: Sequence[str]) -> list[int]:
        """The codes of ``values`` (new strings get the next free codes)."""
        codes = self._codes
        if not all(value in codes for value in set(values)):
            with self._lock:
                for value in values:
                    codes.setdefault(value, len(codes))
        return [codes[value] for value in values]


_PLACES = _Codes()
_TOPICS = _Codes()


@dataclass(frozen=True, slots=True)
class _Side:
    """The per-member features of one side (newcomers or mentors) as arrays.

    Built from a list of members and cached by the identity of those members (``_side_of``):
    members are immutable, and a matcher re-solves over the same member objects (its member
    cache), so an unchanged side costs nothing the next time.
    """

    members: tuple[Member, ...]  # held, so that the ids in the cache key stay theirs
    log_size: Vector
    located: NDArray[np.bool_]
    joined: Vector  # proleptic ordinal of the joining date
    state: NDArray[np.int64]
    region: NDArray[np.int64]
    interests: NDArray[np.bool_]  # members x topics known when built
    strengths: NDArray[np.bool_]
    interest_codes: list[list[int]]  # per member: the topic columns of its interests
    row_angles: tuple[Matrix, Matrix]  # haversine factors as rows (newcomers)
    column_angles: tuple[Matrix, Matrix]  # and as columns (mentors)

    @staticmethod
    def of(members: Sequence[Member]) -> _Side:
        # One list comprehension per attribute (the fastest loop over slotted dataclasses);
        # np.array turns a None coordinate into NaN.
        lat = np.array([x.lat for x in members], dtype=float)
        lon = np.array([x.lon for x in members], dtype=float)
        located = ~(np.isnan(lat) | np.isnan(lon))
        lat = np.radians(np.where(located, lat, 0.0))
        lon = np.radians(np.where(located, lon, 0.0))
        return _Side(
            members=tuple(members),
            log_size=np.log10(np.array([x.population for x in members], dtype=float)),
            located=located,
            joined=np.array([x.joined.toordinal() for x in members], dtype=float),
            state=np.array(_PLACES.of([x.state for x in members]), dtype=np.int64),
            region=np.array(_PLACES.of([x.region for x in members]), dtype=np.int64),
            interests=(interests := _indicator([x.interests for x in members])),
            strengths=_indicator([x.strengths for x in members]),
            interest_codes=_codes_per_row(interests),
            row_angles=_half_angles(lat, lon, rows=True),
            column_angles=_half_angles(lat, lon, rows=False),
        )

    @staticmethod
    def topics(flags: NDArray[np.bool_], width: int) -> Matrix:
        """Topic indicator as float64 with ``width`` topic columns (topics registered since
        the side was built are columns of zeros)."""
        table = np.zeros((flags.shape[0], width))
        table[:, : flags.shape[1]] = flags
        return table


def _codes_per_row(flags: NDArray[np.bool_]) -> list[list[int]]:
    """Per row the columns that are True, ascending (one pass, not one per row)."""
    rows, cols = np.nonzero(flags)
    ends = np.cumsum(np.bincount(rows, minlength=flags.shape[0])).tolist()
    flat = cols.tolist()
    return [flat[start:end] for start, end in zip([0, *ends][:-1], ends, strict=True)]


def _half_angles(lat: Vector, lon: Vector, rows: bool) -> tuple[Matrix, Matrix]:
    """Factors whose row . column products give the haversine terms (see ``_Criteria``)."""
    root_cos = np.sqrt(np.cos(lat))
    if rows:  # sin(a/2)cos(b/2) - cos(a/2)sin(b/2) = sin((a - b)/2)
        lat_terms = np.stack([np.sin(lat / 2), -np.cos(lat / 2)], axis=1)
        lon_terms = np.stack([np.sin(lon / 2), -np.cos(lon / 2)], axis=1)
        return lat_terms, lon_terms * root_cos[:, None]
    lat_terms = np.stack([np.cos(lat / 2), np.sin(lat / 2)])
    lon_terms = np.stack([np.cos(lon / 2), np.sin(lon / 2)])
    return lat_terms, lon_terms * root_cos[None, :]


#: Sides kept by ``_side_of`` (newcomers and mentors of the last few solves).
_SIDE_CACHE_SIZE = 4
_SIDES: OrderedDict[tuple[int, ...], _Side] = OrderedDict()
_SIDES_LOCK = threading.Lock()


def _side_of(members: Sequence[Member]) -> _Side:
    """``_Side.of(members)``, reused while the very same member objects come again."""
    key = tuple(map(id, members))
    with _SIDES_LOCK:
        side = _SIDES.get(key)
        if side is not None:
            _SIDES.move_to_end(key)
            return side
    side = _Side.of(members)
    with _SIDES_LOCK:
        _SIDES[key] = side
        while len(_SIDES) > _SIDE_CACHE_SIZE:
            _SIDES.popitem(last=False)
    return side


def _indicator(topic_sets: Sequence[frozenset[str]]) -> NDArray[np.bool_]:
    """Members x topics (``_TOPICS`` codes), True where the member's set holds the topic.
    Members share few distinct sets (a frozenset caches its hash): each is spelled out once."""
    distinct = {topics: k for k, topics in enumerate(dict.fromkeys(topic_sets))}
    which = np.fromiter(map(distinct.__getitem__, topic_sets), np.int_, len(topic_sets))
    rows = [k for topics, k in distinct.items() for _ in topics]
    cols = _TOPICS.of([t for topics in distinct for t in topics])
    table = np.zeros((len(distinct), len(_TOPICS)), dtype=bool)
    table[rows, cols] = True
    return table[which]


def _network_features(
    newcomers: Sequence[Member], mentors: Sequence[Member], graph: nx.Graph | None
) -> tuple[NDArray[np.int64], NDArray[np.int64], dict[int, tuple[NDArray[np.int_], Vector]]]:
    """Component labels (computed once) and the few former/common-partner cells."""
    outside_n = np.full(len(newcomers), -1, dtype=np.int64)
    outside_m = np.full(len(mentors), -1, dtype=np.int64)
    inside = [] if graph is None else [i for i, x in enumerate(newcomers) if x.id in graph]
    if graph is None or not inside:
        # Usual case: newcomers have no tandem yet, so every link would be new.
        return outside_n, outside_m, {}
    labels = component_labels(graph)
    component_n = np.array([labels.get(x.id, -1) for x in newcomers], dtype=np.int64)
    component_m = np.array([labels.get(x.id, -1) for x in mentors], dtype=np.int64)
    column = {x.id: j for j, x in enumerate(mentors)}
    close: dict[int, tuple[NDArray[np.int_], Vector]] = {}
    for i in inside:
        me = newcomers[i].id
        partners = set(graph[me])
        seconds = set().union(*(graph[p] for p in partners)) - partners - {me}
        scores = {column[x]: COMMON_PARTNER_SCORE for x in seconds if x in column}
        scores.update({column[x]: FORMER_PARTNERS_SCORE for x in partners if x in column})
        if scores:
            cols = np.array(sorted(scores), dtype=np.int_)
            close[i] = (cols, np.array([scores[j] for j in cols], dtype=float))
    return component_n, component_m, close
