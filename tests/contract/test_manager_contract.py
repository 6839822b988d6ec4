"""The QueueManager contract. Every backend runs every test here through the ``manager`` fixture."""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_engine import (
    DuplicateAlias,
    ExecutionMode,
    InvalidMessage,
    InvalidQueueName,
    LeaseLost,
    MessageInFlight,
    MessageNotFound,
    QueueManager,
    QueueMessage,
    QueueNotFound,
)
from queue_engine.message import to_epoch

Q = "jobs"
LONG_LEASE = 600.0  # long enough never to expire during a test

Drain = Callable[[QueueManager, str], list[QueueMessage]]  # the conftest ``drain`` fixture
WaitFor = Callable[..., Any]  # the conftest ``wait_for`` fixture


def msg(data: Any = None, **fields: Any) -> QueueMessage:
    return QueueMessage(data=data, **fields)


def datas(messages: list[QueueMessage]) -> list[Any]:
    return [m.data for m in messages]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- queues -------------------------------------------------------------------------------


def test_create_exists_list_destroy(manager: QueueManager) -> None:
    assert manager.list_queues() == []
    assert manager.queue_exists("b") is False
    assert manager.create_queue("b") is True
    assert manager.create_queue("a") is True
    assert manager.create_queue("b") is False
    assert manager.queue_exists("b") is True
    assert manager.list_queues() == ["a", "b"]
    assert manager.destroy_queue("b") is True
    assert manager.destroy_queue("b") is False
    assert manager.queue_exists("b") is False
    assert manager.list_queues() == ["a"]


def test_destroy_drops_messages_and_aliases(manager: QueueManager, drain: Drain) -> None:
    manager.add_message(Q, msg(1, alias="k"))
    assert manager.destroy_queue(Q) is True
    assert manager.get_message(Q) is None
    assert manager.queue_exists(Q) is False
    manager.add_message(Q, msg(2, alias="k"))  # the alias went with the queue
    assert datas(drain(manager, Q)) == [2]


def test_attributes_may_be_named_queue_or_self(manager: QueueManager) -> None:
    assert manager.create_queue(Q, queue="anpr", self=1) is True
    assert manager.queue_status(Q).custom_attributes == {"queue": "anpr", "self": 1}


def test_create_queue_with_attributes(manager: QueueManager) -> None:
    assert manager.create_queue(Q, owner="anpr", limits={"rate": 5}) is True
    assert manager.queue_status(Q).custom_attributes == {"owner": "anpr", "limits": {"rate": 5}}
    assert manager.create_queue(Q, owner="other") is False
    assert manager.queue_status(Q).custom_attributes == {"owner": "anpr", "limits": {"rate": 5}}


@pytest.mark.parametrize("name", ["a", "0", "A.b-c_9", "a" * 64, "queue.v2"])
def test_valid_queue_names(manager: QueueManager, name: str) -> None:
    assert manager.create_queue(name) is True
    assert manager.list_queues() == [name]


INVALID_NAMES = ["../x", "a/b", "", "\x00", "a\x00b", "a b", "a" * 65, ".x", "-x", "_x", "..", ".", "a\\b"]

EVERY_METHOD: dict[str, Callable[[QueueManager, Any], object]] = {
    "create_queue": lambda m, n: m.create_queue(n),
    "destroy_queue": lambda m, n: m.destroy_queue(n),
    "queue_exists": lambda m, n: m.queue_exists(n),
    "add_message": lambda m, n: m.add_message(n, msg(1)),
    "add_messages": lambda m, n: m.add_messages(n, [msg(1)]),
    "get_message": lambda m, n: m.get_message(n),
    "reserve": lambda m, n: m.reserve(n),
    "ack": lambda m, n: m.ack(n, str(uuidlib.uuid4())),
    "release": lambda m, n: m.release(n, str(uuidlib.uuid4())),
    "queue_status": lambda m, n: m.queue_status(n),
    "set_custom_attributes": lambda m, n: m.set_custom_attributes(n, {"a": 1}),
    "update_last_message_processed": lambda m, n: m.update_last_message_processed(n, msg(1, uuid="u")),
    "find_messages": lambda m, n: m.find_messages(n),
    "update_message": lambda m, n: m.update_message(n, msg(1, uuid=str(uuidlib.uuid4()))),
    "remove_message": lambda m, n: m.remove_message(n, str(uuidlib.uuid4())),
}


@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_invalid_queue_name_refused_by_every_method(manager: QueueManager, method: str, name: str) -> None:
    with pytest.raises(InvalidQueueName, match="invalid queue name"):
        EVERY_METHOD[method](manager, name)
    assert manager.list_queues() == []


@pytest.mark.parametrize("name", [None, 5, b"jobs"], ids=repr)
def test_non_string_queue_name_refused(manager: QueueManager, name: Any) -> None:
    with pytest.raises(InvalidQueueName):
        manager.create_queue(name)


MISSING_QUEUE_RAISES: dict[str, Callable[[QueueManager], object]] = {
    "queue_status": lambda m: m.queue_status("missing"),
    "ack": lambda m: m.ack("missing", str(uuidlib.uuid4())),
    "release": lambda m: m.release("missing", str(uuidlib.uuid4())),
    "set_custom_attributes": lambda m: m.set_custom_attributes("missing", {"a": 1}),
    "update_last_message_processed": lambda m: m.update_last_message_processed("missing", msg(1, uuid="u")),
    "find_messages": lambda m: m.find_messages("missing"),
    "update_message": lambda m: m.update_message("missing", msg(1, uuid=str(uuidlib.uuid4()))),
    "remove_message": lambda m: m.remove_message("missing", str(uuidlib.uuid4())),
}


@pytest.mark.parametrize("method", sorted(MISSING_QUEUE_RAISES))
def test_missing_queue_raises_queue_not_found(manager: QueueManager, method: str) -> None:
    """Only add (creates), get_message/reserve (None), exists and destroy (False) accept a missing queue."""
    with pytest.raises(QueueNotFound, match="'missing'"):
        MISSING_QUEUE_RAISES[method](manager)
    assert manager.list_queues() == []


# -- producing and consuming ----------------------------------------------------------------


