"""One queue on disk: its lock, its log, its checkpoint, and the operations on it.

Layout of ``<cacheRoot>/queues/<name>/``::

    lock                 flock target, held only for the length of one operation
    log/NNNNNNNNNN.log   segments of the append-only log (see records.py, segments.py)
    log/NNNNNNNNNN.idx   seq -> offset index of each segment's ADD records
    checkpoint.json      a serialized view and the log position it reflects
    quarantine/          damaged bytes cut from the log, kept for inspection

Concurrency: a ``threading.Lock`` orders the threads of one process, then ``flock`` on a
descriptor held open orders processes (filelock's FileLock reopens its file on every
acquire, which would cap the hot path at ~10k ops/s). Under the lock a process first applies
every record other processes appended since its last operation (``_sync``), so its view is
current, then appends its own records with one ``pwrite`` and applies them the same way.

Crash safety: a record is valid only when complete with a matching CRC, and records that
must appear together are one group; what a killed writer left half-written at the tail is
cut off (and kept in ``quarantine/``) by the next lock holder. Segment files are created
whole and renamed into place; checkpoints are written to a temporary file, fsynced and
renamed. Old segments are deleted only after a durable checkpoint no longer needs them.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import heapq
import json
import logging
import os
import random
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Literal

from ... import codec
from ...codec import string_or_null
from ...errors import (
    CorruptionError,
    DuplicateAlias,
    LeaseLost,
    LockTimeout,
    MessageInFlight,
    MessageNotFound,
    StorageError,
)
from ...manager import MessageFilter
from ...message import _DEFERRED, ExecutionMode, QueueMessage, encode_data, from_epoch
from ...permissions import PRIVATE, Modes, check_data_dir
from ...process import start_ticks
from ...status import FailedMessage, MessageRef, QueueStatus
from .records import HEADER_SIZE, MAGIC, Flag, Header, RecordType, encode, read_header
from .records import check as check_record
from .segments import MIN_ADD_SIZE, Segment, create_segment, fsync_dir, segment_path
from .view import FAILED, INFLIGHT, WAITING, Entry, Loc, QueueView

logger: Final = logging.getLogger("qengine.file")

__all__ = ["QueueStore", "mint_uuid", "seq_of_uuid", "init_queue_dir"]

_SEAL: Final = encode(RecordType.SEAL, 0)
_CHECKPOINT_BYTES: Final = 4 * 1024 * 1024  # log written between checkpoints (bounds replay at open)
_HOLDER_CHECK_INTERVAL: Final = 1.0
_SPIN: Final = 0.00005  # seconds a waiter for the lock tries without sleeping (see _flock)
_MAX_LEASES: Final = 4096  # reservations remembered per handle (a cache)
_LOCK_EX_NB: Final = fcntl.LOCK_EX | fcntl.LOCK_NB
_LOCK_UN: Final = fcntl.LOCK_UN
# Bound once: the compiled build keeps Final names in C statics (see records._crc32).
_flock_fd: Final = fcntl.flock
_time: Final = time.time
_getrandbits: Final = random.getrandbits
_NOTHING_CHECKED: Final = (0, -1, Header(0, 0, 0, 0, 0, 0, 0))
_UTC: Final = timezone.utc
_NO_BODY: Final = memoryview(b"")  # the body of every record without one (never released)
_MASK48: Final = (1 << 48) - 1
_MIX: Final = 0x9E3779B97F4B & _MASK48 | 1  # odd, so multiplying by it is invertible mod 2**48
_UNMIX: Final = pow(_MIX, -1, 1 << 48)
_MASK24: Final = (1 << 24) - 1
_MIX_LO: Final = _MIX & _MASK24
_MIX_HI: Final = _MIX >> 24


# -- uuids ----------------------------------------------------------------------------------
def mint_uuid(seq: int, key: int) -> str:
    """An RFC 9562 version-8 UUID carrying ``seq`` (masked by the queue's ``key``) and 74 random bits.

    Finding a message by uuid then needs no index: the seq locates its record, and the full
    uuid stored in the record confirms it. The per-queue key keeps uuids looking random and
    does not reveal how many messages a queue has seen.
    """
    return uuid_seq_part(seq, key) + uuid_random_part()


def uuid_seq_part(seq: int, key: int) -> str:
    """The first 13 characters of :func:`mint_uuid`'s uuid: ``seq`` mixed and masked (48 bits)."""
    return (_mix48(seq) ^ key).to_bytes(6, "big").hex("-", -4)


def uuid_random_part() -> str:
    """The last 23 characters of :func:`mint_uuid`'s uuid: version, variant and 74 random bits
    (a writer draws them before it takes the lock, which the seq part needs)."""
    r1, r2, r3 = _getrandbits(32), _getrandbits(32), _getrandbits(10)
    version = 0x8000 | (r3 << 2) | (r1 >> 30)  # version 8, then 12 random bits
    variant = 0x8000 | ((r1 >> 16) & 0x3FFF)  # variant 0b10, then 14 random bits
    # ints that each fit a machine word: cheaper than one 128-bit int and its text
    low = (r1 & 0xFFFF) << 32 | r2  # 48 random bits
    return "-" + (version << 16 | variant).to_bytes(4, "big").hex("-", 2) + "-" + low.to_bytes(6, "big").hex()


def _mix48(seq: int) -> int:
    """``(seq * _MIX) % 2**48``, computed on 24-bit halves so no product exceeds 48 bits."""
    lo = seq & _MASK24
    hi = (seq >> 24) & _MASK24
    return (lo * _MIX_LO + (((hi * _MIX_LO + lo * _MIX_HI) & _MASK24) << 24)) & _MASK48


def seq_of_uuid(uuid: str, key: int) -> int | None:
    """The seq a uuid minted by :func:`mint_uuid` with ``key`` carries, or None for any other string."""
    try:
        value = int(uuid.replace("-", ""), 16) if len(uuid) == 36 else -1
    except ValueError:
        return None
    if value < 0 or (value >> 76) & 0xF != 8 or (value >> 62) & 0b11 != 0b10:
        return None
    return (((value >> 80) ^ key) * _UNMIX) & _MASK48


def _now_ms() -> int:
    return int(_time() * 1000)


_stamp: tuple[int, str, datetime] = (-1, "", datetime.fromtimestamp(0, _UTC))


def _insertion_stamp(now: int) -> tuple[int, str, datetime]:
    """(``now``, its text as a record's ``inserted_at``, its datetime) for a time in ms.

    Remembered for the last millisecond: a busy producer adds many messages within one, and
    formatting a float and building a datetime cost more than the rest of an add's body.
    """
    global _stamp
    stamp = _stamp
    if stamp[0] != now:
        inserted = now / 1000
        stamp = _stamp = (now, repr(inserted), datetime.fromtimestamp(inserted, _UTC))
    return stamp


_forks = 0  # forks between the first process and this one: a handle opened in another is stale


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


_own_token: tuple[int, str] = (0, "")


def _own_process_token(pid: int) -> str:
    """This process's token (``pid`` is this process's, known to the caller), read once per process."""
    global _own_token
    if _own_token[0] != pid:
        _own_token = (pid, _process_token(pid) or f"{pid}:0")
    return _own_token[1]


def _process_token(pid: int) -> str | None:
    """``pid:starttime`` identifying a live process (a recycled pid has another start time)."""
    ticks = start_ticks(pid)
    return None if ticks is None else f"{pid}:{ticks}"


def init_queue_dir(path: Path, attributes: dict[str, Any], segment_size: int, modes: Modes) -> None:
    """Lay out an empty queue at ``path`` (a new, private folder)."""
    modes.mkdir(path / "log")
    fd = modes.open(path / "lock", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    now = _now_ms()
    head = encode(RecordType.SEGMENT, 1, ts=now) + encode(
        RecordType.CREATE,
        0,
        json.dumps({"attributes": attributes, "uuid_key": random.getrandbits(48)}).encode(),
        ts=now,
    )
    create_segment(path / "log", 1, segment_size, 1, head, modes)


class QueueStore:
    """An open queue. Thread-safe; after ``fork`` the child reopens its own descriptors."""

    def __init__(
        self, name: str, path: Path, *, fsync: str, lock_timeout: float, segment_size: int, modes: Modes = PRIVATE
    ) -> None:
        self.name = name
        self.path = path
        self.log_dir = path / "log"
        self.fsync = fsync
        self.lock_timeout = lock_timeout
        self.segment_size = segment_size
        self.modes = modes
        self._mutex = threading.Lock()
        self._pid = -1
        self._opened_in = -1  # the value of the module's _forks when this handle opened its files
        self._lock_fd = -1
        self._segments: dict[int, Segment] = {}
        self._seg_starts: list[tuple[int, int]] = []  # sorted (first_seq, segno)
        self.view = QueueView()
        self._limit: Loc = (1, 0)
        self._since_checkpoint = 0
        self._last_holder_check = 0.0
        self._loaded = False
        self._cleaning = False
        self._top = 0  # highest segment number known to exist
        self._next_of: dict[int, int] = {}  # segment -> the one that follows it, where not n+1
        self._reload_on_missing = False
        #: (segno, offset, header) of a record whose CRC was checked under the current lock
        self._checked: tuple[int, int, Header] = _NOTHING_CHECKED
        #: uuid -> seq of messages reserved through this handle (a cache: saves parsing the uuid)
        self._leases: dict[str, int] = {}
        self.dirty = False  # written since the last fdatasync (fsync=batch)
        self.closed = False
        with self._locked():
            pass  # opening = loading the checkpoint and replaying the log

    # -- lifecycle ----------------------------------------------------------------------
    def _open(self) -> None:
        self._close_files()
        check_data_dir(self.path, f"queue {self.name!r} folder", self.modes)
        if not self.log_dir.is_dir():
            raise StorageError(f"queue {self.name!r} vanished while opening it")
        # O_CREAT: a deleted lock file is recreated (it holds no data, only the flock)
        try:
            self._lock_fd = self.modes.open(self.path / "lock", os.O_RDWR | os.O_CREAT)
        except OSError as exc:  # readers lock too: a queue needs read and write access
            raise StorageError(
                f"queue {self.name!r}: cannot open {str(self.path / 'lock')!r} for reading and writing: {exc.strerror}"
            ) from None
        self._pid = os.getpid()
        self._opened_in = _forks
        self.view = QueueView()
        self._loaded = False

    def _load(self) -> None:
        """Under the lock: start from the checkpoint (or the first segment) and replay."""
        view = self._read_checkpoint()
        if view is None:
            view = QueueView()
            first = self._oldest_segment()
            view.position = view.cursor = (first, 0)
        self.view = view
        self._seg_starts = sorted((first, segno) for segno, first in view.segments.items())
        self._top = max((int(p.stem) for p in self.log_dir.glob("*.log") if p.stem.isdigit()), default=0)
        self._next_of = {}
        self._loaded = True

    def _read_checkpoint(self) -> QueueView | None:
        try:
            raw = (self.path / "checkpoint.json").read_bytes()
            data = json.loads(raw)
            view = QueueView.from_json(data)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            self._quarantine_file(self.path / "checkpoint.json", f"unreadable checkpoint: {exc}")
            return None
        if not segment_path(self.log_dir, view.position[0]).exists():
            return None  # stale checkpoint (should not happen): replay from what exists
        return view

    def _oldest_segment(self) -> int:
        numbers = sorted(int(p.stem) for p in self.log_dir.glob("*.log") if p.stem.isdigit())
        if numbers:
            return numbers[0]
        # Every segment is gone (deleted by hand, lost with a disk): report it, start afresh.
        self._note("no log segment left: starting a new log", self.log_dir, 0, 0)
        create_segment(
            self.log_dir, 1, self.segment_size, 1, encode(RecordType.SEGMENT, 1, ts=_now_ms()), self.modes
        )
        return 1

    def after_fork_in_child(self) -> None:
        """In a child just forked: let go of what was the parent's, before anything else runs.

        The flock belongs to the descriptor the child inherited: kept open, it would hold the
        queue locked after the parent died. A mutex some other thread of the parent held
        would stay held for ever. (Later, descriptors may have been closed and their numbers
        reused, by a daemon library for example: this is the only safe moment.)
        """
        self._mutex = threading.Lock()
        self._close_files(owned=True)

    def opened_here(self) -> bool:
        """Whether this process opened the handle's files (not a parent it was forked from)."""
        return self._opened_in == _forks

    def _close_files(self, owned: bool = False) -> None:
        """Close the segments and the lock descriptor (that one only if this process opened
        it, or ``owned``: a descriptor number a child inherited may since have been reused)."""
        for seg in self._segments.values():
            seg.close()
        self._segments.clear()
        if self._lock_fd >= 0 and (owned or self.opened_here()):
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
        self._lock_fd = -1

    def close(self) -> None:
        with self._mutex:
            if self.closed:
                return
            if self.opened_here() and self.dirty and self.fsync != "never":
                self.flush_locked()
            self.closed = True
            self._close_files()

    def flush_locked(self) -> None:
        """fdatasync the current segment (caller holds ``_mutex`` or accepts a race)."""
        seg = self._segments.get(self.view.position[0])
        self.dirty = False
        if seg is not None and seg.fd >= 0:
            try:
                os.fdatasync(seg.fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise StorageError(f"cannot sync {str(seg.path)!r}: {exc.strerror}") from None

    # -- locking and syncing ------------------------------------------------------------
    def _locked(self) -> QueueStore:
        """``with store._locked() as view:`` holds the queue lock with the view up to date."""
        return self

    def __enter__(self) -> QueueView:
        self._mutex.acquire()
        try:
            if self.closed:
                raise StorageError(f"queue {self.name!r} is closed")
            if not self.opened_here():
                self._open()  # new process (fork): descriptors and flock are not ours
            try:
                _flock_fd(self._lock_fd, _LOCK_EX_NB)
            except BlockingIOError:
                self._flock()
        except BaseException:
            self._mutex.release()
            raise
        self._checked = _NOTHING_CHECKED  # a new lock hold checks what it reads again
        try:
            if not self._loaded:
                self._load()
            self._sync()
        except BaseException:
            self.__exit__()
            raise
        return self.view

    def __exit__(self, *exc: object) -> None:
        try:
            if len(self._segments) > 2:
                self._unmap_idle()
            _flock_fd(self._lock_fd, _LOCK_UN)
        finally:
            self._mutex.release()

    # The store is its own lock guard, used through _locked(): cheaper on every operation
    # than @contextmanager or a separate guard object.

    def _flock(self) -> None:
        """Wait for the queue's flock, which another process holds (see :meth:`__enter__`)."""
        fd = self._lock_fd
        # The holder keeps the lock for microseconds: keep trying, yielding the CPU between
        # tries, for _SPIN seconds, then back off gently. Sleeping at once costs a timer's
        # slack (50 us or more) to wait out a hold of a few microseconds.
        now = time.monotonic()
        deadline = now + self.lock_timeout
        spin_until = now + _SPIN
        delay = 0.0
        while True:
            if delay:
                time.sleep(delay)
            else:
                os.sched_yield()
            try:
                _flock_fd(fd, _LOCK_EX_NB)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            if now > deadline:
                raise LockTimeout(
                    f"queue {self.name!r}: lock {str(self.path / 'lock')!r} not acquired within {self.lock_timeout}s"
                )
            if now > spin_until:
                delay = min(max(delay * 2, 0.00005), 0.002)

    def _segment(self, segno: int) -> Segment:
        seg = self._segments.get(segno)
        if seg is None:
            try:
                seg = Segment(self.log_dir, segno)
            except (ValueError, OSError) as exc:  # empty file (mmap refuses), bad index, ...
                if isinstance(exc, FileNotFoundError):
                    raise
                raise CorruptionError(f"queue {self.name!r}: segment {segno} cannot be opened: {exc}") from None
            if segno > self._top:
                self._top = segno
            self._segments[segno] = seg
        return seg

    def _unmap_idle(self) -> None:
        """Keep mapped only the head's and the tail's segments (at the end of an operation,
        when nothing holds a segment).

        Mapped pages count in the process's memory, and a mapping keeps a deleted file's
        space allocated; anything else (a deferred message's body, a lookup by uuid) is
        mapped again when it is read.
        """
        keep = (self.view.cursor[0], self.view.position[0])
        for segno in [n for n in self._segments if n not in keep]:
            self._segments.pop(segno).close()

    def _sync(self) -> None:
        """Apply every complete record after ``view.position``; cut a torn tail."""
        segno, off = self.view.position
        seg = self._segments.get(segno)
        if seg is not None and segno >= self._top and off + HEADER_SIZE <= seg.size:
            mm = seg.mm
            if mm[off] == 0 and mm[off + 1] == 0:
                return  # the usual case: nobody wrote since our last operation
        self._reload_on_missing = True
        try:
            self._replay()
        except FileNotFoundError:
            # A segment we still had to read was deleted by another process's cleanup, which
            # only happens after a newer checkpoint was written: restart from that. Whatever
            # is still missing then was lost to damage and is skipped (and reported).
            self._load()
            self._reload_on_missing = False
            self._replay()
        finally:
            self._reload_on_missing = False

    def _replay(self) -> None:
        view = self.view
        segno, off = view.position
        seg = self._segment(segno)
        applied = 0
        while True:
            h = self._record(seg, off)
            if h is None:
                nxt = self._after_end(seg, off)
                if nxt is None:
                    break  # the normal case: the end of what has been written
                seg, off = nxt, 0
                view.position = (seg.segno, 0)
                continue
            if h.flags & Flag.CONTINUED:
                group = self._read_group(seg, off)
                if group is None:
                    self._cut_tail(seg, off, "incomplete record group")
                    break
                for gh, goff in group:
                    self._apply(gh, (seg.segno, goff), seg.mm)
                end = group[-1][1] + HEADER_SIZE + group[-1][0].length
                applied += end - off
                off = end
                view.position = (seg.segno, off)
                continue
            self._apply(h, (seg.segno, off), seg.mm)
            end = off + HEADER_SIZE + h.length
            applied += end - off
            if h.type == RecordType.SEAL:
                seg, off = self._segment_after(seg.segno), 0
                view.position = (seg.segno, 0)
                continue
            off = end
            view.position = (seg.segno, off)
        self._since_checkpoint += applied

    def _read_group(self, seg: Segment, off: int) -> list[tuple[Header, int]] | None:
        """The records of the group starting at ``off``, or None if it has no last record."""
        out = []
        while True:
            h = self._record(seg, off)  # damage in the middle is padded; a group ends there
            if h is None:
                return None
            out.append((h, off))
            if not h.flags & Flag.CONTINUED:
                return out
            off += HEADER_SIZE + h.length

    # -- reading the log, and repairing what is damaged -----------------------------------
    def _check(self, seg: Segment, off: int) -> Header | None | Literal[False]:
        """The valid record at ``off``; None where nothing was written; False if damaged."""
        return check_record(seg.mm, off, seg.size)

    def _record(self, seg: Segment, off: int) -> Header | None:
        """The record at ``off`` (None at the end of written data), repairing damage first.

        Called under the lock only. Every reader of the log goes through here, so a record
        is never used without its CRC checked.
        """
        h = self._check(seg, off)
        if h is False:
            self._repair(seg, off)
            h = self._check(seg, off)
            if h is False:  # pragma: no cover - _repair always leaves a valid record or zeros
                raise CorruptionError(f"queue {self.name!r}: cannot repair {str(seg.path)!r} at offset {off}")
        return h

    def _next_valid(self, seg: Segment, start: int) -> int | None:
        """Offset of the next valid record at or after ``start`` in ``seg`` (a resync scan)."""
        mm = seg.mm
        pos = start
        while True:
            pos = mm.find(MAGIC, pos)
            if pos < 0 or pos + HEADER_SIZE > seg.size:
                return None
            if self._check(seg, pos):
                return pos
            pos += 1

    def _repair(self, seg: Segment, off: int) -> None:
        """Deal with damaged bytes at ``off`` of ``seg`` (under the lock).

        Valid records follow in the segment: the damaged bytes are kept in quarantine/ and
        covered with a PAD record, so every process skips the same bytes. Nothing valid
        follows but a later segment exists: quarantine the rest and seal the segment.
        Otherwise it is the torn tail of a writer that died: quarantine and zero it.
        """
        nxt = self._next_valid(seg, off + HEADER_SIZE)
        if nxt is not None:
            self._quarantine_bytes(seg, off, nxt, "damaged records between valid ones")
            seg.write(off, encode(RecordType.PAD, 0, b"\x00" * (nxt - off - HEADER_SIZE), ts=_now_ms()))
            return
        if self._later_segment(seg.segno) is not None:
            end = off + len(bytes(seg.mm[off:]).rstrip(b"\x00"))
            self._quarantine_bytes(seg, off, end, "damaged end of a sealed segment")
            seg.write(off, b"\x00" * (end - off))
            return  # the reader now sees the end of the data here and moves on (_after_end)
        self._cut_tail(seg, off, "torn or corrupt record at the end of the log")

    def _after_end(self, seg: Segment, off: int) -> Segment | None:
        """At the end of ``seg``'s data: the segment to continue in, or None at the log's end.

        A later segment means this one lost its SEAL (damage, e.g. truncation): the reader
        continues in the next valid segment, and every reader of the log decides the same.
        """
        if seg.segno >= self._top:
            return None
        nxt = self._next_of.get(seg.segno)
        if nxt is not None:
            return self._segment(nxt)
        later = self._later_segment(seg.segno)
        if later is None:
            return None
        self._note("segment ends without a seal", seg.path, off, 0)
        self._next_of[seg.segno] = later.segno
        return later

    def _segment_after(self, segno: int) -> Segment:
        """The segment that follows sealed segment ``segno`` (skipping missing or bad ones)."""
        nxt = self._next_of.get(segno, segno + 1)
        try:
            return self._segment(nxt)
        except (FileNotFoundError, CorruptionError):
            pass
        if self._reload_on_missing:
            raise FileNotFoundError(segment_path(self.log_dir, nxt))  # maybe cleaned up: reload
        later = self._later_segment(segno)
        if later is None:
            # the log ends with a seal and nothing after it: start the next segment afresh
            self._note("missing segment", segment_path(self.log_dir, nxt), 0, 0)
            head = encode(RecordType.SEGMENT, self.view.next_seq, ts=_now_ms())
            create_segment(self.log_dir, nxt, self.segment_size, self.view.next_seq, head, self.modes)
            self._top = max(self._top, nxt)
            return self._segment(nxt)
        self._note("missing segment", segment_path(self.log_dir, nxt), 0, 0)
        self._next_of[segno] = later.segno
        return later

    def _later_segment(self, segno: int) -> Segment | None:
        """The first valid segment numbered above ``segno``; invalid ones go to quarantine/."""
        numbers = sorted(int(p.stem) for p in self.log_dir.glob("*.log") if p.stem.isdigit() and int(p.stem) > segno)
        for n in numbers:
            try:
                seg = self._segment(n)
            except FileNotFoundError:
                continue
            except CorruptionError:
                for suffix in (".log", ".idx"):
                    path = segment_path(self.log_dir, n, suffix)
                    if path.exists():
                        self._quarantine_file(path, "not a valid log segment")
                continue
            return seg
        return None

    def _quarantine_bytes(self, seg: Segment, start: int, end: int, why: str) -> None:
        """Save damaged bytes before they are covered. Raises StorageError (and the caller
        leaves the bytes alone) if they cannot be saved, e.g. on a full disk."""
        data = bytes(seg.mm[start:end])
        if not data.strip(b"\x00"):
            return
        target = self._quarantine_dir() / f"{seg.segno:010d}-{start}.bin"
        try:
            fd = self.modes.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(
                f"queue {self.name!r}: found {why} in {str(seg.path)!r} at offset {start} but cannot "
                f"save it to {str(target)!r} ({exc.strerror or exc}); nothing was changed"
            ) from None
        self._note(why, seg.path, start, len(data), target)

    def _quarantine_dir(self) -> Path:
        qdir = self.path / "quarantine"
        try:
            self.modes.mkdir(qdir)
        except OSError as exc:
            raise StorageError(f"queue {self.name!r}: cannot create {str(qdir)!r}: {exc.strerror}") from None
        return qdir

    def _note(self, why: str, path: Path, offset: int, length: int, saved: Path | None = None) -> None:
        """Append what was found damaged to quarantine/REPORT.jsonl and log it."""
        entry = {
            "time": time.time(), "queue": self.name, "what": why, "file": str(path), "offset": offset,
            "length": length, "saved_as": None if saved is None else str(saved),
        }
        logger.warning("queue %r: %s in %s at offset %d (%d bytes)%s", self.name, why, path, offset, length,
                       "" if saved is None else f", kept in {saved}")
        try:
            fd = self.modes.open(self._quarantine_dir() / "REPORT.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:  # the warning above is logged; the report line is best effort
            logger.warning("queue %r: cannot append to quarantine/REPORT.jsonl: %s", self.name, exc)

    def _apply(self, h: Header, loc: Loc, mm: Any) -> None:
        self._limit = loc
        if h.length:
            start = loc[1] + HEADER_SIZE
            body = memoryview(mm)[start : start + h.length]
            try:
                self.view.apply(h, loc, body, self)
            finally:
                body.release()
        else:
            self.view.apply(h, loc, _NO_BODY, self)
        if h.type == RecordType.SEGMENT:
            bisect.insort(self._seg_starts, (h.seq, loc[0]))
        elif h.type == RecordType.CLEAN:
            for segno in [n for n in self._segments if n < h.seq]:
                self._segments.pop(segno).close()

    def _cut_tail(self, seg: Segment, off: int, why: str) -> None:
        """Quarantine and zero the bytes from ``off`` to the last written byte of ``seg``."""
        end = off + len(bytes(seg.mm[off:]).rstrip(b"\x00"))
        if end > off:
            self._quarantine_bytes(seg, off, end, why)
            seg.write(off, b"\x00" * (end - off))
            seg.sync()

    def _quarantine_file(self, path: Path, why: str) -> None:
        target = self._quarantine_dir() / f"{path.name}.{time.time_ns()}"
        try:
            os.replace(path, target)
        except OSError:
            return
        self._note(why, path, 0, target.stat().st_size, target)

    # -- LogAccess (used by the view while applying) -------------------------------------
    def _walk(self, start: Loc, limit: Loc) -> Iterator[tuple[int, int, Header]]:
        """(segment, offset, header) of every valid record from ``start`` up to ``limit``,
        following seals and skipping damage like the replay does."""
        segno, off = start
        while (segno, off) < limit:
            seg = self._segment(segno)
            h = self._record(seg, off)
            if h is None:
                nxt = self._after_end(seg, off)
                if nxt is None:
                    return
                segno, off = nxt.segno, 0
                continue
            if h.type == RecordType.SEAL:
                segno, off = self._segment_after(segno).segno, 0
                continue
            yield segno, off, h
            off += HEADER_SIZE + h.length

    def ensure_head(self) -> None:
        """Find the first pending stream message among the records applied so far."""
        view = self.view
        holes = view.holes
        cursor = view.cursor
        seg = self._segments.get(cursor[0])
        if seg is not None and cursor < self._limit:  # the usual case: the head is at the cursor
            h = check_record(seg.mm, cursor[1], seg.size)
            if h is False:
                h = self._record(seg, cursor[1])  # damaged: repair, then read again
            if h and h.type == RecordType.ADD and not h.flags & Flag.NOT_STREAM and h.seq not in holes:
                self._set_head(cursor[0], cursor[1], h)
                return
        for segno, off, h in self._walk(cursor, self._limit):
            if h.type == RecordType.ADD and not h.flags & Flag.NOT_STREAM:
                if h.seq not in holes:
                    self._set_head(segno, off, h)
                    return
                holes.discard(h.seq)
            cursor = (segno, off + HEADER_SIZE + h.length)
        view.cursor = cursor
        if view.stream_count:
            # Every applied record was scanned and no ready message is left: the count
            # includes messages whose records were lost to damage (reported when found).
            logger.warning("queue %r: %d ready message(s) lost to damage", self.name, view.stream_count)
            view.stream_count = 0
            view.holes.clear()

    def _set_head(self, segno: int, off: int, h: Header) -> None:
        view = self.view
        view.head_seq, view.head_loc, view.head_end = h.seq, (segno, off), (segno, off + HEADER_SIZE + h.length)
        view.cursor = (segno, off)
        self._checked = (segno, off, h)  # its CRC was checked: _read need not check it again

    def locate(self, seq: int) -> Loc:
        """Where the ADD record of stream message ``seq`` is."""
        i = bisect.bisect_right(self._seg_starts, (seq, 1 << 62)) - 1
        candidates = [segno for first, segno in self._seg_starts[: i + 1][::-1]] if i >= 0 else []
        if not candidates:
            candidates = sorted(self.view.segments, reverse=True)
        for segno in candidates:
            try:
                seg = self._segment(segno)
            except FileNotFoundError:
                continue
            off = seg.index_get(seq)
            if off is not None:
                h = self._check(seg, off)  # the index is a hint: anything may be there
                if h and h.type == RecordType.ADD and h.seq == seq:
                    return (segno, off)
            found = self._scan_for(seg, seq)
            if found is not None:
                return (segno, found)
        raise CorruptionError(f"queue {self.name!r}: the record of message #{seq} is missing from the log")

    def _scan_for(self, seg: Segment, seq: int) -> int | None:
        off = 0
        while off + HEADER_SIZE <= seg.size:
            h = self._record(seg, off)
            if h is None or h.type == RecordType.SEAL:
                return None
            if h.type == RecordType.ADD:
                seg.index_put(h.seq, off)  # repair the hint on the way
                if h.seq == seq:
                    return off
            off += HEADER_SIZE + h.length
        return None

    # -- writing ------------------------------------------------------------------------
    def _append(self, records: list[bytes], add_seqs: Sequence[tuple[int, int]] = ()) -> Segment:
        """Write ``records`` (one group) at the end of the log and apply them.

        ``add_seqs`` lists (seq, offset within the group) of ADD records, for the index.
        Returns the segment written, for an fsync outside the lock.
        """
        data = b"".join(records) if len(records) > 1 else records[0]
        seg, off = self._write(data, add_seqs)
        segno = seg.segno
        # Apply what we just wrote from our own bytes: they are valid by construction and,
        # holding the lock, nobody else can have written after them.
        pos = 0
        mm = seg.mm
        while pos < len(data):
            h = read_header(data, pos)
            assert h is not None
            self._apply(h, (segno, off + pos), mm)
            pos += HEADER_SIZE + h.length
        self._written((segno, off), pos)
        return seg

    def _write(self, data: bytes, add_seqs: Sequence[tuple[int, int]] = ()) -> tuple[Segment, int]:
        """Write ``data`` (whole records) at the end of the log, rolling to a new segment
        first if it does not fit; return the segment and offset written. The caller applies
        the records, then calls :meth:`_written`."""
        segno, off = self.view.position
        seg = self._segments.get(segno) or self._segment(segno)
        if off + len(data) + len(_SEAL) > seg.size:
            seg = self._roll(seg, off, len(data))
            off = self.view.position[1]
        seg.write(off, data)
        for seq, rel in add_seqs:
            seg.index_put(seq, off + rel)
        if self.fsync == "batch":
            self.dirty = True
        return seg, off

    def _write_own(self, rec: bytes, ts: int, add_seqs: Sequence[tuple[int, int]] = ()) -> tuple[Segment, Loc]:
        """:meth:`_write` one record of time ``ts`` that the caller applies to the view itself
        (an operation's hot path), doing first what :meth:`_apply` does before the view
        changes; return the segment and the record's loc."""
        seg, off = self._write(rec, add_seqs)
        loc = self._limit = (seg.segno, off)
        view = self.view
        if ts > view.last_ts:
            view.last_ts = ts
        return seg, loc

    def _written(self, loc: Loc, size: int) -> None:
        """After :meth:`_write` of ``size`` bytes at ``loc`` and applying them: the log now
        ends after them."""
        view = self.view
        view.position = (loc[0], loc[1] + size)
        self._since_checkpoint += size
        if not self._cleaning and (
            self._since_checkpoint > _CHECKPOINT_BYTES
            # drained: give the space of old segments back now rather than at the next roll
            or (len(view.segments) > 1 and not view.stream_count and not view.entries)
        ):
            self._checkpoint()

    def _roll(self, seg: Segment, off: int, need: int) -> Segment:
        """Seal segment N, then start segment N+1; return the new segment.

        In this order a crash between the two leaves a sealed segment without a successor,
        which the next reader creates (:meth:`_segment_after`). The other order would leave
        an unsealed segment with a successor: a process opening the queue then would take
        the seal for lost and write in N+1, while processes that had the queue open go on
        writing in N, and their next roll would replace N+1 and what it held.
        """
        size = max(self.segment_size, need + 2 * HEADER_SIZE + len(_SEAL) + 4096)
        size = (size + 4095) // 4096 * 4096
        nxt = seg.segno + 1
        seg.write(off, _SEAL)
        if self.fsync != "never":
            seg.sync()
        head = encode(RecordType.SEGMENT, self.view.next_seq, ts=_now_ms())
        create_segment(self.log_dir, nxt, size, self.view.next_seq, head, self.modes)
        if self.fsync == "always":
            fsync_dir(self.log_dir)
        stale = self._segments.pop(nxt, None)  # a leftover of an earlier version's interrupted roll
        if stale is not None:
            stale.close()
        self._replay()  # applies SEAL and the new SEGMENT record
        self._checkpoint()
        return self._segment(self.view.position[0])

    def sync_after_write(self, seg: Segment) -> None:
        """The durability step after the lock is released (group commit for fsync=always)."""
        if self.fsync == "always":
            seg.sync()

    # -- checkpoints and cleanup --------------------------------------------------------
    def _checkpoint(self) -> None:
        """Persist the view durably, then delete segments nothing needs any more."""
        self._since_checkpoint = 0
        view = self.view
        self._move_stragglers()
        keep = min(view.live_segments(), view.position[0])
        doomed = sorted(n for n in view.segments if n < keep)
        for segno in doomed:
            del view.segments[segno]
        data = json.dumps(view.to_json(), separators=(",", ":")).encode()
        target = self.path / "checkpoint.json"
        tmp = self.path / "checkpoint.json.tmp"
        try:
            fd = self.modes.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            fsync_dir(self.path)
        except OSError:
            return  # a checkpoint is an optimisation: the log is still complete, keep it all
        # Also files below ``keep`` the view no longer lists: a process killed between its
        # checkpoint's rename and these unlinks left them, and no checkpoint names them now.
        on_disk = {int(p.stem) for p in self.log_dir.glob("*.log") if p.stem.isdigit()}
        doomed = sorted(set(doomed) | {n for n in on_disk if n < keep})
        for segno in doomed:  # only now that no checkpoint points before ``keep``
            seg = self._segments.pop(segno, None)
            if seg is not None:
                seg.close()
            for suffix in (".log", ".idx"):
                try:
                    os.unlink(segment_path(self.log_dir, segno, suffix))
                except FileNotFoundError:
                    pass
        self._seg_starts = [(f, n) for f, n in self._seg_starts if n >= keep]
        if doomed:
            # Other processes may still map what was deleted, which keeps its space allocated.
            self._cleaning = True  # the append below must not start another checkpoint
            try:
                self._append([encode(RecordType.CLEAN, keep, ts=_now_ms())])
            finally:
                self._cleaning = False

    def _move_stragglers(self) -> None:
        """Copy bodies of long-pending messages (disabled, deferred, in flight) that sit in
        segments older than the stream's, so those segments can be deleted."""
        view = self.view
        low = view.cursor[0] if view.stream_count else view.position[0]
        stragglers = sorted((e.seq, e.loc) for e in view.entries.values() if e.loc[0] < low)
        if not stragglers:
            return
        now = _now_ms()
        records = []
        last = len(stragglers) - 1
        for i, (seq, loc) in enumerate(stragglers):
            seg = self._segment(loc[0])
            h = read_header(seg.mm, loc[1])
            assert h is not None
            start = loc[1] + HEADER_SIZE
            body = bytes(seg.mm[start : start + h.length])
            records.append(encode(RecordType.MOVE, seq, body, flags=Flag.CONTINUED if i < last else 0, ts=now))
        self._append(records)

    # -- reading messages ---------------------------------------------------------------
    def _body(self, loc: Loc) -> bytes:
        """The body of the (CRC-checked) record at ``loc``; CorruptionError if it is damaged."""
        seg = self._segment(loc[0])
        checked = self._checked
        h = checked[2] if checked[0] == loc[0] and checked[1] == loc[1] else self._check(seg, loc[1])
        if not h:
            raise CorruptionError(f"queue {self.name!r}: the record at {str(seg.path)!r} offset {loc[1]} is damaged")
        start = loc[1] + HEADER_SIZE
        body: bytes = seg.mm[start : start + h.length]
        return body

    def _read(self, loc: Loc) -> dict[str, Any]:
        record: dict[str, Any] = codec.loads(self._body(loc))
        return record

    def _has_uuid(self, loc: Loc, uuid: str) -> bool:
        """Whether the record at ``loc`` is message ``uuid`` (bodies start with {"uuid":"...")."""
        start = loc[1] + HEADER_SIZE + 9
        return self._segment(loc[0]).mm[start : start + 36] == uuid.encode("ascii", "replace")

    def _message(self, loc: Loc, attempts: int) -> QueueMessage:
        text = self._body(loc).decode("utf-8")
        plain = _plain_fields(text)
        if plain is not None:
            uuid, retries, username, inserted, data = plain
            return _plain_message(uuid, retries, username, inserted, data, attempts, self.name)
        return QueueMessage.from_record(codec.loads(text), attempts=attempts, queue=self.name)

    def _pending_loc(self, seq: int) -> tuple[Loc, int, int] | None:
        """(loc, state, attempts) of pending message ``seq``; state 0 means in the stream."""
        view = self.view
        e = view.entries.get(seq)
        if e is not None:
            return None if e.state == FAILED else (e.loc, e.state, e.attempts)
        self._limit = view.position
        if view.in_stream(seq, self):
            loc = view.updated.get(seq)
            if loc is None:
                loc = view.head_loc if seq == view.head_seq and view.head_loc else self.locate(seq)
            return loc, 0, 0
        return None

    def _find_uuid(self, uuid: str) -> tuple[int, Loc, int, int, dict[str, Any]] | None:
        seq = seq_of_uuid(uuid, self.view.uuid_key)
        candidates = [seq] if seq is not None else []
        foreign = self.view.foreign.get(uuid)
        if foreign is not None:
            candidates.append(foreign)
        for s in candidates:
            found = self._pending_loc(s)
            if found is None:
                continue
            record = self._read(found[0])
            if record.get("uuid") == uuid:
                return s, found[0], found[1], found[2], record
        return None

    # -- operations ---------------------------------------------------------------------
    def add(self, messages: list[QueueMessage], on_duplicate: str) -> list[str]:
        """Append ``messages`` as one all-or-none group; see QueueManager.add_message."""
        if len(messages) == 1:
            msg = messages[0]
            if msg.alias is None and msg.deferred_until is None and not msg.disabled:
                return [self._add_ready(msg)]
        with self._locked() as view:
            now = _now_ms()
            if view.n_inflight:  # an ended lease no longer holds its message (alias replace)
                self._reap(now)
            seq = view.next_seq
            items: list[tuple[int, int, bytes, int, int]] = []  # (type, seq, body, flags, due)
            batch: dict[str, tuple[int, str, int]] = {}  # alias -> (seq, uuid, item) in this call
            uuids: list[str] = []
            inserted: datetime | None = None
            inserted_text = ""
            for msg in messages:
                data_json = encode_data(msg.data)
                alias = msg.alias
                target: tuple[int, str, int] | None = None  # replace this (seq, uuid, item|-1)
                kept_inserted: datetime | None = None  # the replaced message's insertion time
                if alias is not None:
                    prior = batch.get(alias)
                    if prior is None and alias in view.alias_index:
                        found = self._pending_loc(view.alias_index[alias])
                        if found is not None:
                            record = self._read(found[0])
                            prior = (view.alias_index[alias], str(record.get("uuid")), -1)
                            if found[1] != INFLIGHT:
                                kept_inserted = from_epoch(record.get("inserted_at"))
                                target = prior
                    elif prior is not None:
                        target = prior
                    if prior is not None:
                        if on_duplicate == "error":
                            raise DuplicateAlias(
                                f"queue {self.name!r} already has a pending message with alias {alias!r} "
                                f"(uuid {prior[1]})",
                                queue=self.name,
                                alias=alias,
                                uuid=prior[1],
                            )
                        if on_duplicate == "ignore":  # the caller's message is the existing one
                            msg.uuid = prior[1]
                            uuids.append(prior[1])
                            continue
                if target is not None:  # replace: same uuid, same place, new content
                    msg.uuid = target[1]
                    msg.inserted_at = kept_inserted or from_epoch(now / 1000)
                    kind = RecordType.UPDATE if target[2] < 0 else items[target[2]][0]
                    item = (kind, target[0], _message_body(msg, data_json), _flags(msg), _due_ms(msg))
                    if target[2] < 0:
                        items.append(item)
                        batch[alias] = (target[0], target[1], len(items) - 1)  # type: ignore[index]
                    else:
                        items[target[2]] = item
                    uuids.append(target[1])
                    continue
                # a kept uuid is indexed unless it happens to decode to the seq it gets here
                msg.uuid = mint_uuid(seq, view.uuid_key)
                if inserted is None:  # one time for the whole call, converted once
                    _, inserted_text, inserted = _insertion_stamp(now)
                msg.inserted_at = inserted
                flags = _flags(msg)
                items.append((RecordType.ADD, seq, _message_body(msg, data_json, inserted_text), flags, _due_ms(msg)))
                if alias is not None:
                    batch[alias] = (seq, msg.uuid, len(items) - 1)
                uuids.append(msg.uuid)
                seq += 1
            if not items:
                return uuids
            records: list[bytes] = []
            adds: list[tuple[int, int]] = []
            size = 0
            last = len(items) - 1
            for i, (kind, s, body, flags, due) in enumerate(items):
                rec = encode(kind, s, body, flags=flags | (Flag.CONTINUED if i < last else 0), arg=due, ts=now)
                if kind == RecordType.ADD:
                    adds.append((s, size))
                records.append(rec)
                size += len(rec)
            seg = self._append(records, adds)
        self.sync_after_write(seg)
        return uuids

    def add_plain(self, msg: Any) -> str | None:
        """``add_message(q, msg)`` of a plain message whose fields were checked before (the
        producers' hot path, without the manager's general path); None for any other message
        or a destroyed queue, which the caller then adds through :meth:`add`.

        Plain: an exact QueueMessage, no alias, immediate, enabled, and its retries and
        username a pair :meth:`_add_ready` has stored before: only pairs that passed
        ``QueueMessage.validate`` get there, so the pair needs no check again.

        Its fields are read through ``fields`` (Any) so that the compiled build takes them as
        they are: read as declared, a bool would pass for an int, and a str field holding an
        int would raise TypeError.
        """
        if type(msg) is not QueueMessage or self.view.destroyed:
            return None
        fields: Any = msg  # not narrowed to QueueMessage by the test above
        retries = fields.retries
        username = fields.username
        if (
            fields.alias is not None
            or fields.deferred_until is not None
            or fields.disabled is not False
            or fields.execution_mode is not _IMMEDIATE
            or type(retries) is not int
            or type(username) is not str
        ):
            return None
        middle = _READY_MIDDLE.get((retries, username))
        if middle is None:
            return None
        uuid = self._add_ready(msg, middle)
        return None if self.view.destroyed else uuid

    def _add_ready(self, msg: QueueMessage, middle: str = "") -> str:
        """:meth:`add` of one ready message without an alias, the producers' hot path.

        The same record as the general path, with the body built before the lock (but for
        its uuid and time) and the record applied to the view without reading it back.
        ``middle``: what :data:`_READY_MIDDLE` holds for the message's retries and username.
        """
        data_json = encode_data(msg.data)
        if not middle:
            key = (msg.retries, msg.username)
            middle = _READY_MIDDLE.get(key, "")
            if not middle:
                middle = _plain_middle_text(msg.retries, msg.username) + ',"inserted_at":'
                if len(_READY_MIDDLE) < 64 and type(msg) is QueueMessage:  # a subclass's own checks may differ
                    _READY_MIDDLE[key] = middle
        random_part = uuid_random_part()
        with self._locked() as view:
            now = _now_ms()
            seq = view.next_seq
            uuid = uuid_seq_part(seq, view.uuid_key) + random_part
            stamp = _insertion_stamp(now)
            body = f'{{"uuid":"{uuid}"{middle}{stamp[1]},"data":{data_json}}}'.encode()
            rec = encode(RecordType.ADD, seq, body, ts=now)
            seg, at = self._write_own(rec, now, ((seq, 0),))
            view.added_ready(seq, uuid, now)
            self._written(at, len(rec))
        msg.uuid = uuid
        msg.inserted_at = stamp[2]
        self.sync_after_write(seg)
        return uuid

    def _update_record(self, seq: int, msg: QueueMessage, now: int) -> bytes:
        body = _message_body(msg, encode_data(msg.data))
        return encode(RecordType.UPDATE, seq, body, flags=_flags(msg), arg=_due_ms(msg), ts=now)

    def _pick(self, now: int) -> tuple[int, Loc, int] | None:
        view = self.view
        if view.deferred_heap and view.deferred_heap[0][0] <= now:
            view.promote_due(now)
        e = view.first_due() if view.due_heap else None
        if view.head_loc is None:
            self._limit = view.position
            self.ensure_head()
        if view.head_loc is not None and (e is None or view.head_seq < e.seq):
            return view.head_seq, view.updated.get(view.head_seq, view.head_loc), 0
        if e is not None:
            return e.seq, e.loc, e.attempts
        return None

    def _reap(self, now: int) -> None:
        """Make expired leases, and leases of dead processes, eligible again."""
        view = self.view
        if not view.n_inflight:
            return
        expired = view.expired_leases(now)
        mono = time.monotonic()
        if mono - self._last_holder_check > _HOLDER_CHECK_INTERVAL:
            self._last_holder_check = mono
            alive: dict[str, bool] = {}
            for e in view.entries.values():
                if e.state == INFLIGHT and e.holder and e.seq not in expired:
                    if e.holder not in alive:
                        pid = int(e.holder.split(":", 1)[0])
                        alive[e.holder] = _process_token(pid) == e.holder
                    if not alive[e.holder]:
                        expired.append(e.seq)
        if expired:
            try:
                self._append(_as_group([encode(RecordType.EXPIRE, s, ts=now) for s in expired]))
            except BaseException:
                for seq in expired:  # not recorded: keep watching these leases
                    e = view.entries[seq]
                    heapq.heappush(view.lease_heap, (e.deadline, seq, e.version))
                raise

    def get(self) -> QueueMessage | None:
        with self._locked() as view:
            now = _now_ms()
            if view.n_inflight:
                self._reap(now)
            picked = self._pick(now)
            if picked is None:
                return None
            seq, loc, attempts = picked
            msg = self._message(loc, attempts)
            rec = encode(RecordType.TAKE, seq, ts=now)
            if seq != view.head_seq or view.head_loc is None:
                seg = self._append([rec])
            else:  # the stream's head (the usual case): apply our own record directly
                seg, at = self._write_own(rec, now)
                view.removed_from_stream(seq, at)
                self._written(at, len(rec))
        self.sync_after_write(seg)
        return msg

    def reserve(self, lease: float) -> QueueMessage | None:
        with self._locked() as view:
            now = _now_ms()
            if view.n_inflight:
                self._reap(now)
            picked = self._pick(now)
            if picked is None:
                return None
            seq, loc, attempts = picked
            msg = self._message(loc, attempts + 1)
            holder = _own_process_token(self._pid)
            deadline = now + max(1, int(lease * 1000))
            rec = encode(RecordType.RESERVE, seq, holder.encode(), arg=deadline, ts=now)
            if seq != view.head_seq or view.head_loc is None:
                seg = self._append([rec])
            else:  # the stream's head (the usual case): apply our own record directly
                seg, at = self._write_own(rec, now)
                view.reserved_head(at, deadline, holder)
                self._written(at, len(rec))
            if len(self._leases) >= _MAX_LEASES:
                self._leases.clear()
            self._leases[msg.uuid] = seq  # type: ignore[index]  # records always have a uuid
        self.sync_after_write(seg)
        return msg

    def _inflight(self, uuid: str, attempt: int | None) -> Entry:
        """The entry of reservation (``uuid``, ``attempt``), or LeaseLost."""
        view = self.view
        e = None
        seq = self._leases.pop(uuid, None)  # reserved through this handle: a known seq
        if seq is not None:
            e = view.entries.get(seq)
        else:
            for seq in (seq_of_uuid(uuid, view.uuid_key), view.foreign.get(uuid)):
                candidate = view.entries.get(seq) if seq is not None else None
                if candidate is not None and self._has_uuid(candidate.loc, uuid):
                    e = candidate
                    break
        # A reservation whose lease ended is still the caller's until the message is handed
        # out again (attempts would grow): a late ack or release is accepted until then.
        # EXPIRE keeps the holder, RELEASE clears it: a released message is not ackable.
        if e is not None and attempt is not None and e.attempts != attempt:
            e = None
        if e is not None and not (e.state == INFLIGHT or (attempt is not None and e.state == WAITING and e.holder)):
            e = None
        if e is None:
            raise LeaseLost(
                f"queue {self.name!r}: message {uuid} is not reserved"
                + ("" if attempt is None else f" by attempt {attempt}")
                + " (it was handed out again, acked or released)"
            )
        return e

    def ack(self, uuid: str, attempt: int | None, *, processed: bool = False, alias: str | None = None) -> None:
        """Remove reservation (``uuid``, ``attempt``); with ``processed``, record the message
        (``uuid``, ``alias``) as the last processed in the same group."""
        with self._locked() as view:
            e = self._inflight(uuid, attempt)
            now = _now_ms()
            rec = encode(RecordType.ACK, e.seq, flags=Flag.CONTINUED if processed else 0, ts=now)
            if processed:
                mark, body = _processed_body(uuid, alias, now)
                rec += encode(RecordType.STATUS, 0, body, ts=now)
            seg, at = self._write_own(rec, now)
            view.removed_entry(e)
            if processed:
                view.processed(mark)
            self._written(at, len(rec))
        self.sync_after_write(seg)

    def release(self, uuid: str, attempt: int | None, delay: float, error: str | None) -> None:
        with self._locked():
            e = self._inflight(uuid, attempt)
            now = _now_ms()
            due = now + int(delay * 1000) if delay > 0 else 0
            body = (error or "")[:4000].encode("utf-8", "replace")
            seg = self._append([encode(RecordType.RELEASE, e.seq, body, arg=due, ts=now)])
        self.sync_after_write(seg)

    def status(self) -> QueueStatus:
        with self._locked() as view:
            now = _now_ms()
            if view.n_inflight:  # count ended leases as ready, as get and reserve will see them
                try:
                    self._reap(now)
                except StorageError:  # a full disk: still report; they count as in flight then
                    pass
            ready, deferred, disabled, in_flight = view.counts(now)
            li = view.last_inserted
            inserted = None if li is None else MessageRef(li[0], li[1], from_epoch(li[2] / 1000))
            return QueueStatus(
                failed=view.n_failed,
                queue=self.name,
                last_message_inserted=inserted,
                last_message_processed=MessageRef.from_record(view.last_processed),
                last_queue_modify_time=from_epoch(view.last_ts / 1000) if view.last_ts else None,
                messages_to_process=ready + deferred + in_flight,
                ready=ready,
                deferred=deferred,
                disabled=disabled,
                in_flight=in_flight,
                custom_attributes=dict(view.custom),
            )

    def set_custom(self, attributes: dict[str, Any], replace: bool) -> dict[str, Any]:
        with self._locked() as view:
            body = json.dumps({"custom": attributes, "replace": replace}).encode()
            seg = self._append([encode(RecordType.STATUS, 0, body, ts=_now_ms())])
            result = dict(view.custom)
        self.sync_after_write(seg)
        return result

    def meta(self) -> dict[str, Any]:
        with self._locked() as view:
            return json.loads(json.dumps(view.meta))  # a copy callers may change

    def update_meta(self, changes: dict[str, Any]) -> dict[str, Any]:
        with self._locked() as view:
            body = json.dumps({"meta": changes}).encode()
            seg = self._append([encode(RecordType.STATUS, 0, body, ts=_now_ms())])
            result: dict[str, Any] = json.loads(json.dumps(view.meta))
        self.sync_after_write(seg)
        return result

    def set_last_processed(self, uuid: str | None, alias: str | None) -> None:
        with self._locked() as view:
            now = _now_ms()
            mark, body = _processed_body(uuid, alias, now)
            rec = encode(RecordType.STATUS, 0, body, ts=now)
            seg, at = self._write_own(rec, now)
            view.processed(mark)
            self._written(at, len(rec))
        self.sync_after_write(seg)

    def find(self, flt: Any, limit: int | None) -> list[QueueMessage]:
        with self._locked():
            if flt.uuid is not None or flt.alias is not None:
                return self._find_indexed(flt, limit)
            return self._scan_pending(flt, limit)

    def _scan_pending(self, flt: Any, limit: int | None) -> list[QueueMessage]:
        """Pending messages (in flight included) matching ``flt``, in queue order. Under the lock."""
        out: list[QueueMessage] = []
        if limit == 0:
            return out
        entries = sorted((e for e in self.view.entries.values() if e.state != FAILED), key=lambda e: e.seq)
        ei = 0
        for seq, loc in self._iter_stream():
            while ei < len(entries) and entries[ei].seq < seq:
                if self._collect(entries[ei].loc, entries[ei].attempts, flt, out, limit):
                    return out
                ei += 1
            if self._collect(loc, 0, flt, out, limit):
                return out
        for e in entries[ei:]:
            if self._collect(e.loc, e.attempts, flt, out, limit):
                return out
        return out

    def _collect(self, loc: Loc, attempts: int, flt: Any, out: list[QueueMessage], limit: int | None) -> bool:
        record = self._read(loc)
        if flt.matches(record):
            out.append(QueueMessage.from_record(record, attempts=attempts, queue=self.name))
        return limit is not None and len(out) >= limit

    def _find_indexed(self, flt: Any, limit: int | None) -> list[QueueMessage]:
        found: tuple[Loc, int] | None = None
        if flt.uuid is not None:
            hit = self._find_uuid(flt.uuid)
            found = None if hit is None else (hit[1], hit[3])
        else:
            seq = self.view.alias_index.get(flt.alias)
            p = None if seq is None else self._pending_loc(seq)
            found = None if p is None else (p[0], p[2])
        out: list[QueueMessage] = []
        if found is not None and limit != 0:
            self._collect(found[0], found[1], flt, out, limit)
        return out

    def _iter_stream(self) -> Iterator[tuple[int, Loc]]:
        """(seq, loc of newest body) of every pending stream message, in order."""
        view = self.view
        self._limit = view.position
        self.ensure_head()
        for segno, off, h in self._walk(view.cursor, view.position):
            if h.type == RecordType.ADD and not h.flags & Flag.NOT_STREAM and h.seq not in view.holes:
                if h.seq not in view.entries:
                    yield h.seq, view.updated.get(h.seq, (segno, off))

    def update(self, msg: QueueMessage) -> None:
        assert msg.uuid is not None
        with self._locked() as view:
            if view.n_inflight:
                self._reap(_now_ms())
            hit = self._find_uuid(msg.uuid)
            if hit is None:
                raise MessageNotFound(f"queue {self.name!r} has no pending message with uuid {msg.uuid}")
            seq, _loc, state, attempts, record = hit
            if state == INFLIGHT:
                raise MessageInFlight(f"queue {self.name!r}: message {msg.uuid} is reserved by a consumer")
            if msg.alias is not None:
                owner = view.alias_index.get(msg.alias)
                if owner is not None and owner != seq:
                    raise DuplicateAlias(
                        f"queue {self.name!r} already has a pending message with alias {msg.alias!r}",
                        queue=self.name,
                        alias=msg.alias,
                        uuid=str(self._read(self._pending_loc(owner)[0]).get("uuid")),  # type: ignore[index]
                    )
            msg.inserted_at = from_epoch(record.get("inserted_at"))
            msg.attempts = attempts
            seg = self._append([self._update_record(seq, msg, _now_ms())])
        self.sync_after_write(seg)

    def remove(self, uuid: str) -> bool:
        with self._locked() as view:
            if view.n_inflight:
                self._reap(_now_ms())
            hit = self._find_uuid(uuid)
            if hit is None:
                return False
            if hit[2] == INFLIGHT:
                raise MessageInFlight(f"queue {self.name!r}: message {uuid} is reserved by a consumer")
            seg = self._append([encode(RecordType.REMOVE, hit[0], ts=_now_ms())])
        self.sync_after_write(seg)
        return True

    # -- failed store -------------------------------------------------------------------
    def fail(self, uuid: str, attempt: int | None, error: str) -> None:
        with self._locked():
            e = self._inflight(uuid, attempt)
            body = json.dumps({"error": error}, ensure_ascii=False).encode("utf-8", "replace")
            seg = self._append([encode(RecordType.FAIL, e.seq, body, ts=_now_ms())])
        self.sync_after_write(seg)

    def add_failed(self, msg: QueueMessage, errors: list[str]) -> str:
        with self._locked() as view:
            now = _now_ms()
            seq = view.next_seq
            data_json = encode_data(msg.data)
            flags = (_flags(msg) & ~Flag.ALIAS) | Flag.FAILED | Flag.CONTINUED
            if msg.uuid and msg.uuid not in view.foreign and seq_of_uuid(msg.uuid, view.uuid_key) is None:
                flags |= Flag.FOREIGN_UUID  # keep the caller's uuid; the view indexes it
            else:
                msg.uuid = mint_uuid(seq, view.uuid_key)
            msg.inserted_at = from_epoch(now / 1000)
            add = encode(RecordType.ADD, seq, _message_body(msg, data_json), flags=flags, arg=_due_ms(msg), ts=now)
            body = json.dumps({"errors": errors, "attempts": msg.attempts}).encode()
            fail = encode(RecordType.FAIL, seq, body, ts=now)
            seg = self._append([add, fail], [(seq, 0)])
        self.sync_after_write(seg)
        return msg.uuid

    def _failed_entries(
        self, since: float | None, until: float | None, uuids: set[str] | None
    ) -> list[tuple[Entry, dict[str, Any]]]:
        out = []
        for e in sorted((e for e in self.view.entries.values() if e.state == FAILED), key=lambda e: e.seq):
            at = e.failed_at / 1000
            if (since is not None and at < since) or (until is not None and at > until):
                continue
            record = self._read(e.loc)
            if uuids is not None and record.get("uuid") not in uuids:
                continue
            out.append((e, record))
        return out

    def failed(self, since: float | None, until: float | None, limit: int | None) -> list[FailedMessage]:
        with self._locked():
            selected = self._failed_entries(since, until, None)
        if limit is not None:
            selected = selected[:limit]
        return [self._failed_message(e, record) for e, record in selected]

    def _failed_message(self, e: Entry, record: dict[str, Any]) -> FailedMessage:
        return FailedMessage(
            QueueMessage.from_record(record, attempts=e.attempts, queue=self.name),
            datetime.fromtimestamp(e.failed_at / 1000, tz=timezone.utc),
            list(e.errors),
        )

    def requeue_failed(self, since: float | None, until: float | None, uuids: set[str] | None) -> list[str]:
        with self._locked() as view:
            records: list[bytes] = []
            moved: list[str] = []
            now = _now_ms()
            for e, record in self._failed_entries(since, until, uuids):
                alias = record.get("alias")
                if alias is not None and alias in view.alias_index:
                    continue  # another pending message holds the alias now: it stays failed
                records.append(encode(RecordType.REQUEUE, e.seq, json.dumps({"alias": alias}).encode(), ts=now))
                moved.append(str(record.get("uuid")))
            if not records:
                return moved
            seg = self._append(_as_group(records))
        self.sync_after_write(seg)
        return moved

    def forget_failed(self, since: float | None, until: float | None, uuids: set[str] | None) -> int:
        with self._locked():
            now = _now_ms()
            records = [encode(RecordType.REMOVE, e.seq, ts=now) for e, _ in self._failed_entries(since, until, uuids)]
            if not records:
                return 0
            seg = self._append(_as_group(records))
        self.sync_after_write(seg)
        return len(records)

    # -- migrations -------------------------------------------------------------------------
    def export(self) -> list[QueueMessage | FailedMessage]:
        """Pending messages in queue order, then the failed store: one consistent snapshot."""
        with self._locked():
            out: list[QueueMessage | FailedMessage] = list(self._scan_pending(MessageFilter(), None))
            out += [self._failed_message(e, record) for e, record in self._failed_entries(None, None, None)]
        return out

    def _known_uuid(self, uuid: str) -> bool:
        """Whether the queue has message ``uuid`` in any state (failed included)."""
        view = self.view
        for seq in (seq_of_uuid(uuid, view.uuid_key), view.foreign.get(uuid)):
            if seq is None:
                continue
            e = view.entries.get(seq)
            found = self._pending_loc(seq) if e is None else (e.loc, e.state, e.attempts)
            if found is not None and self._has_uuid(found[0], uuid):
                return True
        return False

    def import_(self, items: list[QueueMessage | FailedMessage]) -> int:
        """Recreate exported messages keeping uuid, alias, insertion time; skip known uuids."""
        with self._locked() as view:
            now = _now_ms()
            seq = view.next_seq
            records: list[bytes] = []
            adds: list[tuple[int, int]] = []
            size = 0
            seen: set[str] = set()
            aliases: set[str] = set()
            for item in items:
                failed = item if isinstance(item, FailedMessage) else None
                msg = item.message if isinstance(item, FailedMessage) else item
                uuid = str(msg.uuid)
                if uuid in seen or self._known_uuid(uuid):
                    continue
                seen.add(uuid)
                flags = _flags(msg)
                if seq_of_uuid(uuid, view.uuid_key) != seq:
                    flags |= Flag.FOREIGN_UUID
                if failed is not None:
                    flags = (flags & ~Flag.ALIAS) | Flag.FAILED
                elif msg.alias is not None:
                    if msg.alias in view.alias_index or msg.alias in aliases:
                        raise DuplicateAlias(
                            f"queue {self.name!r} already has a pending message with alias {msg.alias!r}; "
                            f"cannot import {uuid}",
                            queue=self.name,
                            alias=msg.alias,
                        )
                    aliases.add(msg.alias)
                if msg.inserted_at is None:
                    msg.inserted_at = from_epoch(now / 1000)
                group = [
                    encode(
                        RecordType.ADD,
                        seq,
                        _message_body(msg, encode_data(msg.data)),
                        flags=flags,
                        arg=_due_ms(msg),
                        ts=now,
                    )
                ]
                if failed is not None:
                    body = {
                        "errors": failed.errors,
                        "attempts": msg.attempts,
                        "failed_at": int(failed.failed_at.timestamp() * 1000),
                    }
                    group.append(encode(RecordType.FAIL, seq, json.dumps(body).encode(), ts=now))
                adds.append((seq, size))
                for rec in group:
                    records.append(rec)
                    size += len(rec)
                seq += 1
            if not records:
                return 0
            seg = self._append(_as_group(records), adds)
        self.sync_after_write(seg)
        return len(seen)

    def repair(self) -> None:
        """Walk the whole log under the lock, repairing damage on the way (the same code every
        reader uses), rebuild every segment's index from the log, write a fresh checkpoint."""
        with self._locked() as view:
            start = (self._oldest_segment(), 0)
            adds: dict[int, list[tuple[int, int]]] = {}
            firsts: dict[int, int] = {}
            for segno, off, h in self._walk(start, view.position):
                if h.type == RecordType.SEGMENT:
                    firsts[segno] = h.seq
                elif h.type == RecordType.ADD:
                    adds.setdefault(segno, []).append((h.seq, off))
            for seg in self._segments.values():
                seg.close()  # indexes are replaced below: drop the old mappings
            self._segments.clear()
            for segno, first in firsts.items():
                _rebuild_index(self.log_dir, segno, first, adds.get(segno, []), self.modes)
            self._checkpoint()

    def mark_destroyed(self) -> None:
        with self._locked():
            self._append([encode(RecordType.DESTROYED, 0, ts=_now_ms())])
            self.flush_locked()


def _rebuild_index(log_dir: Path, segno: int, first_seq: int, adds: list[tuple[int, int]], modes: Modes) -> None:
    """Write segment ``segno``'s index afresh (temporary file renamed into place)."""
    log = segment_path(log_dir, segno)
    slots = log.stat().st_size // MIN_ADD_SIZE + 1
    data = bytearray(8 + 4 * slots)
    struct.pack_into("<Q", data, 0, first_seq)
    for seq, off in adds:
        if 0 <= seq - first_seq < slots:
            struct.pack_into("<I", data, 8 + 4 * (seq - first_seq), off + 1)
    target = segment_path(log_dir, segno, ".idx")
    tmp = target.with_suffix(".idx.tmp")
    fd = modes.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, bytes(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def _as_group(records: list[bytes]) -> list[bytes]:
    """Frame ``records`` (each without CONTINUED) as one all-or-none group."""
    out = []
    for rec in records[:-1]:
        h = read_header(rec, 0)
        assert h is not None
        out.append(encode(h.type, h.seq, rec[HEADER_SIZE:], flags=h.flags | Flag.CONTINUED, arg=h.arg, ts=h.ts))
    out.append(records[-1])
    return out


def _flags(msg: QueueMessage) -> int:
    flags = 0
    if msg.execution_mode is _DEFERRED:
        flags |= Flag.DEFERRED
    if msg.disabled:
        flags |= Flag.DISABLED
    if msg.alias is not None:
        flags |= Flag.ALIAS
    return flags


def _due_ms(msg: QueueMessage) -> int:
    if msg.deferred_until is None:
        return 0
    return max(1, int(msg.deferred_until.timestamp() * 1000))


_json_ascii: Final = json.encoder.encode_basestring_ascii
# str-enum: "immediate" hashes alike
_MODE_NAMES: Final[dict[object, str]] = {mode: mode.value for mode in ExecutionMode}
_IMMEDIATE: Final = ExecutionMode.IMMEDIATE
_plain_message: Final = QueueMessage.plain


def _opt_ascii(value: str | None) -> str:
    """``value`` as json.dumps writes it (non-ASCII escaped: lone surrogates too), or null."""
    return "null" if value is None else _json_ascii(value)


def _processed_body(uuid: str | None, alias: str | None, now: int) -> tuple[dict[str, Any], bytes]:
    """The last-processed mark of a message at ``now`` (ms), and the STATUS body recording it."""
    stamp = now / 1000
    body = f'{{"processed":{{"uuid":{_opt_ascii(uuid)},"alias":{_opt_ascii(alias)},"timestamp":{stamp!r}}}}}'
    return {"uuid": uuid, "alias": alias, "timestamp": stamp}, body.encode()


#: (retries, username) -> the middle of a ready message's body without alias (see _add_ready).
#: Only _add_ready writes it, for exact QueueMessages the manager validated: add_plain takes
#: a pair found here as checked. Keys are compared by value, so add_plain tests the types first.
_READY_MIDDLE: Final[dict[tuple[int, str | None], str]] = {}


#: The middle of a plain message's stored body (from the uuid's closing quote to the comma
#: before "inserted_at") -> (retries, username): see _plain_fields. At most 64 are kept.
_PLAIN_MIDDLES: Final[dict[str, tuple[int, str | None]]] = {}
_PLAIN_MIDDLE_START: Final = '","alias":null,"retries":'  # how every such middle starts


def _plain_middle_text(retries: int, username: str | None) -> str:
    """What a plain message's body holds between its uuid and its insertion time (the same
    fields :func:`_message_body` writes), written by _add_ready and checked by _plain_middle."""
    return (
        f',"alias":null,"retries":{retries},"execution_mode":"immediate","deferred_until":null,'
        f'"disabled":false,"username":{string_or_null(username)}'
    )


def _plain_fields(text: str) -> tuple[str, int, str | None, float, Any] | None:
    """(uuid, retries, username, inserted_at epoch, data) of a plain message's stored body
    (decoded), or None for any other body, which the caller parses as JSON.

    A plain message (no alias, immediate, enabled: nearly every message) is stored in the
    layout :func:`_message_body` and ``_add_ready`` write, whose middle depends only on its
    retries and username: a middle seen before is looked up, and only the insertion time and
    the data are parsed. A new middle is parsed on its own and accepted only if writing that
    message's middle gives back exactly its text. For every body the engine writes (bodies
    reach here CRC-checked) this returns what the full parse would, or None; an unexpected
    body is left to the full parse where it differs in a way that is cheap to see.
    """
    i = text.find(',"inserted_at":', 45)
    j = text.find(',"data":', i)
    if i < 0 or j < 0 or not text.startswith('{"uuid":"') or not text.startswith(_PLAIN_MIDDLE_START, 45):
        return None
    uuid = text[9:45]  # the value only if it needs no escape (a kept uuid may): else the full parse
    if not (uuid.isascii() and uuid.isprintable()) or '"' in uuid or "\\" in uuid:
        return None
    middle = text[45:i]
    fields = _PLAIN_MIDDLES.get(middle)
    if fields is None:
        fields = _plain_middle(middle)
        if fields is None:
            return None
    number = text[i + 15 : j]
    if not (number[:1].isdigit() or number[:1] == "-") or "_" in number:  # not as repr writes it
        return None
    try:
        inserted = float(number)
        data, end = codec.scan(text, j + 8)
    except (ValueError, StopIteration):  # not plain after all: the full parse decides
        return None
    if end != len(text) - 1 or text[end] != "}":
        return None
    return uuid, fields[0], fields[1], inserted, data


def _plain_middle(middle: str) -> tuple[int, str | None] | None:
    """(retries, username) if ``middle`` is exactly the middle a plain message is written
    with, remembered; else None. Parses the middle alone, not the body's data."""
    try:
        record = codec.loads('{"uuid":"' + middle + "}")
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    retries, username = record.get("retries"), record.get("username")
    if (
        retries.__class__ is not int
        or not (username is None or username.__class__ is str)
        or record.get("alias") is not None
        or record.get("execution_mode") != "immediate"
        or record.get("deferred_until") is not None
        or record.get("disabled") is not False
        or middle != '"' + _plain_middle_text(retries, username)  # after the uuid's closing quote
    ):
        return None
    if len(_PLAIN_MIDDLES) >= 64:  # bounded; a process rarely meets more than a few
        _PLAIN_MIDDLES.clear()
    _PLAIN_MIDDLES[middle] = (retries, username)
    return retries, username


def _message_body(msg: QueueMessage, data_json: str, inserted: str = "") -> bytes:
    """The stored form of ``msg`` (QueueMessage.to_record as JSON), built without a dict.

    ``inserted``: ``repr(msg.inserted_at.timestamp())`` when the caller has it already.
    """
    deferred = "null" if msg.deferred_until is None else repr(msg.deferred_until.timestamp())
    if not inserted:
        inserted = "null" if msg.inserted_at is None else repr(msg.inserted_at.timestamp())
    return (
        f'{{"uuid":{string_or_null(msg.uuid)},"alias":{string_or_null(msg.alias)},"retries":{msg.retries},'
        f'"execution_mode":"{_MODE_NAMES[msg.execution_mode]}","deferred_until":{deferred},'
        f'"disabled":{"true" if msg.disabled else "false"},"username":{string_or_null(msg.username)},'
        f'"inserted_at":{inserted},"data":{data_json}}}'
    ).encode()
