"""One admission for every way in: HTTP, ``tandem import`` and ``member.admitted`` refuse the same
member with the same messages; German topic labels are stored as slugs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from services.importer import check_locally, import_rows, read_file
from services.runtime import Node
from tests.conftest import eventually, member_body, read_topic
from tests.integration.test_member_changes import admitted, produce

HEADER = (
    "name,kind,bundesland,joined,topics,population,lat,lon,interests,strengths,"
    "contact_name,contact_email,partners\n"
)


def messages_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}"
        for e in response.json()["detail"]
    ]


async def test_the_same_invalid_member_is_refused_identically_on_every_way_in(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert node.settings.broker is not None
    # Five inhabitants, one partner from business, no contact: five rules broken at once.
    body = member_body(
        "kleinsthausen", "2024-01-01", name="Kleinsthausen", population=5,
        partners=[{"name": "Dorfladen", "sector": "business"}], contact=None,
    )  # fmt: skip
    over_http = messages_of(await platform.post("/api/members", json=body))
    assert over_http == [
        "population: members have 10,000 to 250,000 inhabitants (got 5); give "
        "exception_reason for a documented exception",
        "partners: at least 3 partners are needed (got 1)",
        "partners: at least one partner from civil society is needed",
        "partners: at least one partner from administration is needed",
        "contact: a contact person is needed",
    ]

    path = tmp_path / "members.csv"
    path.write_text(
        HEADER + "Kleinsthausen,city,Baden-Württemberg,2024-01-01,,5,48.7,9.6,digitalisation,"
        "digitalisation;democracy,,,Dorfladen|business\n",
        encoding="utf-8",
    )
    report = await import_rows(platform, read_file(path), source=path.name)
    (line,) = report.results
    assert line.status == "rejected"
    assert list(line.reasons) == over_http
    assert f"line 2 (Kleinsthausen): {'; '.join(over_http)}" in "\n".join(report.summary_lines())

    await produce(node.settings.broker, "member.admitted", "kleinsthausen", admitted(body))
    (dead,) = await read_topic(node.settings.broker, "member.admitted.dlq", lambda r: len(r) >= 1)
    assert dead["value"]["error"] == f"admission refused: {'; '.join(over_http)}"
    assert (await staff.get("/api/members")).json()["total"] == 0

    # A body the model refuses has its broken rules named in the same answer, and the import
    # reports the same (its dry run too, found locally).
    broken = {**body, "kind": "village", "contact": {"name": "Eva", "email": "no-address"}}
    both = messages_of(await platform.post("/api/members", json=broken))
    assert both[0].startswith("kind: Input should be 'city'")
    assert both[1].startswith("contact.email: value is not a valid email address")
    assert both[2:] == over_http[:4]  # population and partners; a contact was given
    path.write_text(
        HEADER + "Kleinsthausen,village,Baden-Württemberg,2024-01-01,,5,48.7,9.6,digitalisation,"
        "digitalisation;democracy,Eva,no-address,Dorfladen|business\n",
        encoding="utf-8",
    )
    rows = read_file(path)
    (line,) = (await import_rows(platform, rows)).results
    assert list(line.reasons) == both
    assert list(check_locally(rows[0]).reasons) == both
    await produce(node.settings.broker, "member.admitted", "broken", admitted(broken))
    dead_letters = await read_topic(
        node.settings.broker, "member.admitted.dlq", lambda r: len(r) >= 2
    )
    (letter,) = [d["value"] for d in dead_letters if d["key"] == "broken"]
    assert letter["error"] == f"admission refused: {'; '.join(both)}"

    # A change is held to the same rules, every broken one named; labels work there too.
    valid = member_body("kleinsthausen", "2024-01-01", name="Kleinsthausen")
    assert (await platform.post("/api/members", json=valid)).status_code == 201
    change = {"population": 5, "partners": [{"name": "Dorfladen", "sector": "business"}],
              "contact": None}  # fmt: skip
    refused = await platform.patch("/api/members/kleinsthausen", json=change)
    assert messages_of(refused) == over_http
    relabelled = await platform.patch(
        "/api/members/kleinsthausen", json={"interests": ["Vernetzung"]}
    )
    assert relabelled.status_code == 200 and relabelled.json()["interests"] == ["networking"]


async def test_german_topic_labels_are_stored_as_slugs_on_every_way_in(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert node.settings.broker is not None
    async with httpx.AsyncClient(base_url=node.url) as anonymous:
        assert (await anonymous.get("/api/topics")).status_code == 401
    listed = (await platform.get("/api/topics")).json()
    assert listed["total"] == 12
    assert {"slug": "digitalisation", "label": "Digitalisierung"} in listed["items"]

    body = member_body(
        "goeppingen", "2024-01-01", interests=["Digitalisierung", " beteiligung "],
        strengths=["Demokratie", "democracy"],
    )  # fmt: skip
    created = await platform.post("/api/members", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["interests"] == ["digitalisation", "participation"]
    assert created.json()["strengths"] == ["democracy"]

    unknown = await platform.post(
        "/api/members", json=member_body("goch", "2024-01-01", interests=["Raumfahrt"])
    )
    (message,) = messages_of(unknown)
    assert "'Raumfahrt'" in message
    assert "digitalisation (Digitalisierung)" in message and "networking (Vernetzung)" in message

    event = member_body("goch", "2024-01-01", state="DE-NW", interests=["Nachhaltigkeit"])
    await produce(node.settings.broker, "member.admitted", "goch", admitted(event))

    async def goch() -> dict[str, Any] | None:
        response = await staff.get("/api/members/goch")
        return response.json() if response.status_code == 200 else None

    assert (await eventually(goch, "goch from member.admitted"))["interests"] == ["sustainability"]

    path = tmp_path / "members.csv"
    path.write_text(
        HEADER + "Musterstadt,city,Hessen,2019,Nachhaltigkeit,48000,50.1,8.6,Vernetzung,,"
        "Maria Muster,maria@example.org,"
        "Stiftung|civil_society;Rathaus|Verwaltung;Werke|business\n",
        encoding="utf-8",
    )
    report = await import_rows(platform, read_file(path, newcomer_year=2019), source="m.csv")
    assert report.count("added") == 1, report.summary_lines()
    stored = (await staff.get("/api/members/musterstadt")).json()
    assert stored["interests"] == ["networking", "sustainability"]
    assert [p["sector"] for p in stored["partners"]] == [
        "civil_society", "administration", "business",
    ]  # fmt: skip
