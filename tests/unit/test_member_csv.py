"""The shared member-file reader and the import's bodies: what a line states, nothing more."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.member import MemberRegistration
from schemas.topics import TOPIC_LABELS_DE, topic_slug
from services.importer import ImportLine, body_of, check_locally, local_problems, read_file
from services.member_csv import MemberFileError, read_lines
from services.registry.admission import AdmissionRefused, check
from tests.conftest import member_body

HEADER = "name,kind,bundesland,joined,topics,population,lat,lon"
FULL = (
    HEADER + ",contact_name,contact_email,partners,mentor_capacity,seeks_tandem,wishes,"
    "interests,exception_reason\n"
)


def test_a_bare_line_states_only_its_cells() -> None:
    (line,) = read_lines(HEADER + "\nAmmerbuch,municipality,Baden-Württemberg,,,,,\n")
    assert line.values == {
        "id": "ammerbuch", "name": "Ammerbuch", "kind": "municipality", "state": "DE-BW",
    }  # fmt: skip
    assert line.problems == () and line.join_year is None and line.topics == ()
    body = body_of(line)
    assert body == {**line.values, "seeks_tandem": False}  # the import sets it explicitly


def test_every_column_is_read_as_given() -> None:
    text = FULL + (
        "Musterstadt,city,DE-HE,2019-05-01,Digitalisierung;Senioren;Kultur;Raumfahrt,48000,50.1,"
        '8.6,Maria Muster,maria@example.org,"Stiftung A|civil_society; Rathaus|Verwaltung ;'
        'Werke|Wirtschaft",2,ja,goeppingen;goch,Vernetzung,Sonderfall laut Beirat\n'
    )
    (line,) = read_lines(text)
    assert line.problems == ()
    assert line.values == {
        "id": "musterstadt", "name": "Musterstadt", "kind": "city", "state": "DE-HE",
        "joined": "2019-05-01", "population": 48000, "lat": 50.1, "lon": 8.6,
        "mentor_capacity": 2, "seeks_tandem": True,
        "contact": {"name": "Maria Muster", "email": "maria@example.org"},
        "partners": [
            {"name": "Stiftung A", "sector": "civil_society"},
            {"name": "Rathaus", "sector": "administration"},
            {"name": "Werke", "sector": "business"},
        ],
        "wishes": ["goeppingen", "goch"], "interests": ["Vernetzung"],
        "exception_reason": "Sonderfall laut Beirat",
    }  # fmt: skip
    assert line.topics == ("digitalisation", "generational_change")
    assert line.unmapped_tags == ("Raumfahrt",)
    body = body_of(line)
    assert body["interests"] == ["Vernetzung", "digitalisation", "generational_change"]
    assert "strengths" not in body


def test_a_year_means_january_first_and_topics_are_strengths_of_existing_members() -> None:
    (line,) = read_lines(HEADER + "\nGoch,city,Nordrhein-Westfalen,2016,Beteiligung,34000,,\n")
    assert line.values["joined"] == "2016-01-01" and line.join_year == 2016
    assert body_of(line)["strengths"] == ["participation"]
    assert body_of(line, newcomer_year=2016)["interests"] == ["participation"]


def test_every_unreadable_cell_is_named() -> None:
    text = FULL + "Irgendwo,city,Atlantis,zwanzig,,viele,x,8.6,,,ohne Sektor,eins,vielleicht,,,\n"
    (line,) = read_lines(text)
    fields = [field for field, _ in line.problems]
    assert fields == [
        "state", "joined", "population", "lat", "mentor_capacity", "seeks_tandem", "partners",
    ]  # fmt: skip
    assert "unknown Bundesland 'Atlantis'" in line.problems[0][1]
    assert "partner 'ohne Sektor' needs the form Name|sector" in line.problems[-1][1]


def test_missing_columns_are_named() -> None:
    with pytest.raises(MemberFileError, match="missing column"):
        read_lines("name,kind\nA,city\n")


def test_unreadable_line_also_names_what_else_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "\nIrgendwo,city,Atlantis,2020,,5000,50.1,8.6\n", encoding="utf-8")
    (row,) = read_file(path)
    result = check_locally(row)
    assert result.status == "rejected"
    assert result.reasons[0].startswith("unknown Bundesland 'Atlantis'")
    assert "state: Field required" not in result.reasons  # the cell's problem says it already


def test_check_names_the_gazetteer_and_every_rule_at_once() -> None:
    body = member_body(
        "nirgendwohausen", "2024-01-01", name="Nirgendwohausen", population=None, lat=None,
        lon=None, contact=None, partners=[],
    )  # fmt: skip
    member = MemberRegistration.model_validate({k: v for k, v in body.items() if v is not None})
    with pytest.raises(AdmissionRefused) as refused:
        check(member)
    problems = refused.value.problems
    assert [(p.field, p.kind) for p in problems] == [
        ("population", "gazetteer"), ("partners", "admission_rule"),
        ("partners", "admission_rule"), ("partners", "admission_rule"),
        ("contact", "admission_rule"),
    ]  # fmt: skip
    assert "not in the GeoNames gazetteer" in problems[0].message


def test_exception_reason_lifts_rules_in_the_dry_run_but_not_a_missing_population() -> None:
    (line,) = read_lines(HEADER + "\nKleinsthausen,city,Hessen,2020,,5000,50.1,8.6\n")
    row = ImportLine(line, body_of(line))
    assert check_locally(row).status == "rejected"
    lifted = check_locally(row, "Sonderfall")
    assert lifted.status == "valid" and lifted.exception_stated
    (unknown,) = read_lines(HEADER + "\nNirgendwohausen,city,Hessen,2020,,,,\n")
    refused = check_locally(ImportLine(unknown, body_of(unknown)), "Sonderfall")
    assert refused.status == "rejected"
    assert local_problems(body_of(unknown))[0][2] == "gazetteer"


@pytest.mark.parametrize(("slug", "label"), sorted(TOPIC_LABELS_DE.items()))
def test_german_labels_name_their_slug(slug: str, label: str) -> None:
    assert topic_slug(label) == slug
    assert topic_slug(f" {label.upper()} ") == slug
    assert topic_slug(slug) == slug
    member = MemberRegistration.model_validate(
        member_body("goeppingen", "2024-01-01", interests=[label, slug])
    )
    assert member.interests == [slug]


def test_unknown_topic_lists_slugs_and_labels() -> None:
    assert topic_slug("Raumfahrt") is None
    with pytest.raises(ValueError, match=r"digitalisation \(Digitalisierung\)"):
        MemberRegistration.model_validate(
            member_body("goeppingen", "2024-01-01", strengths=["Raumfahrt"])
        )


ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_curl_example_is_admitted() -> None:
    import json
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Registering a member", 1)[1]
    body = json.loads(re.search(r"-d '(\{.*?\})'", section, re.S).group(1))  # type: ignore[union-attr]
    admission = check(MemberRegistration.model_validate(body))
    assert admission.looked_up == ("lat", "lon")
    assert admission.member.interests == ["democracy", "young_engagement"]


def test_the_example_import_file_is_valid_as_it_stands() -> None:
    rows = read_file(ROOT / "examples" / "members-import.csv")
    results = [check_locally(row) for row in rows]
    assert [r.status for r in results] == ["valid", "valid"]
    assert results[1].looked_up == ("population", "lat", "lon")  # Goch: blank in the file
    assert all("contact" in r.body and len(r.body["partners"]) == 3 for r in rows)
