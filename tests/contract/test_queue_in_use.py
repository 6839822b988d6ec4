"""Every check of the per-message methods holds on a queue already in use.

A backend may take a shorter path for a queue it has open (the file backend sends a plain
message straight to the queue's store, and remembers what it checked before). These tests
warm that path first, with messages whose fields are then reused, and change a message
after it was built: each case must give the error a fresh manager gives, and write nothing.
"""

from __future__ import annotations

import math
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import pytest

from queue_engine import ExecutionMode, InvalidMessage, InvalidQueueName, LeaseLost, QueueManager, QueueMessage

Q = "jobs"
USER = "ana"


def in_use(manager: QueueManager) -> None:
    """Open ``Q`` in ``manager`` with a message added, taken, reserved and acked, using the
    retries and usernames the cases below reuse."""
    for retries, username in ((0, None), (1, None), (0, USER), (1, USER)):
        manager.add_message(Q, QueueMessage(data="warm", retries=retries, username=username))
    assert manager.get_message(Q) is not None
    reserved = manager.reserve(Q, lease=600)
    assert reserved is not None
    manager.ack(Q, reserved)
    while manager.get_message(Q) is not None:
        pass
    assert manager.queue_status(Q).messages_to_process == 0


class _StrUser(str):
    """A str subclass equal to a username the queue has seen: not a str, so refused."""


# (field, value, words the error names): set on a valid message after it was built
CHANGES: list[tuple[str, Any, str]] = [
    ("retries", -1, "retries"),
    ("retries", 1_000_001, "retries"),
    ("retries", True, "retries"),  # equal to 1, which the queue has seen
    ("retries", 1.0, "retries"),
    ("retries", "1", "retries"),
    ("username", 5, "username"),
    ("username", "x" * 257, "username"),
    ("username", "\ud800", "username"),
    ("username", _StrUser(USER), "username"),
    ("execution_mode", "deferred", "deferred_until"),
    ("execution_mode", "sometimes", "execution_mode"),
    ("disabled", 1, "disabled"),
    ("disabled", "no", "disabled"),
    ("alias", "", "alias"),
    ("alias", 5, "alias"),
    ("deferred_until", "tomorrow", "deferred_until"),
    ("data", {1: "x"}, "key"),
    ("data", math.nan, "nan"),
    ("data", (1, 2), "tuple"),
]


@pytest.mark.parametrize(("field", "value", "named"), CHANGES, ids=[f"{c[0]}={c[1]!r:.20}" for c in CHANGES])
def test_a_message_changed_after_it_was_built_is_checked_again(
    manager: QueueManager, field: str, value: Any, named: str
) -> None:
    in_use(manager)
    message = QueueMessage(data={"n": 1}, retries=1)
    setattr(message, field, value)
    with pytest.raises(InvalidMessage, match=named):
        manager.add_message(Q, message)
    assert named in (manager.get_last_error() or "")
    assert message.uuid is None
    assert manager.queue_status(Q).messages_to_process == 0
    assert manager.get_message(Q) is None


def test_changes_a_fresh_message_accepts_are_normalised_on_a_queue_in_use(manager: QueueManager) -> None:
    in_use(manager)
    mode_as_text = QueueMessage(data=1)
    mode_as_text.execution_mode = "immediate"
    no_user = QueueMessage(data=2)
    no_user.username = None
    for message in (mode_as_text, no_user):
        manager.add_message(Q, message)
    assert mode_as_text.execution_mode is ExecutionMode.IMMEDIATE  # the caller's message too
    assert no_user.username and no_user.username.__class__ is str
    got = [manager.get_message(Q) for _ in range(2)]
    assert [m.data for m in got if m is not None] == [1, 2]
    assert all(m is not None and m.execution_mode == "immediate" and m.username for m in got)


def test_what_a_subclass_lets_through_is_still_checked_for_a_queue_message(manager: QueueManager) -> None:
    class Lenient(QueueMessage):
        def validate(self) -> None:
            retries, self.retries = self.retries, 0
            super().validate()
            self.retries = retries

    in_use(manager)
    manager.add_message(Q, Lenient(data=1, retries=5_000_000))  # its own rule, its own business
    plain = QueueMessage(data=2)
    plain.retries = 5_000_000
    with pytest.raises(InvalidMessage, match="retries"):
        manager.add_message(Q, plain)