def test_add_returns_uuid_and_sets_fields(manager: QueueManager) -> None:
    before = time.time()
    m = msg({"n": 1})
    uid = manager.add_message(Q, m)
    after = time.time()
    assert isinstance(uid, str)
    assert str(uuidlib.UUID(uid)) == uid  # canonical lower-case uuid text
    assert m.uuid == uid
    assert m.inserted_at is not None and m.inserted_at.tzinfo is not None
    assert before - 1 <= m.inserted_at.timestamp() <= after + 1  # slack for a backend's time resolution


def test_uuids_are_unique(manager: QueueManager) -> None:
    uids = [manager.add_message(Q, msg(i)) for i in range(200)]
    assert len(set(uids)) == 200


def test_add_to_missing_queue_creates_it(manager: QueueManager) -> None:
    manager.add_message("fresh", msg(1))
    assert manager.queue_exists("fresh") is True
    assert manager.list_queues() == ["fresh"]


def test_get_round_trips_every_field(manager: QueueManager) -> None:
    sent = msg({"k": [1, 2]}, alias="a-1", retries=7, username="mario")
    uid = manager.add_message(Q, sent)
    got = manager.get_message(Q)
    assert got is not None
    assert (got.uuid, got.alias, got.data, got.retries, got.username) == (uid, "a-1", {"k": [1, 2]}, 7, "mario")
    assert got.execution_mode is ExecutionMode.IMMEDIATE
    assert got.deferred_until is None
    assert got.disabled is False
    assert got.queue == Q
    assert got.inserted_at is not None and sent.inserted_at is not None
    assert got.inserted_at.timestamp() == pytest.approx(sent.inserted_at.timestamp(), abs=1e-3)


def test_get_removes_the_message(manager: QueueManager) -> None:
    manager.add_message(Q, msg(1))
    assert manager.get_message(Q) is not None
    assert manager.get_message(Q) is None
    assert manager.queue_status(Q).messages_to_process == 0


def test_fifo_1000(manager: QueueManager, drain: Drain) -> None:
    for i in range(1000):
        manager.add_message(Q, msg(i))
    assert datas(drain(manager, Q)) == list(range(1000))


def test_fifo_with_reserve(manager: QueueManager) -> None:
    for i in range(50):
        manager.add_message(Q, msg(i))
    got = []
    while (m := manager.reserve(Q, lease=LONG_LEASE)) is not None:
        got.append(m.data)
        manager.ack(Q, m)
    assert got == list(range(50))


def test_get_on_empty_and_missing_queue(manager: QueueManager) -> None:
    manager.create_queue(Q)
    assert manager.get_message(Q) is None
    assert manager.reserve(Q) is None
    assert manager.get_message("missing") is None
    assert manager.reserve("missing") is None
    assert manager.queue_exists("missing") is False  # reading does not create


def test_queues_are_independent(manager: QueueManager, drain: Drain) -> None:
    manager.add_message("a", msg("a1"))
    manager.add_message("b", msg("b1"))
    manager.add_message("a", msg("a2"))
    assert datas(drain(manager, "b")) == ["b1"]
    assert datas(drain(manager, "a")) == ["a1", "a2"]


def test_add_messages_batch(manager: QueueManager, drain: Drain) -> None:
    batch = [msg(i) for i in range(5)]
    uids = manager.add_messages(Q, batch)
    assert uids == [m.uuid for m in batch]
    assert len(set(uids)) == 5
    assert manager.add_messages(Q, []) == []
    got = drain(manager, Q)
    assert [m.uuid for m in got] == uids


def test_add_messages_is_all_or_none(manager: QueueManager, drain: Drain) -> None:
    first = manager.add_message(Q, msg(0, alias="taken"))
    with pytest.raises(DuplicateAlias) as info:
        manager.add_messages(Q, [msg(1), msg(2, alias="taken"), msg(3)])
    assert info.value.uuid == first
    with pytest.raises(DuplicateAlias):
        manager.add_messages(Q, [msg(4, alias="twice"), msg(5, alias="twice")])
    with pytest.raises(InvalidMessage):
        manager.add_messages(Q, [msg(6), msg({1, 2})])
    assert manager.queue_status(Q).messages_to_process == 1
    assert datas(drain(manager, Q)) == [0]
    manager.add_message(Q, msg(7, alias="twice"))  # the failed batch did not hold the alias


# -- data ---------------------------------------------------------------------------------

ROUND_TRIP = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": -42,
    "big int": 2**200,
    "big negative": -(2**70) + 1,
    "float": 0.1,
    "huge float": 1.7976931348623157e308,
    "tiny float": 5e-324,
    "empty str": "",
    "unicode planes": "ascii é€ 中文 \u200b 𝄞 😀 \U0010fffd \U000e0041",
    "control chars": "\x00\x01\n\t\x7f\u2028\u2029",
    "empty list": [],
    "empty dict": {},
    "nested": {"a": [1, {"b": [None, True, 2.5, "x"]}], "é": {"ü": [[[]]]}, "": 0},
    "key order": {"z": 1, "a": 2, "m": 3},
    "long text": "x" * 200_000,
    "deep": [[[[[[[[[[["deep"]]]]]]]]]]],
}


@pytest.mark.parametrize("data", list(ROUND_TRIP.values()), ids=list(ROUND_TRIP))
def test_data_round_trips_exactly(manager: QueueManager, data: Any) -> None:
    manager.add_message(Q, msg(data))
    manager.add_message(Q, msg(data))
    got = manager.get_message(Q)
    assert got is not None
    assert got.data == data and type(got.data) is type(data)
    if isinstance(data, dict):
        assert list(got.data) == list(data)
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None and reserved.data == data


def test_returned_data_is_a_copy(manager: QueueManager) -> None:
    data = {"list": [1]}
    manager.add_message(Q, msg(data))
    data["list"].append(2)  # the caller's object changes after the add
    found = manager.find_messages(Q)[0]
    found.data["list"].append(3)
    got = manager.get_message(Q)
    assert got is not None and got.data == {"list": [1]}


