"""The hot-path JSON (queue_engine.codec) and the message data check against their references.

codec.dumps/loads must behave exactly like json.dumps(compact, strict)/json.loads, and
encode_data's fast path exactly like the full walk (_check_json) followed by json.dumps:
same text for good data, same InvalidMessage text for bad data.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_engine import codec
from queue_engine.codec import _check_json, encode_data
from queue_engine.errors import InvalidMessage

_REFERENCE = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}

# Text including lone surrogates, which JSON text cannot carry as UTF-8.
_text = st.text(st.characters(blacklist_categories=()), max_size=8)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | _text
_keys = _text | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
# Values JSON can hold, plus the near misses a caller might pass: tuples, non-string keys,
# NaN and infinities, surrogates, sets, bytes.
_values = st.recursive(
    _scalars | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(_keys, inner, max_size=4)
    | st.frozensets(st.integers(), max_size=2),
    max_leaves=20,
)


def _reference_encode(value: Any) -> str:
    """What encode_data did before it had a fast path."""
    _check_json(value, 0)
    return json.dumps(value, **_REFERENCE)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_encode_data_matches_the_full_check(value: Any) -> None:
    try:
        expected = _reference_encode(value)
    except InvalidMessage as exc:
        with pytest.raises(InvalidMessage) as got:
            encode_data(value)
        assert str(got.value) == str(exc)
    else:
        assert encode_data(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _text,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                    max_leaves=20))
def test_dumps_matches_json_dumps(value: Any) -> None:
    try:
        expected = json.dumps(value, **_REFERENCE)
    except ValueError:
        with pytest.raises(ValueError):
            codec.dumps(value)
        return
    assert codec.dumps(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_loads_reads_what_dumps_wrote(value: Any) -> None:
    text = codec.dumps(value)
    assert codec.loads(text.encode()) == json.loads(text)
    assert codec.loads(memoryview(text.encode())) == json.loads(text)
    assert codec.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", [" [1] ", "[1]\n", '{"a": 1} ', "1e400", "NaN"])
def test_loads_accepts_what_json_accepts(text: str) -> None:
    got, want = codec.loads(text.encode()), json.loads(text)
    assert got == want or (isinstance(got, float) and math.isnan(got) and math.isnan(want))


@pytest.mark.parametrize("text", ["", "nul", "[1] x", "{", '{"a":1}{"b":2}'])
def test_loads_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        codec.loads(text.encode())


def test_loads_refuses_bytes_that_are_not_utf8() -> None:
    with pytest.raises(ValueError):
        codec.loads(b'"\xff"')


def test_dumps_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="set"):
        codec.dumps({"a": {1, 2}})
    with pytest.raises(ValueError):
        codec.dumps([math.inf])


def test_encode_data_bounds_depth_and_cycles() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(200):
        inner.append([])
        inner = inner[0]
    assert encode_data(deep) == "[" * 201 + "]" * 201
    inner.append([])
    with pytest.raises(InvalidMessage, match="nested deeper than 200"):
        encode_data(deep)
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(InvalidMessage, match="nested deeper than 200"):
        encode_data(cycle)
