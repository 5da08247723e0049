"""Registering without population or coordinates: the registry looks them up in GeoNames."""

from __future__ import annotations

from typing import Any

import httpx

from services.runtime import Node
from tests.conftest import eventually, member_body
from tests.integration.test_member_changes import admitted, produce


def without(body: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in fields}


async def test_registry_fills_population_and_coordinates_from_the_gazetteer(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    body = without(
        member_body("goeppingen", "2024-01-01", name="Göppingen"), "population", "lat", "lon"
    )
    response = await platform.post("/api/members", json=body)
    assert response.status_code == 201, response.text
    member = response.json()
    assert member["looked_up"] == ["population", "lat", "lon"]
    assert 50_000 < member["population"] < 70_000
    assert abs(member["lat"] - 48.70) < 0.05 and abs(member["lon"] - 9.65) < 0.05
    stored = (await staff.get("/api/members/goeppingen")).json()
    assert stored["population"] == member["population"]
    (entry,) = (await staff.get("/api/members/goeppingen/history")).json()["items"]
    assert "population" not in entry["fields"] and "name" in entry["fields"]
    assert entry["reason"] == "looked up in GeoNames (CC BY 4.0): population, lat, lon"

    # Two Illingens: the state decides.
    illingen = without(
        member_body("illingen", "2020-01-01", name="Illingen", state="DE-SL", lat=49.4, lon=7.0),
        "population",
    )
    response = await platform.post("/api/members", json=illingen)
    assert response.status_code == 201, response.text
    assert response.json()["looked_up"] == ["population"]  # coordinates were given
    assert response.json()["population"] > 15_000  # the Saarland one, not Enzkreis' 7,000

    # Unknown and without population: 422 on the field; with population: coordinates stay empty.
    unknown = without(member_body("nirgendwo", "2020-01-01", name="Nirgendwohausen"), "lat", "lon")
    refused = await platform.post("/api/members", json=without(unknown, "population"))
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "population"]
    assert "not in the GeoNames gazetteer" in error["msg"]
    accepted = await platform.post("/api/members", json=unknown)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["looked_up"] == [] and accepted.json()["lat"] is None

    # member.admitted takes the same way through the gazetteer.
    assert node.settings.broker is not None
    event = without(
        member_body("goch", "2024-01-01", name="Goch", state="DE-NW"), "population", "lat", "lon"
    )
    await produce(node.settings.broker, "member.admitted", "goch", admitted(event))

    async def goch() -> dict[str, Any] | None:
        found = await staff.get("/api/members/goch")
        return found.json() if found.status_code == 200 else None

    stored = await eventually(goch, "goch registered from member.admitted")
    assert stored["population"] > 10_000
    assert stored["lat"] is not None
    (entry,) = (await staff.get("/api/members/goch/history")).json()["items"]
    assert entry["reason"] == "looked up in GeoNames (CC BY 4.0): population, lat, lon"
