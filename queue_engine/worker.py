"""Worker classes: the code that processes the messages of one queue type.

A worker subclasses :class:`Worker`, names its queue and implements :meth:`Worker.process`::

    class AnprWorker(Worker):
        queue = "ANPR"
        retries = 5
        backoff = ExponentialBackoff(base=30, max_delay=3600)

        def process(self, message):
            ...

Class attributes are defaults; config ``[worker.QUEUE]`` overrides them (see
:data:`WORKER_KEYS` and :func:`resolve_settings`). :mod:`queue_engine.loader` finds workers,
:mod:`queue_engine.runner` runs them.
"""

from __future__ import annotations

import importlib
import math
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .config import Config, parse_int
from .errors import ConfigurationError, TimeLimitExceeded, Unrecoverable, WorkerError
from .message import QueueMessage
from .retry import BACKOFF_KEYS, Backoff, ExponentialBackoff, backoff_from_config

__all__ = [
    "MODES",
    "WORKER_KEYS",
    "Worker",
    "WorkerSettings",
    "error_text",
    "queue_mode",
    "resolve_callable",
    "resolve_settings",
    "time_limit",
    "worker_section",
]

#: Values of ``[queue] mode`` and ``[worker.QUEUE] mode``.
MODES = ("queued", "direct")
#: Keys accepted in a ``[worker.QUEUE]`` section, as written in config.ini (case-insensitive).
WORKER_KEYS = ("retries", "timeLimit", "onSuccess", "onFailure", "mode", *BACKOFF_KEYS)

SuccessCallback = Callable[[QueueMessage, Any], Any]
FailureCallback = Callable[[QueueMessage, BaseException], Any]


class Worker(ABC):
    """Base class of per-type workers.

    Contract for subclasses:

    * :meth:`process` handles one message. Returning means success (the message is acked);
      raising an :class:`Exception` means this attempt failed. Raise
      :class:`~queue_engine.errors.Unrecoverable` (or a class listed in ``unrecoverable``)
      when retrying cannot help: the remaining attempts are skipped.
    * An exception with a true ``retry_forever`` attribute says the service behind the worker
      is down, not that the message is bad: it is retried with the backoff whatever the
      attempt count, and never goes to the failed store for that reason.
    * The same message may be processed more than once (a worker killed after the work but
      before the ack, an expired lease): make ``process`` idempotent, e.g. keyed by uuid.
    * One instance handles messages one at a time; it is created with no arguments.
    """

    #: The queue this worker consumes (the loader sets it on the instance when empty).
    queue: str = ""
    #: Maximum attempts for a message whose ``retries`` is 0. 1 means no retry.
    retries: int = 1
    #: Wait between attempts (see :mod:`queue_engine.retry`).
    backoff: Backoff = ExponentialBackoff()
    #: Seconds one attempt may run before it fails with TimeLimitExceeded; None: no limit.
    time_limit: float | None = None
    #: Exception classes that skip the remaining attempts, like Unrecoverable does.
    unrecoverable: tuple[type[BaseException], ...] = ()

    @abstractmethod
    def process(self, message: QueueMessage) -> Any:
        """Handle ``message``; the return value is passed to :meth:`on_success`."""

    def on_success(self, message: QueueMessage, result: Any) -> None:  # noqa: B027 - optional hook
        """Called after ``message`` was processed and acked."""

    def on_failure(self, message: QueueMessage, error: BaseException) -> None:  # noqa: B027 - optional hook
        """Called once, after the last attempt failed and the message went to the failed store."""

    def audit_extra(self, message: QueueMessage, outcome: str, result_or_error: Any) -> dict[str, Any]:
        """Fields to add to this attempt's audit record (``AuditRecord.extra``); JSON values only.

        ``outcome`` is ``success``, ``retry`` or ``failed``; ``result_or_error`` is what
        ``process`` returned or raised. The webhook worker records the listener and the HTTP
        status here. Must not raise (an exception is logged and the record gets no extra).
        """
        return {}

    def paused_for(self) -> float:
        """Seconds the runner should wait before reserving a message for this worker; 0: go on.

        The default never pauses. A worker whose downstream service is down or switched off
        (the AMQP publisher) returns > 0: its messages stay queued, untouched and in order,
        and no attempt is spent. Called before every reservation, so it must be cheap, and
        it must not raise.
        """
        return 0.0

    @property
    def name(self) -> str:
        """The class name, as recorded in the audit trail."""
        return type(self).__name__