NOT_JSON = {
    "set": {1, 2},
    "bytes": b"raw",
    "nan": float("nan"),
    "inf": float("inf"),
    "object": object(),
    "tuple": (1, 2),
    "int key": {1: "a"},
    "nested set": {"a": [{"b": {3}}]},
    "lone surrogate": "\ud800",
    "datetime": datetime(2024, 1, 1),
}


@pytest.mark.parametrize("data", list(NOT_JSON.values()), ids=list(NOT_JSON))
def test_non_json_data_refused_and_nothing_written(manager: QueueManager, data: Any) -> None:
    manager.create_queue(Q)
    with pytest.raises(InvalidMessage):
        manager.add_message(Q, msg(data))
    status = manager.queue_status(Q)
    assert (status.messages_to_process, status.disabled, status.last_message_inserted) == (0, 0, None)
    assert manager.get_message(Q) is None
    assert manager.get_last_error() is not None and "message data" in manager.get_last_error()  # type: ignore[operator]


def test_non_message_refused(manager: QueueManager) -> None:
    with pytest.raises(InvalidMessage):
        manager.add_message(Q, {"data": 1})  # type: ignore[arg-type]


def test_get_last_error_holds_the_last_failure(manager: QueueManager) -> None:
    assert manager.get_last_error() is None
    with pytest.raises(InvalidQueueName) as first:
        manager.create_queue("../etc")
    assert manager.get_last_error() == str(first.value)
    assert "'../etc'" in str(first.value)
    with pytest.raises(QueueNotFound) as second:
        manager.queue_status("missing")
    assert manager.get_last_error() == str(second.value)
    assert "missing" in str(second.value)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda m: m.add_message("a/b", msg(1)), InvalidQueueName),
        (lambda m: m.add_message(Q, msg(1, alias="x")), DuplicateAlias),
        (lambda m: m.add_message(Q, msg(1), on_duplicate="merge"), InvalidMessage),
        (lambda m: m.get_message("a/b"), InvalidQueueName),
        (lambda m: m.reserve(Q, lease=-1), InvalidMessage),
        (lambda m: m.ack(Q, str(uuidlib.uuid4())), LeaseLost),
        (lambda m: m.ack(Q, "x", processed=True), InvalidMessage),
    ],
    ids=["add-name", "add-alias", "add-on-duplicate", "get-name", "reserve-lease", "ack-unknown", "ack-processed"],
)
def test_per_message_methods_record_their_failure(
    manager: QueueManager, call: Callable[[QueueManager], Any], error: type[Exception]
) -> None:
    """add_message, get_message, reserve and ack record their errors inline (not through the
    wrapper the other methods share): the same text, the same exception, raised unchanged."""
    manager.add_message(Q, msg(0, alias="x"))
    with pytest.raises(error) as raised:
        call(manager)
    assert manager.get_last_error() == str(raised.value)
    assert datas(manager.find_messages(Q)) == [0]  # nothing written


# -- disabled and deferred ------------------------------------------------------------------


def test_disabled_messages_are_skipped_and_keep_their_place(manager: QueueManager, drain: Drain) -> None:
    off = msg("off", disabled=True)
    manager.add_message(Q, off)
    manager.add_message(Q, msg("a"))
    manager.add_message(Q, msg("b"))
    assert _get_data(manager) == "a"
    assert manager.queue_status(Q).disabled == 1
    (found,) = manager.find_messages(Q, uuid=off.uuid)
    found.disabled = False
    manager.update_message(Q, found)
    assert datas(drain(manager, Q)) == ["off", "b"]


def test_only_disabled_messages_means_nothing_to_get(manager: QueueManager) -> None:
    manager.add_message(Q, msg(1, disabled=True))
    assert manager.get_message(Q) is None
    assert manager.reserve(Q) is None
    status = manager.queue_status(Q)
    assert (status.disabled, status.messages_to_process, status.ready) == (1, 0, 0)


def test_deferred_in_the_future_waits(manager: QueueManager) -> None:
    manager.add_message(Q, msg("later", deferred_until=utcnow() + timedelta(hours=1)))
    manager.add_message(Q, msg("now"))
    assert _get_data(manager) == "now"
    assert manager.get_message(Q) is None
    assert manager.reserve(Q) is None
    status = manager.queue_status(Q)
    assert (status.deferred, status.ready, status.messages_to_process) == (1, 0, 1)


def test_deferred_in_the_past_keeps_insertion_order(manager: QueueManager, drain: Drain) -> None:
    past = msg("past", deferred_until=utcnow() - timedelta(seconds=5))
    manager.add_message(Q, msg("first"))
    manager.add_message(Q, past)
    manager.add_message(Q, msg("last"))
    got = drain(manager, Q)
    assert datas(got) == ["first", "past", "last"]
    assert got[1].execution_mode is ExecutionMode.DEFERRED
    assert got[1].deferred_until is not None and past.deferred_until is not None
    assert got[1].deferred_until.timestamp() == pytest.approx(past.deferred_until.timestamp(), abs=1e-3)


def test_deferred_comes_out_in_insertion_order_once_due(manager: QueueManager, drain: Drain, wait_for: WaitFor) -> None:
    due = utcnow() + timedelta(seconds=0.3)
    manager.add_message(Q, msg("soon", deferred_until=due))
    manager.add_message(Q, msg("after"))
    wait_for(lambda: time.time() > due.timestamp() + 0.01)
    assert datas(drain(manager, Q)) == ["soon", "after"]


def test_deferred_is_not_handed_out_early(manager: QueueManager, wait_for: WaitFor) -> None:
    due = utcnow() + timedelta(seconds=0.3)
    manager.add_message(Q, msg("soon", deferred_until=due))
    got = wait_for(lambda: manager.get_message(Q))
    assert time.time() >= due.timestamp() - 1e-3
    assert got.data == "soon"


