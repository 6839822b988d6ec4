"""Daemons: a class per long-running job, as in the original ``/daemon/daemons/<name>Daemon``.

A daemon subclasses :class:`Daemon` and implements three methods::

    class AnprDaemon(Daemon):
        def execute_start(self):      # one iteration; may return how many messages it handled
            ...
        def execute_stop(self):       # once, when the daemon stops
            ...
        def get_sleep_time(self):     # seconds to wait before the next iteration
            return 5

A ported class may use the original camelCase names instead (``executeStart``,
``executeStop``, ``getSleepTime``): the base class's snake_case methods call them. The
rule, per method: a snake_case override wins; else the camelCase method is called; else the
base default applies (``execute_stop`` does nothing, ``get_sleep_time`` returns
:attr:`Daemon.sleep_time`). ``execute_start`` or ``executeStart`` is required: a class with
neither is refused with :class:`~queue_engine.errors.WorkerError`.

:class:`WorkerDaemon` hosts the workers of one or more queues. :class:`DaemonLoop` runs a
daemon: iterations, sleeps that wake up on a signal, graceful stop, reload, status.
:func:`find_daemon` locates a daemon by name (``anpr`` -> ``anpr.py`` in ``[daemon]
daemonsPath``, class ``AnprDaemon``; else a worker whose queue is ``anpr``, ignoring case).
Process-level concerns (pidfile, state file, logs, detaching) live in
:mod:`queue_engine.service`; ``--processes N`` in :mod:`queue_engine.supervisor`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import platformdirs

from .config import APP_NAME, Config
from .errors import ConfigurationError, WorkerError
from .manager import QueueManager
from .message import validate_queue_name
from .worker import error_text

__all__ = [
    "DAEMON_KEYS",
    "Daemon",
    "DaemonLoop",
    "DaemonSettings",
    "DaemonSpec",
    "LoopState",
    "WorkerDaemon",
    "daemon_class_name",
    "daemon_file_name",
    "daemon_settings",
    "daemons_path",
    "find_daemon",
    "validate_daemon_name",
]

logger = logging.getLogger("qengine.daemon")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Longest a sleep between iterations goes without looking at the signal flags.
_TICK = 0.05
#: Wait after a failed iteration: doubles from the first value up to the second.
_ERROR_BACKOFF = (1.0, 30.0)

#: Keys of ``[daemon]``, as written in config.ini (case-insensitive).
DAEMON_KEYS = (
    "daemonsPath", "pidDir", "logDir", "logMaxBytes", "logBackups", "heartbeatTimeout", "stopTimeout", "sleep",
)
#: Keys of a ``[daemon.NAME]`` section.
DAEMON_NAME_KEYS = ("queues", "processes", "sleep")


def validate_daemon_name(name: object) -> str:
    """Return ``name`` if it is a valid daemon name (the rule of queue names), else raise WorkerError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise WorkerError(
            f"invalid daemon name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def daemon_file_name(name: str) -> str:
    """``anpr`` -> ``anpr.py``; ``send-mail`` -> ``send_mail.py``."""
    from .loader import file_name

    return file_name(validate_daemon_name(name))


def daemon_class_name(name: str) -> str:
    """``anpr`` -> ``AnprDaemon``; ``send-mail`` -> ``SendMailDaemon``."""
    from .loader import class_name

    return class_name(validate_daemon_name(name), "Daemon")


# -- the class ------------------------------------------------------------------------------
def _overrides(cls: type, name: str) -> bool:
    """True when ``cls`` defines ``name`` somewhere below :class:`Daemon`."""
    for klass in cls.__mro__:
        if klass is Daemon:
            return False
        if name in vars(klass):
            return True
    return False


class Daemon:
    """Base class of daemons. Subclasses are created with no arguments.

    Before the first iteration the loop sets :attr:`name`, :attr:`config` and :attr:`log`,
    then calls :meth:`setup`. The methods run in the daemon's main thread, one at a time.
    An exception from :meth:`execute_start` is logged and recorded as the last error; the
    daemon keeps going after a backoff (1 s doubling to 30 s while iterations keep failing).
    """

    #: Seconds between iterations when neither ``get_sleep_time`` nor ``getSleepTime`` is defined.
    sleep_time: float = 1.0
    #: The daemon's name (``anpr``); set by the loop.
    name: str = ""
    #: The configuration the daemon runs with; replaced on SIGHUP (see :meth:`reload`).
    config: Config | None = None
    #: Queues this daemon consumes, shown by ``qengine daemon status``.
    queues: tuple[str, ...] = ()
    #: A logger named ``qengine.daemon.<name>``; set by the loop.
    log: logging.Logger = logger
    _stop_requested: bool = False

    @classmethod
    def check_class(cls) -> None:
        """Raise WorkerError unless the class can run: it needs execute_start or executeStart."""
        if not _overrides(cls, "execute_start") and not callable(getattr(cls, "executeStart", None)):
            raise WorkerError(
                f"daemon class {cls.__module__}.{cls.__qualname__} defines neither execute_start nor executeStart"
            )

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for: an ``execute_start`` that loops should return soon."""
        return self._stop_requested

    def stop(self) -> None:
        """Ask the loop to stop after the current iteration, as SIGTERM does (``execute_stop`` runs)."""
        self._stop_requested = True

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Called once in the daemon process before the first iteration (open connections here)."""

    def execute_start(self) -> Any:
        """One iteration. An int return value (or True) counts as messages processed."""
        method = getattr(self, "executeStart", None)
        if method is None:
            raise WorkerError(f"{type(self).__name__} defines neither execute_start nor executeStart")
        return method()

    def execute_stop(self) -> None:
        """Called once when the daemon stops (after the last iteration finished)."""
        method = getattr(self, "executeStop", None)
        if method is not None:
            method()

    def get_sleep_time(self) -> float:
        """Seconds to wait after an iteration before the next one (>= 0)."""
        method = getattr(self, "getSleepTime", None)
        if method is not None:
            return float(method())
        return float(self.sleep_time)

    def reload(self, config: Config) -> None:
        """SIGHUP: take the new configuration. Called between iterations; the default stores it."""
        self.config = config

    def status(self) -> dict[str, Any]:
        """Extra JSON-safe fields for ``qengine daemon status`` and SIGUSR1 (default: none)."""
        return {}

    def longest_job(self) -> float | None:
        """Seconds the longest single iteration may take, if known (sizes the stop timeouts)."""
        return None


class WorkerDaemon(Daemon):
    """Hosts the workers of ``queues``: each iteration processes one ready message; sleeps when idle.

    ``sleep`` is the idle wait. A ``manager`` given here is used as is and not closed;
    otherwise one is built from :attr:`config` in :meth:`setup` and closed at stop. Workers
    are loaded in :meth:`setup` (a missing or broken one fails the start) and rebuilt by
    :meth:`reload` with the new configuration.
    """

    def __init__(self, queues: Sequence[str], *, sleep: float = 1.0, manager: QueueManager | None = None) -> None:
        if isinstance(queues, str):
            queues = [queues]
        self.queues = tuple(dict.fromkeys(validate_queue_name(q) for q in queues))
        if not self.queues:
            raise WorkerError("a WorkerDaemon needs at least one queue")
        if isinstance(sleep, bool) or not isinstance(sleep, (int, float)) or not (math.isfinite(sleep) and sleep >= 0):
            raise WorkerError(f"invalid sleep {sleep!r}: a finite number of seconds >= 0")
        self.sleep = float(sleep)
        self._given_manager = manager
        self.manager: QueueManager | None = manager
        self.runner: Any = None
        self._idle = False

    def _build(self, config: Config | None, queues: Sequence[str]) -> tuple[QueueManager, Any]:
        """A manager and a runner for ``queues`` under ``config``; nothing is kept when it raises."""
        from .factory import QueueFactory
        from .runner import WorkerRunner

        manager = self._given_manager or QueueFactory.get_queue_manager(config)
        try:
            runner = WorkerRunner(manager, list(queues), config=config or manager.config, sleep=0)
        except BaseException:
            if manager is not self._given_manager:
                manager.close()
            raise
        return manager, runner

    def setup(self) -> None:
        self.manager, self.runner = self._build(self.config, self.queues)
        self._log_hosting()

    def _log_hosting(self) -> None:
        workers = ", ".join(f"{q}={h.worker.name}" for q, h in self.runner.handlers.items())
        self.log.info("hosting %s", workers)

    def execute_start(self) -> int:
        did = bool(self.runner.run_once())
        self._idle = not did
        return 1 if did else 0

    def get_sleep_time(self) -> float:
        return self.sleep if self._idle else 0.0

    def execute_stop(self) -> None:
        self._close()

    def reload(self, config: Config) -> None:
        """Rebuild the workers with ``config``; a daemon named in ``[daemon.NAME] queues`` takes
        the queue list and idle sleep from the new config too. When the rebuild raises, the
        previous manager and workers stay in place."""
        spec = find_daemon(self.name, config) if self.name else None
        queues, sleep = (spec.queues, spec.sleep) if spec is not None and spec.kind == "worker" else (
            self.queues, self.sleep)
        manager, runner = self._build(config, queues)
        if manager is not self.manager:
            self._close()
        self.manager, self.runner, self.config, self.queues, self.sleep = manager, runner, config, queues, sleep
        self._log_hosting()

    def status(self) -> dict[str, Any]:
        return {"workers": {q: h.worker.name for q, h in self.runner.handlers.items()} if self.runner else {}}

    def longest_job(self) -> float | None:
        if self.runner is None:
            return None
        limits = [h.settings.time_limit for h in self.runner.handlers.values() if h.settings.time_limit]
        return max(limits) if limits else None

    def _close(self) -> None:
        manager, self.runner = self.manager, None
        if self._given_manager is None and manager is not None:
            self.manager = None
            manager.close()


# -- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class DaemonSettings:
    """``[daemon]`` settings, resolved (paths absolute). ``None`` timeouts mean "derive"."""

    daemons_path: tuple[Path, ...]
    pid_dir: Path
    log_dir: Path
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    heartbeat_timeout: float | None = None
    stop_timeout: float | None = None
    sleep: float = 1.0
    #: Per-daemon ``[daemon.NAME]`` sections: name (as written) -> key -> raw value.
    sections: dict[str, dict[str, str]] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, str]:
        """The keys of ``[daemon.NAME]``, matched exactly or else case-insensitively."""
        if name in self.sections:
            return self.sections[name]
        found = [v for k, v in self.sections.items() if k.lower() == name.lower()]
        return found[0] if len(found) == 1 else {}


