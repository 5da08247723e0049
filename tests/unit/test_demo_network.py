"""The bundled member network: loading, topic mapping, ids, estimates, cohorts."""

from __future__ import annotations

import csv
import io
from importlib import resources

import pytest

from schemas.member import MemberRegistration, is_member_id
from schemas.topics import TOPICS
from services.demo.network import (
    ESTIMATED_POPULATION,
    TOPIC_MAP,
    UNKNOWN_JOIN_YEAR,
    DemoMember,
    NetworkDataError,
    cohort_years,
    load_network,
    map_topics,
    parse_network,
    slug,
    split_cohort,
)

HEADER = "name,kind,bundesland,joined,topics,population,lat,lon,source_url\n"


def _rows() -> list[dict[str, str]]:
    text = resources.files("services.demo").joinpath("members.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return _rows()


@pytest.fixture(scope="module")
def network() -> list[DemoMember]:
    return load_network()


@pytest.fixture(scope="module")
def by_name(network: list[DemoMember]) -> dict[str, DemoMember]:
    return {m.registration.name: m for m in network}


def test_all_rows_load_and_validate(network: list[DemoMember], rows: list[dict[str, str]]) -> None:
    assert len(rows) == 113
    assert len(network) == 113
    for member in network:
        again = MemberRegistration.model_validate(member.registration.model_dump())
        assert again == member.registration
        assert member.source_url.startswith("http")
        reg = member.registration
        # Admission rules hold (or an exception is stated).
        assert reg.contact is not None
        sectors = [p.sector for p in reg.partners]
        assert len(sectors) >= 3 and "civil_society" in sectors and "administration" in sectors
        assert reg.contact.email.endswith(".example")
        assert all("(geschätzt)" in p.name for p in reg.partners)


def test_ids_unique_and_valid(network: list[DemoMember]) -> None:
    ids = [m.id for m in network]
    assert len(set(ids)) == len(ids)
    assert all(is_member_id(i) for i in ids)


def test_deterministic(network: list[DemoMember]) -> None:
    assert load_network() == network
    assert load_network() == load_network()


def test_filling_ignores_extra_topics(
    network: list[DemoMember], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_EXTRA_TOPICS", "local_history,sports")
    assert load_network() == network


def test_cohorts(network: list[DemoMember]) -> None:
    years = cohort_years(network)
    assert years[0] is None
    assert years[1:] == sorted(y for y in years if y is not None)
    assert 2024 in years
    newcomers = [m for m in network if m.join_year is not None and m.join_year >= 2024]
    assert newcomers
    for member in network:
        is_new = member in newcomers
        assert member.registration.seeks_tandem is is_new
        assert member.seeks_tandem is is_new
    existing, cohort = split_cohort(network, 2024)
    assert cohort == newcomers
    assert len(existing) + len(cohort) == len(network)
    existing_2020, cohort_2020 = split_cohort(network, 2020)
    assert all(m.join_year == 2020 for m in cohort_2020)
    assert all(m.join_year is None or m.join_year < 2020 for m in existing_2020)


def test_members_without_year_are_existing(network: list[DemoMember]) -> None:
    unknown = [m for m in network if m.join_year is None]
    assert len(unknown) == 27
    for member in unknown:
        assert member.registration.seeks_tandem is False
        assert member.registration.joined.year == UNKNOWN_JOIN_YEAR
        assert "joined" in member.estimated
    existing, _ = split_cohort(network, 2024)
    assert all(m in existing for m in unknown)


def test_newcomer_year_is_a_parameter() -> None:
    earlier = load_network(newcomer_year=2022)
    seekers = {m.join_year for m in earlier if m.registration.seeks_tandem}
    assert seekers == {2022, 2024}


def test_joined_is_january_first_of_the_year(network: list[DemoMember]) -> None:
    for member in network:
        joined = member.registration.joined
        assert (joined.month, joined.day) == (1, 1)
        if member.join_year is not None:
            assert joined.year == member.join_year
            assert "joined" not in member.estimated


def test_every_csv_tag_is_mapped(rows: list[dict[str, str]], network: list[DemoMember]) -> None:
    tags = {t.strip() for r in rows for t in r["topics"].split(";") if t.strip()}
    assert tags, "the file has tags"
    assert tags <= set(TOPIC_MAP)
    assert all(not m.unmapped_tags for m in network)


def test_topic_map_targets_the_vocabulary() -> None:
    for tag, topics in TOPIC_MAP.items():
        assert set(topics) <= set(TOPICS), tag


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("Digitalisierung", ("digitalisation",)),
        ("Nachhaltigkeit", ("sustainability",)),
        ("Jugend", ("young_engagement",)),
        ("Anerkennungskultur", ("recognition",)),
        ("Wirtschaftskooperation", ("networking",)),
        ("Integration", ("participation",)),
        ("Generationen", ("generational_change",)),
        ("Engagementstrategie", ("engagement_strategy",)),
        ("Demokratie", ("democracy",)),
        ("Beteiligung", ("participation",)),
        ("Familie", ()),
        ("Kultur", ()),
    ],
)
def test_specific_mappings(tag: str, expected: tuple[str, ...]) -> None:
    assert TOPIC_MAP[tag] == expected


def test_map_topics_reports_unknown_tags() -> None:
    topics, unmapped = map_topics(
        ["Jugend", " digitalisierung ", "Kultur", "Raumfahrt", "", "Beteiligung", "Integration"]
    )
    assert topics == ["young_engagement", "digitalisation", "participation"]
    assert unmapped == ["Raumfahrt"]
    assert map_topics([]) == ([], [])


