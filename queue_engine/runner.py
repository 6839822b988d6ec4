"""Running workers: the loop behind ``qengine work QUEUE...`` and direct mode.

Per message (:class:`WorkerRunner`): ``reserve`` it, run ``process`` under the time limit,
then

* success: ``ack(processed=True)`` (the ack and the last processed message in one write),
  audit ``success``, ``on_success`` (class hook, then the configured ``onSuccess``);
* failure with attempts left: ``release`` with the backoff delay and the error text,
  audit ``retry``;
* failure of the last attempt, or an unrecoverable error: ``fail`` (the failed store keeps
  the error of every attempt), ``update_last_message_processed``, audit ``failed``,
  ``on_failure`` (class hook, then ``onFailure``).

A callback that raises is logged and never affects the message. A worker process killed at
any point loses nothing: an unacked reservation comes back when its lease ends.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import Any

from .audit import AuditLog, AuditRecord, get_audit_log
from .config import Config
from .errors import LeaseLost, WorkerError
from .manager import QueueManager
from .message import QueueMessage, validate_queue_name
from .worker import Worker, WorkerSettings, error_text, resolve_settings, time_limit

__all__ = ["MessageHandler", "WorkerRunner", "run_direct"]

logger = logging.getLogger("qengine.worker")

#: Longest the idle loop sleeps before looking at the stop flag again.
_TICK = 0.1


@dataclass(frozen=True)
class Attempt:
    """What one call of ``process`` gave: a result or an error, and when it ran."""

    result: Any
    error: Exception | None
    started_at: float
    duration: float


class MessageHandler:
    """One queue's worker with its settings: runs attempts, records them, calls callbacks."""

    def __init__(self, manager: QueueManager, worker: Worker, settings: WorkerSettings) -> None:
        self.manager = manager
        self.worker = worker
        self.settings = settings
        self.queue = settings.queue
        self._audit: AuditLog | None = None
        self._host = socket.gethostname()
        self._warned = False  # about a time limit that cannot be enforced here

    @property
    def lease(self) -> float:
        """Reservation length: the configured lease, or twice the time limit if that is longer."""
        limit = self.settings.time_limit
        return max(self.manager.config.lease, 2 * limit if limit is not None else 0.0)

    def attempt(self, message: QueueMessage) -> Attempt:
        """Run ``process`` once under the time limit; catch any :class:`Exception` it raises."""
        limit = self.settings.time_limit
        started = time.time()
        t0 = time.monotonic()
        result: Any = None
        error: Exception | None = None
        try:
            if limit is None:  # no limit: no SIGALRM to arm
                result = self.worker.process(message)
            else:
                what = f"attempt {message.attempts} of message {message.uuid} ({self.queue})"
                with time_limit(limit, what) as enforced:
                    if not enforced and not self._warned:
                        self._warned = True
                        logger.warning(
                            "%s: the time limit of %gs is not enforced outside the main thread", self.queue, limit
                        )
                    result = self.worker.process(message)
        except Exception as exc:
            error = exc
        return Attempt(result, error, started, time.monotonic() - t0)

    def is_final(self, message: QueueMessage, error: BaseException, *, direct: bool = False) -> bool:
        """True when no attempt follows: unrecoverable error, or the maximum reached.

        Queued, an error whose ``retry_forever`` attribute is true (a downstream service that
        is down, not a fault of the message) is retried whatever the attempt count. Direct
        mode retries back to back, so it stops at the maximum anyway.
        """
        if self.settings.is_unrecoverable(error):
            return True
        if message.attempts < self.settings.max_attempts(message):
            return False
        return direct or not getattr(error, "retry_forever", False)

    def record(self, message: QueueMessage, attempt: Attempt, outcome: str, error: str | None) -> None:
        """Append the attempt to the audit trail; a failure to record is logged, not raised."""
        try:
            if self._audit is None:
                self._audit = get_audit_log(self.manager)
            self._audit.record(
                AuditRecord(
                    queue=self.queue,
                    uuid=str(message.uuid),
                    alias=message.alias,
                    attempt=max(1, message.attempts),
                    outcome=outcome,
                    started_at=attempt.started_at,
                    duration=attempt.duration,
                    host=self._host,
                    pid=os.getpid(),
                    worker=self.worker.name,
                    error=error,
                    extra=self._extra(message, outcome, attempt),
                )
            )
        except Exception:
            logger.exception(
                "could not record the audit of %s message %s (outcome %s)", self.queue, message.uuid, outcome
            )

    def _extra(self, message: QueueMessage, outcome: str, attempt: Attempt) -> dict[str, Any]:
        """The worker's :meth:`Worker.audit_extra` for this attempt; {} if it raises."""
        try:
            outcome_of = attempt.result if attempt.error is None else attempt.error
            extra = self.worker.audit_extra(message, outcome, outcome_of)
        except Exception:
            logger.exception("audit_extra of %s failed for message %s", self.worker.name, message.uuid)
            return {}
        return dict(extra) if extra else {}

    def _call(self, name: str, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("%s callback of %s failed for message %s", name, self.worker.name, args[0].uuid)

    def succeeded(self, message: QueueMessage, result: Any) -> None:
        """Run the success callbacks: the worker's ``on_success``, then ``onSuccess``."""
        self._call("on_success", self.worker.on_success, message, result)
        self._call("onSuccess", self.settings.on_success, message, result)

    def failed(self, message: QueueMessage, error: BaseException) -> None:
        """Run the failure callbacks: the worker's ``on_failure``, then ``onFailure``."""
        self._call("on_failure", self.worker.on_failure, message, error)
        self._call("onFailure", self.settings.on_failure, message, error)

    # -- a reserved message -------------------------------------------------------------
    def handle(self, message: QueueMessage) -> None:
        """Process a message from ``reserve`` and settle it (ack, release or fail)."""
        att = self.attempt(message)
        if att.error is None:
            logger.debug("%s message %s done (attempt %d)", self.queue, message.uuid, message.attempts)
            self._settle(message, "ack", lambda: self.manager.ack(self.queue, message, processed=True))
            self.record(message, att, "success", None)
            self.succeeded(message, att.result)
            return
        text = error_text(att.error)
        if self.is_final(message, att.error):
            logger.error(
                "%s message %s failed for good (attempt %d of %d): %s",
                self.queue, message.uuid, message.attempts, self.settings.max_attempts(message), text,
                exc_info=self._traceback(att.error),
            )
            settled = self._settle(message, "fail", lambda: self.manager.fail(self.queue, message, text))
            if settled:
                self.manager.update_last_message_processed(self.queue, message)
            self.record(message, att, "failed", text)
            if settled:  # a lost lease means another worker holds the message and decides its fate
                self.failed(message, att.error)
            return
        delay = self.settings.backoff.delay(message.attempts)
        # An error may carry the wait its source asked for (an HTTP Retry-After): never wait less.
        retry_after = getattr(att.error, "retry_after", None)
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool) and retry_after > delay:
            delay = float(retry_after)
        logger.warning(
            "%s message %s attempt %d of %d failed, retry in %.3gs: %s",
            self.queue, message.uuid, message.attempts, self.settings.max_attempts(message), delay, text,
        )
        self._settle(message, "release", lambda: self.manager.release(self.queue, message, delay=delay, error=text))
        self.record(message, att, "retry", text)

    def _traceback(self, error: Exception) -> Exception | None:
        """The traceback worth logging: none for an error the worker declared unrecoverable."""
        return None if self.settings.is_unrecoverable(error) else error

    def _settle(self, message: QueueMessage, what: str, action: Callable[[], None]) -> bool:
        try:
            action()
        except LeaseLost as exc:
            # The lease ran out during processing and the message went to another consumer.
            logger.warning("could not %s %s message %s: %s", what, self.queue, message.uuid, exc)
            return False
        return True

    # -- direct mode --------------------------------------------------------------------
    def run_direct(self, message: QueueMessage) -> str:
        """Process an unstored message here, attempts back to back; see :func:`run_direct`."""
        if not self.manager.queue_exists(self.queue):
            self.manager.create_queue(self.queue)  # status, last processed and failed store need it
        message.uuid = str(uuidlib.uuid4())
        message.inserted_at = datetime.now(timezone.utc)
        message.queue = self.queue
        errors: list[str] = []
        limit = self.settings.max_attempts(message)
        while True:
            message.attempts += 1
            att = self.attempt(message)
            if att.error is None:
                self.manager.update_last_message_processed(self.queue, message)
                self.record(message, att, "success", None)
                self.succeeded(message, att.result)
                return message.uuid
            text = error_text(att.error)
            errors.append(text)
            if self.is_final(message, att.error, direct=True):
                logger.error(
                    "%s message %s failed for good in direct mode (attempt %d of %d): %s",
                    self.queue, message.uuid, message.attempts, limit, text, exc_info=self._traceback(att.error),
                )
                self.manager.add_failed(self.queue, message, errors)  # keeps message.uuid
                self.manager.update_last_message_processed(self.queue, message)
                self.record(message, att, "failed", text)
                self.failed(message, att.error)
                return message.uuid
            logger.warning(
                "%s message %s attempt %d of %d failed in direct mode, retrying at once: %s",
                self.queue, message.uuid, message.attempts, limit, text,
            )
            self.record(message, att, "retry", text)


