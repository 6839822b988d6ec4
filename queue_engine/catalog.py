"""The queue catalogue: a description, a manual-insertion flag and a related class per queue.

As the original's Queue table: ``description`` is a short text for people ("Notify VKM"),
``manual`` says whether a person may add messages by hand (``qengine add``), ``class`` names
the entity the queue relates to (a UI can offer the queues of a class). The entry lives in
the queue's engine metadata under the reserved key ``"catalog"``; a queue without an entry
allows manual insertion.

Manual insertion (:func:`add_manual`) follows ``[queue] manualMode``:

* ``queued`` (default): the message is added, and the insertion recorded: a log record
  (``qengine.catalog``, info) and the entry's ``manual_adds`` counter and
  ``last_manual_add`` (uuid, user, time). The audit trail is not used: its outcomes are
  attempts (success / retry / failed), and a manual add is not one.
* ``direct``: the message is processed at once by the queue's worker
  (:func:`~queue_engine.runner.run_direct`); what fails goes to the failed store. A deferred
  message is always stored, as only a worker can run it later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .config import Config
from .errors import ConfigurationError, InvalidMessage, ManualInsertionRefused, QueueEngineError, QueueNotFound
from .manager import OnDuplicate, QueueManager
from .message import QueueMessage, validate_queue_name

__all__ = [
    "MANUAL_MODES",
    "CatalogEntry",
    "check_entry",
    "ManualInsertionRefused",
    "QueueSummary",
    "add_manual",
    "catalog",
    "get_entry",
    "manual_allowed",
    "manual_mode",
    "set_entry",
]

logger = logging.getLogger("qengine.catalog")

#: Metadata key of the catalogue entry (reserved in the manager contract).
META_KEY = "catalog"
MANUAL_MODES = ("queued", "direct")
_MAX_TEXT = 1000


@dataclass(frozen=True)
class CatalogEntry:
    """A queue's catalogue entry. ``manual_adds`` / ``last_manual_add`` are kept by :func:`add_manual`."""

    description: str | None = None
    manual: bool = True
    class_name: str | None = None
    manual_adds: int = 0
    last_manual_add: dict[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        """The stored form (queue metadata ``"catalog"``)."""
        return {
            "description": self.description,
            "manual": self.manual,
            "class": self.class_name,
            "manual_adds": self.manual_adds,
            "last_manual_add": self.last_manual_add,
        }

    @classmethod
    def from_record(cls, record: Any) -> CatalogEntry:
        if not isinstance(record, dict):
            return cls()
        return cls(
            description=record.get("description"),
            manual=bool(record.get("manual", True)),
            class_name=record.get("class"),
            manual_adds=int(record.get("manual_adds") or 0),
            last_manual_add=record.get("last_manual_add"),
        )


def check_entry(*, description: str | None = None, class_name: str | None = None) -> tuple[str | None, str | None]:
    """(description, class_name) as :func:`set_entry` stores them, or :class:`InvalidMessage`
    naming the field: for callers that must refuse bad text before changing anything."""
    return _check_text("description", description), _check_text("class", class_name)


def _check_text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT or "\x00" in value:
        raise InvalidMessage(f"invalid catalogue {name} {value!r:.60}: text of at most {_MAX_TEXT} characters")
    return value.strip() or None


def get_entry(manager: QueueManager, queue: str) -> CatalogEntry | None:
    """The catalogue entry of ``queue``, or None (no entry, or no such queue)."""
    try:
        record = manager.queue_meta(queue).get(META_KEY)
    except QueueNotFound:
        return None
    return None if record is None else CatalogEntry.from_record(record)


def set_entry(
    manager: QueueManager,
    queue: str,
    *,
    description: str | None = None,
    manual: bool | None = None,
    class_name: str | None = None,
) -> CatalogEntry:
    """Create or update ``queue``'s entry (creating the queue if needed); None keeps a field.

    Read-modify-write of the entry: two people editing one entry at the same moment may lose
    one edit (catalogue edits are rare and manual).
    """
    validate_queue_name(queue)
    description, class_name = check_entry(description=description, class_name=class_name)
    if not manager.queue_exists(queue):
        manager.create_queue(queue)
    current = get_entry(manager, queue) or CatalogEntry()
    entry = CatalogEntry(
        description=current.description if description is None else description,
        manual=current.manual if manual is None else bool(manual),
        class_name=current.class_name if class_name is None else class_name,
        manual_adds=current.manual_adds,
        last_manual_add=current.last_manual_add,
    )
    manager.update_queue_meta(queue, {META_KEY: entry.to_record()})
    return entry


def manual_allowed(manager: QueueManager, queue: str) -> bool:
    """True unless ``queue``'s catalogue entry says ``manual = false``."""
    entry = get_entry(manager, queue)
    return entry is None or entry.manual


def manual_mode(config: Config | None) -> str:
    """``[queue] manualMode``: ``queued`` (default) or ``direct``."""
    raw = None if config is None else config.setting("queue", "manualMode")
    if raw is None:
        return "queued"
    value = raw.strip().lower()
    if value not in MANUAL_MODES:
        assert config is not None
        raise ConfigurationError(f"{config.where('queue', 'manualMode')} = {raw!r}; valid: {', '.join(MANUAL_MODES)}")
    return value


def add_manual(
    manager: QueueManager,
    queue: str,
    message: QueueMessage,
    *,
    config: Config | None = None,
    on_duplicate: OnDuplicate = "error",
) -> str:
    """A person's insertion of ``message`` into ``queue``; return its uuid.

    Raises :class:`ManualInsertionRefused` (nothing written) when the catalogue forbids it.
    ``config`` (default: the manager's) decides the mode; see the module docstring.
    """
    validate_queue_name(queue)
    config = manager.config if config is None else config
    mode = manual_mode(config)
    if not manual_allowed(manager, queue):
        raise ManualInsertionRefused(f"queue {queue!r} does not allow manual insertion (catalogue: manual = false)")
    if mode == "direct" and message.deferred_until is None:
        from .loader import load_worker
        from .runner import run_direct
        from .worker import resolve_settings

        worker = load_worker(queue, config)
        uuid = run_direct(manager, worker, resolve_settings(worker, config, queue), message)
    else:
        uuid = manager.add_message(queue, message, on_duplicate=on_duplicate)
    _record_manual(manager, queue, message, uuid, mode)
    return uuid


def _record_manual(manager: QueueManager, queue: str, message: QueueMessage, uuid: str, mode: str) -> None:
    """Count the insertion in the entry; a failure to record is logged, never raised (the
    message is already in)."""
    logger.info("manual insertion into %s: message %s by %s (%s)", queue, uuid, message.username, mode)
    try:
        current = get_entry(manager, queue) or CatalogEntry()
        last = {"uuid": uuid, "username": message.username, "mode": mode, "at": datetime.now(timezone.utc).isoformat()}
        record = current.to_record() | {"manual_adds": current.manual_adds + 1, "last_manual_add": last}
        manager.update_queue_meta(queue, {META_KEY: record})
    except QueueEngineError:
        logger.exception("could not record the manual insertion of %s into %s", uuid, queue)


@dataclass(frozen=True)
class QueueSummary:
    """One line of ``qengine queues``: the catalogue entry, the counts and the failures."""

    queue: str
    entry: CatalogEntry | None
    ready: int
    deferred: int
    in_flight: int
    disabled: int
    failed: int
    spooled: int

    def to_dict(self) -> dict[str, Any]:
        entry = self.entry or CatalogEntry()
        return {
            "queue": self.queue,
            "description": entry.description,
            "manual": entry.manual,
            "class": entry.class_name,
            "catalogued": self.entry is not None,
            "ready": self.ready,
            "deferred": self.deferred,
            "in_flight": self.in_flight,
            "disabled": self.disabled,
            "failed": self.failed,
            "spooled": self.spooled,
            "manual_adds": entry.manual_adds,
        }


def catalog(manager: QueueManager, config: Config | None = None) -> list[QueueSummary]:
    """Every queue with its entry and counts, by name; ``spooled`` counts the contingency
    spool's pending messages of the queue (see :mod:`queue_engine.contingency`)."""
    from .contingency import Spool

    config = manager.config if config is None else config
    spooled: dict[str, int] = {}
    for item in Spool.from_config(config).pending():
        spooled[item.queue] = spooled.get(item.queue, 0) + 1
    out: list[QueueSummary] = []
    for name in sorted(set(manager.list_queues()) | set(spooled)):
        try:
            status = manager.queue_status(name)
        except QueueNotFound:
            if name not in spooled:
                continue  # destroyed since list_queues()
            out.append(QueueSummary(name, None, 0, 0, 0, 0, 0, spooled[name]))
            continue
        out.append(
            QueueSummary(
                queue=name,
                entry=get_entry(manager, name),
                ready=status.ready,
                deferred=status.deferred,
                in_flight=status.in_flight,
                disabled=status.disabled,
                failed=status.failed,
                spooled=spooled.get(name, 0),
            )
        )
    return out
