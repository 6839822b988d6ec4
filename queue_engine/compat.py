"""camelCase compatibility layer for code ported from the PHP ``itaPHPQueue`` module.

A ported script keeps its shape line by line. PHP::

    $qm = itaQueueFactory::getQueueManager();
    $qm->createQueue(itaQueueManagerBase::MESSAGE_TYPE_ANPR);
    if (!$qm->addMessage(itaQueueManagerBase::MESSAGE_TYPE_ANPR, $msg)) { error_log($qm->getLastError()); }

Python::

    qm = itaQueueFactory.getQueueManager()
    qm.createQueue(itaQueueManagerBase.MESSAGE_TYPE_ANPR)
    if not qm.addMessage(itaQueueManagerBase.MESSAGE_TYPE_ANPR, msg): log.error(qm.getLastError())

The PHP conventions are kept here and only here: manager methods do not raise library
errors (:class:`~queue_engine.errors.QueueEngineError`); they return ``False`` (``None`` where
the original returned null) and record the reason for :meth:`itaQueueManager.getLastError`.
Programming errors (a wrong argument type, an unknown keyword) still raise. New code should
use the snake_case API (:class:`~queue_engine.factory.QueueFactory`,
:class:`~queue_engine.manager.QueueManager`), which raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .config import Config
from .errors import InvalidMessage, QueueEngineError
from .factory import QueueFactory
from .manager import QueueManager
from .message import ExecutionMode, QueueMessage
from .status import MessageRef, QueueStatus

__all__ = [
    "FIND_FILTERS",
    "PHP_PROPERTIES",
    "itaQueueFactory",
    "itaQueueManager",
    "itaQueueManagerBase",
    "itaQueueMessage",
    "itaQueueStatus",
]

#: PHP property name -> QueueMessage attribute.
PHP_PROPERTIES: dict[str, str] = {
    "uuid": "uuid",
    "alias": "alias",
    "data": "data",
    "retries": "retries",
    "executionMode": "execution_mode",
    "dateTimeDeferredExecution": "deferred_until",
    "disabled": "disabled",
    "username": "username",
}

#: findMessage filter name (camelCase) -> QueueManager.find_messages keyword.
FIND_FILTERS: dict[str, str] = {
    "uuid": "uuid",
    "alias": "alias",
    "username": "username",
    "disabled": "disabled",
    "executionMode": "execution_mode",
    "insertedFrom": "inserted_from",
    "insertedTo": "inserted_to",
    "limit": "limit",
}


def _to_datetime(value: Any, what: str) -> Any:
    """Accept an ISO 8601 string where the library wants a datetime (PHP code passes strings).

    Also ``2030-01-01 08:00:00`` (PHP's ``Y-m-d H:i:s``, local time) and a trailing ``Z``.
    """
    if isinstance(value, str):
        try:
            # Python 3.10's fromisoformat does not take "Z"
            return datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            raise InvalidMessage(f"invalid {what} {value!r}: use a datetime or an ISO 8601 string") from None
    return value


def _getter(attr: str) -> Callable[[QueueMessage], Any]:
    def get(self: QueueMessage) -> Any:
        return getattr(self, attr)

    get.__doc__ = f"Return ``{attr}``."
    return get


def _setter(attr: str) -> Callable[[QueueMessage, Any], None]:
    def set_(self: QueueMessage, value: Any) -> None:
        setattr(self, attr, value)

    set_.__doc__ = f"Set ``{attr}``; checked when the message is added or updated."
    return set_


class itaQueueMessage(QueueMessage):
    """A :class:`QueueMessage` built from the PHP property names, with the PHP getters/setters.

    Every keyword is optional; ``dateTimeDeferredExecution`` takes a datetime or an ISO 8601
    string. Setters do not validate: the message is checked when it is added or updated,
    where a bad value makes the manager return False.
    """

    def __init__(
        self,
        *,
        uuid: str | None = None,
        alias: str | None = None,
        data: Any = None,
        retries: int = 0,
        executionMode: ExecutionMode | str | None = None,
        dateTimeDeferredExecution: datetime | str | None = None,
        disabled: bool = False,
        username: str | None = None,
        **native: Any,
    ) -> None:
        # ``native`` carries snake_case fields: dataclasses.replace() (QueueMessage.copy) passes them.
        for php, name, value in (
            ("executionMode", "execution_mode", executionMode),
            ("dateTimeDeferredExecution", "deferred_until", dateTimeDeferredExecution),
        ):
            if value is not None:
                if name in native:
                    raise TypeError(f"give {php} or {name}, not both")
                native[name] = value
        if "deferred_until" in native:
            native["deferred_until"] = _to_datetime(native["deferred_until"], "dateTimeDeferredExecution")
        super().__init__(
            uuid=uuid, alias=alias, data=data, retries=retries, disabled=disabled, username=username, **native
        )

    getUuid = _getter("uuid")
    setUuid = _setter("uuid")
    getAlias = _getter("alias")
    setAlias = _setter("alias")
    getData = _getter("data")
    setData = _setter("data")
    getRetries = _getter("retries")
    setRetries = _setter("retries")
    getExecutionMode = _getter("execution_mode")
    getDateTimeDeferredExecution = _getter("deferred_until")
    getDisabled = _getter("disabled")
    setDisabled = _setter("disabled")
    getUsername = _getter("username")
    setUsername = _setter("username")

    def setExecutionMode(self, value: ExecutionMode | str) -> None:
        """Set the mode; ``immediate`` also clears the deferred time (it would imply ``deferred``)."""
        self.execution_mode = value
        if value == ExecutionMode.IMMEDIATE:
            self.deferred_until = None

    def setDateTimeDeferredExecution(self, value: datetime | str | None) -> None:
        """Set the deferred time (datetime or ISO 8601 string); None makes the message immediate."""
        self.deferred_until = _to_datetime(value, "dateTimeDeferredExecution")
        self.execution_mode = ExecutionMode.IMMEDIATE if value is None else ExecutionMode.DEFERRED

    @classmethod
    def fromNative(cls, message: QueueMessage) -> itaQueueMessage:
        """``message`` as an itaQueueMessage: a shallow copy, or ``message`` itself if it already is one."""
        if isinstance(message, cls):
            return message
        ported = cls.__new__(cls)
        ported.__dict__.update(vars(message))
        return ported


class itaQueueManagerBase:
    """Holder of the original's constants: ``itaQueueManagerBase.MESSAGE_TYPE_ANPR``.

    The value is the queue name. Subclass it to add the queue types of your own modules.
    """

    MESSAGE_TYPE_ANPR = "ANPR"


@dataclass(frozen=True)
class itaQueueStatus:
    """The original's status record. Read fields as attributes or as ``status["messagesToProcess"]``.

    ``lastMessageInserted`` / ``lastMessageProcessed`` are dicts with ``uuid``, ``alias`` and
    ``timestamp`` (a timezone-aware datetime), or None when there was none. ``native`` is the
    full :class:`QueueStatus` (ready, deferred, in flight, ... counts).
    """

    lastMessageInserted: dict[str, Any] | None
    lastMessageProcessed: dict[str, Any] | None
    lastQueueModifyTime: datetime | None
    messagesToProcess: int
    customAttributes: dict[str, Any]
    native: QueueStatus = field(repr=False, compare=False)

    _KEYS = ("lastMessageInserted", "lastMessageProcessed", "lastQueueModifyTime", "messagesToProcess",
             "customAttributes")

    @classmethod
    def fromNative(cls, status: QueueStatus) -> itaQueueStatus:
        return cls(
            lastMessageInserted=_ref(status.last_message_inserted),
            lastMessageProcessed=_ref(status.last_message_processed),
            lastQueueModifyTime=status.last_queue_modify_time,
            messagesToProcess=status.messages_to_process,
            customAttributes=dict(status.custom_attributes),
            native=status,
        )

    def toArray(self) -> dict[str, Any]:
        """The record as a dict with the original's keys (PHP's associative array)."""
        return {key: getattr(self, key) for key in self._KEYS}

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)


def _ref(ref: MessageRef | None) -> dict[str, Any] | None:
    return None if ref is None else {"uuid": ref.uuid, "alias": ref.alias, "timestamp": ref.timestamp}


class itaQueueManager(itaQueueManagerBase):
    """The original manager's methods over a :class:`QueueManager` (``native``).

    No method raises a :class:`QueueEngineError`: each returns False (None where noted) and
    :meth:`getLastError` tells why. ``queueId`` is the queue name.
    """

    def __init__(self, native: QueueManager) -> None:
        self.native = native
        self._last_error: str | None = None

    def _fail(self, reason: QueueEngineError | str) -> Literal[False]:
        self._last_error = str(reason)
        return False

    # -- lifecycle (not in the original; the native manager holds files and threads) -------
    def close(self) -> None:
        """Close the native manager. Idempotent."""
        self.native.close()

    def __enter__(self) -> itaQueueManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the original's methods -----------------------------------------------------------
    def getLastError(self) -> str | None:
        """Text of the last failure of this manager, or None. A later success does not clear it."""
        return self._last_error

    def createQueue(self, queueId: str, customAttributes: Mapping[str, Any] | None = None) -> bool:
        """Create the queue. False if it already exists or the name is invalid."""
        try:
            if self.native.create_queue(queueId, **dict(customAttributes or {})):
                return True
        except QueueEngineError as exc:
            return self._fail(exc)
        return self._fail(f"queue {queueId!r} already exists")

    def destroyQueue(self, queueId: str) -> bool:
        """Delete the queue and its messages. False if it did not exist."""
        try:
            if self.native.destroy_queue(queueId):
                return True
        except QueueEngineError as exc:
            return self._fail(exc)
        return self._fail(f"queue {queueId!r} does not exist")

    def queueExists(self, queueId: str) -> bool:
        try:
            return self.native.queue_exists(queueId)
        except QueueEngineError as exc:
            return self._fail(exc)

    def addMessage(self, queueId: str, message: QueueMessage) -> str | Literal[False]:
        """Append ``message`` (creating the queue if needed); its uuid, or False.

        A pending message with the same alias makes it return False; getLastError() names
        the alias and the uuid that holds it.
        """
        try:
            return self.native.add_message(queueId, message)
        except QueueEngineError as exc:
            return self._fail(exc)

    def getMessage(self, queueId: str) -> itaQueueMessage | None | Literal[False]:
        """Remove and return the first eligible message; None when there is none, False on error."""
        try:
            message = self.native.get_message(queueId)
        except QueueEngineError as exc:
            return self._fail(exc)
        return None if message is None else itaQueueMessage.fromNative(message)

    def queueStatus(self, queueId: str) -> itaQueueStatus | Literal[False]:
        """The status record (see :class:`itaQueueStatus`); False for a missing queue."""
        try:
            return itaQueueStatus.fromNative(self.native.queue_status(queueId))
        except QueueEngineError as exc:
            return self._fail(exc)

    def updateLastMessageProcessed(self, queueId: str, message: QueueMessage) -> bool:
        """Record ``message`` as the last processed one (uuid, alias, now)."""
        try:
            self.native.update_last_message_processed(queueId, message)
        except QueueEngineError as exc:
            return self._fail(exc)
        return True

    def findMessage(
        self, queueId: str, filters: Mapping[str, Any] | None = None, **criteria: Any
    ) -> list[itaQueueMessage] | Literal[False]:
        """Pending messages matching every filter, in queue order; False on error.

        Filters come as a dict (the PHP associative array), as keywords, or both:
        ``uuid, alias, username, disabled, executionMode, insertedFrom, insertedTo, limit``.
        Times take a datetime or an ISO 8601 string.
        """
        given = dict(filters or {})
        both = sorted(set(given) & set(criteria))
        if both:
            return self._fail(f"filter(s) {', '.join(both)} given both in the dict and as keywords")
        given.update(criteria)
        unknown = sorted(set(given) - set(FIND_FILTERS))
        if unknown:
            return self._fail(f"unknown filter(s) {', '.join(unknown)}; valid: {', '.join(FIND_FILTERS)}")
        try:
            native = {
                FIND_FILTERS[key]: _to_datetime(value, key) if key.startswith("inserted") else value
                for key, value in given.items()
            }
            found = self.native.find_messages(queueId, **native)
        except QueueEngineError as exc:
            return self._fail(exc)
        return [itaQueueMessage.fromNative(m) for m in found]

    def updateMessage(self, queueId: str, message: QueueMessage) -> bool:
        """Replace the pending message with ``message``'s uuid, keeping its place.

        False if it is not pending, is being processed, or its new alias is taken.
        """
        try:
            self.native.update_message(queueId, message)
        except QueueEngineError as exc:
            return self._fail(exc)
        return True


class itaQueueFactory:
    """``itaQueueFactory.getQueueManager()`` as in the original."""

    @staticmethod
    def getQueueManager(config: str | os.PathLike[str] | Config | None = None, **settings: Any) -> itaQueueManager:
        """Build the manager named by ``[queue] queueType`` (see :mod:`queue_engine.config`).

        Unlike the manager's methods this raises :class:`ConfigurationError` for a bad
        configuration: a process that cannot reach its queue should stop at startup.
        """
        return itaQueueManager(QueueFactory.get_queue_manager(config, **settings))
