"""The joint solve on a running system: bursts coalesce, equal optima do not flip-flop."""

from __future__ import annotations

import asyncio

import httpx

from services.runtime import Node
from tests.conftest import eventually, member_body
from tests.integration.test_reliability import all_proposed


async def test_a_burst_of_joins_is_coalesced_into_few_solves(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    mentors = [
        member_body(f"mentor-{i}", "2016-01-01", population=20_000 + 3_000 * i, mentor_capacity=2)
        for i in range(15)
    ]
    for body in mentors:
        assert (await platform.post("/api/members", json=body)).status_code == 201

    async def known(count: int) -> bool:
        return bool((await staff.get("/api/matcher/status")).json()["members"] >= count)

    await eventually(lambda: known(15), "the mentors to be known")
    solves_before = (await staff.get("/api/matcher/status")).json()["solves"]
    newcomers = [
        member_body(f"neu-{i}", "2024-02-01", population=15_000 + 2_500 * i, seeks_tandem=True)
        for i in range(25)
    ]
    responses = await asyncio.gather(
        *(platform.post("/api/members", json=body) for body in newcomers)
    )
    assert all(r.status_code == 201 for r in responses)
    await eventually(lambda: all_proposed(staff, [n["id"] for n in newcomers]), "all proposals")
    solves = (await staff.get("/api/matcher/status")).json()["solves"] - solves_before
    assert 1 <= solves <= 8, f"25 joins took {solves} solves"


async def test_an_equally_good_newcomer_mentor_does_not_replace_the_proposal(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    for body in (
        member_body("lemgo", "2016-01-01", population=30_000),
        member_body("goeppingen", "2024-03-01", population=30_000, seeks_tandem=True),
    ):
        assert (await platform.post("/api/members", json=body)).status_code == 201
    await eventually(lambda: all_proposed(staff, ["goeppingen"]), "a proposal")
    before = (await staff.get("/api/proposals")).json()
    assert before["items"][0]["mentor_id"] == "lemgo"
    solves = (await staff.get("/api/matcher/status")).json()["solves"]

    # A mentor with exactly the same score joins (and sorts first by id), and one without
    # capacity: both trigger re-solves that must not change the proposal.
    twin = member_body("ammerbuch", "2015-01-01", population=30_000)
    busy = member_body("speyer", "2017-01-01", mentor_capacity=0, state="DE-RP")
    for body in (twin, busy):
        assert (await platform.post("/api/members", json=body)).status_code == 201

    async def resolved() -> bool:
        status = (await staff.get("/api/matcher/status")).json()
        return bool(status["members"] == 4 and status["solves"] > solves)

    await eventually(resolved, "the re-solve with the twin")
    await eventually(lambda: _idle(node), "the solver to settle")
    after = (await staff.get("/api/proposals")).json()
    # A kept proposal is not published again, so its alternatives stay those of its solve.
    assert after == before, "no flip-flop between equal solutions"


async def _idle(node: Node) -> bool:
    assert node.matcher is not None
    return not node.matcher.solve_pending() and await node.matcher.relay.backlog() == 0
