"""export_messages / import_messages: moving a queue between backends keeps everything."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from queue_engine import DuplicateAlias, FailedMessage, QueueFactory, QueueManager, QueueMessage

Q = "jobs"
LONG = 600.0


def _fill(manager: QueueManager) -> dict[str, str]:
    """A queue with every kind of message; returns name -> uuid."""
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    uuids = {
        "plain": manager.add_message(Q, QueueMessage(data={"n": 1})),
        "aliased": manager.add_message(Q, QueueMessage(data={"n": 2}, alias="k", username="mario")),
        "deferred": manager.add_message(Q, QueueMessage(data={"n": 3}, deferred_until=later)),
        "disabled": manager.add_message(Q, QueueMessage(data={"n": 4}, disabled=True)),
        "doomed": manager.add_message(Q, QueueMessage(data={"n": 5})),
        "reserved": manager.add_message(Q, QueueMessage(data={"n": 6})),
    }
    # fail "plain" (the first eligible) after one retry, keep "aliased" in flight
    first = manager.reserve(Q, lease=LONG)
    assert first is not None and first.uuid == uuids["plain"]
    manager.release(Q, first, error="once")
    first = manager.reserve(Q, lease=LONG)
    assert first is not None
    manager.fail(Q, first, "twice")
    held = manager.reserve(Q, lease=LONG)
    assert held is not None and held.uuid == uuids["aliased"]
    return uuids


@pytest.fixture(params=["file", "memory"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueManager]:
    manager = QueueFactory.get_queue_manager(queue_type=request.param, cache_root=tmp_path / "dest", fsync="never")
    yield manager
    manager.close()


def test_export_lists_pending_in_order_then_failed(manager: QueueManager) -> None:
    uuids = _fill(manager)
    exported = manager.export_messages(Q)
    pending = [m.uuid for m in exported if isinstance(m, QueueMessage)]
    failed = [m for m in exported if isinstance(m, FailedMessage)]
    assert pending == [uuids[k] for k in ("aliased", "deferred", "disabled", "doomed", "reserved")]
    assert [(f.message.uuid, f.errors, f.message.attempts) for f in failed] == [(uuids["plain"], ["once", "twice"], 2)]


def test_import_recreates_the_queue_on_any_backend(manager: QueueManager, destination: QueueManager) -> None:
    uuids = _fill(manager)
    exported = manager.export_messages(Q)
    assert destination.import_messages(Q, exported) == 6
    status = destination.queue_status(Q)
    assert (status.ready, status.deferred, status.disabled, status.failed, status.in_flight) == (3, 1, 1, 1, 0)
    [found] = destination.find_messages(Q, alias="k")
    assert (found.uuid, found.data, found.username) == (uuids["aliased"], {"n": 2}, "mario")
    [original] = manager.find_messages(Q, uuid=uuids["deferred"])
    [copy] = destination.find_messages(Q, uuid=uuids["deferred"])
    assert (copy.deferred_until, copy.inserted_at) == (original.deferred_until, original.inserted_at)
    [failed] = destination.failed_messages(Q)
    [source_failed] = manager.failed_messages(Q)
    assert (failed.message.uuid, failed.errors) == (uuids["plain"], ["once", "twice"])
    assert abs((failed.failed_at - source_failed.failed_at).total_seconds()) < 0.01
    got = [destination.get_message(Q) for _ in range(4)]
    assert [g.uuid if g else None for g in got] == [uuids["aliased"], uuids["doomed"], uuids["reserved"], None]
    assert destination.requeue_failed(Q) == [uuids["plain"]]


def test_import_again_adds_nothing(manager: QueueManager, destination: QueueManager) -> None:
    _fill(manager)
    exported = manager.export_messages(Q)
    assert destination.import_messages(Q, exported[:3]) == 3  # an interrupted first run
    assert destination.import_messages(Q, exported) == len(exported) - 3
    assert destination.import_messages(Q, exported) == 0
    assert len(destination.export_messages(Q)) == len(exported)


def test_import_alias_conflict_adds_nothing(manager: QueueManager, destination: QueueManager) -> None:
    _fill(manager)
    destination.add_message(Q, QueueMessage(data="already here", alias="k"))
    with pytest.raises(DuplicateAlias):
        destination.import_messages(Q, manager.export_messages(Q))
    assert len(destination.export_messages(Q)) == 1


def test_import_needs_uuids(manager: QueueManager) -> None:
    from queue_engine import InvalidMessage

    with pytest.raises(InvalidMessage):
        manager.import_messages(Q, [QueueMessage(data=1)])