def run_direct(manager: QueueManager, worker: Worker, settings: WorkerSettings, message: QueueMessage) -> str:
    """Direct mode: process ``message`` in the caller instead of storing it; return its uuid.

    Attempts follow each other without waiting (the caller is blocked meanwhile; backoff is
    for queued messages). Each is audited like a queued attempt and the callbacks run the
    same way. A message that fails for good goes to the failed store with the error of
    every attempt; the job's exception is not raised to the caller.
    """
    return MessageHandler(manager, worker, settings).run_direct(message)


class WorkerRunner:
    """Consumes ``queues`` round-robin with each queue's worker until stopped.

    ``burst``: return as soon as no queue has a ready message. ``max_jobs``: return after that
    many messages. ``max_time``: return once that many seconds have passed (checked between
    messages). ``sleep``: idle wait between polls when nothing is ready. ``config`` defaults
    to the manager's. Workers and their settings are loaded here, so a missing worker or a
    bad setting fails at construction (:class:`WorkerError`, :class:`ConfigurationError`).
    """

    def __init__(
        self,
        manager: QueueManager,
        queues: Sequence[str],
        *,
        config: Config | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        max_time: float | None = None,
        sleep: float = 1.0,
    ) -> None:
        from .loader import load_worker

        if isinstance(queues, str):
            queues = [queues]
        names = list(dict.fromkeys(validate_queue_name(q) for q in queues))
        if not names:
            raise WorkerError("no queue to work on: name at least one")
        if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1):
            raise WorkerError(f"invalid max_jobs {max_jobs!r}: a whole number >= 1")
        for name, value in (("max_time", max_time), ("sleep", sleep)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf")
            ):
                raise WorkerError(f"invalid {name} {value!r}: a finite number of seconds >= 0")
        self.manager = manager
        self.config = config if config is not None else manager.config
        self.queues = names
        self.burst = burst
        self.max_jobs = max_jobs
        self.max_time = max_time
        self.sleep = float(sleep)
        self.handlers: dict[str, MessageHandler] = {}
        for name in names:
            worker = load_worker(name, self.config, manager=manager)
            self.handlers[name] = MessageHandler(manager, worker, resolve_settings(worker, self.config, name))
        self._stopping = False
        self._next = 0

    def stop(self) -> None:
        """Ask the loop to return after the current message. Safe from a signal handler or thread."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run_once(self) -> bool:
        """Reserve and process one message from the next queue that has one; False if none had.

        A queue whose worker is paused (:meth:`Worker.paused_for`) is skipped.
        """
        count = len(self.queues)
        for offset in range(count):
            index = (self._next + offset) % count
            handler = self.handlers[self.queues[index]]
            if handler.worker.paused_for() > 0:
                continue
            message = self.manager.reserve(handler.queue, handler.lease)
            if message is None:
                continue
            self._next = (index + 1) % count  # the next call starts at the following queue
            handler.handle(message)
            return True
        return False

    def run(self) -> int:
        """Loop until stopped, out of work (burst), ``max_jobs`` or ``max_time``; return messages handled.

        In the main thread, SIGTERM and SIGINT only set the stop flag (the current message
        finishes); the previous handlers are restored on return.
        """
        start = time.monotonic()
        handled = 0
        workers = ", ".join(f"{q}={h.worker.name}" for q, h in self.handlers.items())
        logger.info("worker %d started on %s", os.getpid(), workers)
        with self._signals():
            while not self._stopping:
                if self.max_jobs is not None and handled >= self.max_jobs:
                    break
                if self.max_time is not None and time.monotonic() - start >= self.max_time:
                    break
                if self.run_once():
                    handled += 1
                    continue
                if self.burst:
                    break
                self._idle(start)
        self._stopping = False  # a later run() starts afresh; a stop() before run() ends it at once
        logger.info("worker %d stopped after %d attempt(s)", os.getpid(), handled)
        return handled

    def _idle(self, start: float) -> None:
        until = time.monotonic() + self.sleep
        if self.max_time is not None:
            until = min(until, start + self.max_time)
        while not self._stopping:
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(_TICK, left))

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            logger.info("worker %d got %s: stopping after the current message", os.getpid(), name)
            self._stopping = True

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
