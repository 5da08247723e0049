"""Wishes: checked by the registry, carried on events, honoured by the matcher (issue 16)."""

from __future__ import annotations

import httpx

from services.runtime import Node
from tests.conftest import eventually, member_body, read_topic
from tests.integration.test_member_changes import admitted, produce
from tests.integration.test_pipeline import pending_for

NETWORK = (
    member_body("ammerbuch", "2015-01-01"),
    member_body("rheinfelden-baden", "2016-01-01", population=34_000, lat=47.56, lon=7.78),
    member_body("lemgo", "2020-01-01", state="DE-NW", population=42_000, lat=52.03, lon=8.9),
)


async def test_wishes_are_checked_travel_on_events_and_the_wished_mentor_is_proposed(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    for body in NETWORK:
        assert (await platform.post("/api/members", json=body)).status_code == 201

    unknown = member_body("goeppingen", "2024-03-01", seeks_tandem=True, wishes=["nowhere"])
    answer = await platform.post("/api/members", json=unknown)
    assert answer.status_code == 422
    assert "nowhere" in answer.text and "wishes" in answer.text
    itself = member_body("goeppingen", "2024-03-01", seeks_tandem=True, wishes=["goeppingen"])
    assert (await platform.post("/api/members", json=itself)).status_code == 422
    too_many = member_body(
        "goeppingen", "2024-03-01", seeks_tandem=True, wishes=["ammerbuch", "lemgo", "x1", "x2"]
    )
    assert (await platform.post("/api/members", json=too_many)).status_code == 422

    # Lemgo is far away and in another state, yet wished: it is proposed, and says so.
    body = member_body("goeppingen", "2024-03-01", seeks_tandem=True, wishes=["lemgo"])
    created = await platform.post("/api/members", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["wishes"] == ["lemgo"]
    proposal = await eventually(lambda: pending_for(staff, "goeppingen"), "a proposal")
    assert proposal["mentor_id"] == "lemgo"
    assert any("Wunsch" in r for r in proposal["reasons"])
    for alternative in proposal["alternatives"]:
        assert alternative["why_not"] and "taken_by" in alternative

    assert node.settings.broker is not None
    joined = await read_topic(
        node.settings.broker, "city.joined", lambda r: any(
            x["value"]["data"]["id"] == "goeppingen" for x in r)
    )  # fmt: skip
    data = next(x["value"]["data"] for x in joined if x["value"]["data"]["id"] == "goeppingen")
    assert data["wishes"] == ["lemgo"]

    # PATCH: unknown ids and the member itself are refused; a valid change re-plans.
    bad = await platform.patch("/api/members/goeppingen", json={"wishes": ["nowhere"]})
    assert bad.status_code == 422 and "nowhere" in bad.text
    own = await platform.patch("/api/members/goeppingen", json={"wishes": ["goeppingen"]})
    assert own.status_code == 422
    changed = await platform.patch("/api/members/goeppingen", json={"wishes": ["ammerbuch"]})
    assert changed.status_code == 200, changed.text

    async def replanned() -> dict[str, object] | None:
        current = await pending_for(staff, "goeppingen")
        return current if current and current["mentor_id"] == "ammerbuch" else None

    again = await eventually(replanned, "the newly wished mentor proposed")
    assert "Wunsch des neuen Mitglieds" in again["reasons"]  # type: ignore[operator]


async def test_member_admitted_with_an_unknown_wish_is_dead_lettered(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    assert node.settings.broker is not None
    bootstrap = node.settings.broker
    for body in NETWORK:
        assert (await platform.post("/api/members", json=body)).status_code == 201
    wrong = member_body("goch", "2024-01-01", seeks_tandem=True, wishes=["nowhere"])
    await produce(bootstrap, "member.admitted", "goch", admitted(wrong))
    right = member_body("goeppingen", "2024-03-01", seeks_tandem=True, wishes=["lemgo"])
    await produce(bootstrap, "member.admitted", "goeppingen", admitted(right))

    proposal = await eventually(lambda: pending_for(staff, "goeppingen"), "a proposal")
    assert proposal["mentor_id"] == "lemgo"
    dead = await read_topic(bootstrap, "member.admitted.dlq", lambda r: len(r) >= 1)
    assert dead[0]["key"] == "goch"
    assert "wishes" in dead[0]["value"]["error"] and "nowhere" in dead[0]["value"]["error"]
    assert (await staff.get("/api/members/goch")).status_code == 404