def _default_pid_dir() -> Path:
    # /run/user/<uid> exists only in a login session; a service account often has none, and
    # platformdirs then warns and falls back to a shared /tmp folder: use the state dir.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime = Path(platformdirs.user_runtime_dir(APP_NAME))
    if not caught and runtime.parent.is_dir() and os.access(runtime.parent, os.W_OK | os.X_OK):
        return runtime
    return Path(platformdirs.user_state_dir(APP_NAME))


def _source(config: Config | None) -> str:
    return str(config.source) if config is not None and config.source is not None else "configuration"


def _number(where: str, raw: str, *, integer: bool, minimum: float, above: bool = False) -> Any:
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigurationError(f"{where} = {raw!r} is not {kind}") from None
    if not math.isfinite(value) or value < minimum or (above and value <= minimum):
        raise ConfigurationError(f"{where} = {raw!r} must be {'>' if above else '>='} {minimum:g}")
    return value


def daemon_settings(config: Config | None) -> DaemonSettings:
    """Read and validate ``[daemon]`` and the ``[daemon.NAME]`` sections.

    Relative paths are relative to the config file's folder (the current directory without
    one). Raises :class:`ConfigurationError` naming the file, section and key.
    """
    from .loader import config_paths

    source = _source(config)
    base = config.source.parent if config is not None and config.source is not None else Path.cwd()
    raw: dict[str, str] = {}
    sections: dict[str, dict[str, str]] = {}
    if config is not None:
        parser = config.parser
        canonical = {k.lower(): k for k in DAEMON_KEYS}
        if parser.has_section("daemon"):
            for key, value in parser.items("daemon"):
                known = canonical.get(key.lower())
                if known is None:
                    raise ConfigurationError(f"{source}: unknown key [daemon] {key}; valid: {', '.join(DAEMON_KEYS)}")
                raw[known] = value.strip()
        per_name = {k.lower(): k for k in DAEMON_NAME_KEYS}
        for section in parser.sections():
            if not section.lower().startswith("daemon."):
                continue
            values: dict[str, str] = {}
            for key, value in parser.items(section):
                known = per_name.get(key.lower())
                if known is None:
                    raise ConfigurationError(
                        f"{source}: unknown key [{section}] {key}; valid: {', '.join(DAEMON_NAME_KEYS)}"
                    )
                values[known] = value.strip()
            sections[section[len("daemon."):]] = values

    def path(key: str, default: Callable[[], Path]) -> Path:
        text = raw.get(key, "")
        if not text:
            return default()
        if "\x00" in text:
            raise ConfigurationError(f"{source}: [daemon] {key} = {text!r} is not a usable path")
        value = Path(os.path.expanduser(os.path.expandvars(text)))
        return value if value.is_absolute() else (base / value).resolve()

    def number(key: str, default: Any, **kw: Any) -> Any:
        return _number(f"{source}: [daemon] {key}", raw[key], **kw) if raw.get(key) else default

    settings = DaemonSettings(
        daemons_path=tuple(p.resolve() for p in config_paths(config, "daemon", "daemonsPath", "daemons")),
        pid_dir=path("pidDir", _default_pid_dir),
        log_dir=path("logDir", lambda: Path(platformdirs.user_log_dir(APP_NAME))),
        log_max_bytes=number("logMaxBytes", 10 * 1024 * 1024, integer=True, minimum=0),
        log_backups=number("logBackups", 5, integer=True, minimum=0),
        heartbeat_timeout=number("heartbeatTimeout", None, integer=False, minimum=0, above=True),
        stop_timeout=number("stopTimeout", None, integer=False, minimum=0, above=True),
        sleep=number("sleep", 1.0, integer=False, minimum=0),
        sections=sections,
    )
    return settings