@dataclass(frozen=True)
class WorkerSettings:
    """A worker's effective settings for one queue: class attributes overridden by config."""

    queue: str
    retries: int
    backoff: Backoff
    time_limit: float | None
    unrecoverable: tuple[type[BaseException], ...]
    mode: str
    #: Configured ``onSuccess`` / ``onFailure`` callables (they run after the class hooks).
    on_success: SuccessCallback | None = None
    on_failure: FailureCallback | None = None

    def max_attempts(self, message: QueueMessage) -> int:
        """``message.retries`` when set, else the worker's ``retries``."""
        return message.retries or self.retries

    def is_unrecoverable(self, error: BaseException) -> bool:
        return isinstance(error, (Unrecoverable, *self.unrecoverable))


def _source(config: Config | None) -> str:
    return str(config.source) if config is not None and config.source is not None else "configuration"


def worker_section(config: Config | None, queue: str) -> tuple[dict[str, str], str]:
    """The keys of ``[worker.QUEUE]`` (canonical spelling -> raw value) and an error prefix.

    The section name matches ``queue`` exactly, or else case-insensitively. An unknown key
    raises :class:`ConfigurationError` listing the valid ones.
    """
    name = f"worker.{queue}"
    prefix = f"{_source(config)}: [{name}]"
    if config is None:
        return {}, prefix
    parser = config.parser
    found = config.find_section(name)
    if found is None:
        return {}, prefix
    if found != name:
        name, prefix = found, f"{_source(config)}: [{found}]"
    canonical = {k.lower(): k for k in WORKER_KEYS}
    out: dict[str, str] = {}
    for key, raw in parser.items(name):
        known = canonical.get(key.lower())
        if known is None:
            raise ConfigurationError(f"{prefix} unknown key {key}; valid: {', '.join(WORKER_KEYS)}")
        out[known] = raw
    return out, prefix


def _check_mode(raw: str, where: str) -> str:
    mode = raw.strip().lower()
    if mode not in MODES:
        raise ConfigurationError(f"{where} = {raw!r} is not a mode; valid: {', '.join(MODES)}")
    return mode


def queue_mode(config: Config | None, queue: str) -> str:
    """``queued`` or ``direct``: ``[worker.QUEUE] mode``, else ``[queue] mode``, else queued."""
    section, prefix = worker_section(config, queue)
    if "mode" in section:
        return _check_mode(section["mode"], f"{prefix} mode")
    if config is not None:
        raw = config.setting("queue", "mode")
        if raw is not None:
            return _check_mode(raw, config.where("queue", "mode"))
    return "queued"


