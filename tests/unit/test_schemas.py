"""The event contracts: envelope round trips, validation, and no drift of the JSON files."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid

import pytest
from pydantic import ValidationError

from schemas import generate, topics
from schemas.events import (
    EVENTS,
    CityJoined,
    TandemProposed,
    Topics,
    UnknownVersion,
    make_event,
    parse_event,
)
from schemas.member import MemberRegistration


def joined(**changes: object) -> CityJoined:
    data: dict[str, object] = {
        "id": "goeppingen", "name": "Göppingen", "kind": "city", "state": "DE-BW",
        "population": 58040, "joined": dt.date(2024, 1, 1), "interests": ["democracy"],
    }  # fmt: skip
    data.update(changes)
    return CityJoined.model_validate(data)


def test_envelope_round_trip_keeps_data_and_derives_region() -> None:
    event = make_event(Topics.CITY_JOINED, "registry", joined())
    parsed = parse_event(Topics.CITY_JOINED, event.model_dump_json())
    assert parsed.id == event.id
    assert parsed.data == event.data
    assert parsed.data.region == "south"
    assert json.loads(event.model_dump_json())["version"] == 1


def test_checked_in_json_schemas_match_the_models() -> None:
    assert generate.main(["--check"]) == 0, "run: python -m schemas.generate"


def test_every_contract_topic_has_a_schema() -> None:
    expected = {
        "city.joined", "city.updated", "city.left", "member.admitted", "tandem.proposed",
        "tandem.decided", "advice.requested", "advice.matched",
    }  # fmt: skip
    assert set(EVENTS) == expected
    assert set(generate.documents()) >= {f"json/{t}.schema.json" for t in expected}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{not json", ValidationError),
        (b'{"id": "x"}', ValidationError),
        (None, UnknownVersion),
    ],
)
def test_invalid_records_raise(raw: bytes | None, error: type[Exception]) -> None:
    if raw is None:
        event = json.loads(make_event(Topics.CITY_JOINED, "registry", joined()).model_dump_json())
        event["version"] = 2
        raw = json.dumps(event).encode()
    with pytest.raises(error):
        parse_event(Topics.CITY_JOINED, raw)


def test_an_envelope_must_state_its_version() -> None:
    """The envelope model defaults the version for producers; a consumed record must say it."""
    event = json.loads(make_event(Topics.CITY_JOINED, "registry", joined()).model_dump_json())
    del event["version"]
    with pytest.raises(ValidationError, match="version"):
        parse_event(Topics.CITY_JOINED, json.dumps(event))


def test_the_version_is_checked_before_the_data() -> None:
    event = json.loads(make_event(Topics.CITY_JOINED, "registry", joined()).model_dump_json())
    event["version"] = 2
    event["data"]["population"] = "many"
    with pytest.raises(UnknownVersion, match="version 2 is unknown"):
        parse_event(Topics.CITY_JOINED, json.dumps(event))


def test_topic_mismatch_is_refused() -> None:
    event = make_event(Topics.CITY_JOINED, "registry", joined())
    with pytest.raises(ValueError, match="does not match"):
        parse_event(Topics.CITY_UPDATED, event.model_dump_json())


def test_unknown_topics_are_refused_with_the_vocabulary() -> None:
    with pytest.raises(ValidationError, match="unknown topic"):
        joined(interests=["knitting"])


def test_operators_can_extend_the_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_EXTRA_TOPICS", "knitting")
    assert joined(interests=["knitting"]).interests == ["knitting"]


def test_the_vocabulary_follows_the_variable_as_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert joined(interests=["democracy"]).interests == ["democracy"]
    monkeypatch.setenv("TANDEM_EXTRA_TOPICS", "knitting, local_history")
    assert joined(interests=["knitting", "local_history"]).interests == [
        "knitting", "local_history"
    ]  # fmt: skip
    monkeypatch.setenv("TANDEM_EXTRA_TOPICS", "local_history")
    with pytest.raises(ValidationError, match="unknown topic"):
        joined(interests=["knitting"])
    monkeypatch.setenv("TANDEM_EXTRA_TOPICS", "Not A Slug")
    for _ in range(2):  # refused every time, never remembered as valid
        with pytest.raises(ValidationError, match="invalid topic slugs"):
            joined(interests=["democracy"])
    monkeypatch.delenv("TANDEM_EXTRA_TOPICS")
    with pytest.raises(ValidationError, match="unknown topic"):
        joined(interests=["local_history"])


@pytest.mark.skipif(os.name != "posix", reason="the environment's own mapping is read on POSIX")
def test_the_vocabulary_reads_the_environment_directly_and_sees_every_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Read from the process environment's mapping (an unset variable through os.environ.get
    # cost 1.25 µs, twice per validated member), and still following os.environ's changes.
    assert topics._ENVIRON is not None
    monkeypatch.setenv("TANDEM_EXTRA_TOPICS", "knitting")
    assert "knitting" in topics.topic_vocabulary()
    os.environ["TANDEM_EXTRA_TOPICS"] = "local_history"
    assert "knitting" not in topics.topic_vocabulary()
    monkeypatch.delenv("TANDEM_EXTRA_TOPICS")
    assert topics.topic_vocabulary() == frozenset(topics.TOPICS)


def test_labels_and_repeats_become_slugs_once() -> None:
    assert joined(interests=["Digitalisierung", "democracy", "digitalisation"]).interests == [
        "digitalisation", "democracy"
    ]  # fmt: skip
    assert joined(interests=["democracy", "democracy"]).interests == ["democracy"]


def test_events_carry_no_contact() -> None:
    assert "contact" not in CityJoined.model_fields
    with pytest.raises(ValidationError):
        CityJoined.model_validate(
            {**joined().model_dump(), "contact": {"name": "A", "email": "a@b.de"}}
        )


def test_registration_requires_lat_and_lon_together() -> None:
    with pytest.raises(ValidationError, match="together"):
        MemberRegistration.model_validate(
            {**joined().model_dump(exclude={"partners", "status", "revision"}), "lat": 48.7}
        )


def test_make_event_refuses_wrong_data_type() -> None:
    proposal = TandemProposed(
        proposal_id=uuid.uuid4(), newcomer_id="a-b", mentor_id="c-d", score=0.5,
        breakdown={}, reasons=[],
    )  # fmt: skip
    with pytest.raises(TypeError):
        make_event(Topics.CITY_JOINED, "matcher", proposal)
