"""The in-memory view of one queue, derived deterministically from its log.

Every process applies the same records in the same order, so every process holds the same
view; a process brings its view up to date under the queue lock before each operation.

Memory is proportional to the messages that are *not* plain ready messages (deferred,
disabled, in flight, redelivered, updated) and to aliases; plain ready messages cost nothing:
they are the **stream**, the ADD records after ``cursor`` in log order, and are read from
the log when they reach the head.

State of a message ``seq``:

* in the stream: ``seq < next_seq``, not in ``entries``, not in ``holes``, at/after the cursor;
* in ``entries`` as WAITING (eligible once ``due`` passed; due 0 means now), DISABLED or
  INFLIGHT (reserved until ``deadline``);
* gone (taken, acked, removed).

``holes`` holds stream seqs removed out of order; the cursor drops them as it passes.
"""

from __future__ import annotations

import heapq
import json
from typing import Any, Protocol

from ... import codec
from .records import Flag, Header, RecordType

__all__ = ["Entry", "QueueView", "Loc", "WAITING", "DISABLED", "INFLIGHT", "FAILED"]

Loc = tuple[int, int]  # (segment number, offset of the record)

WAITING, DISABLED, INFLIGHT, FAILED = 1, 2, 3, 4
_KEY_MASK = (1 << 48) - 1  # a queue's uuid key is 48 bits (the seq part of a minted uuid)


class LogAccess(Protocol):
    """What the view needs from the log while applying a record."""

    def ensure_head(self) -> None:
        """Find the first pending stream message among the records applied so far."""

    def locate(self, seq: int) -> Loc:
        """The loc of the ADD record of stream message ``seq``."""
        ...


class Entry:
    """A message outside the stream."""

    __slots__ = (
        "seq",
        "state",
        "loc",
        "due",
        "attempts",
        "deadline",
        "holder",
        "version",
        "in_due",
        "errors",
        "failed_at",
        "retry_at",
    )

    def __init__(self, seq: int, state: int, loc: Loc, due: int = 0, attempts: int = 0) -> None:
        self.seq = seq
        self.state = state
        self.loc = loc
        self.due = due
        self.attempts = attempts
        self.deadline = 0
        self.holder = ""
        self.version = 0
        self.in_due = False
        self.errors: list[str] = []  # errors of failed attempts so far (release, fail)
        self.failed_at = 0
        self.retry_at = 0  # not before this (ms), set by a release with a delay; 0 for none

    def to_list(self) -> list[Any]:
        return [
            self.seq,
            self.state,
            self.loc[0],
            self.loc[1],
            self.due,
            self.attempts,
            self.deadline,
            self.holder,
            self.errors,
            self.failed_at,
            self.retry_at,
        ]

    @classmethod
    def from_list(cls, row: list[Any]) -> Entry:
        e = cls(row[0], row[1], (row[2], row[3]), row[4], row[5])
        e.deadline, e.holder, e.errors, e.failed_at = row[6], row[7], list(row[8]), row[9]
        if len(row) > 10:  # checkpoints written before retry_at existed have ten fields
            e.retry_at = row[10]
        return e


