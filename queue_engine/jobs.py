"""Function jobs: ``Queue("orders").enqueue(process_order, order_id)``.

A job message stores the function's import path and its JSON arguments::

    {"job": "shop.orders:process_order", "args": [42], "kwargs": {}}

Everything that could fail at run time because of how the job was written is checked at
enqueue time instead, with :class:`~queue_engine.errors.InvalidMessage`: the function must be
a plain function importable back from its module (no lambda, closure, nested function or
function defined in ``__main__``), and every argument must be JSON. Jobs are resolved with
``importlib`` and called; nothing is ever evaluated or unpickled. Anyone who can write to a
queue can therefore make its worker import and call any importable function with JSON
arguments: give write access to a queue only to code you trust, as with any job queue.

A queue without a per-type worker runs its jobs with :class:`FunctionJobWorker`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from .config import Config
from .errors import InvalidMessage, StorageError, Unrecoverable
from .manager import QueueManager
from .message import QueueMessage, encode_data, validate_queue_name
from .worker import Worker, WorkerSettings, error_text

__all__ = ["FunctionJobWorker", "Queue", "job_data", "job_path", "resolve_job"]

logger = logging.getLogger("qengine.contingency")

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _resolve(path: str) -> Any:
    """Import ``module:qualname`` and return the object; raises ImportError/AttributeError/ValueError."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(qualname):
        raise ValueError(f"{path!r} is not a job path of the form 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def job_path(func: Callable[..., Any]) -> str:
    """``"module:qualname"`` of ``func``, after checking a worker process can import it back.

    Raises :class:`InvalidMessage` for anything but a plain function defined at the top of
    an importable module (or in a class there), naming the function and the reason.
    """
    if not inspect.isfunction(func):
        kind = type(func).__name__
        raise InvalidMessage(f"a job must be a plain function defined in a module, not a {kind} ({func!r:.80})")
    module = getattr(func, "__module__", None)
    qualname = func.__qualname__
    shown = f"{module}.{qualname}"
    if func.__name__ == "<lambda>":
        raise InvalidMessage(f"a job cannot be a lambda ({shown}): define it with def at the top of a module")
    if "<locals>" in qualname:
        raise InvalidMessage(
            f"a job cannot be a nested function or closure ({shown}): a worker cannot import it; "
            "define it at the top of a module and pass what it captured as arguments"
        )
    if not module or module == "__main__":
        raise InvalidMessage(
            f"a job cannot be defined in __main__ ({qualname}): a worker process imports jobs by module "
            "name; move it to an importable module"
        )
    path = f"{module}:{qualname}"
    try:
        resolved = _resolve(path)
    except Exception as exc:
        raise InvalidMessage(f"job {shown} cannot be imported back from {path!r}: {error_text(exc)}") from None
    if resolved is not func:
        raise InvalidMessage(
            f"job {shown} is not the object found at {path!r} (a decorator without functools.wraps, "
            "or the name was rebound): enqueue the module-level function itself"
        )
    return path


def job_data(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The message data of a job; raises :class:`InvalidMessage` naming a bad argument."""
    path = job_path(func)
    for index, value in enumerate(args):
        try:
            encode_data(value)
        except InvalidMessage as exc:
            raise InvalidMessage(f"argument {index} of job {path}: {exc}") from None
    for name, value in kwargs.items():
        try:
            encode_data(value)
        except InvalidMessage as exc:
            raise InvalidMessage(f"argument {name}= of job {path}: {exc}") from None
    return {"job": path, "args": list(args), "kwargs": dict(kwargs)}


def resolve_job(path: str) -> Callable[..., Any]:
    """The function named by a stored job path; raises :class:`Unrecoverable` if it is gone."""
    try:
        func = _resolve(path)
    except Exception as exc:
        raise Unrecoverable(f"job {path!r} cannot be imported: {error_text(exc)}") from None
    if not inspect.isfunction(func):
        raise Unrecoverable(f"job {path!r} is a {type(func).__name__}, not a function")
    return func


class FunctionJobWorker(Worker):
    """Runs function jobs: imports the stored function and calls it with the stored arguments.

    A message that is not a job (wrong data shape) or whose function cannot be imported
    fails at once (:class:`Unrecoverable`); exceptions of the function follow the normal
    retry rules. The function's return value is passed to ``on_success`` callbacks.
    """

    def __init__(self, *, searched: list[str] | None = None) -> None:
        #: Where the loader looked for a per-type worker (for the error of a non-job message).
        self.searched = list(searched or [])

    def process(self, message: QueueMessage) -> Any:
        data = message.data
        if not (
            isinstance(data, dict)
            and isinstance(data.get("job"), str)
            and isinstance(data.get("args", []), list)
            and isinstance(data.get("kwargs", {}), dict)
        ):
            where = f"; looked for a per-type worker in: {'; '.join(self.searched)}" if self.searched else ""
            raise Unrecoverable(
                f"message {message.uuid} of queue {self.queue!r} is not a function job "
                f"(data must be {{'job': 'module:function', 'args': [...], 'kwargs': {{...}}}}){where}"
            )
        func = resolve_job(data["job"])
        return func(*data.get("args", []), **data.get("kwargs", {}))


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.astimezone()  # naive means local time


class Queue:
    """A producer's handle on one queue: enqueue function jobs or plain messages.

    ``manager`` defaults to the one built from ``config`` (a :class:`Config`, a path or None
    for the usual lookup); a manager built here is closed by :meth:`close`. ``config``
    defaults to the manager's and decides the mode (``[queue] mode``, ``[worker.NAME] mode``):

    * ``queued`` (default): the message is stored and a worker (``qengine work NAME``) runs it.
      When the backend cannot take it (:class:`StorageError`), or ``[queue] brokerActive =
      false``, it is put in the contingency spool instead, a warning is logged, and its uuid
      is returned all the same; ``qengine requeue --pending`` adds it later.
    * ``direct``: an immediate message runs right here, synchronously, through the queue's
      worker with the same attempts, audit records and callbacks as a queued one. Attempts
      follow each other without the backoff wait: the caller is waiting (often a request
      handler), and a message that still fails is kept in the failed store for
      ``qengine requeue`` instead. Exceptions of the job are not raised to the caller.
      Deferred messages (``enqueue_at``/``enqueue_in``) are always stored, as only a worker
      can run them later.
    """

    def __init__(self, name: str, manager: QueueManager | None = None, *, config: Config | None = None) -> None:
        self.name = validate_queue_name(name)
        self._owned = manager is None
        if manager is None:
            from .factory import QueueFactory

            manager = QueueFactory.get_queue_manager(config)
        self.manager = manager
        self.config = config if config is not None else manager.config
        self._worker: tuple[Worker, WorkerSettings] | None = None

    @property
    def mode(self) -> str:
        """``queued`` or ``direct``, from the configuration."""
        from .worker import queue_mode

        return queue_mode(self.config, self.name)

    # -- producing ----------------------------------------------------------------------
    def enqueue(
        self,
        func: Callable[..., Any],
        *args: Any,
        job_alias: str | None = None,
        job_retries: int = 0,
        **kwargs: Any,
    ) -> str:
        """Add a job calling ``func(*args, **kwargs)``; return the message uuid.

        ``job_alias`` and ``job_retries`` set the message's alias and maximum attempts (0: the
        worker's default); keyword arguments named ``job_*`` are therefore reserved.
        Raises :class:`InvalidMessage` if the function or an argument cannot be stored.
        """
        return self._submit(QueueMessage(data=job_data(func, args, kwargs), alias=job_alias, retries=job_retries))

    def enqueue_at(
        self,
        when: datetime,
        func: Callable[..., Any],
        *args: Any,
        job_alias: str | None = None,
        job_retries: int = 0,
        **kwargs: Any,
    ) -> str:
        """Like :meth:`enqueue`, run no earlier than ``when`` (a naive datetime is local time)."""
        if not isinstance(when, datetime):
            raise InvalidMessage(f"invalid when {when!r}: a datetime is required")
        data = job_data(func, args, kwargs)
        return self._submit(QueueMessage(data=data, alias=job_alias, retries=job_retries, deferred_until=_aware(when)))

    def enqueue_in(
        self,
        delay: float | timedelta,
        func: Callable[..., Any],
        *args: Any,
        job_alias: str | None = None,
        job_retries: int = 0,
        **kwargs: Any,
    ) -> str:
        """Like :meth:`enqueue`, run no earlier than ``delay`` (seconds or timedelta) from now."""
        if isinstance(delay, timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
            seconds = float(delay)
        else:
            raise InvalidMessage(f"invalid delay {delay!r}: seconds or a timedelta")
        if not seconds >= 0 or seconds == float("inf"):
            raise InvalidMessage(f"invalid delay {delay!r}: a finite number of seconds >= 0")
        when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return self.enqueue_at(when, func, *args, job_alias=job_alias, job_retries=job_retries, **kwargs)

    def send(
        self,
        data: Any,
        *,
        alias: str | None = None,
        retries: int = 0,
        deferred_until: datetime | None = None,
    ) -> str:
        """Add a plain message for the queue's per-type worker (e.g. ANPR); return its uuid.

        Same modes as jobs: in direct mode an immediate message is processed here.
        """
        deferred = None if deferred_until is None else _aware(deferred_until)
        return self._submit(QueueMessage(data=data, alias=alias, retries=retries, deferred_until=deferred))

    def _submit(self, message: QueueMessage) -> str:
        if message.deferred_until is None and self.mode == "direct":
            from .runner import run_direct

            worker, settings = self._direct_worker()
            return run_direct(self.manager, worker, settings, message)
        return self._store(message)

    def _store(self, message: QueueMessage) -> str:
        """Add ``message``, or put it in the contingency spool when the backend cannot take it
        (or ``[queue] brokerActive = false``); see :mod:`queue_engine.contingency`."""
        from .contingency import Spool, broker_active

        if broker_active(self.config):
            try:
                return self.manager.add_message(self.name, message)
            except StorageError as exc:
                reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "[queue] brokerActive = false"
        uuid = Spool.from_config(self.config).put(self.name, message, reason)
        logger.warning("queue %s: message %s spooled for a later requeue --pending: %s", self.name, uuid, reason)
        return uuid

    def _direct_worker(self) -> tuple[Worker, WorkerSettings]:
        if self._worker is None:
            from .loader import load_worker
            from .worker import resolve_settings

            worker = load_worker(self.name, self.config)
            self._worker = (worker, resolve_settings(worker, self.config, self.name))
        return self._worker

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Close the manager if this queue built it. Idempotent."""
        if self._owned:
            self.manager.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, mode={self.mode!r})"

