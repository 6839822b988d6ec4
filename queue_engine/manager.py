"""The queue manager contract. Every backend subclasses :class:`QueueManager`.

Public methods validate their arguments, record the last failure for
:meth:`QueueManager.get_last_error`, and delegate to the ``_``-prefixed primitives a backend
implements. A backend promises, for every queue:

* FIFO: ``get_message``/``reserve`` hand out the eligible message with the lowest insertion
  order. Eligible means not disabled, not in flight, and due (``deferred_until`` passed).
* Exactly one consumer receives each message, except for redelivery after a lease expired or
  its holder died (at-least-once for ``reserve``; ``get_message`` removes at once).
* An alias is unique among the queue's pending messages (ready, deferred, disabled or in flight).
* A message whose ``add_message`` returned is not lost by a crash of any process.

A missing queue: ``add_message``/``add_messages`` create it; ``get_message`` and ``reserve``
return None; ``queue_exists`` and ``destroy_queue`` return False; every other method raises
:class:`QueueNotFound`.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar, cast

from .config import Config
from .errors import InvalidMessage, QueueEngineError
from .message import ExecutionMode, QueueMessage, storable_epoch, validate_queue_name
from .status import FailedMessage, QueueStatus

__all__ = ["QueueManager", "OnDuplicate", "MessageFilter"]

OnDuplicate = Literal["error", "ignore", "replace"]
_ON_DUPLICATE = ("error", "ignore", "replace")
_MAX_SECONDS = 1e9  # about 31 years: longer leases and delays are mistakes, and overflow backends
F = TypeVar("F", bound=Callable[..., Any])


def _records_errors(method: F) -> F:
    """Remember the text of a raised QueueEngineError for get_last_error().

    The per-message methods (add_message, get_message, reserve, ack) do the same inline, to
    spare the path every message takes a call through ``*args, **kwargs``.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # no named self: create_queue(q, self=1) is an attribute
        try:
            return method(*args, **kwargs)
        except QueueEngineError as exc:
            args[0]._last_error = str(exc)
            raise

    return cast(F, wrapper)


_MODE_VALUES = ("immediate", "deferred", ExecutionMode.IMMEDIATE, ExecutionMode.DEFERRED)


