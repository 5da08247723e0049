"""Incremental planning: one more join into a steady state, next to a full re-plan of it.

The steady state: ``members`` experienced members and ``waiting`` newcomers, planned once and
the plan's proposals pending (as after the matcher's solve). Then newcomers join one at a time;
each join is planned by the matcher's ``IncrementalPlanner`` with the pending proposals of the
plan before (the inputs of the matcher's next solve): ``join_plan_ms``. The reference is a full
re-plan (``plan_tandems``) of that same state: ``full_plan_ms``. Both reach the same optimum;
``same_optimum`` records the check (matched count and total score, incumbent bonus included).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from services.bench.harness import median
from services.bench.synthetic import generate
from services.matcher.domain.assignment import INCUMBENT_TOLERANCE
from services.matcher.domain.incremental import IncrementalPlanner
from services.matcher.domain.model import Member
from services.matcher.domain.planning import Plan, plan_tandems
from services.matcher.domain.scoring import Weights

TODAY = dt.date(2025, 1, 15)
WEIGHTS = Weights()


def _objective(plan: Plan, pending: dict[str, str]) -> float:
    return sum(
        p.score + (INCUMBENT_TOLERANCE if pending.get(p.newcomer_id) == p.mentor_id else 0.0)
        for p in plan.proposals
    )


def _timed(work: Callable[[], Plan]) -> tuple[float, Plan]:
    started = time.perf_counter()
    result = work()
    return (time.perf_counter() - started) * 1000, result


def run(members: int, waiting: int, repeat: int) -> dict[str, Any]:
    """Median milliseconds of planning one more join incrementally and of a full re-plan."""
    joins = 5 * repeat
    newcomers = [x.domain() for x in generate(waiting + joins, newcomers=True, prefix="newcomer")]
    existing = [x.domain() for x in generate(members, newcomers=False, prefix="mentor")]
    state: list[Member] = [*existing, *newcomers[:waiting]]
    planner = IncrementalPlanner()

    def incremental() -> Plan:
        return planner.plan(state, [], pending, set(), set(), {}, WEIGHTS, TODAY)

    def full() -> Plan:
        return plan_tandems(state, [], pending, set(), set(), {}, WEIGHTS, TODAY)

    pending: dict[str, str] = {}
    plan = incremental()  # the matcher's first solve (planned in full)
    pending = {p.newcomer_id: p.mentor_id for p in plan.proposals}
    plan = incremental()  # its proposals are pending now: the steady state
    pending = {p.newcomer_id: p.mentor_id for p in plan.proposals}
    join_ms: list[float] = []
    full_ms: list[float] = []
    same = True
    kinds = planner.stats.incremental
    for k in range(joins):
        state.append(newcomers[waiting + k])
        took, plan = _timed(incremental)
        join_ms.append(took)
        if k % 5 == 0:  # a full re-plan of the same state, every fifth join
            took, reference = _timed(full)
            full_ms.append(took)
            same &= len(plan.proposals) == len(reference.proposals) and abs(
                _objective(plan, pending) - _objective(reference, pending)
            ) < 1e-9 * max(1, len(plan.proposals))
        pending = {p.newcomer_id: p.mentor_id for p in plan.proposals}
    join_plan_ms, full_plan_ms = median(join_ms), median(full_ms)
    return {
        "members": members,
        "waiting": waiting,
        "join_plan_ms": join_plan_ms,
        "full_plan_ms": full_plan_ms,
        "ratio": join_plan_ms / full_plan_ms if full_plan_ms > 0 else 0.0,
        "join_plan_max_ms": max(join_ms),
        "same_optimum": same,
        "incremental_plans": planner.stats.incremental - kinds,
        "joins": joins,
        "full_runs": len(full_ms),
    }
