"""Messages: what a producer adds, what a consumer gets back."""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from .codec import _check_json, encode_data  # noqa: F401  (re-exported)
from .codec import is_encodable as _is_encodable
from .errors import InvalidMessage, InvalidQueueName

__all__ = [
    "ExecutionMode",
    "QueueMessage",
    "validate_queue_name",
    "to_epoch",
    "from_epoch",
    "storable_epoch",
    "encode_data",
]

_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VALID_NAMES: set[str] = set()
_MAX_ALIAS = 512


class ExecutionMode(str, Enum):
    """When a message becomes eligible: at once, or at ``deferred_until``."""

    IMMEDIATE = "immediate"
    DEFERRED = "deferred"

    def __str__(self) -> str:
        return self.value


_MODES: dict[object, ExecutionMode] = {mode.value: mode for mode in ExecutionMode}
# Plain module names for the members: ``ExecutionMode.DEFERRED`` goes through the enum
# metaclass on every access, which costs more than the rest of a message's validation.
_UTC = timezone.utc
_DEFERRED = ExecutionMode.DEFERRED
_IMMEDIATE = ExecutionMode.IMMEDIATE
_new_object = object.__new__


def validate_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`InvalidQueueName`.

    Valid: 1-64 characters of letters, digits, ``_ . -``, starting with a letter or digit.
    The rule guarantees a name is also a safe single path component.
    """
    if name.__class__ is str and name in _VALID_NAMES:  # every call checks: remember good names
        return name
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise InvalidQueueName(
            f"invalid queue name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    if len(_VALID_NAMES) < 10_000:  # bounded: a process rarely meets more names than this
        _VALID_NAMES.add(name)
    return name


def to_epoch(value: datetime) -> float:
    """Seconds since the epoch for ``value``; a naive datetime is taken as local time."""
    if value.tzinfo is None:
        value = value.astimezone()  # naive means local time
    return value.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    """A timezone-aware (UTC) datetime for an epoch value, or None."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=timezone.utc)