def test_unknown_tag_in_a_row_does_not_crash() -> None:
    text = (
        HEADER + "Musterstadt,city,Hessen,2020,Raumfahrt;Jugend,50000,50.1,8.6,https://x.example\n"
    )
    (member,) = parse_network(text)
    assert member.unmapped_tags == ("Raumfahrt",)
    assert member.registration.strengths[0] == "young_engagement"


def test_unknown_bundesland_names_the_row() -> None:
    text = HEADER + "Musterstadt,city,Atlantis,2020,,50000,,,https://x.example\n"
    with pytest.raises(NetworkDataError, match=r"line 2 \(Musterstadt\).*Atlantis"):
        parse_network(text, source="test.csv")


def test_invalid_kind_names_the_row() -> None:
    text = HEADER + "Musterstadt,village,Hessen,2020,,50000,,,https://x.example\n"
    with pytest.raises(NetworkDataError, match=r"Musterstadt.*kind"):
        parse_network(text)


def test_duplicate_ids_are_refused() -> None:
    line = "Musterstadt,city,Hessen,2020,,50000,,,https://x.example\n"
    with pytest.raises(NetworkDataError, match="already used"):
        parse_network(HEADER + line + line.replace("Musterstadt", "MUSTERSTADT"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Göppingen", "goeppingen"),
        ("Rheinfelden (Baden)", "rheinfelden-baden"),
        ("Neustadt an der Weinstraße", "neustadt-an-der-weinstrasse"),
        ("Hohe Börde", "hohe-boerde"),
        ("Bad Säckingen", "bad-saeckingen"),
        ("Überlingen", "ueberlingen"),
        ("Forst (Lausitz)", "forst-lausitz"),
        ("  --Héricourt--  ", "hericourt"),
        ("A" * 80, "a" * 64),
        ("Ab " + "c" * 61 + " d", "ab-" + "c" * 61),
    ],
)
def test_slug(name: str, expected: str) -> None:
    assert slug(name) == expected


def test_slug_refuses_empty_names() -> None:
    with pytest.raises(ValueError):
        slug("(?)")


def test_topics_strengths_or_interests(network: list[DemoMember]) -> None:
    for member in network:
        reg = member.registration
        mapped, _ = map_topics(member.tags)
        own, other = (
            (reg.interests, reg.strengths) if reg.seeks_tandem else (reg.strengths, reg.interests)
        )
        own_name, other_name = (
            ("interests", "strengths") if reg.seeks_tandem else ("strengths", "interests")
        )
        if mapped:
            assert own == mapped
            assert own_name not in member.estimated
        else:
            assert 2 <= len(own) <= 3
            assert own_name in member.estimated
        if reg.seeks_tandem:
            assert len(other) <= 1
        else:
            assert 1 <= len(other) <= 2
        assert (other_name in member.estimated) == bool(other)
        assert not set(own) & set(other)


def test_estimated_fields(network: list[DemoMember], rows: list[dict[str, str]]) -> None:
    row_by_name = {r["name"]: r for r in rows}
    for member in network:
        row = row_by_name[member.registration.name]
        reg = member.registration
        assert {"mentor_capacity", "partners", "contact"} <= set(member.estimated)
        if row["population"].strip() in ("", "0"):
            assert "population" in member.estimated
            assert reg.population == ESTIMATED_POPULATION
        else:
            assert "population" not in member.estimated
            assert reg.population == int(row["population"])
        if row["lat"].strip():
            assert (reg.lat, reg.lon) == (float(row["lat"]), float(row["lon"]))
        else:
            assert reg.lat is None and reg.lon is None
        assert reg.mentor_capacity == (2 if reg.population > 100_000 else 1)


def test_specific_members(by_name: dict[str, DemoMember]) -> None:
    goeppingen = by_name["Göppingen"]
    assert goeppingen.id == "goeppingen"
    assert goeppingen.registration.state == "DE-BW"
    assert goeppingen.registration.seeks_tandem is True
    assert goeppingen.registration.interests == ["democracy", "generational_change"]
    assert goeppingen.registration.contact is not None
    assert goeppingen.registration.contact.email == "koordination@goeppingen.example"
    ammerbuch = by_name["Ammerbuch"]
    assert "population" in ammerbuch.estimated
    assert ammerbuch.registration.lat is None
    assert "young_engagement" in ammerbuch.registration.strengths


def test_population_outside_range_has_exception_reason(network: list[DemoMember]) -> None:
    outside = {
        m.registration.name for m in network if not 10_000 <= m.registration.population <= 250_000
    }
    assert outside == {"Aachen", "Bielefeld", "Bad Sulza"}
    for member in network:
        reason = member.registration.exception_reason
        if member.registration.name in outside:
            assert reason is not None and "10.000–250.000" in reason
        else:
            assert reason is None


def test_docs_data_md_lists_every_tag_with_its_topics() -> None:
    from pathlib import Path

    from schemas.topics import topic_label
    from services.demo.network import TOPIC_MAP

    doc = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text(encoding="utf-8")
    for tag, slugs in TOPIC_MAP.items():
        target = ", ".join(f"`{s}` ({topic_label(s)})" for s in slugs) or "— (no topic"
        assert f"| {tag} | {target}" in doc, tag


def test_a_wishes_column_and_the_estimated_fields_reach_the_registration() -> None:
    text = (
        HEADER.rstrip("\n") + ",wishes\n"
        + "Parchim,city,Mecklenburg-Vorpommern,2024,Demokratie,,53.4,11.8,https://x.example,"
        "stendal; lemgo\n"
    )  # fmt: skip
    (member,) = parse_network(text)
    assert member.registration.wishes == ["stendal", "lemgo"]
    # What the demo filled in travels with the member, so staff see it marked.
    assert member.registration.estimated == list(member.estimated)
    assert "population" in member.registration.estimated
