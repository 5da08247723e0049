"""The HTTP edge's JSON limits and its idea of a database that is away, without I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.infra.db import is_connection_loss
from services.infra.http import MAX_INTEGER_DIGITS, MAX_JSON_DEPTH, RefusedInput, strict_json


def _nested(containers: int) -> Any:
    value: Any = "leaf"
    for level in range(containers):
        value = [value] if level % 2 else {"k": value}
    return value


def _refusal(body: bytes) -> dict[str, Any]:
    with pytest.raises(RefusedInput) as refused:
        strict_json(body)
    return refused.value.error


def test_nesting_up_to_the_limit_parses_and_one_more_level_is_refused() -> None:
    assert strict_json(json.dumps(_nested(MAX_JSON_DEPTH)).encode()) == _nested(MAX_JSON_DEPTH)
    error = _refusal(json.dumps(_nested(MAX_JSON_DEPTH + 1)).encode())
    assert error["type"] == "too_deep" and error["loc"] == ["body"]
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error["msg"]


def test_nesting_too_deep_for_pythons_parser_is_refused_not_raised() -> None:
    """5,000 levels make Python's parser raise RecursionError (FastAPI's bare 400)."""
    assert _refusal(b"[" * 5000 + b"]" * 5000)["type"] == "too_deep"
    assert _refusal(b'{"a":' * 5000 + b"1" + b"}" * 5000)["type"] == "too_deep"


def test_integers_longer_than_the_limit_are_refused() -> None:
    longest = int("9" * MAX_INTEGER_DIGITS)
    assert strict_json(f'{{"n": {longest}, "m": -{longest}}}'.encode()) == {
        "n": longest, "m": -longest,
    }  # fmt: skip
    for digits in (f"1{'0' * MAX_INTEGER_DIGITS}", f"-{'9' * (MAX_INTEGER_DIGITS + 1)}",
                   "9" * 5000):  # fmt: skip
        error = _refusal(f'{{"population": {digits}}}'.encode())
        assert error["type"] == "number_too_large", digits
        assert f"longer than {MAX_INTEGER_DIGITS} digits" in error["msg"]


def test_nul_is_refused_where_it_is() -> None:
    assert _refusal(b'{"contact": {"name": "A\\u0000B"}}')["loc"] == ["body", "contact", "name"]
    assert _refusal(b'{"topics": ["x", "\\u0000"]}')["loc"] == ["body", "topics", 1]
    assert _refusal(b'{"na\\u0000me": 1}')["loc"] == ["body", "na\\u0000me"]
    assert _refusal(b'"\\u0000"') == {
        "loc": ["body"], "msg": "must not contain the NUL character (U+0000)",
        "type": "string_nul",
    }  # fmt: skip


def test_what_strict_json_cannot_hold_stays_a_decode_error() -> None:
    for body in (b'{"a": "\\ud800"}', b'{"a": NaN}', b'{"a": 1e400}', b"\xff\xfe\xff",
                 b'{"a": "\xc3("}', b"{"):  # fmt: skip
        with pytest.raises(json.JSONDecodeError):
            strict_json(body)


def test_the_checks_also_hold_where_the_raw_bytes_do_not_show_them() -> None:
    """A plain-looking body skips the walk over its tree only when the walk can find nothing:
    an overflowing number without an exponent, U+0000 in UTF-16, and many shallow containers
    are each judged as before."""
    with pytest.raises(json.JSONDecodeError):
        strict_json(b'{"a": 1' + b"0" * 400 + b".0}")
    with pytest.raises(json.JSONDecodeError):
        strict_json(b'{"a": -Infinity}')
    nul_in_utf16 = '{"name": "A\\u0000B"}'.encode("utf-16")
    assert _refusal(nul_in_utf16)["loc"] == ["body", "name"]
    siblings = {"lists": [[1.5, [2]] for _ in range(40)]}
    assert strict_json(json.dumps(siblings).encode()) == siblings


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**19), 10**19)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(blacklist_categories=["Cs"],
                                            blacklist_characters="\x00")), children, max_size=4),
    max_leaves=30,
)  # fmt: skip


def _depth(value: Any) -> int:
    """How many containers deep ``value`` is."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@given(JSON_VALUES)
def test_json_inside_the_limits_parses_as_pythons_parser_does(value: Any) -> None:
    assume(_depth(value) <= MAX_JSON_DEPTH)
    body = json.dumps(value).encode()
    assert strict_json(body) == json.loads(body)


def test_a_database_that_is_away_is_told_from_a_wrong_statement() -> None:
    lost = DBAPIError("SELECT 1", {}, Exception("terminated"), connection_invalidated=True)
    assert is_connection_loss(lost)
    assert is_connection_loss(OperationalError("SELECT 1", {}, Exception("database is locked")))
    assert is_connection_loss(PoolTimeout("QueuePool limit reached"))
    assert is_connection_loss(ConnectionRefusedError(111, "refused"))
    assert not is_connection_loss(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_connection_loss(DBAPIError("INSERT", {}, Exception("bad value")))
    assert not is_connection_loss(ValueError("not a database error"))
    assert not is_connection_loss(FileNotFoundError(2, "no such file"))
    assert is_connection_loss(OSError("Multiple exceptions: [Errno 111], [Errno 99]"))


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "away"),
    [("57P01", True), ("57P03", True), ("08006", True), ("53300", True), ("40001", True),
     ("40P01", True), ("23505", False), ("22021", False), ("42P01", False)],
)  # fmt: skip
def test_postgresql_errors_are_told_by_their_sqlstate(sqlstate: str, away: bool) -> None:
    """Shutdown, starting up, connection failures, too many connections, serialization failure
    and deadlock are the database away for a moment; a duplicate key, U+0000 (22021) or a
    missing table are not."""
    assert is_connection_loss(DBAPIError("SELECT 1", {}, _PgError(sqlstate))) is away
