"""The running matcher repairs its last plan after a join, and the repaired plan is optimal."""

from __future__ import annotations

import httpx
import pytest

from services.matcher.domain.planning import plan_tandems
from services.matcher.replan import load_state, planner_of
from services.runtime import Node
from tests.conftest import eventually, member_body
from tests.integration.test_reliability import all_proposed


async def test_a_join_is_planned_incrementally_with_the_full_optimum(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    bodies = [
        member_body(f"mentor-{i}", "2016-01-01", population=20_000 + 7_000 * i, lat=47.6 + 0.4 * i)
        for i in range(12)
    ]
    bodies += [
        member_body(f"neu-{i}", "2024-02-01", population=18_000 + 9_000 * i, lat=48.0 + 0.3 * i,
                    seeks_tandem=True)
        for i in range(4)
    ]  # fmt: skip
    for body in bodies:
        assert (await platform.post("/api/members", json=body)).status_code == 201
    await eventually(lambda: all_proposed(staff, [f"neu-{i}" for i in range(4)]), "proposals")
    assert node.matcher is not None
    planner = planner_of(node.matcher.engine)
    before = planner.stats.incremental

    late = member_body("neu-late", "2024-05-01", population=40_000, lat=49.1, seeks_tandem=True)
    assert (await platform.post("/api/members", json=late)).status_code == 201
    await eventually(lambda: all_proposed(staff, ["neu-late"]), "the late newcomer's proposal")
    assert planner.stats.incremental > before and planner.stats.fallbacks == 0

    # What the matcher proposed is an optimum of its state, as a full plan finds it.
    async with node.matcher.engine.connect() as connection:
        state = await load_state(connection, node.matcher.today())
    members, tandems, pending, rejected, forbidden, pinned = state
    full = plan_tandems(
        members, tandems, {n: m for n, (_, m) in pending.items()}, rejected, forbidden, pinned,
        node.matcher.weights, node.matcher.today(),
    )  # fmt: skip
    items = (await staff.get("/api/proposals", params={"status": "pending"})).json()["items"]
    assert len(items) == len(full.proposals) == 5
    assert sum(p["score"] for p in items) == pytest.approx(
        sum(p.score for p in full.proposals), abs=1e-9
    )
