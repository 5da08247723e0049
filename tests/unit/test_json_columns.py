"""JSON columns store what ``json.dumps`` writes: a list of strings as the same text, anything
else (objects with string keys, as every JSON column here holds) as JSON that reads back as the
same value, whatever path writes it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.infra.db import dumps_json

# Floats with infinities (json.dumps writes them as Infinity), never NaN (unequal to itself).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text()))
def test_a_list_of_strings_is_written_as_json_dumps_writes_it(value: list[str]) -> None:
    assert dumps_json(value) == json.dumps(value)
    assert json.loads(dumps_json(value)) == value


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_any_other_value_reads_back_as_json_dumps_writes_it(value: Any) -> None:
    assert json.loads(dumps_json(value)) == json.loads(json.dumps(value))


def test_what_json_cannot_hold_is_refused_as_json_dumps_refuses_it() -> None:
    for value in (object(), {"a": object()}, [1, {"b": object()}]):
        try:
            json.dumps(value)
        except TypeError:
            pass
        else:  # pragma: no cover - the cases above are all refused
            raise AssertionError(f"json.dumps took {value!r}")
        with pytest.raises(TypeError):
            dumps_json(value)