def storable_epoch(value: datetime, name: str) -> float:
    """Epoch seconds of ``value`` when a queue can store it and read it back as a datetime
    (UTC years 1 to 9999), else :class:`InvalidMessage` naming ``name`` and the value."""
    try:
        epoch = to_epoch(value)
        datetime.fromtimestamp(epoch, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise InvalidMessage(
            f"invalid {name} {value.isoformat()!r}: out of the range a queue stores (years 1 to 9999 UTC)"
        ) from None
    return epoch


def _clamped(epoch: float | None) -> datetime | None:
    """:func:`from_epoch`, with a value beyond datetime's range read as its first or last day
    (records written before :func:`storable_epoch` checked deferrals stay readable)."""
    try:
        return from_epoch(epoch)
    except (ValueError, OverflowError, OSError):
        return datetime.max.replace(tzinfo=_UTC) if epoch and epoch > 0 else datetime.min.replace(tzinfo=_UTC)


_last_inserted: tuple[object, datetime | None] = (None, None)


def _inserted_datetime(epoch: float) -> datetime:
    """``datetime.fromtimestamp(epoch, UTC)``, remembered for the last value: messages added
    together (a batch, a burst within one millisecond) are read back one after another."""
    global _last_inserted
    last = _last_inserted
    if last[0] == epoch and last[1] is not None:
        return last[1]
    value = datetime.fromtimestamp(epoch, _UTC)
    _last_inserted = (epoch, value)
    return value


_USERNAME = ""  # the OS user, once looked up


def _default_username() -> str:
    """The OS user, looked up once per process (getpass reads env and passwd: ~10us)."""
    global _USERNAME
    if not _USERNAME:
        try:
            _USERNAME = getpass.getuser()
        except Exception:  # no passwd entry, no env vars: fall back rather than fail an add
            _USERNAME = "unknown"
    return _USERNAME


@dataclass
class QueueMessage:
    """One message. ``uuid`` is assigned by the engine when the message is added.

    ``retries`` is the maximum number of attempts (0 means the worker's default).
    ``deferred_until`` is a timezone-aware datetime; a naive one is taken as local time.
    Setting ``deferred_until`` implies ``execution_mode=DEFERRED``.
    """

    data: Any = None
    alias: str | None = None
    retries: int = 0
    execution_mode: ExecutionMode | str = ExecutionMode.IMMEDIATE
    deferred_until: datetime | None = None
    disabled: bool = False
    username: str | None = None
    uuid: str | None = None
    #: When the engine stored the message (set by the engine).
    inserted_at: datetime | None = None
    #: How many times the message has been handed to a consumer with ``reserve``.
    attempts: int = 0
    #: Queue the message was read from (set by the engine on read).
    queue: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Normalise fields in place; raise :class:`InvalidMessage` naming a bad field."""
        if self.execution_mode.__class__ is not ExecutionMode:
            try:
                self.execution_mode = ExecutionMode(self.execution_mode)
            except ValueError:
                raise InvalidMessage(
                    f"invalid execution_mode {self.execution_mode!r}: use 'immediate' or 'deferred'"
                ) from None
        alias = self.alias
        if alias is not None and (
            alias.__class__ is not str
            or not alias
            or len(alias) > _MAX_ALIAS
            or "\x00" in alias
            or not _is_encodable(alias)
        ):
            raise InvalidMessage(
                f"invalid alias {alias!r}: a non-empty string of at most {_MAX_ALIAS} characters, "
                "without NUL or lone surrogates"
            )
        retries = self.retries
        if retries.__class__ is not int or not 0 <= retries <= 1_000_000:
            raise InvalidMessage(f"invalid retries {retries!r}: a whole number from 0 to 1000000")
        if self.disabled.__class__ is not bool:
            raise InvalidMessage(f"invalid disabled {self.disabled!r}: use True or False")
        if self.deferred_until is not None:
            if not isinstance(self.deferred_until, datetime):
                raise InvalidMessage(f"invalid deferred_until {self.deferred_until!r}: a datetime is required")
            storable_epoch(self.deferred_until, "deferred_until")
            self.execution_mode = _DEFERRED
        elif self.execution_mode is _DEFERRED:
            raise InvalidMessage("execution_mode 'deferred' needs deferred_until")
        username = self.username
        if username is None:
            self.username = _USERNAME or _default_username()
        elif username.__class__ is not str or len(username) > 256 or not _is_encodable(username):
            raise InvalidMessage(f"invalid username {username!r}: a string of at most 256 characters")

    # -- serialization (storage format; JSON only, never pickle) -----------------------
    def to_record(self) -> dict[str, Any]:
        """The JSON-safe dict stored by backends (times as epoch seconds)."""
        return {
            "uuid": self.uuid,
            "alias": self.alias,
            "data": self.data,
            "retries": self.retries,
            "execution_mode": self.execution_mode.value
            if isinstance(self.execution_mode, ExecutionMode)
            else self.execution_mode,
            "deferred_until": None if self.deferred_until is None else to_epoch(self.deferred_until),
            "disabled": self.disabled,
            "username": self.username,
            "inserted_at": None if self.inserted_at is None else to_epoch(self.inserted_at),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], *, attempts: int = 0, queue: str | None = None) -> QueueMessage:
        """Rebuild a message stored with :meth:`to_record`."""
        msg = cls.__new__(cls)
        msg.uuid = record["uuid"]
        msg.alias = record.get("alias")
        msg.data = record.get("data")
        msg.retries = record.get("retries", 0)
        mode = record.get("execution_mode", "immediate")
        msg.execution_mode = _MODES.get(mode) or ExecutionMode(mode)  # the call raises for a bad one
        deferred = record.get("deferred_until")
        inserted = record.get("inserted_at")
        try:
            msg.deferred_until = None if deferred is None else datetime.fromtimestamp(deferred, _UTC)
            msg.inserted_at = None if inserted is None else _inserted_datetime(inserted)
        except (ValueError, OverflowError, OSError):  # out of datetime's range: never blocks a read
            msg.deferred_until, msg.inserted_at = _clamped(deferred), _clamped(inserted)
        msg.disabled = bool(record.get("disabled", False))
        msg.username = record.get("username")
        msg.attempts = attempts
        msg.queue = queue
        return msg

    @classmethod
    def plain(
        cls,
        uuid: str,
        retries: int,
        username: str | None,
        inserted: float,
        data: Any,
        attempts: int = 0,
        queue: str | None = None,
    ) -> QueueMessage:
        """:meth:`from_record` of a plain message (no alias, immediate, not disabled), from its
        fields: what a backend reads without building the record's dict first."""
        msg = _new_object(cls)  # the fields are a record's, read back: no validate()
        msg.uuid = uuid
        msg.alias = None
        msg.data = data
        msg.retries = retries
        msg.execution_mode = _IMMEDIATE
        msg.deferred_until = None
        try:
            msg.inserted_at = _inserted_datetime(inserted)
        except (ValueError, OverflowError, OSError):  # out of datetime's range: never blocks a read
            msg.inserted_at = _clamped(inserted)
        msg.disabled = False
        msg.username = username
        msg.attempts = attempts
        msg.queue = queue
        return msg

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view with ISO 8601 times, as printed by ``--json``."""
        return {
            "uuid": self.uuid,
            "queue": self.queue,
            "alias": self.alias,
            "data": self.data,
            "retries": self.retries,
            "attempts": self.attempts,
            "execution_mode": str(self.execution_mode),
            "deferred_until": None if self.deferred_until is None else self.deferred_until.isoformat(),
            "disabled": self.disabled,
            "username": self.username,
            "inserted_at": None if self.inserted_at is None else self.inserted_at.isoformat(),
        }

    def copy(self, **changes: Any) -> QueueMessage:
        """A copy with ``changes`` applied and validated."""
        return replace(self, **changes)
