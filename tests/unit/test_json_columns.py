"""JSON columns store exactly the text ``json.dumps`` writes, whatever path writes it."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.infra.db import dumps_json

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


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_other_value_is_written_by_json_dumps(value: Any) -> None:
    assert dumps_json(value) == json.dumps(value)
