"""The file backend's own machinery: segments, checkpoints, space reclamation, recovery paths.

The contract suite checks behaviour every backend shares; these tests aim at the parts only
the file backend has, with small segments so rolls and cleanups happen within a test.
"""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import sys
import uuid as uuidlib
from datetime import datetime, timezone
from pathlib import Path

import pytest

from queue_engine import QueueFactory, QueueMessage
from queue_engine.backends.file import FileQueueManager
from queue_engine.backends.file.store import _MASK48, _MIX, _insertion_stamp, _mix48, mint_uuid, seq_of_uuid
from queue_engine.errors import LockTimeout

SMALL = 64 * 1024  # smallest segment size: rolls every few hundred messages


def open_manager(root: Path, **settings: object) -> FileQueueManager:
    settings.setdefault("fsync", "never")
    settings.setdefault("segment_size", SMALL)
    manager = QueueFactory.get_queue_manager(queue_type="file", cache_root=root, **settings)
    assert isinstance(manager, FileQueueManager)
    return manager


def segments(root: Path, queue: str = "q") -> list[str]:
    return sorted(p.name for p in (root / "queues" / queue / "log").glob("*.log"))


def payload(i: int) -> dict[str, object]:
    return {"i": i, "pad": "x" * 200}


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_every_fsync_mode_round_trips(tmp_path: Path, fsync: str) -> None:
    with open_manager(tmp_path, fsync=fsync, fsync_interval=0.01) as m:
        uuids = m.add_messages("q", [QueueMessage(data=payload(i)) for i in range(400)])  # rolls segments
        m.flush()
    with open_manager(tmp_path, fsync=fsync) as m:
        got = [m.get_message("q") for _ in range(400)]
        assert [g.uuid for g in got if g] == uuids
        assert m.get_message("q") is None


def test_space_is_reclaimed_after_a_drain(tmp_path: Path) -> None:
    with open_manager(tmp_path) as m:
        for _ in range(5):
            m.add_messages("q", [QueueMessage(data=payload(i)) for i in range(300)])
            while m.get_message("q") is not None:
                pass
        assert len(segments(tmp_path)) == 1


def test_a_long_disabled_message_does_not_pin_old_segments(tmp_path: Path) -> None:
    with open_manager(tmp_path) as m:
        held = m.add_message("q", QueueMessage(data="held", alias="h", disabled=True))
        for _ in range(10):
            m.add_messages("q", [QueueMessage(data=payload(i)) for i in range(300)])
            while m.get_message("q") is not None:
                pass
        assert len(segments(tmp_path)) <= 2  # the held message moved forward with the log
        [found] = m.find_messages("q", alias="h")
        assert (found.uuid, found.data, found.disabled) == (held, "held", True)
    with open_manager(tmp_path) as m:  # and it survives a reopen from the checkpoint
        [found] = m.find_messages("q", uuid=held)
        found.disabled = False
        m.update_message("q", found)
        got = m.get_message("q")
        assert got is not None and got.uuid == held


def test_a_process_that_lags_behind_a_cleanup_reloads_the_checkpoint(tmp_path: Path) -> None:
    laggard = open_manager(tmp_path)
    laggard.add_message("q", QueueMessage(data="first"))
    busy = open_manager(tmp_path)
    for _ in range(6):  # rolls and deletes the segments the laggard last read
        busy.add_messages("q", [QueueMessage(data=payload(i)) for i in range(300)])
        while busy.get_message("q") is not None:
            pass
    last = busy.add_message("q", QueueMessage(data="last"))
    assert "0000000001.log" not in segments(tmp_path)
    got = laggard.get_message("q")
    assert got is not None and got.uuid == last
    assert laggard.queue_status("q").messages_to_process == 0
    laggard.close()
    busy.close()