def _seconds(name: str, value: object, *, positive: bool) -> float:
    """``value`` as float seconds: a finite number, > 0 with ``positive`` else >= 0, at most
    :data:`_MAX_SECONDS`; else :class:`InvalidMessage` naming ``name`` and the value."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (number > 0 if positive else number >= 0) or not number <= _MAX_SECONDS:
        bound = "> 0" if positive else ">= 0"
        raise InvalidMessage(f"invalid {name} {value!r}: a number of seconds {bound} and at most {_MAX_SECONDS:.0e}")
    return float(number)


class MessageFilter:
    """Criteria for :meth:`QueueManager.find_messages`; ``None`` means "any"."""

    __slots__ = ("uuid", "alias", "username", "disabled", "execution_mode", "inserted_from", "inserted_to")

    def __init__(
        self,
        *,
        uuid: str | None = None,
        alias: str | None = None,
        username: str | None = None,
        disabled: bool | None = None,
        execution_mode: str | None = None,
        inserted_from: datetime | None = None,
        inserted_to: datetime | None = None,
    ) -> None:
        """Raise :class:`InvalidMessage` naming a criterion of the wrong type or value."""
        for name, text in (("uuid", uuid), ("alias", alias), ("username", username)):
            if text is not None and not isinstance(text, str):
                raise InvalidMessage(f"invalid {name} {text!r}: a string or None")
        if disabled is not None and not isinstance(disabled, bool):
            raise InvalidMessage(f"invalid disabled {disabled!r}: True, False or None")
        if execution_mode is not None and execution_mode not in _MODE_VALUES:
            raise InvalidMessage(f"invalid execution_mode {execution_mode!r}: 'immediate', 'deferred' or None")
        self.uuid = uuid
        self.alias = alias
        self.username = username
        self.disabled = disabled
        self.execution_mode = None if execution_mode is None else ExecutionMode(execution_mode).value
        self.inserted_from, self.inserted_to = _time_range(inserted_from, inserted_to, ("inserted_from", "inserted_to"))

    def matches(self, record: dict[str, Any]) -> bool:
        """True when a stored record (see QueueMessage.to_record) meets every criterion."""
        if self.uuid is not None and record.get("uuid") != self.uuid:
            return False
        if self.alias is not None and record.get("alias") != self.alias:
            return False
        if self.username is not None and record.get("username") != self.username:
            return False
        if self.disabled is not None and bool(record.get("disabled")) != self.disabled:
            return False
        if self.execution_mode is not None and record.get("execution_mode") != self.execution_mode:
            return False
        inserted = record.get("inserted_at") or 0.0
        if self.inserted_from is not None and inserted < self.inserted_from:
            return False
        if self.inserted_to is not None and inserted > self.inserted_to:
            return False
        return True


class QueueManager(ABC):
    """Base class of every backend. See the module docstring for the guarantees."""

    #: Name used in config ``queueType``.
    queue_type: ClassVar[str] = ""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._last_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:  # noqa: B027 - optional hook, not every backend holds resources
        """Release files, connections and background threads. Idempotent."""

    def __enter__(self) -> QueueManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_last_error(self) -> str | None:
        """Text of the last error this manager raised, or None. Kept for parity with the original."""
        return self._last_error

    # -- queues -------------------------------------------------------------------------
    @_records_errors
    def create_queue(self, queue: str, /, **attributes: Any) -> bool:
        """Create ``queue`` with initial custom attributes. False if it already existed."""
        return self._create_queue(validate_queue_name(queue), attributes)

    @_records_errors
    def destroy_queue(self, queue: str) -> bool:
        """Delete ``queue`` and every message in it. False if it did not exist."""
        return self._destroy_queue(validate_queue_name(queue))

    @_records_errors
    def queue_exists(self, queue: str) -> bool:
        return self._queue_exists(validate_queue_name(queue))

    @_records_errors
    def list_queues(self) -> list[str]:
        """Names of every queue, sorted."""
        return sorted(self._list_queues())

    # -- producing ----------------------------------------------------------------------
    def add_message(self, queue: str, message: QueueMessage, *, on_duplicate: OnDuplicate = "error") -> str:
        """Append ``message`` (creating the queue if needed); return its uuid.

        ``message.uuid`` and ``message.inserted_at`` are set on the object. A pending message
        with the same alias raises :class:`DuplicateAlias`; ``on_duplicate="ignore"`` returns
        the existing uuid instead (and sets it on ``message``), ``"replace"`` replaces the
        existing message's content in place (same uuid, same position). If the existing
        message is in flight it cannot change under its consumer: ``"replace"`` then adds
        ``message`` anew and the alias moves to it (the reserved message, if released, is
        delivered again with its own content, but the alias belongs to the new one).
        A message whose lease ended counts as waiting, not in flight.
        """
        try:
            if on_duplicate != "error":
                on_duplicate = self._check_dup(on_duplicate)
            return self._add_messages(validate_queue_name(queue), [self._check_message(message)], on_duplicate)[0]
        except QueueEngineError as exc:
            self._last_error = str(exc)
            raise

    @_records_errors
    def add_messages(
        self, queue: str, messages: Iterable[QueueMessage], *, on_duplicate: OnDuplicate = "error"
    ) -> list[str]:
        """Append several messages atomically (all or none); return their uuids in order."""
        batch = [self._check_message(m) for m in messages]
        return self._add_messages(validate_queue_name(queue), batch, self._check_dup(on_duplicate)) if batch else []

    # -- consuming ----------------------------------------------------------------------
    def get_message(self, queue: str) -> QueueMessage | None:
        """Remove and return the first eligible message, or None (also for a missing queue)."""
        try:
            return self._get_message(validate_queue_name(queue))
        except QueueEngineError as exc:
            self._last_error = str(exc)
            raise

    def reserve(self, queue: str, lease: float | None = None) -> QueueMessage | None:
        """Hand out the first eligible message for ``lease`` seconds, or None.

        The message is invisible to others until :meth:`ack` or :meth:`release`. If neither
        comes before the lease ends, or the holding process dies, it becomes eligible again.
        ``message.attempts`` counts the reservations including this one.
        """
        try:
            lease = self.config.lease if lease is None else _seconds("lease", lease, positive=True)
            return self._reserve(validate_queue_name(queue), lease)
        except QueueEngineError as exc:
            self._last_error = str(exc)
            raise

    def ack(self, queue: str, message: str | QueueMessage, *, processed: bool = False) -> None:
        """Finish a reserved message: it is removed for good.

        Given a QueueMessage from :meth:`reserve`, the ack applies only to that reservation:
        it succeeds even after the lease ended as long as the message was not handed out
        again, and raises :class:`LeaseLost` once it was (or was acked or released). Given a
        uuid, the current reservation is acked.

        ``processed``: also record the message as the queue's last processed one, as
        :meth:`update_last_message_processed` does, in the same write where the backend can
        (a worker does both for every message). Needs the QueueMessage, for its alias.
        """
        try:
            uuid, attempt = self._lease_key(message)
            queue = validate_queue_name(queue)
            if not processed:
                self._ack(queue, uuid, attempt)
            elif isinstance(message, QueueMessage):
                self._ack_processed(queue, uuid, attempt, message.alias)
            else:
                raise InvalidMessage("ack(processed=True) needs the QueueMessage from reserve(), not its uuid")
        except QueueEngineError as exc:
            self._last_error = str(exc)
            raise

    @_records_errors
    def release(self, queue: str, message: str | QueueMessage, delay: float = 0, error: str | None = None) -> None:
        """Give a reserved message back; eligible again after ``delay`` seconds, same position.

        The same reservation rules as :meth:`ack` apply.
        """
        delay = _seconds("delay", delay, positive=False)
        uuid, attempt = self._lease_key(message)
        self._release(validate_queue_name(queue), uuid, attempt, delay, error)

    # -- inspecting and changing --------------------------------------------------------
    @_records_errors
    def queue_status(self, queue: str) -> QueueStatus:
        """The status record; :class:`QueueNotFound` for a missing queue."""
        return self._queue_status(validate_queue_name(queue))

    @_records_errors
    def set_custom_attributes(self, queue: str, attributes: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Merge (or with ``replace`` set) the queue's custom attributes; return the result."""
        from .message import encode_data

        if not isinstance(attributes, dict):
            raise InvalidMessage(f"custom attributes must be a dict, not {type(attributes).__name__}")
        encode_data(attributes)
        return self._set_custom_attributes(validate_queue_name(queue), attributes, replace)

    @_records_errors
    def update_last_message_processed(self, queue: str, message: QueueMessage) -> None:
        """Record ``message`` as the queue's last processed message (uuid, alias, now).

        ``message`` is one the queue handed out (it has a uuid): else :class:`InvalidMessage`.
        """
        if not isinstance(message, QueueMessage) or not message.uuid:
            what = "a message without a uuid" if isinstance(message, QueueMessage) else repr(message)
            raise InvalidMessage(f"update_last_message_processed needs a message the queue handed out, not {what}")
        self._update_last_processed(validate_queue_name(queue), message.uuid, message.alias)

    @_records_errors
    def find_messages(
        self,
        queue: str,
        *,
        uuid: str | None = None,
        alias: str | None = None,
        username: str | None = None,
        disabled: bool | None = None,
        execution_mode: str | None = None,
        inserted_from: datetime | None = None,
        inserted_to: datetime | None = None,
        limit: int | None = None,
    ) -> list[QueueMessage]:
        """Pending messages matching every given criterion, in queue order.

        By ``uuid`` or ``alias`` the lookup uses an index, not a scan.
        """
        self._check_limit(limit)
        flt = MessageFilter(
            uuid=uuid,
            alias=alias,
            username=username,
            disabled=disabled,
            execution_mode=execution_mode,
            inserted_from=inserted_from,
            inserted_to=inserted_to,
        )
        return self._find_messages(validate_queue_name(queue), flt, limit)

    @_records_errors
    def update_message(self, queue: str, message: QueueMessage) -> None:
        """Replace the pending message with ``message.uuid`` by ``message``, keeping its place.

        Raises :class:`MessageNotFound` if no pending message has that uuid,
        :class:`MessageInFlight` if it is reserved, :class:`DuplicateAlias` if the new alias
        belongs to another pending message.
        """
        if not message.uuid:
            raise InvalidMessage("update_message needs message.uuid")
        self._update_message(validate_queue_name(queue), self._check_message(message))

    @_records_errors
    def remove_message(self, queue: str, uuid: str) -> bool:
        """Delete a pending message. False if the queue has no pending message ``uuid``;
        :class:`MessageInFlight` if it is reserved."""
        return self._remove_message(validate_queue_name(queue), uuid)

    # -- engine metadata ----------------------------------------------------------------
    @_records_errors
    def queue_meta(self, queue: str) -> dict[str, Any]:
        """The queue's engine metadata: what features keep per queue (webhook listeners,
        catalogue entry, topic subscriptions). Never shown in :meth:`queue_status`, because it
        may hold secrets. :class:`QueueNotFound` for a missing queue."""
        return self._queue_meta(validate_queue_name(queue))

    @_records_errors
    def update_queue_meta(self, queue: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Set (or, for a None value, delete) top-level metadata keys in one atomic step;
        return the result. :class:`QueueNotFound` for a missing queue."""
        from .message import encode_data

        if not isinstance(changes, dict) or not all(isinstance(k, str) for k in changes):
            raise InvalidMessage("queue metadata changes must be a dict with string keys")
        encode_data(changes)
        return self._update_queue_meta(validate_queue_name(queue), changes)

    # -- failed store -------------------------------------------------------------------
    @_records_errors
    def fail(self, queue: str, message: str | QueueMessage, error: str) -> None:
        """Move a reserved message to the queue's failed store, with ``error`` added to its history.

        The same reservation rules as :meth:`ack` apply (:class:`LeaseLost`). Errors given to
        earlier :meth:`release` calls of the message are kept in its history.
        """
        uuid, attempt = self._lease_key(message)
        self._fail(validate_queue_name(queue), uuid, attempt, str(error))

    @_records_errors
    def add_failed(self, queue: str, message: QueueMessage, errors: list[str]) -> str:
        """Store ``message`` straight into the failed store (direct mode); return its uuid.

        ``message.attempts`` (the attempts made before storing) is kept too. A uuid already
        set on ``message`` is kept (direct mode shows it to the worker before
        anything is stored), unless another message of the queue has it; otherwise one is minted.
        """
        return self._add_failed(validate_queue_name(queue), self._check_message(message), [str(e) for e in errors])

    @_records_errors
    def failed_messages(
        self,
        queue: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[FailedMessage]:
        """Failed messages whose failure time is within [since, until], in queue order."""
        self._check_limit(limit)
        return self._failed_messages(validate_queue_name(queue), *_time_range(since, until), limit)

    @_records_errors
    def requeue_failed(
        self,
        queue: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        uuids: Iterable[str] | None = None,
    ) -> list[str]:
        """Move failed messages (all, those failed within [since, until], or ``uuids``) back to
        the queue at their original position, with attempts and errors reset; return their uuids.

        A message whose alias was taken by another pending message meanwhile stays failed.
        Requeued messages leave the failed store, so a second call finds nothing.
        """
        wanted = None if uuids is None else set(uuids)
        return self._requeue_failed(validate_queue_name(queue), *_time_range(since, until), wanted)

    @_records_errors
    def forget_failed(
        self,
        queue: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        uuids: Iterable[str] | None = None,
    ) -> int:
        """Drop failed messages for good (same selection as :meth:`requeue_failed`); return how many."""
        wanted = None if uuids is None else set(uuids)
        return self._forget_failed(validate_queue_name(queue), *_time_range(since, until), wanted)

    # -- moving queues between backends ---------------------------------------------------
    @_records_errors
    def export_messages(self, queue: str) -> list[QueueMessage | FailedMessage]:
        """Every message of ``queue``: pending ones (ready, deferred, disabled; in-flight ones as
        ready) in queue order, then the failed store. Uuids, aliases, insertion times, and
        the attempts and errors of failed messages are kept, so :meth:`import_messages` can
        recreate them elsewhere. Not kept for pending messages: attempts so far and the delay
        of a ``release(delay=...)`` (they arrive ready, as new)."""
        return self._export_messages(validate_queue_name(queue))

    @_records_errors
    def import_messages(self, queue: str, items: Iterable[QueueMessage | FailedMessage]) -> int:
        """Recreate exported messages with their uuids (creating the queue); return how many
        were added. A uuid the queue already has, pending or failed, is skipped, so an
        interrupted migration can simply be run again. A pending message whose alias another
        pending message holds raises :class:`DuplicateAlias` and nothing is added."""
        batch = list(items)
        for item in batch:
            message = item.message if isinstance(item, FailedMessage) else item
            self._check_message(message)
            if not message.uuid:
                raise InvalidMessage("import_messages needs messages with a uuid (from export_messages)")
        return self._import_messages(validate_queue_name(queue), batch) if batch else 0

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _check_message(message: QueueMessage) -> QueueMessage:
        if not isinstance(message, QueueMessage):
            raise InvalidMessage(f"expected a QueueMessage, got {type(message).__name__}")
        message.validate()
        return message

    @staticmethod
    def _check_limit(limit: int | None) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidMessage(f"invalid limit {limit!r}: a whole number >= 0")

    @staticmethod
    def _check_dup(on_duplicate: str) -> OnDuplicate:
        if on_duplicate not in _ON_DUPLICATE:
            raise InvalidMessage(f"invalid on_duplicate {on_duplicate!r}; valid: {', '.join(_ON_DUPLICATE)}")
        return cast(OnDuplicate, on_duplicate)

    @staticmethod
    def _lease_key(message: str | QueueMessage) -> tuple[str, int | None]:
        if isinstance(message, QueueMessage):
            if not message.uuid:
                raise InvalidMessage("the message has no uuid; pass the message returned by reserve()")
            return message.uuid, message.attempts
        if not isinstance(message, str) or not message:
            raise InvalidMessage(f"invalid message uuid {message!r}")
        return message, None

    # -- primitives a backend implements ------------------------------------------------
    @abstractmethod
    def _create_queue(self, queue: str, attributes: dict[str, Any]) -> bool: ...

    @abstractmethod
    def _destroy_queue(self, queue: str) -> bool: ...

    @abstractmethod
    def _queue_exists(self, queue: str) -> bool: ...

    @abstractmethod
    def _list_queues(self) -> Iterable[str]: ...

    @abstractmethod
    def _add_messages(self, queue: str, messages: list[QueueMessage], on_duplicate: OnDuplicate) -> list[str]: ...

    @abstractmethod
    def _get_message(self, queue: str) -> QueueMessage | None: ...

    @abstractmethod
    def _reserve(self, queue: str, lease: float) -> QueueMessage | None: ...

    @abstractmethod
    def _ack(self, queue: str, uuid: str, attempt: int | None) -> None: ...

    def _ack_processed(self, queue: str, uuid: str, attempt: int | None, alias: str | None) -> None:
        """:meth:`_ack`, then :meth:`_update_last_processed` of the message. A backend that can
        do both in one write overrides this; if the ack raises, nothing is recorded."""
        self._ack(queue, uuid, attempt)
        self._update_last_processed(queue, uuid, alias)

    @abstractmethod
    def _release(self, queue: str, uuid: str, attempt: int | None, delay: float, error: str | None) -> None: ...

    @abstractmethod
    def _queue_status(self, queue: str) -> QueueStatus: ...

    @abstractmethod
    def _set_custom_attributes(self, queue: str, attributes: dict[str, Any], replace: bool) -> dict[str, Any]: ...

    @abstractmethod
    def _update_last_processed(self, queue: str, uuid: str | None, alias: str | None) -> None: ...

    @abstractmethod
    def _find_messages(self, queue: str, flt: MessageFilter, limit: int | None) -> list[QueueMessage]: ...

    @abstractmethod
    def _update_message(self, queue: str, message: QueueMessage) -> None: ...

    @abstractmethod
    def _remove_message(self, queue: str, uuid: str) -> bool: ...

    @abstractmethod
    def _fail(self, queue: str, uuid: str, attempt: int | None, error: str) -> None: ...

    @abstractmethod
    def _add_failed(self, queue: str, message: QueueMessage, errors: list[str]) -> str: ...

    @abstractmethod
    def _failed_messages(
        self, queue: str, since: float | None, until: float | None, limit: int | None
    ) -> list[FailedMessage]: ...

    @abstractmethod
    def _requeue_failed(
        self, queue: str, since: float | None, until: float | None, uuids: set[str] | None
    ) -> list[str]: ...

    @abstractmethod
    def _forget_failed(self, queue: str, since: float | None, until: float | None, uuids: set[str] | None) -> int: ...

    @abstractmethod
    def _export_messages(self, queue: str) -> list[QueueMessage | FailedMessage]: ...

    @abstractmethod
    def _import_messages(self, queue: str, items: list[QueueMessage | FailedMessage]) -> int: ...

    @abstractmethod
    def _queue_meta(self, queue: str) -> dict[str, Any]: ...

    @abstractmethod
    def _update_queue_meta(self, queue: str, changes: dict[str, Any]) -> dict[str, Any]: ...


def _time_range(
    since: datetime | None, until: datetime | None, names: tuple[str, str] = ("since", "until")
) -> tuple[float | None, float | None]:
    """(since, until) as epoch seconds (None: open ended), or :class:`InvalidMessage` naming
    the bound (``names``) and its value."""
    bounds: list[float | None] = []
    for name, value in zip(names, (since, until), strict=True):
        if value is not None and not isinstance(value, datetime):
            raise InvalidMessage(f"invalid {name} {value!r}: a datetime or None")
        bounds.append(None if value is None else storable_epoch(value, name))
    return bounds[0], bounds[1]
