"""On-disk record framing for the file backend's log.

Every record is a fixed 36-byte header followed by ``length`` bytes of body::

    magic  2s   b"qE"
    type   u8   RecordType
    flags  u8   Flag bits (ADD/UPDATE only)
    length u32  body length
    seq    u64  message sequence number the record is about (0 for queue-level records)
    arg    u64  per-type argument: due or deadline in epoch milliseconds
    ts     u64  when the record was written, epoch milliseconds
    crc    u32  CRC-32 of the 32 header bytes before it plus the body

A record is valid only if its magic and CRC match, so a torn write (process killed in the
middle of a write, power loss) is detected instead of being read as data. A zero magic marks
the end of the written part of a preallocated segment.

Records that must become visible together (a batch of adds) carry ``Flag.CONTINUED`` on every
record but the last: a reader applies a group only once it has read its last record.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from typing import Final, Literal, NamedTuple

Buffer = bytes | bytearray | memoryview | mmap.mmap

__all__ = [
    "Flag", "Header", "RecordType", "HEADER", "MAGIC", "VALID_TYPES", "encode", "read_header", "check"
]

MAGIC: Final = b"qE"
HEADER: Final = struct.Struct("<2sBBIQQQI")
_PREFIX: Final = struct.Struct("<2sBBIQQQ")  # the header without its crc
_CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = 36
assert HEADER.size == HEADER_SIZE

# Bound once: the compiled build keeps Final names in C statics, where a module attribute
# (zlib.crc32) or a global would be looked up by name on every call.
_crc32: Final = zlib.crc32
_pack_prefix: Final = _PREFIX.pack
_pack_crc: Final = _CRC.pack
_unpack_header: Final = HEADER.unpack_from


class RecordType:
    """What a record means (plain ints: enum arithmetic is slow on the hot path).

    See queue_engine.backends.file.view for how each one applies.
    """

    SEGMENT: Final = 1  # first record of a segment; seq = first message seq the segment may hold
    CREATE: Final = 2  # queue created; body = {"attributes": {...}}
    ADD: Final = 3  # a message; body = QueueMessage.to_record() JSON; arg = due ms (0: none)
    TAKE: Final = 4  # removed by get_message
    RESERVE: Final = 5  # handed out; arg = lease deadline ms; body = holder "pid:starttime"
    ACK: Final = 6  # reserved message finished
    RELEASE: Final = 7  # reserved message given back; arg = due ms (0: now); body = error text
    EXPIRE: Final = 8  # lease ended or holder died; eligible again now
    UPDATE: Final = 9  # new content for a pending message, same place; like ADD
    REMOVE: Final = 10  # pending message deleted
    STATUS: Final = 11  # status record change; body = JSON
    SEAL: Final = 12  # nothing follows in this segment; continue in the next one
    DESTROYED: Final = 13  # queue destroyed; handles must reopen
    MOVE: Final = 14  # a pending message's body copied forward so old segments can go; state unchanged
    FAIL: Final = 15  # to the failed store; body = {"error": text} or {"errors": [...]}
    REQUEUE: Final = 16  # failed message back to the queue, same place; body = {"alias": alias or null}
    CLEAN: Final = 17  # segments below seq were deleted: every process unmaps them (frees their space)
    PAD: Final = 18  # written over damaged bytes (kept in quarantine/): readers skip it


#: Every type a valid record can have.
VALID_TYPES: Final = frozenset(v for k, v in vars(RecordType).items() if not k.startswith("_"))


class Flag:
    """Flag bits of ADD and UPDATE records (plain ints, see RecordType)."""

    DEFERRED: Final = 1
    DISABLED: Final = 2
    ALIAS: Final = 4  # the body has an alias (the view indexes it)
    FOREIGN_UUID: Final = 8  # uuid not minted by this queue (kept by a migration)
    CONTINUED: Final = 16  # more records of the same atomic group follow
    FAILED: Final = 32  # ADD straight into the failed store (direct mode): no alias, not "last inserted"
    #: An ADD with any of these is not a plain ready message, i.e. not in the stream.
    NOT_STREAM: Final = DEFERRED | DISABLED | FAILED


class Header(NamedTuple):
    type: int
    flags: int
    length: int
    seq: int
    arg: int
    ts: int
    crc: int


def encode(rtype: int, seq: int, body: bytes = b"", *, flags: int = 0, arg: int = 0, ts: int = 0) -> bytes:
    """Frame one record."""
    prefix = _pack_prefix(MAGIC, rtype, flags, len(body), seq, arg, ts)
    if not body:
        return prefix + _pack_crc(_crc32(prefix))
    return b"".join((prefix, _pack_crc(_crc32(body, _crc32(prefix))), body))


_new_header: Final = tuple.__new__  # Header from the unpacked fields without namedtuple's Python-level __new__
_NO_MAGIC: Final = b"\x00\x00"


def read_header(buf: Buffer, offset: int) -> Header | None:
    """The header at ``offset`` of ``buf``, or None where nothing was written (zero magic).

    Raises ValueError for bytes that are neither zero nor a record header.
    """
    fields = _unpack_header(buf, offset)
    if fields[0] != MAGIC:
        if fields[0] == _NO_MAGIC:
            return None
        raise ValueError(f"bad record magic {fields[0]!r} at offset {offset}")
    header: Header = _new_header(Header, fields[1:])
    return header


def check(buf: Buffer, offset: int, size: int) -> Header | None | Literal[False]:
    """The valid record at ``offset`` of ``buf`` (of ``size`` bytes): its header; None where
    nothing was written; False where the bytes are not a complete record with a matching CRC.

    Every reader of the log checks a record through here before using it.
    """
    if offset + HEADER_SIZE > size:
        return None
    fields = _unpack_header(buf, offset)  # magic, type, flags, length, seq, arg, ts, crc
    if fields[0] != MAGIC:
        return None if fields[0] == _NO_MAGIC else False
    start = offset + HEADER_SIZE
    end = start + fields[3]
    if end > size or fields[1] not in VALID_TYPES:
        return False
    if _crc32(buf[start:end], _crc32(buf[offset : start - 4])) != fields[7]:
        return False
    header: Header = _new_header(Header, fields[1:])
    return header
