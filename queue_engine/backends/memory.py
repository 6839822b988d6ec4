"""An in-process backend for unit tests: the whole contract, nothing on disk.

Like dramatiq's ``StubBroker`` or huey's ``MemoryStorage``: use it where a test needs a queue
but not durability. Every manager instance holds its own queues; nothing is shared between
instances or processes, and nothing survives the process. Thread-safe.
"""

from __future__ import annotations

import json
import threading
import time
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..config import Config
from ..errors import DuplicateAlias, LeaseLost, MessageInFlight, MessageNotFound, QueueNotFound
from ..manager import MessageFilter, OnDuplicate, QueueManager
from ..message import QueueMessage, encode_data, from_epoch
from ..status import FailedMessage, MessageRef, QueueStatus

__all__ = ["MemoryQueueManager"]


@dataclass
class _Entry:
    #: ``QueueMessage.to_record()`` with ``data`` kept as JSON text, so readers get a copy.
    record: dict[str, Any]
    attempts: int = 0
    #: End of the current reservation; None when not reserved. Past means expired.
    lease_until: float | None = None
    #: Set by ``release(delay=...)``: not eligible before this time.
    not_before: float = 0.0
    #: Queue order (insertion counter): a requeued failed message goes back to this place.
    order: int = 0
    #: Errors of failed attempts so far (from release and fail).
    errors: list[str] = field(default_factory=list)
    #: When it entered the failed store (epoch seconds); 0 while pending.
    failed_at: float = 0.0

    def in_flight(self, now: float) -> bool:
        return self.lease_until is not None and self.lease_until > now

    def due(self, now: float) -> bool:
        deferred = self.record["deferred_until"]
        return self.not_before <= now and (deferred is None or deferred <= now)

    def eligible(self, now: float) -> bool:
        return not self.record["disabled"] and not self.in_flight(now) and self.due(now)


@dataclass
class _Queue:
    #: uuid -> entry; dict order is queue order, and assigning to a key keeps its place.
    entries: dict[str, _Entry] = field(default_factory=dict)
    #: alias -> uuid of the pending message holding it.
    aliases: dict[str, str] = field(default_factory=dict)
    #: uuid -> entry of the failed store.
    failed: dict[str, _Entry] = field(default_factory=dict)
    counter: int = 0
    attributes: str = "{}"  # JSON text, for the same copy-on-read reason as data
    meta: str = "{}"  # engine metadata (JSON text): hooks, catalogue, topics
    last_inserted: MessageRef | None = None
    last_processed: MessageRef | None = None
    modified: float = field(default_factory=time.time)


