"""The error tree. Every error the library raises derives from :class:`QueueEngineError`.

Each message says what was wrong and with which value, so a CLI can print it as one line.
"""

from __future__ import annotations


class QueueEngineError(Exception):
    """Root of every error raised by qengine."""

    #: Process exit status the CLI uses for this kind of error.
    exit_code = 1


class ConfigurationError(QueueEngineError):
    """A configuration file, key or value is missing or invalid."""

    exit_code = 2


class InvalidQueueName(QueueEngineError, ValueError):
    """A queue name does not follow the naming rules."""

    exit_code = 2


class InvalidTopicName(InvalidQueueName):
    """A topic name does not follow the naming rules (the same as for queue names)."""


class InvalidMessage(QueueEngineError, ValueError):
    """A message field holds a value the engine cannot store."""

    exit_code = 2


class QueueNotFound(QueueEngineError, LookupError):
    """The named queue does not exist."""

    exit_code = 3


class MessageNotFound(QueueEngineError, LookupError):
    """No pending message has the given uuid or alias."""

    exit_code = 3


class DuplicateAlias(QueueEngineError):
    """A pending message with the same alias already exists in the queue."""

    exit_code = 4

    def __init__(self, message: str, *, queue: str = "", alias: str = "", uuid: str = "") -> None:
        super().__init__(message)
        self.queue = queue
        self.alias = alias
        #: uuid of the pending message that already holds the alias.
        self.uuid = uuid


class MessageInFlight(QueueEngineError):
    """The message is reserved by a consumer and cannot be changed now."""

    exit_code = 4


class LeaseLost(QueueEngineError):
    """An ack or release named a reservation that is no longer held (it expired or was acked)."""

    exit_code = 4


class StorageError(QueueEngineError):
    """The storage backend failed: disk error, full disk, unreachable server, corrupt data."""

    exit_code = 5


class LockTimeout(StorageError):
    """A queue lock could not be acquired in time."""


class CorruptionError(StorageError):
    """Stored data failed an integrity check and could not be used."""


class WorkerError(QueueEngineError):
    """A worker, daemon or job could not be found, loaded or configured."""

    exit_code = 2


class Unrecoverable(QueueEngineError):
    """Raised by a worker: this message can never succeed, skip the remaining attempts."""


class TimeLimitExceeded(QueueEngineError):
    """An attempt ran longer than its time limit."""


class ServiceError(QueueEngineError):
    """A daemon could not be started, stopped or signalled (already running, still running, failed)."""


class ManualInsertionRefused(QueueEngineError):
    """The queue's catalogue entry does not allow a person to add messages to it."""

    exit_code = 4
