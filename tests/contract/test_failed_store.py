"""Failed-store contract: every backend keeps, lists, requeues and forgets failed messages alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from queue_engine import LeaseLost, QueueManager, QueueMessage, QueueNotFound

Q = "jobs"
LONG = 600.0


def _fail_one(manager: QueueManager, *errors: str) -> QueueMessage:
    """Reserve the first message and fail it, releasing it once per earlier error."""
    for error in errors[:-1]:
        reserved = manager.reserve(Q, lease=LONG)
        assert reserved is not None
        manager.release(Q, reserved, error=error)
    reserved = manager.reserve(Q, lease=LONG)
    assert reserved is not None
    manager.fail(Q, reserved, errors[-1])
    return reserved


def test_fail_keeps_history_and_leaves_the_queue(manager: QueueManager) -> None:
    manager.add_message(Q, QueueMessage(data="a", alias="x"))
    manager.add_message(Q, QueueMessage(data="b"))
    failed = _fail_one(manager, "first", "second", "third")
    status = manager.queue_status(Q)
    assert (status.failed, status.messages_to_process, status.in_flight) == (1, 1, 0)
    [entry] = manager.failed_messages(Q)
    assert (entry.message.uuid, entry.message.data, entry.message.attempts) == (failed.uuid, "a", 3)
    assert entry.errors == ["first", "second", "third"]
    assert entry.failed_at.tzinfo is not None
    assert manager.find_messages(Q, uuid=failed.uuid) == []  # not pending any more
    with pytest.raises(LeaseLost):
        manager.ack(Q, failed)
    # its alias is free while it is failed
    manager.add_message(Q, QueueMessage(data="new x", alias="y"))


def test_fail_needs_the_reservation(manager: QueueManager) -> None:
    uid = manager.add_message(Q, QueueMessage(data=1))
    with pytest.raises(LeaseLost):
        manager.fail(Q, uid, "boom")
    assert manager.queue_status(Q).failed == 0


def test_requeue_goes_back_to_its_place_with_attempts_reset(manager: QueueManager) -> None:
    for i in range(3):
        manager.add_message(Q, QueueMessage(data=i))
    failed = _fail_one(manager, "boom")
    assert manager.requeue_failed(Q) == [failed.uuid]
    assert manager.requeue_failed(Q) == []  # a second run finds nothing
    first = manager.reserve(Q, lease=LONG)
    assert first is not None and (first.uuid, first.attempts) == (failed.uuid, 1)
    assert manager.queue_status(Q).failed == 0


def test_requeue_and_forget_by_date_range_and_uuid(manager: QueueManager) -> None:
    for i in range(3):
        manager.add_message(Q, QueueMessage(data=i))
    early = _fail_one(manager, "e")
    time.sleep(0.05)
    middle = datetime.now(timezone.utc)
    time.sleep(0.05)
    late = [_fail_one(manager, "l") for _ in range(2)]
    assert [f.message.uuid for f in manager.failed_messages(Q, until=middle)] == [early.uuid]
    assert [f.message.uuid for f in manager.failed_messages(Q, since=middle)] == [m.uuid for m in late]
    assert manager.failed_messages(Q, limit=1)[0].message.uuid == early.uuid
    assert manager.requeue_failed(Q, since=middle, uuids=[late[1].uuid]) == [late[1].uuid]
    assert manager.forget_failed(Q, until=middle) == 1
    assert [f.message.uuid for f in manager.failed_messages(Q)] == [late[0].uuid]
    assert manager.forget_failed(Q, uuids=["not-a-uuid"]) == 0


def test_requeue_skips_a_message_whose_alias_was_taken(manager: QueueManager) -> None:
    manager.add_message(Q, QueueMessage(data="old", alias="k"))
    failed = _fail_one(manager, "boom")
    manager.add_message(Q, QueueMessage(data="new", alias="k"))
    assert manager.requeue_failed(Q) == []
    assert [f.message.uuid for f in manager.failed_messages(Q)] == [failed.uuid]


def test_add_failed_goes_straight_to_the_failed_store(manager: QueueManager) -> None:
    manager.add_message(Q, QueueMessage(data="pending", alias="k"))
    message = QueueMessage(data="direct", alias="k")
    uid = manager.add_failed(Q, message, ["e1", "e2"])
    assert message.uuid == uid
    status = manager.queue_status(Q)
    assert (status.failed, status.messages_to_process) == (1, 1)
    assert status.last_message_inserted is not None and status.last_message_inserted.alias == "k"
    [entry] = manager.failed_messages(Q)
    assert (entry.message.data, entry.errors) == ("direct", ["e1", "e2"])
    got = manager.get_message(Q)
    assert got is not None and got.data == "pending"
    assert manager.get_message(Q) is None  # the failed one is never handed out
    assert manager.requeue_failed(Q) == [uid]
    again = manager.get_message(Q)
    assert again is not None and (again.uuid, again.data, again.alias) == (uid, "direct", "k")


def test_failed_store_of_missing_queue(manager: QueueManager) -> None:
    with pytest.raises(QueueNotFound):
        manager.failed_messages("nope")
    with pytest.raises(QueueNotFound):
        manager.requeue_failed("nope")


def test_failed_store_survives_reopen(backend: str, open_manager: Callable[[], QueueManager]) -> None:
    if backend == "memory":
        pytest.skip("the memory backend keeps nothing between managers by design")
    first = open_manager()
    first.add_message(Q, QueueMessage(data=1))
    reserved = first.reserve(Q, lease=LONG)
    assert reserved is not None
    first.release(Q, reserved, error="try 1")
    reserved = first.reserve(Q, lease=LONG)
    assert reserved is not None
    first.fail(Q, reserved, "try 2")
    first.close()
    second = open_manager()
    [entry] = second.failed_messages(Q, since=datetime.now(timezone.utc) - timedelta(minutes=5))
    assert (entry.message.uuid, entry.errors, entry.message.attempts) == (reserved.uuid, ["try 1", "try 2"], 2)


def test_add_failed_keeps_a_given_uuid(manager: QueueManager) -> None:
    given = "0f8fad5b-d9cb-469f-a165-70867728950e"
    uid = manager.add_failed(Q, QueueMessage(data="direct", uuid=given, attempts=3), ["e1", "e2", "e3"])
    assert uid == given
    [entry] = manager.failed_messages(Q)
    assert (entry.message.uuid, entry.message.attempts) == (given, 3)
    assert manager.requeue_failed(Q, uuids=[given]) == [given]
    assert [m.uuid for m in manager.find_messages(Q, uuid=given)] == [given]
    got = manager.get_message(Q)
    assert got is not None and got.uuid == given