@pytest.mark.parametrize("message", [None, {"data": 1}, "text"], ids=repr)
def test_what_is_not_a_queue_message_is_refused_on_a_queue_in_use(manager: QueueManager, message: Any) -> None:
    in_use(manager)
    with pytest.raises(InvalidMessage, match="expected a QueueMessage"):
        manager.add_message(Q, message)
    assert manager.get_message(Q) is None


def test_a_subclass_of_queue_message_keeps_its_own_checks(manager: QueueManager) -> None:
    class Positive(QueueMessage):
        def validate(self) -> None:
            super().validate()
            if not isinstance(self.data, int) or self.data <= 0:
                raise InvalidMessage(f"invalid data {self.data!r}: a positive int")

    in_use(manager)
    message = Positive(data=1)
    message.data = -1
    with pytest.raises(InvalidMessage, match="positive"):
        manager.add_message(Q, message)
    assert manager.get_message(Q) is None


PER_MESSAGE: dict[str, Callable[[QueueManager, Any], object]] = {
    "add_message": lambda m, n: m.add_message(n, QueueMessage(data=1)),
    "get_message": lambda m, n: m.get_message(n),
    "reserve": lambda m, n: m.reserve(n, lease=600),
    "ack": lambda m, n: m.ack(n, QueueMessage(data=1, uuid=str(uuidlib.uuid4()))),
}


@pytest.mark.parametrize("method", sorted(PER_MESSAGE))
@pytest.mark.parametrize("name", [None, 5, b"jobs", ["jobs"], "jobs/..", "jobs\x00"], ids=repr)
def test_a_bad_queue_name_is_refused_while_a_queue_is_in_use(manager: QueueManager, method: str, name: Any) -> None:
    in_use(manager)
    with pytest.raises(InvalidQueueName):
        PER_MESSAGE[method](manager, name)
    assert "queue name" in (manager.get_last_error() or "")
    assert manager.list_queues() == [Q]


@pytest.mark.parametrize("lease", [0, -1, math.nan, math.inf, True, "5", 2e9], ids=repr)
def test_a_bad_lease_is_refused_on_a_queue_in_use(manager: QueueManager, lease: Any) -> None:
    in_use(manager)
    manager.add_message(Q, QueueMessage(data="kept"))
    with pytest.raises(InvalidMessage, match="lease"):
        manager.reserve(Q, lease=lease)
    assert "lease" in (manager.get_last_error() or "")
    status = manager.queue_status(Q)
    assert (status.messages_to_process, status.in_flight) == (1, 0)


def test_ack_checks_hold_on_a_queue_in_use(manager: QueueManager) -> None:
    in_use(manager)
    with pytest.raises(InvalidMessage, match="no uuid"):
        manager.ack(Q, QueueMessage(data=1))
    manager.add_message(Q, QueueMessage(data=1, alias="a1"))
    reserved = manager.reserve(Q, lease=600)
    assert reserved is not None
    manager.ack(Q, reserved, processed=True)
    last = manager.queue_status(Q).last_message_processed
    assert last is not None and (last.uuid, last.alias) == (reserved.uuid, "a1")
    with pytest.raises(LeaseLost):
        manager.ack(Q, reserved)
    assert "not reserved" in (manager.get_last_error() or "")
    manager.add_message(Q, QueueMessage(data=2, alias="a2"))
    reserved = manager.reserve(Q, lease=600)
    assert reserved is not None
    manager.ack(Q, reserved, processed=1)  # type: ignore[arg-type]  # any true value, as Python reads it
    last = manager.queue_status(Q).last_message_processed
    assert last is not None and last.alias == "a2"
    manager.add_message(Q, QueueMessage(data=3))
    reserved = manager.reserve(Q, lease=600)
    assert reserved is not None
    reserved.alias = 5  # type: ignore[assignment]  # a field only a processed ack reads
    manager.ack(Q, reserved)
    assert manager.queue_status(Q).in_flight == 0