class MemoryQueueManager(QueueManager):
    """Reference implementation of the contract, kept in a dict. Leases expire by time only.

    A missing queue reads as empty for ``get_message``/``reserve``, is created by an add, and
    raises :class:`QueueNotFound` everywhere else (as the file backend does).
    """

    queue_type = "memory"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._queues: dict[str, _Queue] = {}
        self._lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _message(queue: str, entry: _Entry) -> QueueMessage:
        record = dict(entry.record, data=json.loads(entry.record["data"]))
        return QueueMessage.from_record(record, attempts=entry.attempts, queue=queue)

    def _existing(self, queue: str) -> _Queue:
        q = self._queues.get(queue)
        if q is None:
            raise QueueNotFound(f"queue {queue!r} does not exist")
        return q

    def _touch(self, q: _Queue) -> None:
        q.modified = time.time()

    def _pop(self, q: _Queue, uid: str) -> _Entry:
        entry = q.entries.pop(uid)
        alias = entry.record["alias"]
        if alias is not None and q.aliases.get(alias) == uid:
            del q.aliases[alias]
        self._touch(q)
        return entry

    def _first_eligible(self, queue: str) -> tuple[_Queue, str, _Entry] | None:
        q = self._queues.get(queue)
        if q is None:
            return None
        now = time.time()
        for uid, entry in q.entries.items():
            if entry.eligible(now):
                return q, uid, entry
        return None

    def _reserved(self, queue: str, uid: str, attempt: int | None) -> tuple[_Queue, _Entry]:
        q = self._existing(queue)
        entry = q.entries.get(uid)
        if entry is None or entry.lease_until is None:
            raise LeaseLost(f"message {uid!r} in queue {queue!r} is not reserved (acked, released or unknown)")
        if attempt is not None and attempt != entry.attempts:
            raise LeaseLost(
                f"reservation {attempt} of message {uid!r} in queue {queue!r} was lost: "
                f"the message was handed out again (attempt {entry.attempts})"
            )
        return q, entry

    # -- queues -------------------------------------------------------------------------
    def _create_queue(self, queue: str, attributes: dict[str, Any]) -> bool:
        text = encode_data(attributes)
        with self._lock:
            if queue in self._queues:
                return False
            self._queues[queue] = _Queue(attributes=text)
            return True

    def _destroy_queue(self, queue: str) -> bool:
        with self._lock:
            return self._queues.pop(queue, None) is not None

    def _queue_exists(self, queue: str) -> bool:
        with self._lock:
            return queue in self._queues

    def _list_queues(self) -> Iterable[str]:
        with self._lock:
            return list(self._queues)

    # -- producing ----------------------------------------------------------------------
    def _add_messages(self, queue: str, messages: list[QueueMessage], on_duplicate: OnDuplicate) -> list[str]:
        texts = [encode_data(m.data) for m in messages]  # all or none: refuse before storing any
        with self._lock:
            q = self._queues.get(queue) or _Queue()
            if on_duplicate == "error":
                seen: set[str] = set()
                for m in messages:
                    if m.alias is None:
                        continue
                    if m.alias in q.aliases or m.alias in seen:
                        existing = q.aliases.get(m.alias, "")
                        raise DuplicateAlias(
                            f"alias {m.alias!r} is already held by pending message {existing or '(same batch)'} "
                            f"in queue {queue!r}",
                            queue=queue,
                            alias=m.alias,
                            uuid=existing,
                        )
                    seen.add(m.alias)
            self._queues[queue] = q
            # Stored at microsecond precision, so ``find_messages(inserted_from=m.inserted_at)`` finds m.
            now = datetime.fromtimestamp(time.time(), tz=timezone.utc).timestamp()
            uuids = []
            for m, text in zip(messages, texts, strict=True):
                holder = None if m.alias is None else q.aliases.get(m.alias)
                if holder is not None and on_duplicate == "ignore":
                    uid = holder
                elif holder is not None and on_duplicate == "replace" and not q.entries[holder].in_flight(now):
                    old = q.entries[holder]
                    record = dict(m.to_record(), uuid=holder, data=text, inserted_at=old.record["inserted_at"])
                    q.entries[holder] = _Entry(
                        record, attempts=old.attempts, not_before=old.not_before, order=old.order, errors=old.errors
                    )
                    uid = holder
                else:
                    uid = str(uuidlib.uuid4())
                    record = dict(m.to_record(), uuid=uid, data=text, inserted_at=now)
                    q.counter += 1
                    q.entries[uid] = _Entry(record, order=q.counter)
                    if m.alias is not None:
                        q.aliases[m.alias] = uid
                    q.last_inserted = MessageRef(uid, m.alias, from_epoch(now))
                m.uuid = uid
                m.inserted_at = from_epoch(q.entries[uid].record["inserted_at"])
                uuids.append(uid)
            self._touch(q)
            return uuids

    # -- consuming ----------------------------------------------------------------------
    def _get_message(self, queue: str) -> QueueMessage | None:
        with self._lock:
            found = self._first_eligible(queue)
            return None if found is None else self._message(queue, self._pop(found[0], found[1]))

    def _reserve(self, queue: str, lease: float) -> QueueMessage | None:
        with self._lock:
            found = self._first_eligible(queue)
            if found is None:
                return None
            q, _, entry = found
            entry.attempts += 1
            entry.lease_until = time.time() + lease
            self._touch(q)
            return self._message(queue, entry)

    def _ack(self, queue: str, uuid: str, attempt: int | None) -> None:
        with self._lock:
            q, _ = self._reserved(queue, uuid, attempt)
            self._pop(q, uuid)

    def _release(self, queue: str, uuid: str, attempt: int | None, delay: float, error: str | None) -> None:
        with self._lock:
            q, entry = self._reserved(queue, uuid, attempt)
            entry.lease_until = None
            entry.not_before = time.time() + delay
            if error:
                entry.errors.append(error)
            self._touch(q)

    # -- inspecting and changing --------------------------------------------------------
    def _queue_status(self, queue: str) -> QueueStatus:
        with self._lock:
            q = self._existing(queue)
            now = time.time()
            counts = {"ready": 0, "deferred": 0, "disabled": 0, "in_flight": 0}
            for entry in q.entries.values():
                if entry.in_flight(now):
                    counts["in_flight"] += 1
                elif entry.record["disabled"]:
                    counts["disabled"] += 1
                elif entry.due(now):
                    counts["ready"] += 1
                else:
                    counts["deferred"] += 1
            return QueueStatus(
                queue=queue,
                last_message_inserted=q.last_inserted,
                last_message_processed=q.last_processed,
                last_queue_modify_time=from_epoch(q.modified),
                messages_to_process=counts["ready"] + counts["deferred"] + counts["in_flight"],
                failed=len(q.failed),
                custom_attributes=json.loads(q.attributes),
                **counts,
            )

    def _set_custom_attributes(self, queue: str, attributes: dict[str, Any], replace: bool) -> dict[str, Any]:
        with self._lock:
            q = self._existing(queue)
            merged = dict(attributes) if replace else {**json.loads(q.attributes), **attributes}
            q.attributes = encode_data(merged)
            self._touch(q)
            return json.loads(q.attributes)  # a fresh copy

    def _update_last_processed(self, queue: str, uuid: str | None, alias: str | None) -> None:
        with self._lock:
            q = self._existing(queue)
            q.last_processed = MessageRef(uuid, alias, from_epoch(time.time()))
            self._touch(q)

    def _find_messages(self, queue: str, flt: MessageFilter, limit: int | None) -> list[QueueMessage]:
        with self._lock:
            q = self._existing(queue)
            if flt.uuid is not None or flt.alias is not None:  # index lookup, no scan
                uid = flt.uuid if flt.uuid is not None else q.aliases.get(flt.alias or "")
                candidates = [uid] if uid in q.entries else []
            else:
                candidates = list(q.entries)
            found: list[QueueMessage] = []
            for uid in candidates:
                if limit is not None and len(found) >= limit:
                    break
                entry = q.entries[uid]
                if flt.matches(entry.record):
                    found.append(self._message(queue, entry))
            return found

    def _update_message(self, queue: str, message: QueueMessage) -> None:
        text = encode_data(message.data)
        with self._lock:
            q = self._existing(queue)
            uid = message.uuid or ""
            old = q.entries.get(uid)
            if old is None:
                raise MessageNotFound(f"no pending message {uid!r} in queue {queue!r}")
            if old.in_flight(time.time()):
                raise MessageInFlight(f"message {uid!r} in queue {queue!r} is reserved by a consumer")
            holder = None if message.alias is None else q.aliases.get(message.alias)
            if holder is not None and holder != uid:
                raise DuplicateAlias(
                    f"alias {message.alias!r} is already held by pending message {holder} in queue {queue!r}",
                    queue=queue,
                    alias=message.alias or "",
                    uuid=holder,
                )
            if old.record["alias"] is not None and q.aliases.get(old.record["alias"]) == uid:
                del q.aliases[old.record["alias"]]
            if message.alias is not None:
                q.aliases[message.alias] = uid
            record = dict(message.to_record(), uuid=uid, data=text, inserted_at=old.record["inserted_at"])
            q.entries[uid] = _Entry(
                record, attempts=old.attempts, not_before=old.not_before, order=old.order, errors=old.errors
            )
            self._touch(q)

    def _remove_message(self, queue: str, uuid: str) -> bool:
        with self._lock:
            q = self._existing(queue)
            entry = q.entries.get(uuid)
            if entry is None:
                return False
            if entry.in_flight(time.time()):
                raise MessageInFlight(f"message {uuid!r} in queue {queue!r} is reserved by a consumer")
            self._pop(q, uuid)
            return True

    # -- failed store -------------------------------------------------------------------
    def _fail(self, queue: str, uuid: str, attempt: int | None, error: str) -> None:
        with self._lock:
            q, _ = self._reserved(queue, uuid, attempt)
            entry = self._pop(q, uuid)  # frees the alias: a failed message is not pending
            entry.errors.append(error)
            entry.lease_until, entry.failed_at = None, time.time()
            q.failed[uuid] = entry

    def _add_failed(self, queue: str, message: QueueMessage, errors: list[str]) -> str:
        text = encode_data(message.data)
        with self._lock:
            q = self._queues.setdefault(queue, _Queue())
            uid = message.uuid or ""
            if not uid or uid in q.entries or uid in q.failed:
                uid = str(uuidlib.uuid4())
            now = time.time()
            q.counter += 1
            record = dict(message.to_record(), uuid=uid, data=text, inserted_at=now)
            q.failed[uid] = _Entry(
                record, attempts=message.attempts, order=q.counter, errors=list(errors), failed_at=now
            )
            message.uuid, message.inserted_at = uid, from_epoch(now)
            self._touch(q)
            return uid

    def _select_failed(
        self, q: _Queue, since: float | None, until: float | None, uuids: set[str] | None
    ) -> list[tuple[str, _Entry]]:
        return sorted(
            (
                (uid, e)
                for uid, e in q.failed.items()
                if (since is None or e.failed_at >= since)
                and (until is None or e.failed_at <= until)
                and (uuids is None or uid in uuids)
            ),
            key=lambda item: item[1].order,
        )

    def _failed_messages(
        self, queue: str, since: float | None, until: float | None, limit: int | None
    ) -> list[FailedMessage]:
        with self._lock:
            selected = self._select_failed(self._existing(queue), since, until, None)[:limit]
            return [
                FailedMessage(
                    self._message(queue, e), datetime.fromtimestamp(e.failed_at, tz=timezone.utc), list(e.errors)
                )
                for _, e in selected
            ]

    def _requeue_failed(
        self, queue: str, since: float | None, until: float | None, uuids: set[str] | None
    ) -> list[str]:
        with self._lock:
            q = self._existing(queue)
            moved = []
            for uid, e in self._select_failed(q, since, until, uuids):
                alias = e.record["alias"]
                if alias is not None and alias in q.aliases:
                    continue  # another pending message holds the alias now: it stays failed
                del q.failed[uid]
                e.attempts, e.errors, e.failed_at, e.not_before = 0, [], 0.0, 0.0
                q.entries[uid] = e
                if alias is not None:
                    q.aliases[alias] = uid
                moved.append(uid)
            if moved:  # back to their original places
                q.entries = dict(sorted(q.entries.items(), key=lambda item: item[1].order))
                self._touch(q)
            return moved

    def _forget_failed(self, queue: str, since: float | None, until: float | None, uuids: set[str] | None) -> int:
        with self._lock:
            q = self._existing(queue)
            selected = self._select_failed(q, since, until, uuids)
            for uid, _ in selected:
                del q.failed[uid]
            if selected:
                self._touch(q)
            return len(selected)

    # -- moving queues between backends ---------------------------------------------------
    def _export_messages(self, queue: str) -> list[QueueMessage | FailedMessage]:
        with self._lock:
            q = self._existing(queue)
            out: list[QueueMessage | FailedMessage] = [self._message(queue, e) for e in q.entries.values()]
            out += [
                FailedMessage(
                    self._message(queue, e), datetime.fromtimestamp(e.failed_at, tz=timezone.utc), list(e.errors)
                )
                for _, e in self._select_failed(q, None, None, None)
            ]
            return out

    def _import_messages(self, queue: str, items: list[QueueMessage | FailedMessage]) -> int:
        with self._lock:
            q = self._queues.get(queue) or _Queue()
            fresh: list[QueueMessage | FailedMessage] = []
            seen: set[str] = set()
            for item in items:  # check everything before changing anything
                message = item.message if isinstance(item, FailedMessage) else item
                uid = str(message.uuid)
                if uid in seen or uid in q.entries or uid in q.failed:
                    continue
                seen.add(uid)
                if not isinstance(item, FailedMessage) and message.alias is not None:
                    holder = q.aliases.get(message.alias)
                    taken = {m.alias for m in fresh if isinstance(m, QueueMessage)}
                    if holder is not None or message.alias in taken:
                        raise DuplicateAlias(
                            f"alias {message.alias!r} is already held by pending message {holder} in queue {queue!r}",
                            queue=queue,
                            alias=message.alias,
                            uuid=holder or "",
                        )
                fresh.append(item)
            self._queues[queue] = q
            now = time.time()
            for item in fresh:
                message = item.message if isinstance(item, FailedMessage) else item
                uid = str(message.uuid)
                inserted = message.inserted_at.timestamp() if message.inserted_at else now
                record = dict(message.to_record(), uuid=uid, data=encode_data(message.data), inserted_at=inserted)
                q.counter += 1
                if isinstance(item, FailedMessage):
                    q.failed[uid] = _Entry(
                        record,
                        attempts=message.attempts,
                        order=q.counter,
                        errors=list(item.errors),
                        failed_at=item.failed_at.timestamp(),
                    )
                else:
                    q.entries[uid] = _Entry(record, order=q.counter)
                    if message.alias is not None:
                        q.aliases[message.alias] = uid
            if fresh:
                self._touch(q)
            return len(fresh)

    # -- engine metadata ----------------------------------------------------------------
    def _queue_meta(self, queue: str) -> dict[str, Any]:
        with self._lock:
            result: dict[str, Any] = json.loads(self._existing(queue).meta)
            return result

    def _update_queue_meta(self, queue: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            q = self._existing(queue)
            meta = json.loads(q.meta)
            for key, value in changes.items():
                if value is None:
                    meta.pop(key, None)
                else:
                    meta[key] = value
            q.meta = encode_data(meta)
            self._touch(q)
            return meta
