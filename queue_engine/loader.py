"""Finding the worker of a queue, by convention as in the original layout.

For queue ``ANPR`` the loader looks, in order:

1. in each folder of ``[queue] workersPath`` for ``anpr.py`` (the queue name lowercased,
   ``-`` and ``.`` turned into ``_``), and in it for class ``AnprWorker`` (the CamelCase of
   the name's parts + ``Worker``) or else any :class:`~queue_engine.worker.Worker` subclass
   defined there whose ``queue`` is ``"ANPR"``;
2. for an entry point named ``ANPR`` in the group ``queue_engine.workers`` (installed plugins);
3. otherwise the built-in :class:`~queue_engine.jobs.FunctionJobWorker` runs the queue's
   function jobs (unless the caller asks for a per-type worker).

Worker files are loaded by path under a private module name (``_qengine_workers.<hash>``),
once per path and process, never as ``import workers``: an application's own ``workers``
folder on ``sys.path`` cannot collide with them.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import threading
import types
from pathlib import Path

from .config import Config
from .errors import QueueNotFound, WorkerError
from .manager import QueueManager
from .message import validate_queue_name
from .worker import Worker, error_text

__all__ = [
    "ENTRY_POINT_GROUP",
    "class_name",
    "config_paths",
    "file_name",
    "find_worker_class",
    "load_worker",
    "load_worker_file",
    "worker_classes",
    "worker_class_name",
    "worker_file_name",
    "workers_path",
]

#: Entry-point group where installed packages register workers (entry point name = queue).
ENTRY_POINT_GROUP = "queue_engine.workers"
_PACKAGE = "_qengine_workers"
_modules: dict[Path, types.ModuleType] = {}
_lock = threading.RLock()


def file_name(name: str) -> str:
    """The file of a worker or daemon named ``name`` (a valid queue name): ``ANPR`` -> ``anpr.py``."""
    return re.sub(r"[-.]", "_", name.lower()) + ".py"


def class_name(name: str, suffix: str) -> str:
    """The conventional class of ``name``: ``("send-mail", "Worker")`` -> ``SendMailWorker``."""
    parts = [p for p in re.split(r"[-_.]", name) if p]
    return "".join(p[:1].upper() + p[1:].lower() for p in parts) + suffix


def worker_file_name(queue: str) -> str:
    """``ANPR`` -> ``anpr.py``; ``send-mail.v2`` -> ``send_mail_v2.py``."""
    return file_name(validate_queue_name(queue))


def worker_class_name(queue: str) -> str:
    """``ANPR`` -> ``AnprWorker``; ``send-mail`` -> ``SendMailWorker``."""
    return class_name(validate_queue_name(queue), "Worker")


def workers_path(config: Config | None) -> list[Path]:
    """The folders of ``[queue] workersPath`` (separated by commas, newlines or ``os.pathsep``).

    ``~`` and ``$VARS`` are expanded; a relative folder is relative to the config file's
    folder. Default: ``workers`` next to the config file, or in the current directory when
    there is no config file.
    """
    return config_paths(config, "queue", "workersPath", "workers")


def config_paths(config: Config | None, section: str, key: str, default: str) -> list[Path]:
    """The folders listed by ``[section] key`` (case-insensitive key), as :func:`workers_path` reads them.

    Default: the folder ``default`` next to the config file, or in the current directory.
    """
    base = config.source.parent if config is not None and config.source is not None else Path.cwd()
    raw = None if config is None else config.setting(section, key)
    if raw is None or not raw.strip():
        return [base / default]
    folders = []
    for item in re.split(r"[,\n" + re.escape(os.pathsep) + "]", raw):
        text = item.strip()
        if text:
            path = Path(os.path.expanduser(os.path.expandvars(text)))
            folders.append(path if path.is_absolute() else base / path)
    return folders


def load_worker_file(path: str | os.PathLike[str], *, kind: str = "worker") -> types.ModuleType:
    """Execute the Python file at ``path`` as a private module, once per path; return it.

    Raises :class:`WorkerError` naming the file (as a ``kind`` file) when it cannot be read
    or raises on import. Daemon files are loaded the same way (``kind="daemon"``).
    """
    resolved = Path(path).resolve()
    with _lock:
        module = _modules.get(resolved)
        if module is not None:
            return module
        if _PACKAGE not in sys.modules:
            package = types.ModuleType(_PACKAGE, "Worker files loaded by path (queue_engine.loader).")
            package.__path__ = []
            sys.modules[_PACKAGE] = package
        digest = hashlib.sha1(os.fsencode(resolved)).hexdigest()[:16]
        name = f"{_PACKAGE}.m{digest}"
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a spec
            raise WorkerError(f"cannot load {kind} file {str(resolved)!r}: not a Python source file")
        module = importlib.util.module_from_spec(spec)
        # Registered before execution, as import does: dataclasses and typing look it up there.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(name, None)
            if not isinstance(exc, Exception):
                raise
            raise WorkerError(f"cannot load {kind} file {str(resolved)!r}: {error_text(exc)}") from exc
        _modules[resolved] = module
        return module


def worker_classes(module: types.ModuleType) -> list[type[Worker]]:
    """Concrete Worker subclasses defined in ``module`` (not merely imported into it)."""
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Worker)
        and obj.__module__ == module.__name__
        and not inspect.isabstract(obj)
    ]


def _from_file(queue: str, path: Path) -> type[Worker] | None:
    module = load_worker_file(path)
    wanted = worker_class_name(queue)
    named = getattr(module, wanted, None)
    if isinstance(named, type) and issubclass(named, Worker) and named.queue in ("", queue):
        return named
    defined = worker_classes(module)
    matching = [c for c in defined if c.queue == queue]
    if len(matching) == 1:
        return matching[0]
    if len(matching) > 1:
        names = ", ".join(c.__name__ for c in matching)
        raise WorkerError(f"{path} defines several workers for queue {queue!r} ({names}); keep one or name it {wanted}")
    if defined:
        found = ", ".join(f"{c.__name__} (queue {c.queue!r})" for c in defined)
        raise WorkerError(
            f"{path} defines {found} but no worker for queue {queue!r}: "
            f"name the class {wanted} or set its queue = {queue!r}"
        )
    return None  # no worker class at all: a module of plain functions (function jobs)


def _from_entry_points(queue: str) -> type[Worker] | None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name != queue:
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            raise WorkerError(
                f"cannot load entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}): {error_text(exc)}"
            ) from exc
        if not (isinstance(obj, type) and issubclass(obj, Worker)) or inspect.isabstract(obj):
            raise WorkerError(
                f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}) is {obj!r}, not a Worker subclass"
            )
        return obj
    return None


def find_worker_class(queue: str, config: Config | None = None) -> tuple[type[Worker] | None, list[str]]:
    """The per-type worker class of ``queue``, or None; and the places searched, in order.

    Raises :class:`WorkerError` when a candidate exists but is broken (fails to import,
    defines workers for other queues only, several matches).
    """
    validate_queue_name(queue)
    file_name = worker_file_name(queue)
    searched: list[str] = []
    for folder in workers_path(config):
        path = folder / file_name
        if not path.is_file():
            searched.append(f"{path} (no such file)")
            continue
        found = _from_file(queue, path)
        if found is not None:
            return found, searched
        searched.append(f"{path} (no Worker subclass)")
    found = _from_entry_points(queue)
    if found is not None:
        return found, searched
    searched.append(f"entry point group {ENTRY_POINT_GROUP!r} (no entry point named {queue!r})")
    return None, searched


def load_worker(
    queue: str, config: Config | None = None, *, function_jobs: bool = True, manager: QueueManager | None = None
) -> Worker:
    """An instance of the worker of ``queue``, with ``queue`` set on it.

    A queue with an ``[amqp.QUEUE]`` section is an AMQP outbox: its worker is the built-in
    :class:`~queue_engine.amqp.AmqpPublisher` (it needs ``manager``), whatever else exists.
    Without a per-type worker: the REST hook worker when ``manager`` is given and the queue
    has listeners (queue meta ``"hooks"``); else the built-in function-job worker when
    ``function_jobs`` is true, else :class:`WorkerError` listing every place searched.
    """
    outbox = _outbox(queue, config, manager)
    if outbox is not None:
        return outbox
    cls, searched = find_worker_class(queue, config)
    if cls is None and manager is not None and _has_hooks(manager, queue):
        from .hooks import HookWorker

        hook_worker = HookWorker(manager, config)
        hook_worker.queue = queue
        return hook_worker
    if cls is None:
        where = "; ".join(searched)
        if not function_jobs:
            raise WorkerError(
                f"no worker for queue {queue!r}: looked for {worker_file_name(queue)} "
                f"(class {worker_class_name(queue)} or a Worker with queue = {queue!r}) in: {where}"
            )
        from .jobs import FunctionJobWorker

        worker: Worker = FunctionJobWorker(searched=searched)
    else:
        try:
            worker = cls()
        except Exception as exc:
            raise WorkerError(f"cannot create worker {cls.__module__}.{cls.__qualname__}: {error_text(exc)}") from exc
    worker.queue = queue
    return worker


def _outbox(queue: str, config: Config | None, manager: QueueManager | None) -> Worker | None:
    if config is None or config.find_section(f"amqp.{queue}") is None:
        return None  # pika is imported only for configured outboxes
    from .amqp import AmqpPublisher, outbox_settings
    from .retry import backoff_from_config
    from .worker import worker_section

    settings = outbox_settings(config, queue)
    assert settings is not None
    if manager is None:
        raise WorkerError(f"queue {queue!r} is an AMQP outbox ([amqp.{queue}]): it is published by "
                          "`qengine work` or a daemon, not in direct mode")
    section, prefix = worker_section(config, queue)  # the connection retries follow [worker.QUEUE] too
    return AmqpPublisher(manager, settings, backoff=backoff_from_config(section, prefix))


def _has_hooks(manager: QueueManager, queue: str) -> bool:
    try:
        return bool(manager.queue_meta(queue).get("hooks"))
    except QueueNotFound:
        return False
