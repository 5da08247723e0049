"""Decoding consumed records within bounds, and dead letters that carry no personal data."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.infra.deadletter import WHOLE_ORIGINAL, dead_letter, redact
from services.infra.records import (
    MAX_DEPTH,
    MAX_RECORD_BYTES,
    Consumed,
    PoisonRecord,
    decode_record,
    nesting_depth,
    payload_digest,
)
from tests.conftest import member_body


def consumed(topic: str, value: bytes, key: bytes | None = None) -> Consumed:
    """A consumed record as a dead letter reads it (partition 0, offset 7)."""
    return Consumed(topic, 0, 7, key, value)


def envelope(topic: str, data: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or str(uuid.uuid4()), "type": topic, "version": 1,
        "time": "2026-12-01T12:00:00Z", "source": "test", "data": data,
    }  # fmt: skip


def left(city: str, reason: str = "") -> bytes:
    return json.dumps(envelope("city.left", {"id": city, "reason": reason})).encode()


def reason_of(topic: str, value: bytes, key: bytes | None) -> str:
    with pytest.raises(PoisonRecord) as caught:
        decode_record(topic, value, key)
    return str(caught.value)


def test_a_valid_record_decodes() -> None:
    decoded = decode_record("city.left", left("goeppingen", "Ende"), b"goeppingen")
    assert decoded.data.id == "goeppingen" and decoded.data.reason == "Ende"


def test_deep_nesting_is_refused_before_any_parser_recurses() -> None:
    deep = b'{"id": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert "nests too deep: 5001 levels" in reason_of("city.joined", deep, b"x")


def test_huge_numbers_invalid_utf8_and_oversize_records_are_poison_with_a_reason() -> None:
    huge = json.dumps(envelope("city.left", {"id": "goch"})).replace(
        '"version": 1', '"version": 1' + "0" * 5000
    )
    assert reason_of("city.left", huge.encode(), b"goch")
    assert "not UTF-8 (byte 0)" in reason_of("city.left", b"\xff\xfe{}", b"goch")
    assert "U+0000" in reason_of("city.left", left("goch", "a\x00b"), b"goch")
    assert decode_record("city.left", left("goch", "a\\u0000b"), b"goch").data.reason == (
        "a\\u0000b"  # a backslash, then "u0000": text, not NUL
    )
    big = left("goch", "x" * MAX_RECORD_BYTES)
    assert f"too large: {len(big)} bytes" in reason_of("city.left", big, b"goch")
    assert "city.left version 2" in reason_of(
        "city.left", left("goch").replace(b'"version": 1', b'"version": 2'), b"goch"
    )


def test_a_key_that_is_not_the_city_id_is_poison() -> None:
    assert "message key 'ammerbuch' is not the city id 'goeppingen'" in reason_of(
        "city.left", left("goeppingen"), b"ammerbuch"
    )
    assert "message no key is not the city id" in reason_of("city.left", left("goeppingen"), None)
    advice = envelope(
        "advice.requested",
        {"request_id": str(uuid.uuid4()), "city_id": "goch", "topics": ["democracy"]},
    )
    assert "not the city id 'goch'" in reason_of(
        "advice.requested", json.dumps(advice).encode(), b"kleve"
    )


def test_validation_reasons_name_fields_but_never_echo_values() -> None:
    body = member_body("goeppingen", "2024-01-01", contact={"name": "Maria", "email": "maria@@x"})
    value = json.dumps(envelope("member.admitted", body)).encode()
    reason = reason_of("member.admitted", value, b"goeppingen")
    assert "data.contact.email" in reason
    assert "maria@@x" not in reason and "Maria" not in reason


def test_the_digest_tells_other_data_from_the_same_data_sent_again() -> None:
    event_id = str(uuid.uuid4())
    first = decode_record(
        "city.left", json.dumps(envelope("city.left", {"id": "goch"}, event_id)).encode(), b"goch"
    )
    again = json.dumps(envelope("city.left", {"id": "goch"}, event_id), indent=2).encode()
    other = json.dumps(envelope("city.left", {"id": "goch", "reason": "x"}, event_id)).encode()
    assert payload_digest(decode_record("city.left", again, b"goch")) == payload_digest(first)
    assert payload_digest(decode_record("city.left", other, b"goch")) != payload_digest(first)


def test_the_digest_stays_what_earlier_versions_stored() -> None:
    """Digests are stored with the dedup rows: a redelivery after an upgrade must match."""
    joined = envelope("city.joined", {
        "id": "goeppingen", "name": "Göppingen", "kind": "city", "state": "DE-BW",
        "population": 58040, "joined": "2024-01-01", "interests": ["Digitalisierung", "democracy"],
        "strengths": ["networking"], "lat": 48.7, "lon": 9.65, "partners": [{"sector": "business"}],
        "wishes": ["ulm"], "estimated": ["population"],
    }, "6b1f3c2e-8a51-4f0e-9d7a-2a6f1b7c9e01")  # fmt: skip
    left = envelope("city.left", {"id": "goch", "reason": "Ende"}, str(uuid.uuid4()))
    digests = (
        payload_digest(decode_record("city.joined", json.dumps(joined).encode(), b"goeppingen")),
        payload_digest(decode_record("city.left", json.dumps(left).encode(), b"goch")),
    )
    assert digests == (
        "0ec95fbf1283cbe966d62f7d65144374e1bf72f65006f23449bacc974e7f79bb",
        "9542ee1ac78addf953fc06fd6a4a017cce477494b01a5ed8f8b04d543ed8e7da",
    )


json_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_nesting_depth_matches_the_parsed_depth(value: Any) -> None:
    assert nesting_depth(json.dumps(value).encode()) == depth_of(value)
    assert nesting_depth(json.dumps(value, ensure_ascii=False).encode()) == depth_of(value)


@pytest.mark.parametrize("extra", [0, 1])
def test_nesting_one_beyond_the_bound_is_refused_and_the_bound_itself_is_not(extra: int) -> None:
    levels = MAX_DEPTH - 1 + extra  # the envelope's own object is one level
    reason = reason_of("city.left", b'{"data": ' + b"[" * levels + b"]" * levels + b"}", b"goch")
    assert ("nests too deep" in reason) == bool(extra), reason


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=MAX_DEPTH + 3))
def test_records_within_and_beyond_the_depth_bound_are_told_apart(value: Any, wrap: int) -> None:
    """Few brackets skip the scan: whatever the count, only a record nesting deeper than the
    bound is refused for it."""
    raw = b"[" * wrap + json.dumps(value).encode() + b"]" * wrap
    depth = nesting_depth(raw)
    with pytest.raises(PoisonRecord) as caught:
        decode_record("city.left", raw, b"goch")
    assert ("nests too deep" in str(caught.value)) == (depth > MAX_DEPTH)


def test_max_depth_leaves_room_for_every_valid_envelope() -> None:
    body = member_body("goeppingen", "2024-01-01")
    value = json.dumps(envelope("member.admitted", body)).encode()
    assert nesting_depth(value) < MAX_DEPTH
    assert decode_record("member.admitted", value, b"goeppingen").data.id == "goeppingen"


SECRETS = ("Maria Muster", "maria.muster@example.org", "Bürgerstiftung", "Rathaus", "Stadtwerke")


def test_a_refused_registration_travels_redacted_with_the_field_names() -> None:
    body = member_body("goeppingen", "2024-01-01", exception_reason="Frau Muster bat darum")
    value = json.dumps(envelope("member.admitted", body), ensure_ascii=False).encode()
    letter = dead_letter(consumed("member.admitted", value, b"goeppingen"), "refused", "registry")
    text = letter.model_dump_json()
    assert not [s for s in (*SECRETS, "Frau Muster") if s in text]
    assert set(letter.redacted) == {
        "data.contact", "data.exception_reason",
        "data.partners.0.name", "data.partners.1.name", "data.partners.2.name",
    }  # fmt: skip
    original = json.loads(letter.original)
    assert original["data"]["id"] == "goeppingen"
    assert [p["sector"] for p in original["data"]["partners"]] == [
        "civil_society", "administration", "business",
    ]  # fmt: skip
    assert letter.original_size == len(value) and letter.original_sha256


@pytest.mark.parametrize(
    "value",
    [
        b'{"data": {"contact": {"name": "Maria Muster"' + b"[" * 5000,
        b'{"contact": "maria.muster@example.org", broken',
        b"\xff" + b"Maria Muster",
        b'["Maria Muster"]',
    ],
)
def test_a_personal_record_that_cannot_be_read_is_withheld_whole(value: bytes) -> None:
    text, redacted = redact(value)
    assert (text, redacted) == ("", [WHOLE_ORIGINAL])
    letter = dead_letter(consumed("member.admitted", value, b"k"), "bad", "registry")
    assert letter.redacted == [WHOLE_ORIGINAL]  # enqueue_dead_letter keeps it in the database


def test_other_topics_keep_their_original_verbatim() -> None:
    value = left("goch", "Förderung endet")
    letter = dead_letter(consumed("city.left", value, b"goch"), "bad", "matcher")
    assert letter.original == value.decode() and letter.redacted == []
    binary = dead_letter(consumed("city.left", b"\xff", b"\x00" * 300), "bad", "matcher")
    assert binary.original_encoding == "base64"
    assert binary.key is not None and len(binary.key) == 200 and "\x00" not in binary.key


def test_a_record_of_many_fields_names_some_and_counts_the_rest() -> None:
    data = {f"field{i}": i for i in range(5000)}
    value = json.dumps(envelope("member.admitted", data)).encode()
    letter = dead_letter(consumed("member.admitted", value, b"x"), "bad", "registry")
    assert len(letter.redacted) == 51 and letter.redacted[-1] == "… and 4950 more"
    assert len(json.loads(letter.original)["data"]) == 5000


def test_only_errors_about_the_data_count_as_refused_by_the_database() -> None:
    from sqlalchemy.exc import DataError, DBAPIError, OperationalError, StatementError

    from services.infra.deadletter import refused_by_database

    assert refused_by_database(DataError("INSERT", {}, Exception("out of range")))
    assert refused_by_database(StatementError("bind", "INSERT", {}, OverflowError("too big")))
    driver = Exception("invalid input for query argument $15")
    driver.__cause__ = OverflowError("value out of int32 range")
    assert refused_by_database(DBAPIError("INSERT", {}, driver))
    assert not refused_by_database(OperationalError("INSERT", {}, Exception("locked")))
    assert not refused_by_database(DBAPIError("INSERT", {}, ConnectionError("gone")))
    assert not refused_by_database(TimeoutError())
