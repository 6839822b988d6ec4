"""A handle applies the records it writes itself; every other handle reads them from the log.

On the hot paths (add of a ready message, get and reserve of the stream's head, ack, the
last processed message) the writer changes its view directly instead of parsing back the
record it just wrote. These
tests hold that shortcut to the rule every process relies on: the view is a function of the
log. After any sequence of operations through one handle, a second handle that only read the
log must hold exactly the same view.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_engine import QueueFactory, QueueMessage
from queue_engine.backends.file import FileQueueManager
from queue_engine.errors import QueueEngineError

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3)),  # 0: ready, 1: alias, 2: deferred, 3: disabled
        st.tuples(st.just("add_batch"), st.integers(1, 3)),
        st.tuples(st.just("get"), st.just(0)),
        st.tuples(st.just("reserve"), st.just(0)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("ack_processed"), st.integers(0, 5)),
        st.tuples(st.just("processed"), st.integers(0, 20)),
        st.tuples(st.just("release"), st.integers(0, 5)),
        st.tuples(st.just("fail"), st.integers(0, 5)),
        st.tuples(st.just("remove"), st.integers(0, 20)),
        st.tuples(st.just("update"), st.integers(0, 20)),
    ),
    max_size=60,
)


def _manager(root: Path) -> FileQueueManager:
    m = QueueFactory.get_queue_manager(queue_type="file", cache_root=root, fsync="never")
    assert isinstance(m, FileQueueManager)
    return m


def _view(m: FileQueueManager) -> dict[str, Any]:
    store = m._store("q")
    assert store is not None
    with store._locked() as view:  # brings the view up to date with the log
        # The stream cursor and its holes are a cache of how far this handle has scanned:
        # scan to the head on both sides, then only holes after the head carry meaning.
        store._limit = view.position
        store.ensure_head()
        state = view.to_json()
        state["holes"] = sorted(h for h in view.holes if view.head_loc is not None and h > view.head_seq)
        state["counts"] = view.counts(0)
        state["n_failed"] = view.n_failed
        return state


def _run(writer: FileQueueManager, ops: list[tuple[str, int]]) -> None:
    uuids: list[str] = []
    held: list[QueueMessage] = []
    for n, (op, arg) in enumerate(ops):
        try:
            if op == "add":
                msg = QueueMessage(data={"n": n})
                if arg == 1:
                    msg = QueueMessage(data={"n": n}, alias=f"a{n % 4}")
                elif arg == 2:
                    msg = QueueMessage(data=n, deferred_until=datetime.now(timezone.utc) + timedelta(hours=1))
                elif arg == 3:
                    msg = QueueMessage(data=n, disabled=True)
                uuids.append(writer.add_message("q", msg, on_duplicate="replace"))
            elif op == "add_batch":
                uuids += writer.add_messages("q", [QueueMessage(data=[n, i]) for i in range(arg)])
            elif op == "get":
                writer.get_message("q")
            elif op == "reserve":
                got = writer.reserve("q", lease=600)
                if got is not None:
                    held.append(got)
            elif held and op in ("ack", "ack_processed", "release", "fail"):
                msg = held.pop(arg % len(held))
                if op == "ack":
                    writer.ack("q", msg)
                elif op == "ack_processed":  # the ACK and a STATUS record in one group
                    writer.ack("q", msg, processed=True)
                elif op == "release":
                    writer.release("q", msg, error="again")
                else:
                    writer.fail("q", msg, "broken")
            elif uuids and op == "processed":
                writer.update_last_message_processed("q", QueueMessage(data=None, uuid=uuids[arg % len(uuids)]))
            elif uuids and op == "remove":
                writer.remove_message("q", uuids[arg % len(uuids)])
            elif uuids and op == "update":
                found = writer.find_messages("q", uuid=uuids[arg % len(uuids)])
                if found:
                    found[0].data = {"updated": n}
                    writer.update_message("q", found[0])
        except QueueEngineError:
            pass  # e.g. updating a message in flight: refused, nothing written


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_the_writers_view_equals_a_readers_view(tmp_path_factory: Any, ops: list[tuple[str, int]]) -> None:
    root = tmp_path_factory.mktemp("own")
    with _manager(root) as writer, _manager(root) as reader:
        writer.create_queue("q")
        _view(reader)  # the reader opens now and from then on only replays what was written
        _run(writer, ops)
        assert _view(writer) == _view(reader)
    with _manager(root) as fresh:  # and a handle opened afterwards (checkpoint + replay)
        with _manager(root) as writer:
            assert _view(fresh) == _view(writer)


def test_a_reservation_is_ackable_through_any_handle(tmp_path: Path) -> None:
    """The writer remembers the seqs of its own reservations; other handles find them by uuid."""
    with _manager(tmp_path) as a, _manager(tmp_path) as b:
        a.add_messages("q", [QueueMessage(data=i) for i in range(3)])
        first, second = a.reserve("q", lease=60), a.reserve("q", lease=60)
        assert first is not None and second is not None
        b.ack("q", first)  # b never saw this reservation
        a.ack("q", second.uuid or "")  # a did, and acks it by uuid alone
        assert a.queue_status("q").in_flight == 0
        assert [m.data for m in b.find_messages("q")] == [2]
