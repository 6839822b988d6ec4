"""qengine: a crash-safe queue engine with a file backend, workers and daemons."""

from __future__ import annotations

from .config import Config, load_config
from .daemon import Daemon
from .errors import (
    ConfigurationError,
    CorruptionError,
    DuplicateAlias,
    InvalidMessage,
    InvalidQueueName,
    InvalidTopicName,
    LeaseLost,
    LockTimeout,
    ManualInsertionRefused,
    MessageInFlight,
    MessageNotFound,
    QueueEngineError,
    QueueNotFound,
    ServiceError,
    StorageError,
    TimeLimitExceeded,
    Unrecoverable,
    WorkerError,
)
from .factory import QueueFactory
from .jobs import Queue
from .manager import QueueManager
from .message import ExecutionMode, QueueMessage
from .retry import Backoff, ExponentialBackoff, FixedBackoff, LinearBackoff
from .status import FailedMessage, MessageRef, QueueStatus
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "ExponentialBackoff",
    "FixedBackoff",
    "LinearBackoff",
    "Queue",
    "Worker",
    "Config",
    "ConfigurationError",
    "Daemon",
    "CorruptionError",
    "DuplicateAlias",
    "ExecutionMode",
    "FailedMessage",
    "InvalidMessage",
    "InvalidQueueName",
    "InvalidTopicName",
    "LeaseLost",
    "LockTimeout",
    "ManualInsertionRefused",
    "MessageInFlight",
    "MessageNotFound",
    "MessageRef",
    "QueueEngineError",
    "QueueFactory",
    "QueueManager",
    "QueueMessage",
    "QueueNotFound",
    "QueueStatus",
    "ServiceError",
    "StorageError",
    "TimeLimitExceeded",
    "Unrecoverable",
    "WorkerError",
    "load_config",
    "__version__",
]
