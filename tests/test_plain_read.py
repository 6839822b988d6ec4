"""The file backend's read of a plain message's body against its reference, the full JSON parse.

``store._plain_fields`` reads a plain message (no alias, immediate, enabled) without parsing
its fixed fields. It must either give back exactly what ``QueueMessage.from_record`` of the
parsed body gives, or None (the caller then parses). These tests build bodies the way the
writers do, for every kind of message, and compare.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_engine import QueueFactory, QueueMessage, codec
from queue_engine.backends.file import store
from queue_engine.backends.file.store import _message_body, _plain_fields

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# Usernames with what JSON escapes (quotes, backslashes, control characters) and non-ASCII.
_usernames = st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_aliases = st.none() | st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=6
)
_WHEN = datetime(2026, 12, 4, 10, 30, 0, 123000, tzinfo=timezone.utc)


def _reference(body: bytes, attempts: int) -> dict[str, Any]:
    return QueueMessage.from_record(codec.loads(body), attempts=attempts, queue="q").to_dict()


def _fast(body: bytes, attempts: int) -> dict[str, Any] | None:
    fields = _plain_fields(body.decode("utf-8"))
    return None if fields is None else QueueMessage.plain(*fields, attempts=attempts, queue="q").to_dict()


@settings(max_examples=400, deadline=None)
@given(
    data=_json,
    retries=st.integers(0, 1_000_000),
    username=_usernames,
    alias=_aliases,
    deferred=st.booleans(),
    disabled=st.booleans(),
)
def test_the_fast_read_gives_what_the_full_parse_gives_or_nothing(
    data: Any, retries: int, username: str | None, alias: str | None, deferred: bool, disabled: bool
) -> None:
    msg = QueueMessage(
        data=data, alias=alias, retries=retries, username=username, disabled=disabled,
        deferred_until=_WHEN + timedelta(days=1) if deferred else None,
    )
    msg.uuid, msg.inserted_at = "0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d", _WHEN
    body = _message_body(msg, codec.encode_data(data))
    fast = _fast(body, 2)
    unescaped = username is None or json.dumps(username, ensure_ascii=False)[1:-1] == username
    if alias is None and not deferred and not disabled and unescaped:
        assert fast is not None  # every plain message without escapes in its username is read fast
    if fast is not None:
        assert fast == _reference(body, 2)
        assert alias is None and not deferred and not disabled


def test_a_body_the_producer_hot_path_wrote_is_read_fast(tmp_path: Path) -> None:
    """End to end: _add_ready writes, get_message and reserve read through _plain_fields."""
    manager = QueueFactory.get_queue_manager(queue_type="file", cache_root=tmp_path, fsync="never")
    seen: list[bool] = []
    real = store._plain_fields

    def spy(text: str) -> Any:
        result = real(text)
        seen.append(result is not None)
        return result

    sent = [QueueMessage(data={"n": i, "s": "é\"\\"}, retries=i, username=f"user{i % 2}") for i in range(4)]
    for m in sent:
        manager.add_message("q", m)
    store._plain_fields = spy  # type: ignore[assignment]  # the pure build's module global
    try:
        got = [manager.get_message("q"), manager.get_message("q"), manager.reserve("q", lease=5)]
    finally:
        store._plain_fields = real  # type: ignore[assignment]
    for m, g in zip(sent[:3], got, strict=True):
        assert g is not None
        assert (g.uuid, g.data, g.retries, g.username, g.inserted_at) == (
            m.uuid, m.data, m.retries, m.username, m.inserted_at
        )
    if store.__file__.endswith(".py"):  # compiled, a module global cannot be replaced from outside
        assert seen == [True, True, True]


@pytest.mark.parametrize(
    "uuid",
    [
        "x" * 34 + '"',  # 36 characters of JSON text, 35 of value
        "x" * 30 + "\u0007",  # the same with a control character
        "é" * 36,  # 36 characters, no escape: read fast
        "0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d",
    ],
)
def test_a_kept_uuid_that_needs_escapes_is_left_to_the_full_parse(uuid: str) -> None:
    """A migration keeps the uuids it is given, which need not look like ours."""
    msg = QueueMessage(data={"a": 1}, username="u")
    msg.uuid, msg.inserted_at = uuid, _WHEN
    body = _message_body(msg, codec.encode_data(msg.data))
    fast = _fast(body, 0)
    assert fast is None or fast == _reference(body, 0)
    assert (fast is None) == (not uuid.isascii() or json.dumps(uuid)[1:-1] != uuid)  # ours: read fast


def _plain_body() -> str:
    msg = QueueMessage(data={"a": [1, 2]}, username="u")
    msg.uuid, msg.inserted_at = "0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d", _WHEN
    return _message_body(msg, codec.encode_data(msg.data)).decode()


@pytest.mark.parametrize(
    "change",
    [
        # keys hidden in the uuid's 36 characters: valid JSON with another uuid value
        lambda t: t[:9] + 'AB","q":"' + "z" * 27 + t[45:],
        lambda t: t[:9] + 'AB","uuid":"' + "z" * 24 + t[45:],
        lambda t: t[:9] + "\x01" + t[10:],  # a raw control character: not JSON at all
        # insertion times float() reads and JSON does not, or reads otherwise
        *(
            (lambda t, number=number: t.replace('"inserted_at":' + t.split('"inserted_at":')[1].split(",")[0],
                                                '"inserted_at":' + number))
            for number in ("nan", "inf", "1_764_806_400", "+1764806400", ".5", "-Infinity", "1e3", "null")
        ),
    ],
)
def test_an_unexpected_body_with_the_plain_layout_reads_as_the_full_parse_or_not_at_all(change: Any) -> None:
    text = change(_plain_body())
    fast = _plain_fields(text)
    try:
        reference = _reference(text.encode(), 0)
    except ValueError:
        assert fast is None  # the full parse refuses it: so must the fast read
        return
    assert fast is None or QueueMessage.plain(*fast, queue="q").to_dict() == reference


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b'{"uuid":"0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d"}',
        # the layout, but a null insertion time, a truncated data, trailing bytes, an unknown middle
        b'{"uuid":"0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d","alias":null,"retries":0,"execution_mode":"immediate",'
        b'"deferred_until":null,"disabled":false,"username":null,"inserted_at":null,"data":1}',
        b'{"uuid":"0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d","alias":null,"retries":0,"execution_mode":"immediate",'
        b'"deferred_until":null,"disabled":false,"username":null,"inserted_at":1.5,"data":[1,}',
        b'{"uuid":"0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d","alias":null,"retries":0,"execution_mode":"immediate",'
        b'"deferred_until":null,"disabled":false,"username":null,"inserted_at":1.5,"data":1} }',
        b'{"uuid":"0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d","alias":null,"retries":0,"execution_mode":"immediate",'
        b'"deferred_until":null,"disabled":false,"username":null,"extra":1,"inserted_at":1.5,"data":1}',
        b'{"uuid":"0195f0e8-1c2d-8a3b-9c4d-5e6f7a8b9c0d","retries":0,"alias":null,"execution_mode":"immediate",'
        b'"deferred_until":null,"disabled":false,"username":null,"inserted_at":1.5,"data":1}',
    ],
)
def test_anything_but_the_plain_layout_is_left_to_the_full_parse(body: bytes) -> None:
    assert _plain_fields(body.decode()) is None