class QueueView:
    """State of one queue at a log position. See the module docstring."""

    def __init__(self) -> None:
        self.position: Loc = (1, 0)  # next record to apply
        self.cursor: Loc = (1, 0)  # stream cursor: no pending stream message before it
        self.next_seq = 1
        self.stream_count = 0
        self.entries: dict[int, Entry] = {}
        self.holes: set[int] = set()
        self.updated: dict[int, Loc] = {}  # stream seq -> loc of its newest body
        self.alias_index: dict[str, int] = {}
        self.alias_of: dict[int, str] = {}
        self.foreign: dict[str, int] = {}  # uuid not minted here -> seq
        self.foreign_of: dict[int, str] = {}
        self.segments: dict[int, int] = {}  # segno -> first seq
        self.custom: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}  # engine metadata (hooks, catalogue, topics): not in status
        self.created_at = 0
        self.uuid_key = 0  # masks the seq in minted uuids (random per queue)
        self.last_inserted: list[Any] | None = None  # [uuid, alias, ts_ms] of the newest ADD
        self.last_processed: dict[str, Any] | None = None
        self.last_ts = 0
        self.destroyed = False
        # counts of entries by state (WAITING split into due / deferred lazily)
        self.n_waiting = 0
        self.n_due = 0
        self.n_disabled = 0
        self.n_inflight = 0
        self.n_failed = 0
        # heaps, validated lazily against entry.version
        self.deferred_heap: list[tuple[int, int, int]] = []  # (due, seq, version)
        self.due_heap: list[tuple[int, int]] = []  # (seq, version)
        self.lease_heap: list[tuple[int, int, int]] = []  # (deadline, seq, version)
        # head cache: the first pending stream message, found by scanning from the cursor
        self.head_seq = 0
        self.head_loc: Loc | None = None
        self.head_end: Loc | None = None  # position right after the head record

    # -- serialization (checkpoints) ----------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "position": list(self.position),
            "cursor": list(self.cursor),
            "next_seq": self.next_seq,
            "stream_count": self.stream_count,
            "entries": [e.to_list() for e in self.entries.values()],
            "holes": sorted(self.holes),
            "updated": [[s, loc[0], loc[1]] for s, loc in self.updated.items()],
            "alias_of": [[s, a] for s, a in self.alias_of.items()],
            "foreign_of": [[s, u] for s, u in self.foreign_of.items()],
            "segments": [[n, f] for n, f in self.segments.items()],
            "custom": self.custom,
            "meta": self.meta,
            "created_at": self.created_at,
            "uuid_key": self.uuid_key,
            "last_inserted": self.last_inserted,
            "last_processed": self.last_processed,
            "last_ts": self.last_ts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueueView:
        v = cls()
        v.position = (data["position"][0], data["position"][1])
        v.cursor = (data["cursor"][0], data["cursor"][1])
        v.next_seq = data["next_seq"]
        v.stream_count = data["stream_count"]
        for row in data["entries"]:
            v._put_entry(Entry.from_list(row))
        v.holes = set(data["holes"])
        v.updated = {s: (a, b) for s, a, b in data["updated"]}
        for s, a in data["alias_of"]:
            v.alias_of[s] = a
            v.alias_index[a] = s
        for s, u in data["foreign_of"]:
            v.foreign_of[s] = u
            v.foreign[u] = s
        v.segments = {n: f for n, f in data["segments"]}
        v.custom = data["custom"]
        v.meta = data.get("meta", {})
        v.created_at = data["created_at"]
        v.uuid_key = int(data["uuid_key"]) & _KEY_MASK
        v.last_inserted = data["last_inserted"]
        v.last_processed = data["last_processed"]
        v.last_ts = data["last_ts"]
        return v

    # -- entry bookkeeping --------------------------------------------------------------
    def _put_entry(self, e: Entry) -> None:
        self.entries[e.seq] = e
        self._count(e, +1)
        self._index(e)

    def _count(self, e: Entry, sign: int) -> None:
        if e.state == WAITING:
            self.n_waiting += sign
            if e.in_due:
                self.n_due += sign
        elif e.state == DISABLED:
            self.n_disabled += sign
        elif e.state == INFLIGHT:
            self.n_inflight += sign
        else:
            self.n_failed += sign

    def _index(self, e: Entry) -> None:
        e.version += 1
        if e.state == WAITING:
            if e.due == 0:
                e.in_due = True
                self.n_due += 1
                heapq.heappush(self.due_heap, (e.seq, e.version))
            else:
                heapq.heappush(self.deferred_heap, (e.due, e.seq, e.version))
        elif e.state == INFLIGHT:
            heapq.heappush(self.lease_heap, (e.deadline, e.seq, e.version))

    def _change(self, e: Entry, state: int, **fields: Any) -> None:
        self._count(e, -1)
        e.in_due = False
        e.state = state
        for name, value in fields.items():
            setattr(e, name, value)
        self._count(e, +1)
        self._index(e)

    def _drop_entry(self, e: Entry) -> None:
        self._count(e, -1)
        e.version += 1  # invalidates heap items
        del self.entries[e.seq]

    # -- queries ------------------------------------------------------------------------
    def in_stream(self, seq: int, log: LogAccess) -> bool:
        """True when ``seq`` is a pending stream message (finds the head if needed)."""
        if seq in self.entries or seq in self.holes or not 0 < seq < self.next_seq:
            return False
        if self.head_loc is None:
            log.ensure_head()
        return self.head_loc is not None and seq >= self.head_seq

    def promote_due(self, now_ms: int) -> None:
        """Move deferred entries whose time has come to the due heap (a local cache step)."""
        heap = self.deferred_heap
        while heap and heap[0][0] <= now_ms:
            due, seq, version = heapq.heappop(heap)
            e = self.entries.get(seq)
            if e is None or e.version != version or e.state != WAITING:
                continue
            e.in_due = True
            self.n_due += 1
            heapq.heappush(self.due_heap, (seq, version))

    def first_due(self) -> Entry | None:
        heap = self.due_heap
        while heap:
            seq, version = heap[0]
            e = self.entries.get(seq)
            if e is not None and e.version == version and e.state == WAITING:
                return e
            heapq.heappop(heap)
        return None

    def expired_leases(self, now_ms: int) -> list[int]:
        """Seqs of in-flight messages whose lease ended by ``now_ms`` (looks at the heap top only)."""
        out = []
        heap = self.lease_heap
        while heap and heap[0][0] <= now_ms:
            _, seq, version = heapq.heappop(heap)
            e = self.entries.get(seq)
            if e is not None and e.version == version and e.state == INFLIGHT:
                out.append(seq)
        # drop stale items (acked or released leases) at the top so the heap stays small
        while heap:
            _, seq, version = heap[0]
            e = self.entries.get(seq)
            if e is not None and e.version == version and e.state == INFLIGHT:
                break
            heapq.heappop(heap)
        return out

    def counts(self, now_ms: int) -> tuple[int, int, int, int]:
        """(ready, deferred, disabled, in_flight) at ``now_ms``."""
        self.promote_due(now_ms)
        ready = self.stream_count + self.n_due
        return ready, self.n_waiting - self.n_due, self.n_disabled, self.n_inflight

    # -- applying records ---------------------------------------------------------------
    def leave_stream(self, seq: int, loc: Loc) -> None:
        """``seq`` (a stream message) leaves the stream by the record at ``loc``."""
        self.stream_count -= 1
        self.updated.pop(seq, None)
        if not self.stream_count:
            # nothing pending in the stream: no need to re-read the records behind ``loc``
            self.cursor = loc
            self.holes.clear()
            self.head_loc = self.head_end = None
        elif self.head_loc is not None and seq == self.head_seq:
            assert self.head_end is not None
            self.cursor = self.head_end
            self.head_loc = self.head_end = None
        else:
            self.holes.add(seq)

    # The writer of a record applies it through these on its hot path (ADD of a ready
    # message, TAKE, RESERVE and ACK), after setting last_ts; apply() calls the same ones
    # for records read from the log, so both end in the same view.
    def added_ready(self, seq: int, uuid: str, ts: int, alias: str | None = None) -> None:
        """The ADD record of ready message ``seq`` (its alias already indexed), written at ``ts``."""
        if seq >= self.next_seq:
            self.next_seq = seq + 1
        self.last_inserted = [uuid, alias, ts]
        self.stream_count += 1

    def processed(self, processed: dict[str, Any]) -> None:
        """A STATUS record named the last processed message (uuid, alias, timestamp)."""
        self.last_processed = processed

    def removed_entry(self, e: Entry) -> None:
        """A TAKE, REMOVE or ACK of the message of entry ``e``."""
        self._drop_entry(e)
        if self.alias_of or self.foreign_of:
            self.forget(e.seq)

    def removed_from_stream(self, seq: int, loc: Loc) -> None:
        """A TAKE, REMOVE or ACK (at ``loc``) of ``seq``, a pending stream message."""
        self.leave_stream(seq, loc)
        if self.alias_of or self.foreign_of:
            self.forget(seq)

    def reserved_head(self, loc: Loc, deadline: int, holder: str) -> None:
        """A RESERVE (at ``loc``) of the stream's head, found by the log's ensure_head."""
        seq, src = self.head_seq, self.updated.get(self.head_seq) or self.head_loc
        assert src is not None
        self.leave_stream(seq, loc)
        self._reserved_from_stream(seq, src, deadline, holder)

    def _reserved_from_stream(self, seq: int, src: Loc, deadline: int, holder: str) -> None:
        e = Entry(seq, INFLIGHT, src, attempts=1)
        e.deadline, e.holder = deadline, holder
        self._put_entry(e)

    def drop_alias(self, seq: int) -> None:
        alias = self.alias_of.pop(seq, None)
        if alias is not None and self.alias_index.get(alias) == seq:
            del self.alias_index[alias]

    def forget(self, seq: int) -> None:
        """``seq`` is gone for good: drop its alias and foreign uuid."""
        self.drop_alias(seq)
        uuid = self.foreign_of.pop(seq, None)
        if uuid is not None:
            self.foreign.pop(uuid, None)

    def apply(self, h: Header, loc: Loc, body: memoryview, log: LogAccess) -> None:
        """Apply one valid record found at ``loc`` (every record before it is applied)."""
        t = h.type
        seq = h.seq
        self.last_ts = max(self.last_ts, h.ts)
        if t == RecordType.ADD:
            self.next_seq = max(self.next_seq, seq + 1)
            flags = h.flags
            if flags & Flag.FAILED:  # straight into the failed store
                failed = Entry(seq, FAILED, loc)
                failed.failed_at = h.ts
                self._put_entry(failed)
                if flags & Flag.FOREIGN_UUID:
                    self._index_names(seq, body, Flag.FOREIGN_UUID)
                return
            alias = None
            if flags & Flag.ALIAS or flags & Flag.FOREIGN_UUID:
                alias = self._index_names(seq, body, flags)
            # bodies start with {"uuid":"<36 chars>"; slicing avoids parsing every ADD
            uuid = bytes(body[9:45]).decode("ascii", "replace")
            if flags & Flag.NOT_STREAM:
                self.last_inserted = [uuid, alias, h.ts]
                state = DISABLED if flags & Flag.DISABLED else WAITING
                self._put_entry(Entry(seq, state, loc, due=h.arg))
            else:
                self.added_ready(seq, uuid, h.ts, alias)
            return
        if t in (RecordType.TAKE, RecordType.REMOVE, RecordType.ACK):
            e = self.entries.get(seq)
            if e is not None:
                self.removed_entry(e)
            elif self.in_stream(seq, log):
                self.removed_from_stream(seq, loc)
            else:
                self.forget(seq)
            return
        if t == RecordType.RESERVE:
            holder = bytes(body).decode("utf-8", "replace")
            e = self.entries.get(seq)
            if e is None:  # the usual case: straight from the stream to in flight
                src = self._leave_stream_for_entry(seq, loc, log)
                if src is not None:
                    self._reserved_from_stream(seq, src, h.arg, holder)
                return
            self._change(e, INFLIGHT, deadline=h.arg, holder=holder, attempts=e.attempts + 1)
            return
        if t in (RecordType.RELEASE, RecordType.EXPIRE):
            e = self.entries.get(seq)
            # a late release (lease already expired, not reserved again) still sets the delay
            if e is not None and (e.state == INFLIGHT or (t == RecordType.RELEASE and e.state == WAITING)):
                if t == RecordType.RELEASE:
                    if h.length:
                        e.errors.append(bytes(body).decode("utf-8", "replace"))
                    self._change(e, WAITING, due=h.arg, retry_at=h.arg, deadline=0, holder="")
                else:  # the holder is kept: it may still ack late (see QueueStore._inflight)
                    self._change(e, WAITING, due=0, deadline=0)
            return
        if t == RecordType.UPDATE:
            self._apply_update(h, loc, body, log)
            return
        if t == RecordType.STATUS:
            change = json.loads(bytes(body))
            if "processed" in change:
                self.processed(change["processed"])
            for key, value in change.get("meta", {}).items():
                if value is None:
                    self.meta.pop(key, None)
                else:
                    self.meta[key] = value
            if "custom" in change:
                if change.get("replace"):
                    self.custom = dict(change["custom"])
                else:
                    self.custom.update(change["custom"])
            return
        if t == RecordType.SEGMENT:
            self.segments[loc[0]] = seq
            return
        if t == RecordType.CREATE:
            created = json.loads(bytes(body))
            self.created_at = h.ts
            self.custom = dict(created.get("attributes") or {})
            self.uuid_key = int(created.get("uuid_key") or 0) & _KEY_MASK
            return
        if t == RecordType.FAIL:
            e = self._entry_for(seq, loc, log)
            if e is None:
                return
            change = json.loads(bytes(body))
            errors = change["errors"] if "errors" in change else [change.get("error") or ""]
            e.errors = e.errors + [str(x) for x in errors]
            attempts = int(change.get("attempts", e.attempts))  # add_failed: attempts made elsewhere
            failed_at = int(change.get("failed_at", h.ts))  # an import keeps the original time
            self._change(e, FAILED, due=0, deadline=0, holder="", failed_at=failed_at, attempts=attempts)
            self.drop_alias(seq)  # a failed message is not pending: its alias is free
            return
        if t == RecordType.REQUEUE:
            e = self.entries.get(seq)
            if e is not None and e.state == FAILED:
                self._change(e, WAITING, due=0, attempts=0, errors=[], failed_at=0, retry_at=0)
                alias = json.loads(bytes(body)).get("alias")
                if alias is not None:
                    self.alias_of[seq] = alias
                    self.alias_index[alias] = seq
            return
        if t == RecordType.MOVE:
            e = self.entries.get(seq)
            if e is not None:
                e.loc = loc
            return
        if t == RecordType.DESTROYED:
            self.destroyed = True

    def _entry_for(self, seq: int, loc: Loc, log: LogAccess) -> Entry | None:
        """The entry of pending message ``seq``; a stream message leaves the stream for one
        (by the record at ``loc``). None when ``seq`` is not pending."""
        e = self.entries.get(seq)
        if e is not None:
            return e
        src = self._leave_stream_for_entry(seq, loc, log)
        if src is None:
            return None
        e = Entry(seq, WAITING, src)
        self._put_entry(e)
        return e

    def _leave_stream_for_entry(self, seq: int, loc: Loc, log: LogAccess) -> Loc | None:
        """Take stream message ``seq`` out of the stream by the record at ``loc``, for an entry
        the caller creates; return where its body is. None when ``seq`` is not in the stream."""
        if not self.in_stream(seq, log):
            return None
        head_loc = self.head_loc if self.head_seq == seq else None
        src = self.updated.get(seq) or head_loc or log.locate(seq)
        self.leave_stream(seq, loc)
        return src

    def _index_names(self, seq: int, body: memoryview, flags: int) -> str | None:
        """Index the alias and kept uuid of a message; return its alias."""
        record = codec.loads(body)
        alias: str | None = record.get("alias")
        if flags & Flag.ALIAS and alias is not None:
            self.alias_of[seq] = alias
            self.alias_index[alias] = seq
        if flags & Flag.FOREIGN_UUID:
            self.foreign_of[seq] = record["uuid"]
            self.foreign[record["uuid"]] = seq
        return alias

    def _apply_update(self, h: Header, loc: Loc, body: memoryview, log: LogAccess) -> None:
        seq, flags = h.seq, h.flags
        e = self.entries.get(seq)
        if e is None and not self.in_stream(seq, log):
            return
        old_alias = self.alias_of.pop(seq, None)
        if old_alias is not None and self.alias_index.get(old_alias) == seq:
            del self.alias_index[old_alias]
        if flags & Flag.ALIAS:
            self._index_names(seq, body, flags & Flag.ALIAS)
        if e is None:  # in the stream
            if flags & Flag.NOT_STREAM:
                self.leave_stream(seq, loc)
                state = DISABLED if flags & Flag.DISABLED else WAITING
                self._put_entry(Entry(seq, state, loc, due=h.arg))
            else:
                self.updated[seq] = loc
            return
        if e.state == INFLIGHT:  # writers refuse this; keep the body for the next delivery
            e.loc = loc
            return
        # A new body brings its own deferral; the delay of a release (retry_at) stays.
        state = DISABLED if flags & Flag.DISABLED else WAITING
        self._change(e, state, loc=loc, due=max(h.arg if flags & Flag.DEFERRED else 0, e.retry_at))

    def live_segments(self) -> int:
        """The oldest segment number any pending message or the stream still needs."""
        low = self.cursor[0]
        for e in self.entries.values():
            low = min(low, e.loc[0])
        for loc in self.updated.values():
            low = min(low, loc[0])
        return low