@pytest.fixture
def local_tz_plus_0530() -> Iterator[None]:
    """Run in a zone ahead of UTC, so a backend reading naive times as UTC would be off by 5.5 h."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-05:30"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("local_tz_plus_0530")
def test_naive_deferred_until_is_local_time(manager: QueueManager) -> None:
    naive_past = datetime.now() - timedelta(minutes=1)
    manager.add_message(Q, msg("future", deferred_until=datetime.now() + timedelta(hours=1)))
    manager.add_message(Q, msg("past", deferred_until=naive_past))
    got = manager.get_message(Q)
    assert got is not None and got.data == "past"
    assert got.deferred_until is not None and got.deferred_until.tzinfo is not None
    assert got.deferred_until.timestamp() == pytest.approx(to_epoch(naive_past), abs=1e-3)
    assert manager.get_message(Q) is None


@pytest.mark.parametrize(
    "when",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # year 0 in UTC
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),  # year 10000 once a float
        datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-14))),
    ],
)
def test_deferral_a_queue_cannot_read_back_is_refused(manager: QueueManager, when: datetime) -> None:
    manager.add_message(Q, msg("keep"))
    with pytest.raises(InvalidMessage, match="deferred_until.*out of the range"):
        manager.add_message(Q, msg(1, deferred_until=when))
    with pytest.raises(InvalidMessage, match="deferred_until"):
        manager.update_message(Q, manager.find_messages(Q)[0].copy(deferred_until=when))
    got = manager.get_message(Q)
    assert got is not None and got.data == "keep" and got.deferred_until is None


def test_deferral_at_the_ends_of_the_range_is_kept(manager: QueueManager) -> None:
    early = datetime(1, 1, 2, tzinfo=timezone.utc)
    late = datetime(9999, 12, 30, tzinfo=timezone.utc)
    manager.add_message(Q, msg(1, deferred_until=early))
    manager.add_message(Q, msg(2, deferred_until=late))
    assert [m.deferred_until for m in manager.find_messages(Q)] == [early, late]
    got = manager.get_message(Q)
    assert got is not None and got.data == 1


def test_deferred_mode_without_time_is_refused(manager: QueueManager) -> None:
    with pytest.raises(InvalidMessage, match="deferred_until"):
        manager.add_message(Q, msg(1, execution_mode="deferred"))


# -- aliases ------------------------------------------------------------------------------


def test_duplicate_alias_raises_with_existing_uuid(manager: QueueManager, drain: Drain) -> None:
    first = manager.add_message(Q, msg(1, alias="k"))
    second = msg(2, alias="k")
    with pytest.raises(DuplicateAlias) as info:
        manager.add_message(Q, second)
    assert (info.value.uuid, info.value.alias, info.value.queue) == (first, "k", Q)
    assert "'k'" in str(info.value)
    assert (second.uuid, second.inserted_at) == (None, None)  # the refused message is left as it was
    assert manager.queue_status(Q).messages_to_process == 1
    assert datas(drain(manager, Q)) == [1]


@pytest.mark.parametrize("state", ["disabled", "deferred", "in flight"])
def test_alias_is_held_by_every_pending_state(manager: QueueManager, state: str) -> None:
    by_state: dict[str, dict[str, Any]] = {
        "disabled": {"disabled": True},
        "deferred": {"deferred_until": utcnow() + timedelta(hours=1)},
        "in flight": {},
    }
    first = manager.add_message(Q, msg(1, alias="k", **by_state[state]))
    if state == "in flight":
        reserved = manager.reserve(Q, lease=LONG_LEASE)
        assert reserved is not None and reserved.uuid == first
    with pytest.raises(DuplicateAlias) as info:
        manager.add_message(Q, msg(2, alias="k"))
    assert info.value.uuid == first


def test_on_duplicate_ignore_returns_existing(manager: QueueManager, drain: Drain) -> None:
    first = manager.add_message(Q, msg(1, alias="k"))
    again = msg(2, alias="k")
    assert manager.add_message(Q, again, on_duplicate="ignore") == first
    assert again.uuid == first
    assert manager.queue_status(Q).messages_to_process == 1
    assert datas(drain(manager, Q)) == [1]


def test_on_duplicate_replace_keeps_uuid_and_position(manager: QueueManager, drain: Drain) -> None:
    first = manager.add_message(Q, msg("old", alias="k", retries=1))
    manager.add_message(Q, msg("other"))
    assert manager.add_message(Q, msg("new", alias="k", retries=3), on_duplicate="replace") == first
    assert manager.queue_status(Q).messages_to_process == 2
    got = drain(manager, Q)
    assert [(m.uuid, m.data, m.retries) for m in got[:1]] == [(first, "new", 3)]
    assert datas(got) == ["new", "other"]


@pytest.mark.parametrize("mode", ["ignore", "replace"])
def test_on_duplicate_without_existing_adds(manager: QueueManager, mode: Any) -> None:
    uid = manager.add_message(Q, msg(1, alias="k"), on_duplicate=mode)
    assert manager.find_messages(Q, alias="k")[0].uuid == uid


def test_invalid_on_duplicate(manager: QueueManager) -> None:
    with pytest.raises(InvalidMessage, match="on_duplicate"):
        manager.add_message(Q, msg(1), on_duplicate="overwrite")  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["get", "ack", "remove"])
def test_alias_is_free_once_the_message_is_gone(manager: QueueManager, drain: Drain, how: str) -> None:
    first = manager.add_message(Q, msg(1, alias="k"))
    if how == "get":
        assert manager.get_message(Q) is not None
    elif how == "ack":
        reserved = manager.reserve(Q, lease=LONG_LEASE)
        assert reserved is not None
        manager.ack(Q, reserved)
    else:
        assert manager.remove_message(Q, first) is True
    second = manager.add_message(Q, msg(2, alias="k"))
    assert second != first
    assert datas(drain(manager, Q)) == [2]


def test_same_alias_in_different_queues(manager: QueueManager) -> None:
    a = manager.add_message("a", msg(1, alias="k"))
    b = manager.add_message("b", msg(2, alias="k"))
    assert a != b


# -- reserve, ack, release ----------------------------------------------------------------


def test_reserved_is_invisible_to_others(manager: QueueManager) -> None:
    for i in range(3):
        manager.add_message(Q, msg(i))
    first = manager.reserve(Q, lease=LONG_LEASE)
    second = manager.reserve(Q, lease=LONG_LEASE)
    assert first is not None and second is not None
    assert (first.data, second.data, first.attempts, second.attempts) == (0, 1, 1, 1)
    assert _get_data(manager) == 2
    assert manager.get_message(Q) is None
    assert manager.reserve(Q, lease=LONG_LEASE) is None
    assert manager.queue_status(Q).in_flight == 2


def test_ack_removes(manager: QueueManager) -> None:
    manager.add_message(Q, msg(1))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    manager.ack(Q, reserved)
    status = manager.queue_status(Q)
    assert (status.in_flight, status.messages_to_process) == (0, 0)
    assert manager.get_message(Q) is None
    with pytest.raises(LeaseLost):
        manager.ack(Q, reserved)


def test_ack_by_uuid(manager: QueueManager) -> None:
    uid = manager.add_message(Q, msg(1))
    assert manager.reserve(Q, lease=LONG_LEASE) is not None
    manager.ack(Q, uid)
    assert manager.queue_status(Q).messages_to_process == 0


def test_ack_processed_records_the_last_processed_message(manager: QueueManager) -> None:
    manager.add_message(Q, msg(1, alias="first"))
    manager.add_message(Q, msg(2))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    before = time.time()
    manager.ack(Q, reserved, processed=True)
    after = time.time()
    status = manager.queue_status(Q)
    assert (status.in_flight, status.messages_to_process) == (0, 1)
    processed = status.last_message_processed
    assert processed is not None and processed.timestamp is not None
    assert (processed.uuid, processed.alias) == (reserved.uuid, "first")
    assert before - 1 <= processed.timestamp.timestamp() <= after + 1
    second = manager.reserve(Q, lease=LONG_LEASE)
    assert second is not None
    manager.ack(Q, second, processed=True)
    processed = manager.queue_status(Q).last_message_processed
    assert processed is not None and (processed.uuid, processed.alias) == (second.uuid, None)


def test_ack_processed_that_fails_records_nothing(manager: QueueManager) -> None:
    uid = manager.add_message(Q, msg(1, alias="kept"))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    with pytest.raises(InvalidMessage, match="needs the QueueMessage"):
        manager.ack(Q, uid, processed=True)  # a bare uuid has no alias to record
    assert manager.queue_status(Q).in_flight == 1  # nothing acked either
    manager.release(Q, reserved)
    with pytest.raises(LeaseLost):
        manager.ack(Q, reserved, processed=True)  # released: not this reservation's to ack
    status = manager.queue_status(Q)
    assert (status.ready, status.last_message_processed) == (1, None)


def test_release_returns_to_original_position(manager: QueueManager, drain: Drain) -> None:
    for i in range(3):
        manager.add_message(Q, msg(i))
    first = manager.reserve(Q, lease=LONG_LEASE)
    assert first is not None and first.attempts == 1
    manager.release(Q, first, error="boom")
    again = manager.reserve(Q, lease=LONG_LEASE)
    assert again is not None
    assert (again.uuid, again.data, again.attempts) == (first.uuid, 0, 2)
    manager.release(Q, again)
    assert datas(drain(manager, Q)) == [0, 1, 2]


def test_release_with_delay_defers(manager: QueueManager) -> None:
    manager.add_message(Q, msg("a"))
    manager.add_message(Q, msg("b"))
    a = manager.reserve(Q, lease=LONG_LEASE)
    assert a is not None
    manager.release(Q, a, delay=3600)
    b = manager.reserve(Q, lease=LONG_LEASE)
    assert b is not None and b.data == "b"
    assert manager.reserve(Q, lease=LONG_LEASE) is None
    status = manager.queue_status(Q)
    assert (status.in_flight, status.ready, status.messages_to_process) == (1, 0, 2)


def test_release_with_short_delay_comes_back(manager: QueueManager, wait_for: WaitFor) -> None:
    manager.add_message(Q, msg("a"))
    a = manager.reserve(Q, lease=LONG_LEASE)
    assert a is not None
    released_at = time.time()
    manager.release(Q, a, delay=0.2)
    again = wait_for(lambda: manager.reserve(Q, lease=LONG_LEASE))
    assert time.time() >= released_at + 0.2 - 1e-3
    assert (again.uuid, again.attempts) == (a.uuid, 2)


def test_lease_expiry_redelivers(manager: QueueManager, wait_for: WaitFor) -> None:
    manager.add_message(Q, msg("x"))
    first = manager.reserve(Q, lease=0.2)
    assert first is not None and first.attempts == 1
    manager.add_message(Q, msg("y", deferred_until=utcnow() + timedelta(hours=1)))  # must not be reserved meanwhile
    second = wait_for(lambda: manager.reserve(Q, lease=LONG_LEASE))
    assert (second.uuid, second.attempts) == (first.uuid, 2)
    with pytest.raises(LeaseLost):
        manager.ack(Q, first)  # stale reservation
    with pytest.raises(LeaseLost):
        manager.release(Q, first)
    manager.ack(Q, second)
    status = manager.queue_status(Q)
    assert (status.in_flight, status.deferred, status.messages_to_process) == (0, 1, 1)


def test_late_ack_accepted_until_handed_out_again(manager: QueueManager) -> None:
    manager.add_message(Q, msg("x"))
    first = manager.reserve(Q, lease=0.05)
    assert first is not None
    time.sleep(0.1)  # the lease ends; nobody has reserved the message again
    manager.ack(Q, first)
    assert manager.queue_status(Q).messages_to_process == 0
    assert manager.reserve(Q, lease=LONG_LEASE) is None


def test_ack_after_release_is_refused(manager: QueueManager) -> None:
    manager.add_message(Q, msg("x"))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    manager.release(Q, reserved)
    with pytest.raises(LeaseLost):
        manager.ack(Q, reserved)
    with pytest.raises(LeaseLost):
        manager.release(Q, reserved)
    assert manager.queue_status(Q).ready == 1


def test_ack_after_release_is_lease_lost(manager: QueueManager) -> None:
    manager.add_message(Q, msg(1))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    manager.release(Q, reserved)
    with pytest.raises(LeaseLost):
        manager.ack(Q, reserved)
    with pytest.raises(LeaseLost):
        manager.release(Q, reserved)
    assert manager.queue_status(Q).ready == 1


def test_ack_unknown_or_unreserved_is_lease_lost(manager: QueueManager, drain: Drain) -> None:
    uid = manager.add_message(Q, msg(1))
    with pytest.raises(LeaseLost):
        manager.ack(Q, str(uuidlib.uuid4()))
    with pytest.raises(LeaseLost):
        manager.ack(Q, uid)  # pending but never reserved
    with pytest.raises(LeaseLost):
        manager.release(Q, uid)
    assert datas(drain(manager, Q)) == [1]


@pytest.mark.parametrize("lease", [0, -1, float("nan"), float("inf"), 1e12, "10", True])
def test_invalid_lease(manager: QueueManager, lease: Any) -> None:
    manager.add_message(Q, msg(1))
    with pytest.raises(InvalidMessage, match="lease"):
        manager.reserve(Q, lease=lease)
    assert "lease" in (manager.get_last_error() or "")
    assert manager.queue_status(Q).ready == 1  # nothing was handed out


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), 1e12, "5", None])
def test_invalid_release_delay(manager: QueueManager, delay: Any) -> None:
    manager.add_message(Q, msg(1))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    with pytest.raises(InvalidMessage, match="delay"):
        manager.release(Q, reserved, delay=delay)
    assert "delay" in (manager.get_last_error() or "")
    manager.ack(Q, reserved)  # still held


def test_ended_lease_frees_the_message_for_status_update_replace_and_remove(manager: QueueManager) -> None:
    """Once its lease ended, a message is waiting again for every operation, not only for
    the next reserve: status counts it ready, and replace, update and remove may change it."""
    uid = manager.add_message(Q, msg(1, alias="a"))
    assert manager.reserve(Q, lease=0.05) is not None
    time.sleep(0.1)
    status = manager.queue_status(Q)
    assert (status.ready, status.in_flight, status.messages_to_process) == (1, 0, 1)
    assert manager.add_message(Q, msg(2, alias="a"), on_duplicate="replace") == uid  # in place
    assert [(m.uuid, m.data) for m in manager.find_messages(Q)] == [(uid, 2)]
    manager.update_message(Q, manager.find_messages(Q, uuid=uid)[0].copy(data=3))
    assert datas(manager.find_messages(Q)) == [3]
    assert manager.remove_message(Q, uid) is True
    assert manager.queue_status(Q).messages_to_process == 0


@pytest.mark.parametrize("change", ["update", "replace"])
def test_changing_a_released_message_keeps_its_delay(manager: QueueManager, change: str) -> None:
    manager.add_message(Q, msg(1, alias="a"))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    manager.release(Q, reserved, delay=600)
    if change == "update":
        manager.update_message(Q, manager.find_messages(Q)[0].copy(data=2))
    else:
        manager.add_message(Q, msg(2, alias="a"), on_duplicate="replace")
    assert manager.get_message(Q) is None  # still waiting out the release's delay
    status = manager.queue_status(Q)
    assert (status.ready, status.deferred, status.messages_to_process) == (0, 1, 1)
    assert datas(manager.find_messages(Q)) == [2]


# -- status -------------------------------------------------------------------------------


def test_status_of_new_queue(manager: QueueManager) -> None:
    manager.create_queue(Q)
    status = manager.queue_status(Q)
    assert status.queue == Q
    assert (status.last_message_inserted, status.last_message_processed) == (None, None)
    assert (status.messages_to_process, status.ready, status.deferred, status.disabled, status.in_flight) == (
        0, 0, 0, 0, 0,
    )
    assert status.custom_attributes == {}


def test_status_counts(manager: QueueManager) -> None:
    manager.add_message(Q, msg("flight"))
    manager.add_message(Q, msg("ready1"))
    manager.add_message(Q, msg("ready2"))
    manager.add_message(Q, msg("deferred", deferred_until=utcnow() + timedelta(hours=1)))
    manager.add_message(Q, msg("off1", disabled=True))
    manager.add_message(Q, msg("off2", disabled=True))
    assert manager.reserve(Q, lease=LONG_LEASE) is not None
    status = manager.queue_status(Q)
    assert (status.ready, status.deferred, status.disabled, status.in_flight) == (2, 1, 2, 1)
    assert status.messages_to_process == 4


def test_status_last_inserted_and_processed(manager: QueueManager) -> None:
    manager.add_message(Q, msg(1, alias="one"))
    last = msg(2, alias="two")
    manager.add_message(Q, last)
    status = manager.queue_status(Q)
    assert status.last_message_inserted is not None
    assert (status.last_message_inserted.uuid, status.last_message_inserted.alias) == (last.uuid, "two")
    assert status.last_message_inserted.timestamp is not None and last.inserted_at is not None
    assert status.last_message_inserted.timestamp.timestamp() == pytest.approx(last.inserted_at.timestamp(), abs=1e-3)
    assert status.last_message_processed is None

    got = manager.get_message(Q)
    assert got is not None
    before = time.time()
    manager.update_last_message_processed(Q, got)
    after = time.time()
    processed = manager.queue_status(Q).last_message_processed
    assert processed is not None and processed.timestamp is not None
    assert (processed.uuid, processed.alias) == (got.uuid, "one")
    assert before - 1 <= processed.timestamp.timestamp() <= after + 1


@pytest.mark.parametrize("message", [None, "a-uuid", "no uuid"])
def test_update_last_processed_needs_a_handed_out_message(manager: QueueManager, message: Any) -> None:
    manager.create_queue(Q)
    with pytest.raises(InvalidMessage, match="handed out"):
        manager.update_last_message_processed(Q, msg(1) if message == "no uuid" else message)
    assert manager.queue_status(Q).last_message_processed is None


def test_status_modify_time_moves_forward(manager: QueueManager) -> None:
    manager.create_queue(Q)
    t0 = manager.queue_status(Q).last_queue_modify_time
    m = msg(1)
    manager.add_message(Q, m)
    t1 = manager.queue_status(Q).last_queue_modify_time
    assert manager.get_message(Q) is not None
    t2 = manager.queue_status(Q).last_queue_modify_time
    assert t1 is not None and t2 is not None and m.inserted_at is not None
    assert t0 is None or t0 <= t1
    assert t1 <= t2
    assert t1.timestamp() >= m.inserted_at.timestamp() - 1e-3


def test_custom_attributes_merge_and_replace(manager: QueueManager) -> None:
    manager.create_queue(Q, a=1, b={"x": 1})
    assert manager.set_custom_attributes(Q, {"b": {"y": 2}, "c": "é"}) == {"a": 1, "b": {"y": 2}, "c": "é"}
    assert manager.queue_status(Q).custom_attributes == {"a": 1, "b": {"y": 2}, "c": "é"}
    assert manager.set_custom_attributes(Q, {"d": None}, replace=True) == {"d": None}
    assert manager.queue_status(Q).custom_attributes == {"d": None}
    assert manager.set_custom_attributes(Q, {}, replace=True) == {}
    assert manager.queue_status(Q).custom_attributes == {}


@pytest.mark.parametrize("attrs", [{"s": {1}}, {"n": float("nan")}, ["not", "a", "dict"]], ids=repr)
def test_custom_attributes_must_be_json(manager: QueueManager, attrs: Any) -> None:
    manager.create_queue(Q, keep=1)
    with pytest.raises(InvalidMessage):
        manager.set_custom_attributes(Q, attrs)
    assert manager.queue_status(Q).custom_attributes == {"keep": 1}


# -- find, update, remove -----------------------------------------------------------------


@pytest.fixture
def filled(manager: QueueManager) -> list[QueueMessage]:
    """Six messages of mixed kinds, in queue order."""
    messages = [
        msg(0, alias="a0", username="anna"),
        msg(1, username="bruno", disabled=True),
        msg(2, alias="a2", username="anna", deferred_until=utcnow() + timedelta(hours=1)),
        msg(3, username="carla"),
        msg(4, alias="a4", username="anna", disabled=True),
        msg(5, username="bruno"),
    ]
    for m in messages:
        manager.add_message(Q, m)
    return messages


def _uuids(messages: list[QueueMessage]) -> list[str | None]:
    return [m.uuid for m in messages]


def test_find_all_in_queue_order(manager: QueueManager, filled: list[QueueMessage]) -> None:
    found = manager.find_messages(Q)
    assert _uuids(found) == _uuids(filled)
    assert datas(found) == list(range(6))
    assert all(m.queue == Q for m in found)


def test_find_by_uuid_and_alias(manager: QueueManager, filled: list[QueueMessage]) -> None:
    assert _uuids(manager.find_messages(Q, uuid=filled[3].uuid)) == [filled[3].uuid]
    assert _uuids(manager.find_messages(Q, alias="a2")) == [filled[2].uuid]
    assert manager.find_messages(Q, uuid=str(uuidlib.uuid4())) == []
    assert manager.find_messages(Q, alias="nope") == []
    assert manager.find_messages(Q, uuid=filled[3].uuid, alias="a2") == []
    assert _uuids(manager.find_messages(Q, uuid=filled[2].uuid, alias="a2")) == [filled[2].uuid]


def test_find_by_fields(manager: QueueManager, filled: list[QueueMessage]) -> None:
    assert datas(manager.find_messages(Q, username="anna")) == [0, 2, 4]
    assert datas(manager.find_messages(Q, disabled=True)) == [1, 4]
    assert datas(manager.find_messages(Q, disabled=False)) == [0, 2, 3, 5]
    assert datas(manager.find_messages(Q, execution_mode="deferred")) == [2]
    assert datas(manager.find_messages(Q, execution_mode=ExecutionMode.IMMEDIATE)) == [0, 1, 3, 4, 5]
    assert datas(manager.find_messages(Q, username="anna", disabled=False)) == [0, 2]
    assert manager.find_messages(Q, username="nobody") == []


def test_find_by_insertion_time(manager: QueueManager, filled: list[QueueMessage]) -> None:
    stamps = [m.inserted_at for m in filled]
    assert all(s is not None for s in stamps)
    lo, hi = stamps[2], stamps[4]
    assert lo is not None and hi is not None
    expected_from = [i for i, s in enumerate(stamps) if s is not None and s >= lo]
    expected_to = [i for i, s in enumerate(stamps) if s is not None and s <= hi]
    expected_both = sorted(set(expected_from) & set(expected_to))
    assert datas(manager.find_messages(Q, inserted_from=lo)) == expected_from
    assert datas(manager.find_messages(Q, inserted_to=hi)) == expected_to
    assert datas(manager.find_messages(Q, inserted_from=lo, inserted_to=hi)) == expected_both
    later = utcnow() + timedelta(hours=1)
    assert manager.find_messages(Q, inserted_from=later) == []
    assert datas(manager.find_messages(Q, inserted_to=later)) == list(range(6))


def test_find_limit(manager: QueueManager, filled: list[QueueMessage]) -> None:
    assert datas(manager.find_messages(Q, limit=2)) == [0, 1]
    assert datas(manager.find_messages(Q, username="anna", limit=2)) == [0, 2]
    assert manager.find_messages(Q, limit=0) == []
    assert datas(manager.find_messages(Q, limit=100)) == list(range(6))
    with pytest.raises(InvalidMessage, match="limit"):
        manager.find_messages(Q, limit=-1)


@pytest.mark.parametrize(
    ("criteria", "named"),
    [
        ({"uuid": 123}, "uuid"),
        ({"alias": ["k"]}, "alias"),
        ({"username": 7}, "username"),
        ({"disabled": "no"}, "disabled"),
        ({"execution_mode": "bogus"}, "execution_mode"),
        ({"inserted_from": "2020-01-01"}, "inserted_from"),
        ({"inserted_to": 0}, "inserted_to"),
    ],
)
def test_find_refuses_bad_criteria(manager: QueueManager, criteria: dict[str, Any], named: str) -> None:
    manager.add_message(Q, msg(1))
    with pytest.raises(InvalidMessage, match=named):
        manager.find_messages(Q, **criteria)
    assert named in (manager.get_last_error() or "")


def test_find_does_not_consume(manager: QueueManager, filled: list[QueueMessage]) -> None:
    manager.find_messages(Q)
    assert manager.queue_status(Q).messages_to_process == 4


def test_update_message_keeps_position(manager: QueueManager, drain: Drain) -> None:
    for i in range(3):
        manager.add_message(Q, msg(i, alias=f"k{i}"))
    (middle,) = manager.find_messages(Q, alias="k1")
    middle.data = {"changed": True}
    middle.alias = "renamed"
    middle.retries = 9
    manager.update_message(Q, middle)
    assert manager.find_messages(Q, alias="k1") == []
    (found,) = manager.find_messages(Q, alias="renamed")
    assert (found.uuid, found.data, found.retries) == (middle.uuid, {"changed": True}, 9)
    manager.add_message(Q, msg("reuses k1", alias="k1"))  # the old alias is free
    assert datas(drain(manager, Q)) == [0, {"changed": True}, 2, "reuses k1"]


def test_update_message_to_deferred(manager: QueueManager, drain: Drain) -> None:
    uid = manager.add_message(Q, msg("a"))
    manager.add_message(Q, msg("b"))
    later = msg("a", uuid=uid, deferred_until=utcnow() + timedelta(hours=1))
    manager.update_message(Q, later)
    assert datas(drain(manager, Q)) == ["b"]
    assert manager.queue_status(Q).deferred == 1


def test_update_unknown_message(manager: QueueManager, drain: Drain) -> None:
    manager.add_message(Q, msg(1))
    ghost = str(uuidlib.uuid4())
    with pytest.raises(MessageNotFound, match=ghost):
        manager.update_message(Q, msg(2, uuid=ghost))
    with pytest.raises(InvalidMessage, match="uuid"):
        manager.update_message(Q, msg(2))
    assert datas(drain(manager, Q)) == [1]


def test_update_consumed_message_is_not_found(manager: QueueManager) -> None:
    manager.add_message(Q, msg(1))
    got = manager.get_message(Q)
    assert got is not None
    with pytest.raises(MessageNotFound):
        manager.update_message(Q, got)
    assert manager.get_message(Q) is None


def test_update_in_flight_message(manager: QueueManager) -> None:
    manager.add_message(Q, msg(1))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    with pytest.raises(MessageInFlight):
        manager.update_message(Q, reserved.copy(data=2))
    manager.ack(Q, reserved)


def test_update_to_taken_alias(manager: QueueManager) -> None:
    first = manager.add_message(Q, msg(1, alias="taken"))
    other = msg(2, alias="mine")
    manager.add_message(Q, other)
    with pytest.raises(DuplicateAlias) as info:
        manager.update_message(Q, other.copy(alias="taken"))
    assert info.value.uuid == first
    assert [(m.data, m.alias) for m in manager.find_messages(Q)] == [(1, "taken"), (2, "mine")]


def test_update_refuses_non_json(manager: QueueManager, drain: Drain) -> None:
    uid = manager.add_message(Q, msg(1))
    with pytest.raises(InvalidMessage):
        manager.update_message(Q, msg({1, 2}, uuid=uid))
    assert datas(drain(manager, Q)) == [1]


def test_remove_message(manager: QueueManager, drain: Drain) -> None:
    uids = [manager.add_message(Q, msg(i)) for i in range(3)]
    assert manager.remove_message(Q, uids[1]) is True
    assert manager.remove_message(Q, uids[1]) is False
    assert manager.remove_message(Q, str(uuidlib.uuid4())) is False
    assert manager.queue_status(Q).messages_to_process == 2
    assert datas(drain(manager, Q)) == [0, 2]


def test_remove_in_flight_message(manager: QueueManager) -> None:
    uid = manager.add_message(Q, msg(1))
    reserved = manager.reserve(Q, lease=LONG_LEASE)
    assert reserved is not None
    with pytest.raises(MessageInFlight):
        manager.remove_message(Q, uid)
    manager.ack(Q, reserved)


# -- a model-based property test -----------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 3)),
        st.tuples(st.just("get"), st.just(0)),
        st.tuples(st.just("reserve"), st.just(0)),
        st.tuples(st.just("ack"), st.integers(0, 10)),
        st.tuples(st.just("release"), st.integers(0, 10)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_matches_fifo_model(manager: QueueManager, ops: list[tuple[str, int]]) -> None:
    """Random add/get/reserve/ack/release sequences behave like a FIFO list plus an in-flight set."""
    queue = f"p-{uuidlib.uuid4().hex[:12]}"  # the fixture is shared by every example
    pending: list[int] = []  # payloads in queue order
    in_flight: dict[int, QueueMessage] = {}  # payload -> the reservation
    attempts: dict[int, int] = {}
    counter = 0

    def first_eligible() -> int | None:
        return next((p for p in pending if p not in in_flight), None)

    for op, arg in ops:
        if op == "add":
            batch = list(range(counter, counter + arg))
            counter += arg
            if arg == 1:
                manager.add_message(queue, msg(batch[0]))
            else:
                manager.add_messages(queue, [msg(p) for p in batch])
            pending.extend(batch)
        elif op == "get":
            expected = first_eligible()
            got = manager.get_message(queue)
            assert (None if got is None else got.data) == expected
            if expected is not None:
                pending.remove(expected)
        elif op == "reserve":
            expected = first_eligible()
            got = manager.reserve(queue, lease=LONG_LEASE)
            assert (None if got is None else got.data) == expected
            if got is not None and expected is not None:
                attempts[expected] = attempts.get(expected, 0) + 1
                assert got.attempts == attempts[expected]
                in_flight[expected] = got
        elif in_flight:
            payload = sorted(in_flight)[arg % len(in_flight)]
            held = in_flight.pop(payload)
            if op == "ack":
                manager.ack(queue, held)
                pending.remove(payload)
            else:
                manager.release(queue, held)
        if manager.queue_exists(queue):
            status = manager.queue_status(queue)
            assert (status.messages_to_process, status.in_flight) == (len(pending), len(in_flight))
    if manager.queue_exists(queue):
        assert datas(manager.find_messages(queue)) == pending
        manager.destroy_queue(queue)
    else:
        assert pending == []


# -- helpers ------------------------------------------------------------------------------


def _get_data(manager: QueueManager) -> Any:
    got = manager.get_message(Q)
    assert got is not None
    return got.data