# -- finding a daemon -----------------------------------------------------------------------
@dataclass(frozen=True)
class DaemonSpec:
    """What ``find_daemon`` found: a daemon class in a file, or the queues a WorkerDaemon hosts."""

    name: str
    #: ``"class"`` (a Daemon subclass from daemonsPath) or ``"worker"`` (a WorkerDaemon).
    kind: str
    cls: type[Daemon] | None
    queues: tuple[str, ...]
    #: The file the class or the worker came from (for messages).
    source: str
    #: Number of worker processes configured in ``[daemon.NAME] processes`` (1: no supervisor).
    processes: int = 1
    #: Idle sleep of a WorkerDaemon: ``[daemon.NAME] sleep``, else ``[daemon] sleep``.
    sleep: float = 1.0
    #: ``[daemon.NAME] sleep`` when given: set as the ``sleep_time`` of a daemon class.
    sleep_override: float | None = None

    def create(self) -> Daemon:
        """A new instance. Raises WorkerError when the class cannot be created."""
        if self.kind == "worker":
            return WorkerDaemon(self.queues, sleep=self.sleep)
        assert self.cls is not None
        try:
            instance = self.cls()
        except Exception as exc:
            raise WorkerError(f"cannot create daemon {self.cls.__qualname__} from {self.source}: {error_text(exc)}") \
                from exc
        if self.sleep_override is not None:
            instance.sleep_time = self.sleep_override
        return instance


