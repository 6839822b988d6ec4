"""The status record of a queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .message import QueueMessage, from_epoch

__all__ = ["FailedMessage", "MessageRef", "QueueStatus"]


@dataclass(frozen=True)
class MessageRef:
    """Which message and when: the shape of ``last_message_inserted`` / ``last_message_processed``."""

    uuid: str | None
    alias: str | None
    timestamp: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "alias": self.alias,
            "timestamp": None if self.timestamp is None else self.timestamp.isoformat(),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> MessageRef | None:
        if not record:
            return None
        return cls(record.get("uuid"), record.get("alias"), from_epoch(record.get("timestamp")))


@dataclass(frozen=True)
class QueueStatus:
    """A snapshot of one queue.

    ``messages_to_process`` counts every message that will still be handed to a consumer:
    ready, deferred and in flight. Disabled messages are counted apart, in ``disabled``.
    """

    queue: str
    last_message_inserted: MessageRef | None
    last_message_processed: MessageRef | None
    last_queue_modify_time: datetime | None
    messages_to_process: int
    ready: int
    deferred: int
    disabled: int
    in_flight: int
    failed: int = 0
    custom_attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "last_message_inserted": None
            if self.last_message_inserted is None
            else self.last_message_inserted.to_dict(),
            "last_message_processed": None
            if self.last_message_processed is None
            else self.last_message_processed.to_dict(),
            "last_queue_modify_time": None
            if self.last_queue_modify_time is None
            else self.last_queue_modify_time.isoformat(),
            "messages_to_process": self.messages_to_process,
            "ready": self.ready,
            "deferred": self.deferred,
            "disabled": self.disabled,
            "in_flight": self.in_flight,
            "failed": self.failed,
            "custom_attributes": dict(self.custom_attributes),
        }


@dataclass(frozen=True)
class FailedMessage:
    """A message in a queue's failed store: it used all its attempts (or failed for good).

    ``errors`` holds the error of every failed attempt, oldest first.
    """

    message: QueueMessage
    failed_at: datetime
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.message.to_dict(), "failed_at": self.failed_at.isoformat(), "errors": list(self.errors)}