def test_no_process_keeps_deleted_segments_mapped(tmp_path: Path) -> None:
    reader = open_manager(tmp_path)
    writer = open_manager(tmp_path)
    for _ in range(6):
        writer.add_messages("q", [QueueMessage(data=payload(i)) for i in range(300)])
        while reader.get_message("q") is not None:
            pass
    # A handle learns of a cleanup at its next operation (it cannot before): do one on each.
    writer.queue_status("q")
    reader.queue_status("q")
    deleted = [
        link for link in os.listdir(f"/proc/{os.getpid()}/map_files")
        if os.readlink(f"/proc/{os.getpid()}/map_files/{link}").endswith(".log (deleted)")
    ]
    assert deleted == []
    reader.close()
    writer.close()


def test_a_message_bigger_than_a_segment(tmp_path: Path) -> None:
    big = "y" * (3 * SMALL)
    with open_manager(tmp_path) as m:
        uid = m.add_message("q", QueueMessage(data=big))
        m.add_message("q", QueueMessage(data="after"))
    with open_manager(tmp_path) as m:
        [found] = m.find_messages("q", uuid=uid)
        assert found.data == big
        assert [m.get_message("q").data for _ in range(2)] == [big, "after"]  # type: ignore[union-attr]


def test_find_by_uuid_survives_a_lost_index_entry(tmp_path: Path) -> None:
    with open_manager(tmp_path) as m:
        uuids = m.add_messages("q", [QueueMessage(data=i) for i in range(50)])
    idx = next((tmp_path / "queues" / "q" / "log").glob("*.idx"))
    with open(idx, "r+b") as fh:  # as if the writer died between the record and its index slot
        fh.seek(8)
        fh.write(b"\0" * 4 * 60)
    with open_manager(tmp_path) as m:
        assert [m.find_messages("q", uuid=u)[0].data for u in uuids[::7]] == list(range(50))[::7]


def test_reopen_after_checkpoint_matches_a_full_replay(tmp_path: Path) -> None:
    with open_manager(tmp_path) as m:
        m.add_messages("q", [QueueMessage(data=i, alias=f"a{i}") for i in range(600)])
        for _ in range(250):
            r = m.reserve("q", lease=600)
            assert r is not None
            if r.data % 3 == 0:
                m.release("q", r, delay=3600)
            else:
                m.ack("q", r)
        before = m.queue_status("q").to_dict()
    assert (tmp_path / "queues" / "q" / "checkpoint.json").exists()
    with open_manager(tmp_path) as m:
        assert m.queue_status("q").to_dict() == before
    os.unlink(tmp_path / "queues" / "q" / "checkpoint.json")  # replay whatever log is left
    with open_manager(tmp_path) as m:
        after = m.queue_status("q").to_dict()
        assert (after["ready"], after["deferred"]) == (before["ready"], before["deferred"])


def test_uuid_minting_round_trips_and_looks_random() -> None:
    key = 0x5A5A5A5A5A5A
    minted = [mint_uuid(seq, key) for seq in range(1, 200)]
    assert [seq_of_uuid(u, key) for u in minted] == list(range(1, 200))
    assert all(uuidlib.UUID(u).version == 8 for u in minted)
    assert all(str(uuidlib.UUID(u)) == u for u in minted)  # canonical form: lower case, 8-4-4-4-12
    assert seq_of_uuid(mint_uuid(0, 0), 0) == 0  # leading zero digits are kept
    assert len({u[:8] for u in minted}) > 150  # consecutive seqs do not share a prefix
    assert seq_of_uuid(str(uuidlib.uuid4()), key) is None
    assert seq_of_uuid("not-a-uuid", key) is None


def test_uuid_minting_mixes_the_seq_as_a_128_bit_product_would_and_spends_74_random_bits() -> None:
    rng = random.Random(7)
    for seq in [0, 1, 2**24 - 1, 2**24, 2**47, _MASK48, 2**48, 2**60 + 5] + [rng.getrandbits(48) for _ in range(2000)]:
        assert _mix48(seq) == (seq * _MIX) & _MASK48
    key = 0x123456789ABC
    minted = [uuidlib.UUID(mint_uuid(99, key)).int for _ in range(400)]
    assert len({u >> 80 for u in minted}) == 1  # the seq part: the same for the same seq
    random_bits = (1 << 80) - 1 ^ (0xF << 76) ^ (0b11 << 62)  # below the seq, but version and variant
    assert {u & ~random_bits & ((1 << 80) - 1) for u in minted} == {(0x8 << 76) | (0b10 << 62)}
    varied = 0
    for a in minted[1:]:
        varied |= (a ^ minted[0]) & random_bits
    assert varied == random_bits  # each of the 74 bits took both values