def daemons_path(config: Config | None) -> list[Path]:
    """The folders of ``[daemon] daemonsPath`` (default: ``daemons`` next to the config file)."""
    return list(daemon_settings(config).daemons_path)


def _daemon_class(name: str, path: Path) -> type[Daemon] | None:
    from .loader import load_worker_file

    module = load_worker_file(path, kind="daemon")
    wanted = daemon_class_name(name)
    named = getattr(module, wanted, None)
    if isinstance(named, type):
        if not issubclass(named, Daemon):
            raise WorkerError(f"{path}: {wanted} must subclass queue_engine.daemon.Daemon")
        named.check_class()
        return named
    defined = [
        obj for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Daemon) and obj.__module__ == module.__name__
        and not inspect.isabstract(obj)
    ]
    if len(defined) == 1:
        defined[0].check_class()
        return defined[0]
    if defined:
        names = ", ".join(c.__name__ for c in defined)
        raise WorkerError(f"{path} defines several daemons ({names}); name the one to run {wanted}")
    return None


def _worker_queue(name: str, config: Config | None, searched: list[str]) -> tuple[str, str] | None:
    """The queue (as the worker spells it) and file of a worker whose queue is ``name``, ignoring case."""
    from .loader import find_worker_class, load_worker_file, worker_class_name, worker_classes, workers_path

    file = daemon_file_name(name)  # daemon names follow the queue-name rule: ``name`` is a valid queue
    for folder in workers_path(config):
        path = folder / file
        if not path.is_file():
            searched.append(f"{path} (no such worker file)")
            continue
        module = load_worker_file(path)
        wanted = worker_class_name(name).lower()
        classes = worker_classes(module)
        if not classes:
            return name, str(path)  # a module of function jobs for queue ``name``
        for cls in classes:
            if cls.queue.lower() == name.lower() or (not cls.queue and cls.__name__.lower() == wanted):
                return cls.queue or name, str(path)
        searched.append(f"{path} (no Worker for queue {name!r})")
    plugin, places = find_worker_class(name, config)  # entry points, exact name
    if plugin is not None:
        return name, f"{plugin.__module__}.{plugin.__qualname__}"
    searched.extend(p for p in places if "entry point" in p)
    return None


