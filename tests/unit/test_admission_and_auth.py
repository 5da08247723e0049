"""Admission rules and bearer tokens."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from schemas.member import MemberRegistration
from services.infra.auth import TokenBook, load_or_create_tokens
from services.registry.admission import admission_violations
from tests.conftest import member_body


def registration(**changes: object) -> MemberRegistration:
    return MemberRegistration.model_validate(member_body("goeppingen", "2024-01-01", **changes))


def test_a_complete_member_is_admitted() -> None:
    assert admission_violations(registration()) == []


def test_each_rule_names_its_field() -> None:
    member = registration(
        population=5_000, partners=[{"name": "Verein", "sector": "business"}], contact=None
    )
    fields = [v.field for v in admission_violations(member)]
    assert fields.count("partners") == 3  # too few, no civil society, no administration
    assert "population" in fields and "contact" in fields
    assert any("5,000" in v.message for v in admission_violations(member))


def test_every_rule_is_named_at_once_even_without_population() -> None:
    member = registration(population=None, partners=[], contact=None)
    assert [str(v) for v in admission_violations(member)] == [
        "population: population is required",
        "partners: at least 3 partners are needed (got 0)",
        "partners: at least one partner from civil society is needed",
        "partners: at least one partner from administration is needed",
        "contact: a contact person is needed",
    ]
    lifted = member.model_copy(update={"exception_reason": "Gründungsmitglied"})
    assert [v.field for v in admission_violations(lifted)] == ["population"]


def test_exception_reason_lifts_the_rules() -> None:
    member = registration(population=331_906, exception_reason="Großstadt, Sonderregel")
    assert admission_violations(member) == []


def test_seeks_tandem_defaults_to_joined_within_a_year() -> None:
    import datetime as dt

    member = registration()
    assert member.resolved_seeks_tandem(dt.date(2024, 6, 1)) is True
    assert member.resolved_seeks_tandem(dt.date(2025, 6, 1)) is False
    assert registration(seeks_tandem=False).resolved_seeks_tandem(dt.date(2024, 1, 2)) is False


def test_tokens_parse_roles_names_and_cities() -> None:
    book = TokenBook.parse("platform:aaaaaaaa,staff:bbbbbbbb:Erika,coordinator:cccccccc:goeppingen")
    assert book.lookup("aaaaaaaa").role == "platform"  # type: ignore[union-attr]
    assert book.lookup("bbbbbbbb").name == "Erika"  # type: ignore[union-attr]
    assert book.lookup("cccccccc").city_id == "goeppingen"  # type: ignore[union-attr]
    assert book.lookup("wrong") is None
    assert book.lookup("") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("admin:aaaaaaaa", "unknown role"),
        ("staff:short", "at least 8"),
        ("coordinator:aaaaaaaa", "coordinator:<token>:<city_id>"),
        ("", "no tokens"),
    ],
)
def test_bad_token_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBook.parse(spec)


def test_generated_tokens_are_kept_private_and_reused(tmp_path: Path) -> None:
    book, text = load_or_create_tokens(None, tmp_path)
    assert text and book.first("staff") and book.first("platform")
    mode = stat.S_IMODE((tmp_path / "tokens").stat().st_mode)
    assert mode == 0o600
    again, text_again = load_or_create_tokens(None, tmp_path)
    assert text_again == text
    assert again.first("staff") == book.first("staff")