def test_a_lock_timeout_on_a_queue_in_use_is_raised_and_recorded(tmp_path: Path) -> None:
    """The per-message methods of an open queue go straight to its store: their errors are
    recorded for get_last_error() there too."""
    m = open_manager(tmp_path, lock_timeout=0.05)
    m.add_message("q", QueueMessage(data=1))
    m.add_message("q", QueueMessage(data=2))
    reserved = m.reserve("q", lease=600)
    assert reserved is not None
    calls = {
        "add_message": lambda: m.add_message("q", QueueMessage(data=3)),
        "get_message": lambda: m.get_message("q"),
        "reserve": lambda: m.reserve("q", lease=600),
        "ack": lambda: m.ack("q", reserved),
    }
    holder = os.open(tmp_path / "queues" / "q" / "lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: conflicts with the manager's own
        for name, call in calls.items():
            m._last_error = None
            with pytest.raises(LockTimeout, match="not acquired"):
                call()
            assert "not acquired" in (m.get_last_error() or ""), name
    finally:
        os.close(holder)
    m.ack("q", reserved)
    assert [m.get_message("q").data, m.get_message("q")] == [2, None]  # type: ignore[union-attr]
    m.close()


def test_insertion_stamp_is_the_time_it_names_remembered_for_one_millisecond() -> None:
    for now in (1_700_000_000_123, 1_700_000_000_123, 1_700_000_000_124, 0, 253_402_300_799_999):
        stamp = _insertion_stamp(now)
        assert stamp == (now, repr(now / 1000), datetime.fromtimestamp(now / 1000, timezone.utc))
    first, again = _insertion_stamp(5), _insertion_stamp(5)
    assert first[1] is again[1] and first[2] is again[2]  # the same millisecond: formatted once


def test_adds_within_one_millisecond_carry_their_own_uuid_and_the_same_time(tmp_path: Path) -> None:
    with open_manager(tmp_path) as m:
        sent = [QueueMessage(data=i) for i in range(2000)]
        for message in sent:
            m.add_message("q", message)
        got = m.find_messages("q")
    assert [g.uuid for g in got] == [s.uuid for s in sent] and len({s.uuid for s in sent}) == 2000
    assert [g.inserted_at for g in got] == [s.inserted_at for s in sent]


def test_data_directories_and_files_are_private(tmp_path: Path) -> None:
    with open_manager(tmp_path) as m:
        m.add_message("q", QueueMessage(data=1))
    qdir = tmp_path / "queues" / "q"
    assert (qdir.stat().st_mode & 0o777, (qdir / "log").stat().st_mode & 0o777) == (0o700, 0o700)
    for path in [qdir / "lock", *(qdir / "log").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o600, path


_FULL_DISK_CHILD = """
import logging, resource, signal, sys
logging.disable(logging.WARNING)
from queue_engine import QueueFactory, QueueMessage, StorageError
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=sys.argv[1], fsync="never", segment_size=65536)
m.create_queue("q")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))
added = failed = 0
for i in range(500):
    try:
        m.add_message("q", QueueMessage(data={"i": i, "pad": "x" * 200}))
        added += 1
    except StorageError as exc:
        failed += 1
        assert "file size limit exceeded" in str(exc), exc
print(added, failed)
"""


def test_a_full_disk_fails_adds_cleanly_and_loses_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120, check=True
    )
    added, failed = map(int, out.stdout.split())
    assert added > 0 and failed > 0 and added + failed == 500
    with open_manager(tmp_path) as m:  # space is back
        got = []
        while (msg := m.get_message("q")) is not None:
            got.append(msg.data["i"])
        assert got == list(range(added))  # every add that returned, in order; no partial message
        assert m.add_message("q", QueueMessage(data="again"))
    assert not (tmp_path / "queues" / "q" / "quarantine").exists()  # nothing torn was left


def test_a_symlinked_cache_root_is_refused(tmp_path: Path) -> None:
    from queue_engine import StorageError

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(StorageError, match=r"cacheRoot .*link' is a symlink"):
        open_manager(tmp_path / "link")


def test_a_symlinked_queue_folder_is_refused(tmp_path: Path) -> None:
    from queue_engine import StorageError

    with open_manager(tmp_path / "a") as m:
        m.add_message("q", QueueMessage(data=1))
    queues = tmp_path / "b" / "queues"
    queues.mkdir(parents=True)
    (queues / "q").symlink_to(tmp_path / "a" / "queues" / "q")
    with open_manager(tmp_path / "b") as m, pytest.raises(StorageError, match="is a symlink"):
        m.get_message("q")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_root_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    from queue_engine import StorageError

    root = tmp_path / "theirs"
    root.mkdir()
    os.chown(root, 65534, 65534)  # nobody
    with pytest.raises(StorageError, match="belongs to uid 65534"):
        open_manager(root)


def _can_mount_tmpfs(where: Path) -> bool:
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode
    if ok == 0:
        subprocess.run(["umount", str(where)], check=True)
    return ok == 0


def test_a_real_full_device_fails_adds_cleanly_and_recovers(tmp_path: Path) -> None:
    import subprocess

    from queue_engine import StorageError

    disk = tmp_path / "small"
    if not _can_mount_tmpfs(disk):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run this test: it needs root and a mountable tmpfs")
        pytest.skip("needs root and a mountable tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        added, errors = [], []
        with open_manager(disk / "q") as m:
            for i in range(3000):
                try:
                    m.add_message("q", QueueMessage(data={"i": i, "pad": "x" * 300}))
                    added.append(i)
                except StorageError as exc:
                    errors.append(str(exc))
        assert added and errors and all("no space left on device" in e for e in errors), errors[:3]
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space is back
        with open_manager(disk / "q") as m:
            got = []
            while (msg := m.get_message("q")) is not None:
                got.append(msg.data["i"])
            assert got == added  # every add that returned, in order; nothing partial
            assert m.add_message("q", QueueMessage(data="again"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_stored_time_beyond_datetime_range_does_not_block_the_queue(tmp_path: Path) -> None:
    """Records written before deferrals were range-checked may hold a time datetime cannot
    represent: reading them gives datetime's first or last day instead of failing every get."""
    record = {"uuid": "u", "data": 1, "deferred_until": 1e20, "inserted_at": -1e20}
    msg = QueueMessage.from_record(record)
    assert msg.deferred_until == datetime.max.replace(tzinfo=timezone.utc)
    assert msg.inserted_at == datetime.min.replace(tzinfo=timezone.utc)
    assert QueueMessage.from_record({"uuid": "u", "inserted_at": 0.5}).inserted_at == datetime.fromtimestamp(
        0.5, timezone.utc
    )


_STATUS_ON_A_FULL_DISK = """
import resource, signal, sys, time
from queue_engine import QueueFactory, QueueMessage
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=sys.argv[1], fsync="never", segment_size=65536)
m.add_message("q", QueueMessage(data=1))
assert m.reserve("q", lease=0.05) is not None
time.sleep(0.1)  # the lease ends; recording that needs a write, which now fails
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
status = m.queue_status("q")
print(status.in_flight, status.messages_to_process)
"""


def test_status_still_answers_when_recording_an_ended_lease_fails(tmp_path: Path) -> None:
    """Status records ended leases (a write) before counting; on a full disk it reports anyway."""
    proc = subprocess.run(
        [sys.executable, "-c", _STATUS_ON_A_FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1"]