def find_daemon(name: str, config: Config | None) -> DaemonSpec:
    """The daemon called ``name``; raises WorkerError listing every place searched when none.

    Order: ``[daemon.NAME] queues`` (a WorkerDaemon over those queues); the file
    ``daemon_file_name(name)`` in each folder of ``[daemon] daemonsPath`` (class
    ``daemon_class_name(name)``, or the only Daemon subclass defined there); a worker whose
    queue is ``name`` ignoring case (``anpr`` hosts the worker of queue ``ANPR``).
    """
    validate_daemon_name(name)
    settings = daemon_settings(config)
    section = settings.section(name)
    where = f"{_source(config)}: [daemon.{name}]"
    processes = _number(f"{where} processes", section["processes"], integer=True, minimum=1) \
        if section.get("processes") else 1
    override = _number(f"{where} sleep", section["sleep"], integer=False, minimum=0) if section.get("sleep") else None
    sleep = override if override is not None else settings.sleep
    if section.get("queues"):
        queues = tuple(q.strip() for q in re.split(r"[,\s]+", section["queues"]) if q.strip())
        try:
            for q in queues:
                validate_queue_name(q)
        except Exception as exc:
            raise ConfigurationError(f"{where} queues = {section['queues']!r}: {exc}") from None
        return DaemonSpec(name, "worker", None, queues, where, processes, sleep)
    searched: list[str] = []
    file = daemon_file_name(name)
    for folder in settings.daemons_path:
        path = folder / file
        if not path.is_file():
            searched.append(f"{path} (no such file)")
            continue
        cls = _daemon_class(name, path)
        if cls is not None:
            return DaemonSpec(name, "class", cls, tuple(cls.queues), str(path), processes, sleep, override)
        searched.append(f"{path} (no Daemon subclass)")
    found = _worker_queue(name, config, searched)
    if found is not None:
        queue, source = found
        return DaemonSpec(name, "worker", None, (queue,), source, processes, sleep)
    raise WorkerError(
        f"no daemon {name!r}: looked for {file} (class {daemon_class_name(name)}) and for a worker of queue "
        f"{name!r} in: {'; '.join(searched)}"
    )


# -- the loop -------------------------------------------------------------------------------
@dataclass
class LoopState:
    """What the loop knows about itself; written to the state file and logged on SIGUSR1."""

    status: str = "starting"
    started_at: float = field(default_factory=time.time)
    iterations: int = 0
    messages_processed: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    sleep_time: float = 0.0
    reloads: int = 0
    busy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "started_at": self.started_at,
            "iterations": self.iterations,
            "messages_processed": self.messages_processed,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "sleep_time": self.sleep_time,
            "reloads": self.reloads,
            "busy": self.busy,
        }


