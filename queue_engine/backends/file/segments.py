"""Segment files: preallocated, written with pwrite, read through a shared read-only mmap.

A segment is ``NNNNNNNNNN.log`` in the queue's ``log/`` folder, preallocated with
``posix_fallocate`` so that a full disk fails when a segment is created (a clean error)
rather than as SIGBUS on a mapped page, and so the mapping never changes size. Its sidecar
``NNNNNNNNNN.idx`` maps a message seq to the offset of its ADD record: slot
``seq - first_seq`` holds ``offset + 1`` (0: not written, e.g. the writer died first; the
index is a hint rebuilt by scanning the segment).
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from pathlib import Path
from typing import Final

from ...errors import StorageError
from ...permissions import Modes
from .records import HEADER_SIZE

__all__ = ["Segment", "segment_path", "create_segment", "fsync_dir"]

_IDX_HEADER: Final = struct.Struct("<Q")  # first_seq
_IDX_SLOT: Final = struct.Struct("<I")
_IDX_BASE: Final = 8  # _IDX_HEADER.size
_SLOT_SIZE: Final = 4  # _IDX_SLOT.size
_pack_slot: Final = _IDX_SLOT.pack_into
_unpack_slot: Final = _IDX_SLOT.unpack_from
assert _IDX_HEADER.size == _IDX_BASE and _IDX_SLOT.size == _SLOT_SIZE
#: Smallest record (header + a minimal message body); bounds the slots a segment needs.
MIN_ADD_SIZE: Final = HEADER_SIZE + 16


def segment_path(log_dir: Path, segno: int, suffix: str = ".log") -> Path:
    return log_dir / f"{segno:010d}{suffix}"


def fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(action: str, path: Path, exc: OSError) -> StorageError:
    reason = {
        errno.ENOSPC: "no space left on device",
        errno.EFBIG: "file size limit exceeded",
        errno.EDQUOT: "disk quota exceeded",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return StorageError(f"cannot {action} {str(path)!r}: {reason}")


def _preallocate(path: Path, size: int, modes: Modes) -> None:
    fd = modes.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            os.ftruncate(fd, size)  # filesystems without fallocate
    finally:
        os.close(fd)


def create_segment(log_dir: Path, segno: int, size: int, first_seq: int, head: bytes, modes: Modes) -> None:
    """Create segment ``segno`` (and its index) atomically, starting with record ``head``.

    Files are built under temporary names and renamed into place, so a crash leaves either
    no segment or a complete one; an existing file of the same number (left unsealed by a
    writer that died mid-roll) is replaced.
    """
    path = segment_path(log_dir, segno)
    idx = segment_path(log_dir, segno, ".idx")
    tmp, tmp_idx = path.with_suffix(".log.tmp"), idx.with_suffix(".idx.tmp")
    slots = size // MIN_ADD_SIZE + 1
    try:
        _preallocate(tmp_idx, _IDX_BASE + slots * _SLOT_SIZE, modes)
        fd = os.open(tmp_idx, os.O_RDWR)
        try:
            os.pwrite(fd, _IDX_HEADER.pack(first_seq), 0)
        finally:
            os.close(fd)
        _preallocate(tmp, size, modes)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.pwrite(fd, head, 0)
        finally:
            os.close(fd)
        os.replace(tmp_idx, idx)
        os.replace(tmp, path)
    except OSError as exc:
        for leftover in (tmp, tmp_idx):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        raise _storage_error("create log segment", path, exc) from None


class Segment:
    """An open segment: a write descriptor, a read mapping and the seq index mapping."""

    __slots__ = ("segno", "path", "fd", "size", "mm", "idx_mm", "idx_fd", "first_seq", "slots")

    def __init__(self, log_dir: Path, segno: int) -> None:
        self.segno = segno
        self.path = segment_path(log_dir, segno)
        self.fd = os.open(self.path, os.O_RDWR)  # FileNotFoundError tells the caller it is gone
        try:
            self.size = os.fstat(self.fd).st_size
            self.mm = mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ)
            idx_path = segment_path(log_dir, segno, ".idx")
            self.idx_fd = os.open(idx_path, os.O_RDWR)
            idx_size = os.fstat(self.idx_fd).st_size
            self.idx_mm = mmap.mmap(self.idx_fd, idx_size)
            (self.first_seq,) = _IDX_HEADER.unpack_from(self.idx_mm, 0)
            self.slots = (idx_size - _IDX_BASE) // _SLOT_SIZE
        except Exception:
            self.close()
            raise

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``, all or nothing; an OSError becomes a StorageError.

        A short write (full disk, file size limit) is undone at once by zeroing what was
        written, so no partial record is left for readers to find.
        """
        try:
            # os.pwrite looked up at each call, not bound once: tests/test_roll_crash.py replaces it
            written = os.pwrite(self.fd, data, offset)
        except OSError as exc:
            raise _storage_error("write", self.path, exc) from None
        if written != len(data):
            try:
                os.pwrite(self.fd, b"\x00" * written, offset)  # below the point that failed: fits
            except OSError:
                pass  # then the next reader finds a torn record and cuts it
            try:
                os.pwrite(self.fd, data[written:], offset + written)  # to get the reason
            except OSError as exc:
                raise _storage_error("write", self.path, exc) from None
            raise StorageError(f"cannot write {str(self.path)!r}: short write ({written} of {len(data)} bytes)")

    def index_put(self, seq: int, offset: int) -> None:
        slot = seq - self.first_seq
        if 0 <= slot < self.slots:
            _pack_slot(self.idx_mm, _IDX_BASE + slot * _SLOT_SIZE, offset + 1)

    def index_get(self, seq: int) -> int | None:
        """Offset of the ADD record of ``seq`` if the index has it."""
        slot = seq - self.first_seq
        if not 0 <= slot < self.slots:
            return None
        (value,) = _unpack_slot(self.idx_mm, _IDX_BASE + slot * _SLOT_SIZE)
        return value - 1 if value else None

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise _storage_error("sync", self.path, exc) from None

    def close(self) -> None:
        for name in ("mm", "idx_mm"):
            mapping = getattr(self, name, None)
            if mapping is not None:
                try:
                    mapping.close()
                except BufferError:  # a memoryview still exported; the GC will unmap it
                    pass
        for name in ("fd", "idx_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)  # closed (an int: the compiled build checks types)