def resolve_callable(spec: str, where: str) -> Callable[..., Any]:
    """Import ``"pkg.mod:func"`` or ``"pkg.mod.func"`` and return the callable.

    ``where`` names the setting in error messages. Raises :class:`ConfigurationError`.
    """
    text = spec.strip()
    if ":" in text:
        module_name, _, attr_path = text.partition(":")
    else:
        module_name, _, attr_path = text.rpartition(".")
    if not module_name or not attr_path:
        raise ConfigurationError(f"{where} = {spec!r} is not a dotted path; use 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a configuration problem here
        raise ConfigurationError(f"{where} = {spec!r}: cannot import {module_name!r}: {error_text(exc)}") from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"{where} = {spec!r}: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise ConfigurationError(f"{where} = {spec!r} is a {type(target).__name__}, not a callable")
    return target


def _check_class(worker: Worker) -> None:
    cls = type(worker).__name__
    if isinstance(worker.retries, bool) or not isinstance(worker.retries, int) or worker.retries < 1:
        raise WorkerError(f"{cls}.retries = {worker.retries!r}: a whole number >= 1")
    if not isinstance(worker.backoff, Backoff):
        raise WorkerError(f"{cls}.backoff = {worker.backoff!r}: a queue_engine.retry.Backoff is required")
    limit = worker.time_limit
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (math.isfinite(limit) and limit > 0)
    ):
        raise WorkerError(f"{cls}.time_limit = {limit!r}: None or a number of seconds > 0")
    if not isinstance(worker.unrecoverable, tuple) or not all(
        isinstance(c, type) and issubclass(c, BaseException) for c in worker.unrecoverable
    ):
        raise WorkerError(f"{cls}.unrecoverable = {worker.unrecoverable!r}: a tuple of exception classes")


def resolve_settings(worker: Worker, config: Config | None, queue: str | None = None) -> WorkerSettings:
    """The effective settings of ``worker`` for ``queue`` (default: ``worker.queue``).

    ``[worker.QUEUE]`` keys override the class attributes: ``retries`` (>= 1), ``timeLimit``
    (seconds; 0 means no limit), the backoff keys of
    :func:`~queue_engine.retry.backoff_from_config`, ``onSuccess`` / ``onFailure`` (dotted
    paths to callables taking ``(message, result)`` / ``(message, error)``) and ``mode``.
    Raises :class:`ConfigurationError` for a bad key or value, :class:`WorkerError` for a bad
    class attribute.
    """
    name = queue or worker.queue
    if not name:
        raise WorkerError(f"{type(worker).__name__} names no queue: set its queue attribute")
    _check_class(worker)
    section, prefix = worker_section(config, name)
    retries = worker.retries
    if "retries" in section:
        retries = parse_int(f"{prefix} retries", section["retries"], minimum=1)
    limit: float | None = None if worker.time_limit is None else float(worker.time_limit)
    if "timeLimit" in section:
        raw = section["timeLimit"]
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{prefix} timeLimit = {raw!r} is not a number of seconds") from None
        if not (math.isfinite(value) and value >= 0):
            raise ConfigurationError(f"{prefix} timeLimit = {raw!r} must be a finite number >= 0 (0: no limit)")
        limit = value or None
    backoff = backoff_from_config(section, prefix) or worker.backoff
    on_success = resolve_callable(section["onSuccess"], f"{prefix} onSuccess") if "onSuccess" in section else None
    on_failure = resolve_callable(section["onFailure"], f"{prefix} onFailure") if "onFailure" in section else None
    return WorkerSettings(
        queue=name,
        retries=retries,
        backoff=backoff,
        time_limit=limit,
        unrecoverable=tuple(worker.unrecoverable),
        mode=queue_mode(config, name),
        on_success=on_success,
        on_failure=on_failure,
    )


def error_text(error: BaseException) -> str:
    """One line for the failed store and the audit trail: ``ClassName: message``."""
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}" if text else name


@contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[bool]:
    """Raise :class:`TimeLimitExceeded` inside the block once it ran ``seconds``.

    Enforced with ``SIGALRM`` (``signal.setitimer``), so only in the main thread of a
    process on a platform that has it; elsewhere the block runs unlimited. Yields whether
    the limit is enforced. The previous SIGALRM handler is restored on exit; any itimer
    another part of the program had set is cancelled.
    """
    enforce = (
        seconds is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not enforce:
        yield False
        return
    assert seconds is not None
    armed = True

    def on_alarm(signum: int, frame: object) -> None:
        if armed:  # the block may have finished between the alarm and the disarm below
            raise TimeLimitExceeded(f"{what} ran longer than its time limit of {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