class _ErrorRecorder(logging.Handler):
    """Keeps the last ERROR record of the ``qengine`` loggers as the loop's last error."""

    def __init__(self, state: LoopState) -> None:
        super().__init__(logging.ERROR)
        self.state = state

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.state.last_error = text.splitlines()[0] if text else record.levelname
        self.state.last_error_at = record.created


class DaemonLoop:
    """Runs ``daemon`` until stopped: ``setup``, then iterations and sleeps, then ``execute_stop``.

    Signals (installed by :meth:`run` in the main thread) only set flags; the loop acts on
    them between iterations, and sleeps wake up within ``_TICK``:

    * SIGTERM, SIGINT: stop after the current iteration; ``execute_stop`` runs; :meth:`run`
      returns 0. A second one while daemon code runs ends the process at once with status
      128 + signal (``on_immediate_stop`` runs first); an unacked message is redelivered.
      With ``handle_sigint=False`` SIGINT is left alone (a worker process under a supervisor:
      Ctrl-C reaches the whole process group, and only the supervisor decides).
    * SIGHUP: ``reload_config()`` and ``daemon.reload(config)`` before the next iteration.
    * SIGUSR1: log a status line.

    The handlers never log nor run daemon code: a notice of a stop signal is one line written
    with ``os.write`` to file descriptor 2 (the log file of a detached daemon).
    ``on_immediate_stop(signum)`` runs inside the handler, so it must not log, take locks or
    call daemon code either.

    ``heartbeat(force)`` is called after each iteration, during sleeps and at each status
    change (``force=True``); the callee rate-limits. ``should_stop()`` is polled like a flag.
    """

    def __init__(
        self,
        daemon: Daemon,
        *,
        name: str,
        config: Config | None,
        heartbeat: Callable[[bool], None] | None = None,
        reload_config: Callable[[], Config] | None = None,
        on_immediate_stop: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        handle_sigint: bool = True,
    ) -> None:
        self.daemon = daemon
        self.name = name
        self.state = LoopState()
        self._heartbeat = heartbeat
        self._reload_config = reload_config
        self._on_immediate_stop = on_immediate_stop
        self._should_stop = should_stop
        self._handle_sigint = handle_sigint
        self._stop_signals = 0
        self._reload = False
        self._report = False
        daemon.name = name
        daemon.config = config
        daemon.log = logging.getLogger(f"qengine.daemon.{name}")

    # -- flags ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current iteration. Safe from a signal handler or another thread."""
        self._stop_signals = max(self._stop_signals, 1)
        self.daemon._stop_requested = True

    @property
    def stopping(self) -> bool:
        if self._stop_signals == 0 and self.daemon._stop_requested:  # Daemon.stop() from daemon code
            self._stop_signals = 1
        return self._stop_signals > 0

    def _notice(self, level: str, text: str) -> None:
        """One log-formatted line to fd 2 with a single write(): no logging lock, no buffer."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now * 1000) % 1000:03d}"
        line = f"{stamp} {level} {logger.name}[{os.getpid()}]: daemon {self.name} (pid {os.getpid()}) {text}\n"
        try:
            os.write(2, line.encode("utf-8", "replace"))
        except OSError:  # a closed stderr must not break the stop
            pass

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: sets flags only, except a second stop signal during daemon code."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop_signals += 1
            self.daemon._stop_requested = True
            sig = signal.Signals(signum).name
            if self._stop_signals == 1:
                self._notice("INFO", f"got {sig}: stopping after the current iteration")
            elif self.state.busy:
                self._notice("WARNING", f"got {sig} again: stopping at once")
                if self._on_immediate_stop is not None:
                    self._on_immediate_stop(signum)
                os._exit(128 + signum)  # as if killed: an unacked message comes back when its lease ends
        elif signum == signal.SIGHUP:
            self._reload = True
        elif signum == signal.SIGUSR1:
            self._report = True

    @contextmanager
    def signals(self) -> Iterator[None]:
        """Install :meth:`handle_signal` for TERM, INT (unless ``handle_sigint=False``), HUP, USR1
        (main thread only); restore on exit."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        wanted = [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1]
        if self._handle_sigint:
            wanted.append(signal.SIGINT)
        previous = {sig: signal.signal(sig, self.handle_signal) for sig in wanted}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- the loop ---------------------------------------------------------------------------
    def _beat(self, force: bool = False) -> None:
        if self._heartbeat is not None:
            try:
                self._heartbeat(force)
            except Exception:  # a full disk must not stop the work
                logger.exception("daemon %s: cannot write its state", self.name)

    def _set_status(self, status: str) -> None:
        self.state.status = status
        self._beat(True)

    def _poll_flags(self) -> None:
        if self._should_stop is not None and not self.stopping and self._should_stop():
            self.request_stop()
        if self._report:
            self._report = False
            self.log_status()
        if self._reload and not self.stopping:
            self._reload = False
            self._do_reload()

    def log_status(self) -> None:
        """Write one ``status:`` line with the loop state and the daemon's fields to the log."""
        fields = {"name": self.name, "pid": os.getpid(), **self.state.to_dict(),
                  "uptime": round(time.time() - self.state.started_at, 3)}
        try:
            fields.update(self.daemon.status())
        except Exception as exc:
            fields["status_error"] = error_text(exc)
        logger.info("status: %s", json.dumps(fields, sort_keys=True, default=str))

    def _do_reload(self) -> None:
        if self._reload_config is None:
            logger.info("daemon %s: SIGHUP ignored, no configuration file to reload", self.name)
            return
        try:
            config = self._reload_config()
            self.state.busy = True
            try:
                self.daemon.reload(config)
            finally:
                self.state.busy = False
        except Exception as exc:
            logger.error("daemon %s: reload failed, the previous configuration stays: %s", self.name, error_text(exc))
            return
        self.state.reloads += 1
        logger.info("daemon %s reloaded its configuration", self.name)
        self._beat(True)

    def _sleep(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while True:
            self._poll_flags()
            if self.stopping:
                return
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(_TICK, left))
            self._beat()

    def run(self) -> int:
        """Run until stopped; return 0. An exception from ``setup`` propagates (the start failed)."""
        recorder = _ErrorRecorder(self.state)
        logging.getLogger("qengine").addHandler(recorder)
        try:
            with self.signals():
                return self._run()
        finally:
            logging.getLogger("qengine").removeHandler(recorder)

    def _run(self) -> int:
        daemon = self.daemon
        self.state.busy = True
        try:
            daemon.setup()
        finally:
            self.state.busy = False
        logger.info("daemon %s (pid %d, %s) started", self.name, os.getpid(), type(daemon).__name__)
        self._set_status("running")
        errors = 0
        while True:
            self._poll_flags()
            if self.stopping:
                break
            failed = False
            self.state.busy = True
            try:
                done = daemon.execute_start()
            except Exception as exc:
                failed = True
                done = None
                logger.error("daemon %s: iteration %d failed: %s", self.name, self.state.iterations + 1,
                             error_text(exc), exc_info=True)
            finally:
                self.state.busy = False
            self.state.iterations += 1
            if isinstance(done, int) and done > 0:
                self.state.messages_processed += int(done)
            delay = self._sleep_time()
            if failed:
                errors += 1
                delay = max(delay, min(_ERROR_BACKOFF[0] * 2 ** (errors - 1), _ERROR_BACKOFF[1]))
            else:
                errors = 0
            self.state.sleep_time = delay
            self._beat()
            if delay > 0:
                self._sleep(delay)
        self._set_status("stopping")
        self.state.busy = True
        try:
            daemon.execute_stop()
        except Exception as exc:
            logger.error("daemon %s: execute_stop failed: %s", self.name, error_text(exc), exc_info=True)
        finally:
            self.state.busy = False
        logger.info("daemon %s (pid %d) stopped after %d iteration(s), %d message(s)",
                    self.name, os.getpid(), self.state.iterations, self.state.messages_processed)
        return 0

    def _sleep_time(self) -> float:
        try:
            value = self.daemon.get_sleep_time()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise WorkerError(f"get_sleep_time() returned {value!r}, not a number of seconds >= 0")
            return float(value)
        except Exception as exc:
            logger.error("daemon %s: %s; sleeping %gs", self.name, error_text(exc), Daemon.sleep_time)
            return Daemon.sleep_time
