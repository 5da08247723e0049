"""``tandem import``: existing members from a CSV through the registry API, per-line summary."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from schemas.member import region_of
from services.importer import (
    ImportReport,
    import_rows,
    main,
    read_file,
)
from services.runtime import Node
from tests.conftest import PLATFORM, member_body
from tests.e2e.conftest import tandem_command

HEADER = (
    "name,kind,bundesland,joined,topics,population,lat,lon,source_url,"
    "contact_name,contact_email,partners,notes\n"
)
PARTNERS = "Bürgerstiftung|civil_society;Rathaus|administration;Stadtwerke|Wirtschaft"
CONTACT = "Maria Muster,maria.muster@example.org"
MUSTERSTADT = (
    f"Musterstadt,city,Hessen,2019,Digitalisierung;Jugend,48000,50.1,8.6,,{CONTACT},{PARTNERS},"
    "extra column\n"
)
SULZ = f"Sulz am Neckar,city,Baden-Württemberg,2016,Beteiligung,12763,,,,{CONTACT},{PARTNERS},\n"
GOEPPINGEN = (
    f"Göppingen,city,Baden-Württemberg,2024,Demokratie,58040,48.70354,9.65209,,{CONTACT},"
    f"{PARTNERS},\n"
)
INVALID = f"Nirgendwo,city,Atlantis,2020,,50000,,,,{CONTACT},{PARTNERS},\n"  # line 5


def write_csv(tmp_path: Path, *rows: str, name: str = "members.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    return path


def bundled_csv() -> Path:
    return Path(str(resources.files("services.demo").joinpath("members.csv")))


def counts(report: ImportReport) -> dict[str, int]:
    return {s: report.count(s) for s in ("added", "present", "rejected")}


async def member_ids(staff: httpx.AsyncClient) -> set[str]:
    listed = (await staff.get("/api/members", params={"limit": 1000})).json()
    return {m["id"] for m in listed["items"]}


async def run_command(*args: str) -> tuple[int, str, str]:
    """``tandem import`` in a subprocess, without blocking the node's event loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env["COLUMNS"] = "200"
    process = await asyncio.create_subprocess_exec(
        *tandem_command(), "import", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_import_command_reports_added_present_and_rejected_lines(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient, tmp_path: Path
) -> None:
    registered = await platform.post("/api/members", json=member_body("goeppingen", "2024-01-01"))
    assert registered.status_code == 201, registered.text
    path = write_csv(tmp_path, MUSTERSTADT, SULZ, GOEPPINGEN, INVALID)

    code, out, err = await run_command(str(path), "--url", node.url, "--token", PLATFORM)

    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert re.search(r"^  added:\s+2$", out, re.M), out
    assert re.search(r"^  already present:\s+1$", out, re.M), out
    assert re.search(r"^  rejected:\s+1$", out, re.M), out
    assert "line 5 (Nirgendwo): unknown Bundesland 'Atlantis'" in out
    assert "Filled in by the import: nothing" in out
    assert {"musterstadt", "sulz-am-neckar", "goeppingen"} == await member_ids(staff)
    sulz = (await staff.get("/api/members/sulz-am-neckar")).json()
    assert sulz["seeks_tandem"] is False  # no --newcomer-year: nobody is a newcomer
    assert sulz["lat"] is not None  # looked up by the registry's gazetteer
    assert "Looked up by the registry (GeoNames), per field: lat 1, lon 1" in out

    # The same file again, in-process: everything valid is present, the bad line still fails.
    again = await import_rows(platform, read_file(path), source=path.name)
    assert counts(again) == {"added": 0, "present": 3, "rejected": 1}
    assert again.exit_code == 1
    # Once the bad line is fixed (here: dropped), a re-run reports all present and succeeds.
    fixed = write_csv(tmp_path, MUSTERSTADT, SULZ, GOEPPINGEN, name="fixed.csv")
    rerun = await import_rows(platform, read_file(fixed), source=fixed.name)
    assert counts(rerun) == {"added": 0, "present": 3, "rejected": 0}
    assert rerun.exit_code == 0
    assert "already present: 3" in "\n".join(rerun.summary_lines(node.url))


async def test_bundled_network_is_imported_as_it_stands(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    """The bundled file names no contacts and no partners: the import invents none. Lines with
    a join year and a population (from the file or GeoNames) are registered only under the
    stated exception, as they stand; lines without a join year are refused."""
    reason = "Bestandsmitglied, Partner und Kontakt werden nachgetragen"
    rows = read_file(bundled_csv())
    report = await import_rows(
        platform, rows, source="members.csv", concurrency=6, exception_reason=reason
    )
    without_year = [r for r in rows if "joined" not in r.body]
    assert len(without_year) == 27
    rejected = {r.line: r for r in report.results if r.status == "rejected"}
    for row in without_year:
        assert "joined: Field required" in rejected[row.line].reasons
    added = [r for r in report.results if r.status == "added"]
    assert added and all(r.exception_stated for r in added)
    assert len(added) + len(rejected) == 113
    assert report.exit_code == 1
    listed = (await staff.get("/api/members", params={"limit": 1000})).json()["items"]
    assert {m["id"] for m in listed} == {r.member_id for r in added}
    by_id = {r.member_id: r for r in rows}
    for member in listed:
        assert member["partners"] == [] and member["contact"] is None
        assert member["exception_reason"] == reason
        assert member["seeks_tandem"] is False
        given = by_id[member["id"]].body
        if "population" in given:
            assert member["population"] == given["population"]
        else:  # blank in the file: from GeoNames, and the history says so
            history = (await staff.get(f"/api/members/{member['id']}/history")).json()
            assert "GeoNames" in (history["items"][0]["reason"] or "")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_main(path: Path, **options: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(path, out=out, err=Console(file=err, width=300), **options)
    return code, out.getvalue(), err.getvalue()


def test_unreachable_registry_is_a_clear_exit_2(tmp_path: Path) -> None:
    path = write_csv(tmp_path, MUSTERSTADT)
    code, out, err = run_main(path, url=f"http://127.0.0.1:{free_port()}", token="t")
    assert code == 2
    assert "cannot reach the registry" in err and "Traceback" not in err
    assert out == ""


def test_unusable_input_is_exit_2_naming_the_problem(tmp_path: Path) -> None:
    code, _, err = run_main(tmp_path / "absent.csv", token="t")
    assert code == 2 and "no such file" in err
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,kind,state\nMusterstadt,city,DE-HE\n", encoding="utf-8")
    code, _, err = run_main(wrong, token="t")
    assert code == 2
    assert "missing column(s) bundesland, joined, topics, population, lat, lon" in err
    code, _, err = run_main(write_csv(tmp_path, MUSTERSTADT), token=None)
    assert code == 2 and "TANDEM_TOKEN" in err


def test_dry_run_checks_locally_and_sends_nothing(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request would fail
    path = write_csv(tmp_path, MUSTERSTADT, SULZ, INVALID, MUSTERSTADT)
    code, out, _ = run_main(path, url=nowhere, dry=True, newcomer_year=2019)
    assert code == 1
    assert re.search(r"valid \(dry run, not sent\):\s+2", out), out
    assert "line 4 (Nirgendwo): unknown Bundesland" in out
    assert "line 5 (Musterstadt): member id 'musterstadt' is already used" in out
    rows = read_file(path, newcomer_year=2019)
    assert rows[0].body["seeks_tandem"] is True  # joined 2019
    assert rows[0].body["interests"] == ["digitalisation", "young_engagement"]
    # The bundled file states no partners and no contacts: every line is refused locally too.
    code, out, _ = run_main(bundled_csv(), url=nowhere, dry=True)
    assert code == 1 and re.search(r"rejected:\s+113", out), out
    assert "at least one partner from civil society is needed" in out


async def test_registry_messages_and_refused_token_per_line(tmp_path: Path) -> None:
    def registry(request: httpx.Request) -> httpx.Response:
        if b"musterstadt" in request.content:
            return httpx.Response(201, json={"id": "musterstadt", "looked_up": []})
        return httpx.Response(
            422,
            json={"detail": [{"loc": ["body", "population"], "msg": "members have 10,000 to "
                              "250,000 inhabitants (got 500)", "type": "admission_rule"}]},
        )  # fmt: skip

    rows = read_file(write_csv(tmp_path, MUSTERSTADT, SULZ))
    async with httpx.AsyncClient(
        base_url="http://registry", transport=httpx.MockTransport(registry)
    ) as client:
        report = await import_rows(client, rows)
    assert counts(report) == {"added": 1, "present": 0, "rejected": 1}
    assert report.results[1].reasons == (
        "population: members have 10,000 to 250,000 inhabitants (got 500)",
    )
    assert "line 3 (Sulz am Neckar): population: members have" in "\n".join(report.summary_lines())

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": "missing or unknown bearer token"})

    async with httpx.AsyncClient(
        base_url="http://registry", transport=httpx.MockTransport(refusing)
    ) as client:
        refused = await import_rows(client, rows)
    assert refused.exit_code == 2
    assert refused.aborted is not None and "refused the token" in refused.aborted


#: A valid line, a line breaking two rules (5,000 inhabitants, no contact), a line without
#: partners (and without coordinates: GeoNames has them).
VALID = f"Musterstadt,city,Hessen,2019,Digitalisierung,48000,50.1,8.6,,{CONTACT},{PARTNERS},\n"
TWO_RULES = f"Kleinsthausen,municipality,Hessen,2020,Beteiligung,5000,50.2,8.7,,,,{PARTNERS},\n"
NO_PARTNERS = f"Nürtingen,city,Baden-Württemberg,2018,Demokratie,40000,,,,{CONTACT},,\n"
#: What the registry stores for a field nobody gave: the contract's defaults, nothing made up.
ABSENT = {
    "lat": None, "lon": None, "contact": None, "partners": [], "exception_reason": None,
    "interests": [], "strengths": [], "mentor_capacity": 1,
}  # fmt: skip


async def assert_only_given(staff: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """The stored member holds the line's values, the gazetteer's (as its history says) and
    defaults meaning "not given"; nothing else."""
    stored = (await staff.get(f"/api/members/{body['id']}")).json()
    history = (await staff.get(f"/api/members/{body['id']}/history")).json()["items"]
    note = history[0]["reason"] or ""
    looked_up = set(note.split(": ", 1)[1].split(", ")) if "GeoNames" in note else set()
    assert stored["region"] == region_of(body["state"])  # derived from the given state
    for field in (*ABSENT, "name", "kind", "state", "population", "joined", "seeks_tandem"):
        if field in body:
            assert stored[field] == body[field], field
        elif field in looked_up:
            assert stored[field] is not None, field
        else:
            assert stored[field] == ABSENT[field], field
    assert set(history[0]["fields"]) <= set(body) - looked_up
    return stored


async def test_import_refuses_what_admission_needs_and_invents_nothing(
    node: Node, platform: httpx.AsyncClient, staff: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = write_csv(tmp_path, VALID, TWO_RULES, NO_PARTNERS)
    first = await import_rows(platform, read_file(path), source=path.name)
    assert first.exit_code == 1
    out = "\n".join(first.summary_lines(node.url)) + "\n"
    assert re.search(r"^  added:\s+1$", out, re.M) and re.search(r"^  rejected:\s+2$", out, re.M)
    assert (
        "line 3 (Kleinsthausen): population: members have 10,000 to 250,000 inhabitants (got "
        "5,000); give exception_reason for a documented exception; contact: a contact person "
        "is needed\n"
    ) in out
    assert (
        "line 4 (Nürtingen): partners: at least 3 partners are needed (got 0); partners: at "
        "least one partner from civil society is needed; partners: at least one partner from "
        "administration is needed\n"
    ) in out
    assert await member_ids(staff) == {"musterstadt"}

    reason = "Gründungsmitglied; Partner werden bis März 2027 benannt"
    code, out, err = await run_command(
        str(path), "--url", node.url, "--token", PLATFORM, "--exception-reason", reason
    )
    assert code == 0, (out, err)
    assert re.search(r"^  added:\s+2$", out, re.M) and re.search(r"present:\s+1$", out, re.M)
    assert (
        "exception_reason from --exception-reason (admission rules broken): 2 (lines 3, 4)" in out
    )
    assert "Looked up by the registry (GeoNames), per field: lat 1, lon 1" in out
    rows = {r.member_id: r.body for r in read_file(path)}
    assert await member_ids(staff) == set(rows)
    valid = await assert_only_given(staff, rows["musterstadt"])
    assert valid["exception_reason"] is None  # it broke no rule: no exception stated for it
    for member_id in ("kleinsthausen", "nuertingen"):
        stored = await assert_only_given(staff, {**rows[member_id], "exception_reason": reason})
        assert stored["exception_reason"] == reason  # verbatim
    nuertingen = await assert_only_given(staff, {**rows["nuertingen"], "exception_reason": reason})
    assert nuertingen["partners"] == [] and nuertingen["lat"] is not None
    assert (await staff.get("/api/members/kleinsthausen")).json()["contact"] is None
