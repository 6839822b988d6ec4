"""Moving queues from one backend to another (``qengine migrate`` is a thin layer over this).

The steps can be called one by one:

1. :func:`copy_queue` -- ``export_messages`` from the source, create the destination queue,
   ``import_messages`` (idempotent by uuid), copy custom attributes (merged) and the last
   processed message (with the time of the copy).
2. :func:`verify_copy` -- export the destination and check that every exported uuid is
   there in the same state (pending or failed). Raises :class:`MigrationError` otherwise.
3. :func:`remove_copied` -- only then remove exactly the verified uuids from the source:
   pending ones with ``remove_message``, failed ones with ``forget_failed``. The source
   queue itself (its status record and attributes) is kept, and so is anything added to
   it after the export: a second run moves those.

A run interrupted anywhere can be run again: the import skips uuids the destination
already has, and removal only touches what is verified. What is not guaranteed: messages
consumed from the destination between import and verification fail the verification (the
source is then left intact, and a re-run would import them again), and a message still
reserved in the source when it is removed stays there (reported): stop the consumers of
both sides while migrating.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .errors import MessageInFlight, QueueEngineError
from .manager import QueueManager
from .message import QueueMessage
from .status import FailedMessage

__all__ = [
    "MigrationError",
    "MigrationResult",
    "copy_queue",
    "migrate_queue",
    "remove_copied",
    "same_storage",
    "storage_identity",
    "verify_copy",
]

Item = QueueMessage | FailedMessage


class MigrationError(QueueEngineError):
    """The destination does not hold what was copied to it; the source was left intact."""

    exit_code = 5


@dataclass
class MigrationResult:
    """What happened to one queue."""

    queue: str
    exported: int = 0
    imported: int = 0
    verified: bool = False
    removed: int = 0
    #: Pending messages of the source by state, and failed ones (from its status, before the copy).
    counts: dict[str, int] = field(default_factory=dict)
    #: Uuids copied and verified but still reserved in the source, so not removed there.
    left_in_flight: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "exported": self.exported,
            "imported": self.imported,
            "verified": self.verified,
            "removed": self.removed,
            "counts": dict(self.counts),
            "left_in_flight": list(self.left_in_flight),
        }


def storage_identity(config: Config) -> tuple[str, ...]:
    """What storage a config names, from its text (for messages; see :func:`same_storage`)."""
    kind = config.queue_type
    if kind in ("file", "cache"):
        return ("file", str(Path(config.cache_root).resolve()))
    if kind == "redis":
        from .backends.redis.backend import describe_server

        return ("redis", describe_server(config), config.redis_prefix)
    return (kind, str(id(config)))  # in-process backends never share storage


def same_storage(source: QueueManager, destination: QueueManager) -> bool:
    """Whether two managers reach the same queues, judged on the storage itself, not on
    config text (``localhost`` and ``127.0.0.1``, a URL and its components, TLS or not, all
    name one server). Migrating onto the same storage would delete what it copies."""
    kinds = {source.config.queue_type, destination.config.queue_type}
    if kinds <= {"file", "cache"}:
        a = os.stat(Path(source.config.cache_root) / "queues")
        b = os.stat(Path(destination.config.cache_root) / "queues")
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    if kinds == {"redis"}:
        if source.config.redis_prefix != destination.config.redis_prefix:
            return False
        # a marker written through one client and read through the other: same server and db
        key = f"{source.config.redis_prefix}:migrate-probe:{secrets.token_hex(8)}"
        src: Any = source
        dst: Any = destination
        src.client.set(key, "1", ex=60)
        try:
            return bool(dst.client.exists(key))
        finally:
            src.client.delete(key)
    return source is destination


def _uuids(items: list[Item]) -> tuple[set[str], set[str]]:
    pending = {str(i.uuid) for i in items if isinstance(i, QueueMessage)}
    failed = {str(i.message.uuid) for i in items if isinstance(i, FailedMessage)}
    return pending, failed


def _counts(manager: QueueManager, queue: str) -> dict[str, int]:
    status = manager.queue_status(queue)
    return {
        "ready": status.ready,
        "deferred": status.deferred,
        "disabled": status.disabled,
        "in_flight": status.in_flight,
        "failed": status.failed,
    }


def copy_queue(source: QueueManager, destination: QueueManager, queue: str) -> tuple[list[Item], int]:
    """Step 1: copy ``queue`` (messages and status); return (exported items, how many were new)."""
    items = source.export_messages(queue)
    status = source.queue_status(queue)
    destination.create_queue(queue)
    imported = destination.import_messages(queue, items)
    if status.custom_attributes:
        destination.set_custom_attributes(queue, status.custom_attributes)
    processed = status.last_message_processed
    if processed is not None and processed.uuid is not None:
        destination.update_last_message_processed(queue, QueueMessage(uuid=processed.uuid, alias=processed.alias))
    return items, imported


def verify_copy(destination: QueueManager, queue: str, items: list[Item]) -> None:
    """Step 2: raise :class:`MigrationError` unless the destination holds every item, in its state."""
    want_pending, want_failed = _uuids(items)
    have_pending, have_failed = _uuids(destination.export_messages(queue))
    missing_pending = want_pending - have_pending
    missing_failed = want_failed - have_failed
    if missing_pending or missing_failed:
        sample = sorted(missing_pending | missing_failed)[:3]
        raise MigrationError(
            f"queue {queue!r}: the destination lacks {len(missing_pending)} pending and "
            f"{len(missing_failed)} failed of the {len(items)} exported messages (e.g. {', '.join(sample)}); "
            "nothing was removed from the source"
        )


def remove_copied(source: QueueManager, queue: str, items: list[Item]) -> tuple[int, list[str]]:
    """Step 3: remove the copied uuids from the source; return (removed, still reserved there)."""
    pending, failed = _uuids(items)
    removed, in_flight = 0, []
    for uid in sorted(pending):
        try:
            removed += source.remove_message(queue, uid)
        except MessageInFlight:
            in_flight.append(uid)
    if failed:
        removed += source.forget_failed(queue, uuids=failed)
    return removed, in_flight


def migrate_queue(
    source: QueueManager, destination: QueueManager, queue: str, *, dry_run: bool = False
) -> MigrationResult:
    """Copy, verify, then remove one queue. ``dry_run`` only counts what would move."""
    result = MigrationResult(queue, counts=_counts(source, queue))
    if result.counts["in_flight"] and not dry_run:
        # a reserved message would be handed out at the destination while its consumer
        # still works on it at the source: processed twice
        raise MigrationError(
            f"queue {queue!r}: {result.counts['in_flight']} message(s) in flight; stop its consumers "
            "(or wait for their leases to end) and run again; nothing was copied"
        )
    if dry_run:
        result.exported = len(source.export_messages(queue))
        return result
    items, result.imported = copy_queue(source, destination, queue)
    result.exported = len(items)
    verify_copy(destination, queue, items)
    result.verified = True
    result.removed, result.left_in_flight = remove_copied(source, queue, items)
    return result


def describe_storage(config: Config) -> str:
    """A short human description of :func:`storage_identity`, for messages."""
    identity = storage_identity(config)
    return " ".join(identity[:2]) + (f" (prefix {identity[2]})" if len(identity) > 2 else "")
