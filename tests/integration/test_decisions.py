"""Staff decisions beyond accept/reject: taking an alternative, pinning and forbidding pairs."""

from __future__ import annotations

import httpx

from services.runtime import Node
from tests.conftest import eventually, member_body, read_topic
from tests.integration.test_pipeline import pending_for

NETWORK = (
    member_body("ammerbuch", "2015-01-01"),
    member_body("rheinfelden-baden", "2016-01-01", population=34_000, lat=47.56, lon=7.78),
    member_body("lemgo", "2020-01-01", state="DE-NW", population=42_000, lat=52.03, lon=8.9),
    member_body("goeppingen", "2024-03-01", seeks_tandem=True),
)


async def register(platform: httpx.AsyncClient) -> None:
    for body in NETWORK:
        assert (await platform.post("/api/members", json=body)).status_code == 201


async def test_taking_an_alternative_accepts_it_and_rejects_the_proposal(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    await register(platform)
    proposal = await eventually(lambda: pending_for(staff, "goeppingen"), "a proposal")
    alternative = proposal["alternatives"][0]["mentor_id"]

    not_listed = await staff.post(
        f"/api/proposals/{proposal['proposal_id']}/choose", json={"mentor_id": "goeppingen"}
    )
    assert not_listed.status_code == 422

    chosen = await staff.post(
        f"/api/proposals/{proposal['proposal_id']}/choose",
        json={"mentor_id": alternative, "reason": "kennen sich schon"},
    )
    assert chosen.status_code == 200, chosen.text
    body = chosen.json()
    assert body["status"] == "accepted" and body["mentor_id"] == alternative
    assert body["supersedes"] == proposal["proposal_id"]
    assert body["reasons"], "the chosen pair is explained too"

    old = (await staff.get(f"/api/proposals/{proposal['proposal_id']}")).json()
    assert old["status"] == "rejected" and old["decision_reason"] == "kennen sich schon"
    again = await staff.post(
        f"/api/proposals/{proposal['proposal_id']}/choose", json={"mentor_id": alternative}
    )
    assert again.status_code == 409

    assert node.settings.broker is not None
    decided = await read_topic(node.settings.broker, "tandem.decided", lambda r: len(r) >= 2)
    assert [r["value"]["data"]["decision"] for r in decided] == ["rejected", "accepted"]
    # The newcomer has its tandem now: no new pending proposal appears for it.
    status = (await staff.get("/api/matcher/status")).json()
    assert status["accepted"] == 1


async def test_forbidden_pair_is_replaced_and_pinned_pair_is_proposed(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    await register(platform)
    first = await eventually(lambda: pending_for(staff, "goeppingen"), "a proposal")

    forbid = await staff.put(
        f"/api/pairs/goeppingen/{first['mentor_id']}", json={"rule": "forbidden"}
    )
    assert forbid.status_code == 200

    async def replaced() -> dict[str, object] | None:
        current = await pending_for(staff, "goeppingen")
        return current if current and current["mentor_id"] != first["mentor_id"] else None

    second = await eventually(replaced, "a replacement after forbidding the pair")
    assert second["supersedes"] == first["proposal_id"]
    superseded = (await staff.get(f"/api/proposals/{first['proposal_id']}")).json()
    assert superseded["status"] == "superseded"

    remaining = {"ammerbuch", "rheinfelden-baden", "lemgo"} - {
        first["mentor_id"], second["mentor_id"]
    }  # fmt: skip
    pinned_mentor = remaining.pop()
    pin = await staff.put(f"/api/pairs/goeppingen/{pinned_mentor}", json={"rule": "pinned"})
    assert pin.status_code == 200

    async def pinned() -> dict[str, object] | None:
        current = await pending_for(staff, "goeppingen")
        return current if current and current["mentor_id"] == pinned_mentor else None

    await eventually(pinned, "the pinned pair to be proposed")
    rules = (await staff.get("/api/pairs")).json()["items"]
    assert {(r["mentor_id"], r["rule"]) for r in rules} == {
        (first["mentor_id"], "forbidden"), (pinned_mentor, "pinned")
    }  # fmt: skip
    assert (
        await staff.put("/api/pairs/goeppingen/nobody", json={"rule": "pinned"})
    ).status_code == 404
    assert (await staff.delete(f"/api/pairs/goeppingen/{pinned_mentor}")).status_code == 204
    assert (await staff.delete(f"/api/pairs/goeppingen/{pinned_mentor}")).status_code == 404
