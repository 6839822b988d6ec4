"""Engine metadata per queue (hooks, catalogue, topics): kept apart from what status shows."""

from __future__ import annotations

import pytest

from queue_engine import InvalidMessage, QueueManager, QueueNotFound

Q = "jobs"


def test_meta_set_delete_and_kept_out_of_status(manager: QueueManager) -> None:
    manager.create_queue(Q, owner="ops")
    assert manager.queue_meta(Q) == {}
    hooks = [{"url": "http://127.0.0.1:9/h", "secret": "s3cret"}]
    assert manager.update_queue_meta(Q, {"hooks": hooks, "topics": []}) == {"hooks": hooks, "topics": []}
    assert manager.update_queue_meta(Q, {"catalog": {"manual": False}}) == {
        "hooks": hooks, "topics": [], "catalog": {"manual": False},
    }
    assert manager.update_queue_meta(Q, {"hooks": None}) == {"topics": [], "catalog": {"manual": False}}
    status = manager.queue_status(Q).to_dict()
    assert status["custom_attributes"] == {"owner": "ops"}
    assert "s3cret" not in str(status)


def test_meta_of_a_missing_queue(manager: QueueManager) -> None:
    with pytest.raises(QueueNotFound):
        manager.queue_meta("nope")
    with pytest.raises(QueueNotFound):
        manager.update_queue_meta("nope", {"a": 1})


def test_meta_must_be_json(manager: QueueManager) -> None:
    manager.create_queue(Q)
    with pytest.raises(InvalidMessage):
        manager.update_queue_meta(Q, {"a": {1, 2}})
    assert manager.queue_meta(Q) == {}
