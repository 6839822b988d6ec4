"""SIGKILL inside a segment roll, while another process has the queue open.

A roll seals segment N and starts segment N+1. A writer killed between the two steps must
leave a log that every process, already open or opened afterwards, reads the same way: each
add that returned is delivered exactly once. (Written after an audit found the opposite
order, create then seal, let a process opened after the crash write into N+1 while the
processes open before it kept writing into N.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from queue_engine import QueueFactory, QueueManager, QueueMessage

SEGMENT = 64 * 1024

_VICTIM = """
import os, pathlib, signal, sys, time
from queue_engine import QueueFactory, QueueMessage
from queue_engine.backends.file.records import HEADER_SIZE, RecordType, read_header
root, point, journal, fsync, ready, go = sys.argv[1:7]
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=root, fsync=fsync, segment_size=65536)
out = open(journal, "a")
def add(pad):
    out.write(m.add_message("q", QueueMessage(data={"by": "victim", "pad": pad})) + "\\n")
    out.flush()
add("v")
handle = m._with_store("q")
while True:  # fill segment 1 until a big message cannot fit, without rolling
    segno, off = handle.view.position
    if off + 1500 > handle._segments[segno].size:
        break
    add("v" * 150)
pathlib.Path(ready).touch()  # the test syncs its open handle to this point
while not os.path.exists(go):
    time.sleep(0.01)
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
# Kill points through the os module: the compiled build binds its own functions early,
# but looks up os.pwrite and os.replace at each call, as pure Python does.
if point == "after-seal":
    pwrite = os.pwrite
    def sealing(fd, data, offset):
        written = pwrite(fd, data, offset)
        header = read_header(bytes(data), 0) if len(data) >= HEADER_SIZE else None
        if header is not None and header.type == RecordType.SEAL:
            die()
        return written
    os.pwrite = sealing
else:  # after the next segment was created, before the roll is applied
    replace = os.replace
    def creating(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if str(dst).endswith(".log"):
            die()
    os.replace = creating
add("x" * 3000)  # does not fit: rolls, and dies inside the roll
"""

_FRESH = """
import sys
from queue_engine import QueueFactory, QueueMessage
root, journal, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=root, fsync=sys.argv[4], segment_size=65536)
with open(journal, "a") as out:
    for i in range(n):
        out.write(m.add_message("q", QueueMessage(data={"by": "fresh", "i": i, "pad": "f" * 150})) + "\\n")
m.close()
"""


def _manager(root: Path, fsync: str) -> QueueManager:
    return QueueFactory.get_queue_manager(queue_type="file", cache_root=str(root), fsync=fsync, segment_size=SEGMENT)


def _fresh(root: Path, journal: Path, n: int, fsync: str) -> None:
    subprocess.run([sys.executable, "-c", _FRESH, str(root), str(journal), str(n), fsync], check=True, timeout=120)


@pytest.mark.parametrize("fsync", ["never", "always"])
@pytest.mark.parametrize("point", ["after-seal", "after-create"])
def test_a_roll_cut_short_loses_nothing_and_splits_nothing(tmp_path: Path, point: str, fsync: str) -> None:
    root, journal = tmp_path / "data", tmp_path / "added.txt"
    journal.touch()
    opened = _manager(root, fsync)  # open before the crash, and kept open across it
    opened.create_queue("q")
    ready, go = tmp_path / "ready", tmp_path / "go"
    argv = [sys.executable, "-c", _VICTIM, str(root), point, str(journal), fsync, str(ready), str(go)]
    victim = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert victim.poll() is None and time.monotonic() < deadline, "the victim did not fill its segment"
            time.sleep(0.01)
        assert opened.queue_status("q").ready > 100  # the open handle has read segment 1 to its end
        go.touch()
        assert victim.wait(timeout=60) == -signal.SIGKILL  # killed inside its first roll
    finally:
        victim.kill()

    _fresh(root, journal, 300, fsync)  # a process opened after the crash writes first ...
    with journal.open("a") as out:  # ... then the one opened before it ...
        for i in range(300):
            out.write(opened.add_message("q", QueueMessage(data={"by": "open", "i": i, "pad": "o" * 150})) + "\n")
    _fresh(root, journal, 300, fsync)  # ... then another new one, across further rolls
    added = journal.read_text().split()

    delivered: list[str] = []
    reader = _manager(root, fsync)
    while (got := reader.get_message("q")) is not None:
        assert got.uuid is not None
        delivered.append(got.uuid)
    reader.close()
    assert opened.get_message("q") is None  # the process open across the crash agrees
    opened.close()
    assert len(delivered) == len(set(delivered)), "a message was handed out twice"
    assert sorted(delivered) == sorted(added), f"{len(set(added) - set(delivered))} returned adds lost"
    assert not [p for p in os.listdir(root / "queues" / "q" / "log") if p.endswith(".tmp")]


_KILLED_BEFORE_CLEANUP = """
import os, signal, sys
from queue_engine import QueueFactory, QueueMessage
if sys.argv[2] == "die":
    unlink = os.unlink
    def dying(path, *args, **kwargs):
        if str(path).endswith(".log"):  # the checkpoint that dropped the segment is in place
            os.kill(os.getpid(), signal.SIGKILL)
        return unlink(path, *args, **kwargs)
    os.unlink = dying
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=sys.argv[1], fsync="never", segment_size=65536)
for _ in range(20):
    m.add_messages("q", [QueueMessage(data={"pad": "x" * 200}) for _ in range(400)])
    while m.get_message("q") is not None:
        pass
m.close()
"""


def test_segments_left_by_a_kill_before_their_deletion_are_reclaimed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for _ in range(3):
        killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_CLEANUP, str(root), "die"], timeout=120)
        assert killed.returncode == -signal.SIGKILL
    assert len(list((root / "queues" / "q" / "log").glob("*.log"))) > 2  # the kills left segments behind
    subprocess.run([sys.executable, "-c", _KILLED_BEFORE_CLEANUP, str(root), "live"], timeout=120, check=True)
    m = _manager(root, "never")
    try:
        assert m.queue_status("q").messages_to_process == 0
    finally:
        m.close()
    left = sorted(p.name for p in (root / "queues" / "q" / "log").glob("*.log"))
    assert len(left) == 1, left  # the drained queue is back to one segment
