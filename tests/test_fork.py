"""A process forked while it has file-backend queues open (real fork, real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from queue_engine import QueueFactory, QueueMessage

_PARENT_DIES_HOLDING_THE_LOCK = """
import os, signal, sys, time
from queue_engine import QueueFactory, QueueMessage
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=sys.argv[1], fsync="never")
m.add_message("q", QueueMessage(data="before"))
child = os.fork()
if child == 0:  # a child that never touches the queue, and outlives its parent
    time.sleep(60)
    os._exit(0)
with open(sys.argv[2], "w") as f:
    f.write(str(child))
store = m._with_store("q")
store.__enter__()  # the queue's lock, held ...
os.kill(os.getpid(), signal.SIGKILL)  # ... when the parent dies
"""

_FORK_WHILE_A_THREAD_HOLDS_THE_QUEUE = """
import os, sys, threading, time
from queue_engine import QueueFactory, QueueMessage
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=sys.argv[1], fsync="never", lock_timeout=5)
m.add_message("q", QueueMessage(data="before"))
store, held, done = m._with_store("q"), threading.Event(), threading.Event()
def hold():
    with store._locked():
        held.set()
        done.wait(5)
threading.Thread(target=hold).start()
held.wait(5)
pid = os.fork()
if pid == 0:
    m.add_message("q", QueueMessage(data="child"))  # hung for ever on the copied thread lock
    os._exit(0)
done.set()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_child_does_not_keep_a_dead_parents_lock(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    parent = subprocess.run(
        [sys.executable, "-c", _PARENT_DIES_HOLDING_THE_LOCK, str(tmp_path), str(pidfile)], timeout=60
    )
    assert parent.returncode == -9
    m = QueueFactory.get_queue_manager(queue_type="file", cache_root=str(tmp_path), fsync="never", lock_timeout=5)
    try:
        m.add_message("q", QueueMessage(data="after"))  # LockTimeout while the child held the lock
        assert [x.data for x in m.find_messages("q")] == ["before", "after"]
    finally:
        m.close()
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_fork_while_another_thread_holds_the_queue(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _FORK_WHILE_A_THREAD_HOLDS_THE_QUEUE, str(tmp_path)], timeout=30)
    assert proc.returncode == 0
    m = QueueFactory.get_queue_manager(queue_type="file", cache_root=str(tmp_path), fsync="never")
    try:
        assert [x.data for x in m.find_messages("q")] == ["before", "child"]
    finally:
        m.close()


_RESERVE_THEN_DIE = """
import os, signal, sys
from queue_engine import QueueFactory
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=sys.argv[1], fsync="never")
assert m.reserve("q", lease=600) is not None
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_holder_that_died_but_was_not_reaped_yet_gives_its_message_back(tmp_path: Path) -> None:
    """A zombie (exited, its parent has not waited for it) holds nothing: its reservation is
    handed out again without waiting for the lease."""
    m = QueueFactory.get_queue_manager(queue_type="file", cache_root=str(tmp_path), fsync="never")
    try:
        uid = m.add_message("q", QueueMessage(data=1))
        holder = subprocess.Popen([sys.executable, "-c", _RESERVE_THEN_DIE, str(tmp_path)])
        deadline = time.monotonic() + 30
        while Path(f"/proc/{holder.pid}/stat").read_bytes().split(b") ")[1][:1] != b"Z":  # reserved, dead, unreaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        again = None
        while again is None:  # dead holders are looked for about once a second
            assert time.monotonic() < deadline, "the zombie's reservation was not given back"
            again = m.reserve("q", lease=600)
            time.sleep(0.05)
        assert (again.uuid, again.attempts) == (uid, 2)
    finally:
        m.close()
        holder.wait()


_FORK_WITH_A_BATCH_QUEUE_OPEN = """
import os, sys, threading
from queue_engine import QueueFactory, QueueMessage
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=sys.argv[1], fsync="batch")
m.add_message("q", QueueMessage(data="parent"))
inherited = m._with_store("q")
pid = os.fork()
if pid == 0:
    # the parent's descriptors were let go at the fork, before any code of the child ran
    closed = (inherited._lock_fd, inherited._segments) == (-1, {})
    m.add_message("q", QueueMessage(data="child"))
    own = m._with_store("q") is not inherited and m._flusher.pid == os.getpid()
    flushing = any(t.name == "qengine-fsync" and t.is_alive() for t in threading.enumerate())
    reused = inherited.get().data == "parent"  # a handle kept from the parent still works
    os._exit(0 if closed and own and flushing and reused else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_child_opens_its_own_handles_and_fsync_thread(tmp_path: Path) -> None:
    """After a fork the child drops the parent's handles: its first use of a queue opens one
    of its own (which also starts the child's fsync=batch thread)."""
    proc = subprocess.run([sys.executable, "-c", _FORK_WITH_A_BATCH_QUEUE_OPEN, str(tmp_path)], timeout=60)
    assert proc.returncode == 0
    m = QueueFactory.get_queue_manager(queue_type="file", cache_root=str(tmp_path), fsync="never")
    try:
        assert [x.data for x in m.find_messages("q")] == ["child"]
    finally:
        m.close()
