"""Daemons as system services: pidfile, state file, logs, detaching, and the control commands.

Files of daemon ``NAME`` (folders 0700, files 0600):

* ``<pidDir>/NAME.pid``: ``"<pid> <start time>"``. Created atomically (written under a
  temporary name, then linked or renamed into place) and **flock-ed for the daemon's whole
  life**. Liveness is "the lock is held", never "a process with that pid exists": a pidfile
  left by a SIGKILLed daemon is stale (its lock is free) and never blocks a start, and a
  recycled pid is never mistaken for the daemon. The start time (from ``/proc/<pid>/stat``)
  is cross-checked before a signal is sent.
* ``<pidDir>/NAME.state.json``: pid, start time, heartbeat, iterations, messages processed,
  last error, queues; rewritten atomically (tmp + rename) at most once a second and at each
  status change. Kept after a stop, so ``status`` can show the last run.
* ``<logDir>/NAME.log``: the daemon's log, rotated at ``logMaxBytes`` keeping ``logBackups``
  files. A detached daemon's stdout and stderr go there too.

:func:`run_daemon` is the body of a daemon process (``qengine daemon run``, detached or not);
:func:`start_daemon`, :func:`stop_daemon`, :func:`daemon_status`, :func:`list_daemons`,
:func:`tail_log` / :func:`follow_log` and :func:`render_unit` are what the CLI calls.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import json
import logging
import logging.handlers
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import IO, Any

from .config import Config, load_config
from .daemon import DaemonLoop, DaemonSettings, DaemonSpec, daemon_settings, find_daemon, validate_daemon_name
from .errors import QueueEngineError, ServiceError
from .process import start_ticks as proc_start_ticks
from .worker import error_text

__all__ = [
    "DaemonStatus",
    "PidFile",
    "PidInfo",
    "ServiceError",
    "ServicePaths",
    "StateFile",
    "daemon_status",
    "follow_log",
    "install_path",
    "list_daemons",
    "read_pidfile",
    "render_unit",
    "run_daemon",
    "service_paths",
    "start_daemon",
    "stop_daemon",
    "stop_timeout",
    "tail_log",
]

logger = logging.getLogger("qengine.daemon")

#: Default seconds ``stop`` and the unit files wait for a daemon with no known job length.
DEFAULT_STOP_TIMEOUT = 300.0
#: Added to the longest job to get a stop timeout (time to ack, run execute_stop, exit).
STOP_MARGIN = 30.0
#: Minimum seconds between state-file writes when nothing changed status.
STATE_INTERVAL = 1.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


# -- paths ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServicePaths:
    """Where daemon ``name`` keeps its files."""

    name: str
    pid_dir: Path
    log_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.pid_dir / f"{self.name}.pid"

    @property
    def statefile(self) -> Path:
        return self.pid_dir / f"{self.name}.state.json"

    @property
    def logfile(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def children_dir(self) -> Path:
        """State files of the worker processes under ``--processes N``."""
        return self.pid_dir / f"{self.name}.children"


def service_paths(name: str, settings: DaemonSettings) -> ServicePaths:
    return ServicePaths(validate_daemon_name(name), settings.pid_dir, settings.log_dir)


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700; raise ServiceError naming it when impossible."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceError(f"cannot create folder {str(path)!r}: {exc.strerror or exc}") from None
    return path


# -- pidfile --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PidInfo:
    """What a pidfile says, and whether its lock is held (the daemon is alive)."""

    pid: int | None
    start_ticks: int | None
    alive: bool


def _parse_pid(text: str) -> tuple[int | None, int | None]:
    parts = text.split()
    try:
        pid = int(parts[0]) if parts else None
        ticks = int(parts[1]) if len(parts) > 1 and parts[1] != "-" else None
    except ValueError:
        return None, None
    return pid, ticks


def _locked(fd: int) -> bool:
    """True when another open file description holds a lock on the file of ``fd``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def read_pidfile(path: Path) -> PidInfo | None:
    """The pidfile at ``path``, or None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        pid, ticks = _parse_pid(os.read(fd, 128).decode("ascii", "replace"))
        return PidInfo(pid, ticks, _locked(fd))
    finally:
        os.close(fd)


def remove_stale_pidfile(path: Path) -> bool:
    """Delete the pidfile at ``path`` if its lock is free; True when one was deleted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Still the file at ``path``? (Another start may have replaced it meanwhile.)
        if _same_file(fd, path):
            path.unlink()
            return True
        return False
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


#: Descriptors of the pidfiles this process holds. A process forked from a daemon (daemon
#: code calling os.fork, multiprocessing) closes them: a child that outlives the daemon must
#: not keep its lock, which would make the daemon look alive.
_HELD: set[int] = set()


def _close_held_pidfiles() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_pidfiles)

#: Seconds a start retries a pidfile lock that is taken, before concluding that a daemon holds
#: it: a ``status`` probe holds a shared lock on it for an instant.
LOCK_CONTENTION_WAIT = 1.0


class PidFile:
    """The pidfile of a running daemon: created atomically and locked until :meth:`release`.

    ``contention_wait``: seconds to retry a taken lock before reporting "already running".
    """

    def __init__(self, path: Path, *, contention_wait: float = LOCK_CONTENTION_WAIT) -> None:
        self.path = path
        self.fd: int | None = None
        self.contention_wait = contention_wait

    def acquire(self) -> None:
        """Write and lock the pidfile; raise ServiceError when a live daemon holds it.

        The content is written to a temporary file, locked, then linked to the final name
        (fails if a pidfile exists). An existing pidfile whose lock can be taken is stale:
        while holding its lock, the new one is renamed over it. Another starter that
        locked the old file meanwhile sees that it is no longer at ``path`` and retries.
        """
        pid = os.getpid()
        ticks = proc_start_ticks(pid)
        tmp = self.path.with_name(f".{self.path.name}.{pid}.{uuidlib.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{pid} {'-' if ticks is None else ticks}\n".encode("ascii"))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh inode: never contended
            while True:
                try:
                    os.link(tmp, self.path)
                    break
                except FileExistsError:
                    pass
                try:
                    old = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    if not self._lock_old(old):
                        other, _ = _parse_pid(os.read(old, 128).decode("ascii", "replace"))
                        raise ServiceError(
                            f"daemon {self.path.stem} is already running (pid {other}, pidfile {self.path})"
                        )
                    if _same_file(old, self.path):
                        logger.info("replacing the stale pidfile %s", self.path)
                        os.rename(tmp, self.path)
                        break
                finally:
                    os.close(old)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        tmp.unlink(missing_ok=True)  # after link(); rename() already moved it
        self.fd = fd
        _HELD.add(fd)

    def _lock_old(self, fd: int) -> bool:
        """LOCK_EX on an existing pidfile, retried for ``contention_wait`` seconds; False when still taken."""
        deadline = time.monotonic() + self.contention_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
            time.sleep(0.01)

    def release(self) -> None:
        """Delete the pidfile (if still ours) and drop the lock. Idempotent; plain system calls
        only (safe in a signal handler)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        _HELD.discard(fd)
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)


# -- state file -----------------------------------------------------------------------------
class StateFile:
    """A JSON file replaced atomically (tmp + rename); readers never see half of one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True, default=str)
        os.replace(tmp, self.path)

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


@dataclass
class StateWriter:
    """Writes ``base`` plus the loop's state and a heartbeat, at most once per STATE_INTERVAL unless forced."""

    file: StateFile
    base: dict[str, Any]
    loop: DaemonLoop | None = None
    _last: float = field(default=0.0, repr=False)

    def __call__(self, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not force and now - self._last < STATE_INTERVAL:
            return
        self._last = now
        data = dict(self.base)
        if self.loop is not None:
            data.update(self.loop.state.to_dict())
            if self.loop.daemon.queues:
                data["queues"] = list(self.loop.daemon.queues)
            try:
                data["daemon"] = self.loop.daemon.status()
            except Exception as exc:  # a status() bug must not stop the heartbeat
                data["daemon"] = {"status_error": error_text(exc)}
        data.update(extra)
        data["heartbeat"] = time.time()
        self.file.write(data)

    def immediate(self, **extra: Any) -> None:
        """Write the state now from a signal handler: the loop's counters only, no daemon code."""
        data = dict(self.base)
        if self.loop is not None:
            data.update(self.loop.state.to_dict())
        data.update(extra)
        data["heartbeat"] = time.time()
        try:
            self.file.write(data)
        except OSError:  # the process ends right after: nothing better to do
            pass


# -- logging --------------------------------------------------------------------------------
class LogFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file; with ``own_std`` the process's stdout/stderr follow it across rotations."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int, own_std: bool = False) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.own_std = own_std
        os.chmod(path, 0o600)

    def doRollover(self) -> None:  # noqa: N802 - logging's name
        super().doRollover()
        if self.stream is not None:
            os.chmod(self.baseFilename, 0o600)
            if self.own_std:
                # A traceback printed to stderr must land in the current log, not in NAME.log.1.
                os.dup2(self.stream.fileno(), 1)
                os.dup2(self.stream.fileno(), 2)


def _formatter() -> logging.Formatter:
    return logging.Formatter(LOG_FORMAT)


def setup_logging(handlers: list[logging.Handler]) -> None:
    """Send the ``qengine`` loggers' INFO and above to ``handlers`` (replacing earlier ones)."""
    root = logging.getLogger("qengine")
    for old in list(root.handlers):
        if getattr(old, "_qengine_service", False):
            root.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(_formatter())
        handler._qengine_service = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def open_log(paths: ServicePaths, settings: DaemonSettings, *, own_std: bool = False) -> LogFileHandler:
    ensure_dir(paths.log_dir)
    try:
        return LogFileHandler(paths.logfile, max_bytes=settings.log_max_bytes, backups=settings.log_backups,
                              own_std=own_std)
    except OSError as exc:
        raise ServiceError(f"cannot open log file {str(paths.logfile)!r}: {exc.strerror or exc}") from None


# -- the daemon process ---------------------------------------------------------------------
class _EarlySignals:
    """Remembers stop signals that arrive before the loop installs its own handlers."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop = True


def run_daemon(
    name: str,
    config: Config,
    *,
    detach: bool = False,
    processes: int | None = None,
    token: str | None = None,
    stderr: bool = True,
) -> int:
    """Run daemon ``name`` in this process until it stops; return the exit status.

    Everything that can be checked is checked before detaching, so a bad name or config is
    an exception here (the caller prints it). ``detach``: become a background process with
    python-daemon's DaemonContext (umask 077, working directory kept, stdout and stderr to
    the log). ``stderr``: also log to stderr (ignored when detaching). ``token`` marks this
    start in the state file and the log, for :func:`start_daemon`.
    """
    settings = daemon_settings(config)
    spec = find_daemon(name, config)
    count = processes if processes is not None else spec.processes
    paths = service_paths(name, settings)
    ensure_dir(paths.pid_dir)
    info = read_pidfile(paths.pidfile)
    if info is not None and info.alive:
        raise ServiceError(f"daemon {name} is already running (pid {info.pid}, pidfile {paths.pidfile})")
    handler = open_log(paths, settings, own_std=detach)
    handlers: list[logging.Handler] = [handler]
    early = _EarlySignals()
    if detach:
        import daemon as python_daemon  # type: ignore[import-untyped]  # python-daemon

        context = python_daemon.DaemonContext(
            working_directory=os.getcwd(),  # relative paths in the config keep their meaning
            umask=0o077,
            detach_process=True,
            files_preserve=[handler.stream],
            stdout=handler.stream,
            stderr=handler.stream,
            signal_map={
                signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None,
                signal.SIGTERM: early, signal.SIGINT: early, signal.SIGHUP: None, signal.SIGUSR1: None,
            },
        )
        context.open()  # the calling process exits here; this continues in the daemon
    elif stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    setup_logging(handlers)
    tag = f"start {token}" if token else "start"
    pidfile = PidFile(paths.pidfile)
    try:
        pidfile.acquire()
    except (ServiceError, OSError) as exc:
        logger.error("%s failed: %s", tag, error_text(exc) if not isinstance(exc, ServiceError) else exc)
        return 1
    state = StateFile(paths.statefile)
    base = {
        "name": name, "pid": os.getpid(), "token": token, "kind": spec.kind, "source": spec.source,
        "queues": list(spec.queues), "processes": count, "config": str(config.source) if config.source else None,
        "logfile": str(paths.logfile), "exit_code": None,
    }
    writer = StateWriter(state, base)
    code = 1
    try:
        if count > 1:
            from .supervisor import Supervisor

            supervisor = Supervisor(spec, config, paths, count, writer=writer, stderr=stderr and not detach,
                                    should_stop=lambda: early.stop)
            code = supervisor.run()
        else:
            code = _run_single(spec, config, writer, tag, early, pidfile)
    except Exception as exc:
        logger.error("%s failed: %s", tag, error_text(exc), exc_info=True)
        writer(True, status="failed", last_error=error_text(exc), last_error_at=time.time(), exit_code=1)
        return 1
    finally:
        pidfile.release()
    return code


def reload_config(config: Config) -> Config:
    """The configuration re-read from its file, with ``[daemon]`` validated (for SIGHUP)."""
    fresh = load_config(config.source) if config.source is not None else config
    daemon_settings(fresh)
    return fresh


def _run_single(spec: DaemonSpec, config: Config, writer: StateWriter, tag: str, early: _EarlySignals,
                pidfile: PidFile) -> int:
    daemon = spec.create()

    def immediate(signum: int) -> None:  # inside the signal handler: plain system calls only
        writer.immediate(status="killed", exit_code=128 + signum)
        pidfile.release()

    # ``early`` is polled by the loop, so a stop signal caught by it before the loop's own
    # handlers are installed is never lost.
    loop = DaemonLoop(
        daemon, name=spec.name, config=config, heartbeat=writer, reload_config=lambda: reload_config(loop_config()),
        on_immediate_stop=immediate, should_stop=lambda: early.stop,
    )

    def loop_config() -> Config:
        return daemon.config or config

    writer.loop = loop
    try:
        code = loop.run()
    except Exception as exc:
        logger.error("%s failed: %s", tag, error_text(exc), exc_info=True)
        writer(True, status="failed", last_error=error_text(exc), last_error_at=time.time(), exit_code=1)
        return 1
    writer(True, status="stopped", stopped_at=time.time(), exit_code=code)
    return code


# -- control: start / stop / status ---------------------------------------------------------
@dataclass(frozen=True)
class DaemonStatus:
    """What ``qengine daemon status`` shows for one daemon.

    ``state``: ``running`` (the pidfile's lock is held), ``dead`` (a pidfile whose lock is
    free: the process died without cleaning up) or ``stopped``. ``online``: ``ONLINE`` when
    running with a heartbeat younger than the heartbeat timeout, else ``OFFLINE``.
    """

    name: str
    state: str
    online: str
    pid: int | None
    started_at: float | None
    heartbeat: float | None
    heartbeat_timeout: float
    messages_processed: int | None
    iterations: int | None
    last_error: str | None
    last_error_at: float | None
    queues: list[str]
    processes: Any
    paths: ServicePaths
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def uptime(self) -> float | None:
        if self.state != "running" or self.started_at is None:
            return None
        return max(0.0, time.time() - self.started_at)

    @property
    def heartbeat_age(self) -> float | None:
        return None if self.heartbeat is None else max(0.0, time.time() - self.heartbeat)

    def to_dict(self) -> dict[str, Any]:
        def iso(value: float | None) -> str | None:
            return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc).isoformat()

        return {
            "name": self.name,
            "state": self.state,
            "status": self.online,
            "pid": self.pid,
            "started_at": iso(self.started_at),
            "uptime": None if self.uptime is None else round(self.uptime, 3),
            "heartbeat": iso(self.heartbeat),
            "heartbeat_age": None if self.heartbeat_age is None else round(self.heartbeat_age, 3),
            "heartbeat_timeout": self.heartbeat_timeout,
            "messages_processed": self.messages_processed,
            "iterations": self.iterations,
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "queues": self.queues,
            "processes": self.processes,
            "pidfile": str(self.paths.pidfile),
            "statefile": str(self.paths.statefile),
            "logfile": str(self.paths.logfile),
        }


def daemon_status(name: str, config: Config) -> DaemonStatus:
    """The status of daemon ``name`` from its pidfile (liveness) and state file (the rest)."""
    settings = daemon_settings(config)
    paths = service_paths(name, settings)
    info = read_pidfile(paths.pidfile)
    data = StateFile(paths.statefile).read() or {}
    if info is not None and info.alive:
        state = "running"
    elif info is not None:
        state = "dead"
    else:
        state = "stopped"
    pid = info.pid if info is not None else data.get("pid")
    sleep = data.get("sleep_time") or 0.0
    timeout = settings.heartbeat_timeout or max(30.0, 3 * float(sleep))
    heartbeat = data.get("heartbeat")
    online = "OFFLINE"
    if state == "running" and isinstance(heartbeat, (int, float)) and time.time() - heartbeat <= timeout:
        online = "ONLINE"
    return DaemonStatus(
        name=name, state=state, online=online, pid=pid, started_at=data.get("started_at"), heartbeat=heartbeat,
        heartbeat_timeout=timeout, messages_processed=data.get("messages_processed"),
        iterations=data.get("iterations"), last_error=data.get("last_error"),
        last_error_at=data.get("last_error_at"), queues=list(data.get("queues") or []),
        processes=data.get("children") if data.get("children") is not None else data.get("processes"),
        paths=paths, raw=data,
    )


def list_daemons(config: Config) -> list[str]:
    """Names of known daemons: files in daemonsPath, ``[daemon.NAME]`` sections, and pid/state files."""
    settings = daemon_settings(config)
    names: set[str] = set(settings.sections)
    for folder in settings.daemons_path:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))
    if settings.pid_dir.is_dir():
        for entry in settings.pid_dir.iterdir():
            for suffix in (".state.json", ".pid"):
                if entry.name.endswith(suffix) and not entry.name.startswith("."):
                    names.add(entry.name[: -len(suffix)])
    return sorted(names)


def _spawn_command() -> list[str]:
    return [sys.executable, "-m", "queue_engine"]


def _log_failure(logfile: Path, token: str) -> str | None:
    """The reason logged by the start marked ``token``, if it failed."""
    marker = f"start {token} failed: "
    try:
        with open(logfile, encoding="utf-8", errors="replace") as fh:
            lines = collections.deque(fh, maxlen=2000)
    except OSError:
        return None
    for line in reversed(lines):
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return None


def start_daemon(name: str, config: Config, *, processes: int | None = None, timeout: float = 10.0) -> DaemonStatus:
    """Start daemon ``name`` in the background; return its status once it is up.

    Up means: the pidfile is locked and the first heartbeat of this start is in the state
    file. Raises ServiceError when it is already running, or with the reason from its log
    when it fails or is not up within ``timeout`` seconds. Errors found before detaching
    (unknown daemon, bad config) are raised as themselves.
    """
    settings = daemon_settings(config)
    find_daemon(name, config)  # every check that does not need the daemon process
    paths = service_paths(name, settings)
    info = read_pidfile(paths.pidfile)
    if info is not None and info.alive:
        raise ServiceError(f"daemon {name} is already running (pid {info.pid}, pidfile {paths.pidfile})")
    token = uuidlib.uuid4().hex
    cmd = _spawn_command()
    if config.source is not None:
        cmd += ["--config", str(config.source)]
    cmd += ["daemon", "run", name, "--detach", "--token", token]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    exited = False
    try:
        while True:
            if not exited and proc.poll() is not None:
                exited = True
                if proc.returncode != 0:  # failed before detaching: the reason is on its stderr
                    text = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
                    reason = text[-1] if text else f"exit status {proc.returncode}"
                    raise ServiceError(f"daemon {name} did not start: {reason.removeprefix('Error: ')}")
            data = StateFile(paths.statefile).read() or {}
            if data.get("token") == token:
                if data.get("status") == "failed":
                    raise ServiceError(
                        f"daemon {name} failed to start: {data.get('last_error')} (log: {paths.logfile})"
                    )
                info = read_pidfile(paths.pidfile)
                if data.get("status") == "running" and info is not None and info.alive and info.pid == data.get("pid"):
                    return daemon_status(name, config)
            logged = _log_failure(paths.logfile, token)
            if logged is not None:
                raise ServiceError(f"daemon {name} failed to start: {logged} (log: {paths.logfile})")
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"daemon {name} did not report running within {timeout:g}s; see its log {paths.logfile}"
                )
            time.sleep(0.05)
    finally:
        proc.stderr.close()
        if not exited:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:  # pragma: no cover - the detaching process exits at once
                pass


def stop_timeout(config: Config, spec: DaemonSpec | None = None) -> float:
    """Seconds to wait for a graceful stop: ``[daemon] stopTimeout``, else the longest worker
    ``time_limit`` plus STOP_MARGIN, else DEFAULT_STOP_TIMEOUT."""
    settings = daemon_settings(config)
    if settings.stop_timeout is not None:
        return settings.stop_timeout
    limits: list[float] = []
    if spec is not None:
        from .loader import load_worker
        from .worker import resolve_settings

        for queue in spec.queues:
            try:
                worker = load_worker(queue, config)
                limit = resolve_settings(worker, config, queue).time_limit
            except QueueEngineError:
                continue
            if limit:
                limits.append(limit)
    return max(limits) + STOP_MARGIN if limits else DEFAULT_STOP_TIMEOUT


def _wait_dead(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        info = read_pidfile(path)
        if info is None or not info.alive:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def signal_daemon(name: str, config: Config, signum: int) -> int:
    """Send ``signum`` to the running daemon ``name``; return its pid. ServiceError when not running."""
    paths = service_paths(name, daemon_settings(config))
    info = read_pidfile(paths.pidfile)
    if info is None or not info.alive or info.pid is None:
        raise ServiceError(f"daemon {name} is not running")
    _check_identity(name, info)
    try:
        os.kill(info.pid, signum)
    except ProcessLookupError:  # it exited after the pidfile was read
        raise ServiceError(f"daemon {name} is not running (pid {info.pid} has exited)") from None
    return info.pid


def _check_identity(name: str, info: PidInfo) -> None:
    assert info.pid is not None
    if info.start_ticks is not None:
        ticks = proc_start_ticks(info.pid)
        if ticks is not None and ticks != info.start_ticks:
            raise ServiceError(
                f"daemon {name}: pid {info.pid} now belongs to another process (start time differs); not signalled"
            )


def stop_daemon(name: str, config: Config, *, timeout: float | None = None, force: bool = False) -> str:
    """SIGTERM daemon ``name`` and wait until it has exited; return what happened, as a phrase.

    After ``timeout`` seconds (default :func:`stop_timeout`): with ``force``, SIGKILL (the
    worker processes too); else ServiceError saying it is still running. A stale pidfile is
    removed. Stopping a daemon that is not running is not an error.
    """
    settings = daemon_settings(config)
    paths = service_paths(name, settings)
    info = read_pidfile(paths.pidfile)
    if info is None:
        return "not running"
    if not info.alive or info.pid is None:
        remove_stale_pidfile(paths.pidfile)
        return f"not running (removed the stale pidfile of pid {info.pid})"
    _check_identity(name, info)
    pid = info.pid
    if timeout is None:
        try:
            spec: DaemonSpec | None = find_daemon(name, config)
        except QueueEngineError:
            spec = None
        timeout = stop_timeout(config, spec)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited after the pidfile was read
        return f"not running (pid {pid} has exited)"
    if _wait_dead(paths.pidfile, timeout):
        return f"stopped (pid {pid})"
    if not force:
        raise ServiceError(
            f"daemon {name} (pid {pid}) is still running {timeout:g}s after SIGTERM (its current job has not "
            "finished); wait and stop again, or use --force"
        )
    children = (StateFile(paths.statefile).read() or {}).get("children") or []
    _kill(pid)
    for child in children:
        if isinstance(child, dict) and isinstance(child.get("pid"), int):
            ticks = child.get("start_ticks")
            if ticks is None or proc_start_ticks(child["pid"]) == ticks:
                _kill(child["pid"])
    _wait_dead(paths.pidfile, 30.0)
    remove_stale_pidfile(paths.pidfile)
    state = StateFile(paths.statefile)
    data = state.read()
    if data is not None and data.get("pid") == pid:
        data.update(status="killed", stopped_at=time.time())
        state.write(data)
    return f"killed (pid {pid}, still running {timeout:g}s after SIGTERM)"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- logs -----------------------------------------------------------------------------------
def tail_log(name: str, config: Config, lines: int = 50) -> list[str]:
    """The last ``lines`` lines of the daemon's log (without newlines); ServiceError when there is none."""
    path = service_paths(name, daemon_settings(config)).logfile
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in collections.deque(fh, maxlen=lines)] if lines else []
    except FileNotFoundError:
        raise ServiceError(f"daemon {name} has no log yet ({path})") from None
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {exc.strerror or exc}") from None


def follow_log(name: str, config: Config, *, lines: int = 0, interval: float = 0.2) -> Iterator[str]:
    """The last ``lines`` lines of the daemon's log, then every line appended, forever; follows rotation."""
    path = service_paths(name, daemon_settings(config)).logfile
    fh: IO[str] | None = None
    ident: tuple[int, int] | None = None
    first = True
    try:
        while True:
            if fh is None:
                try:
                    fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - kept open across yields
                except FileNotFoundError:
                    first = False
                    time.sleep(interval)
                    continue
                st = os.fstat(fh.fileno())
                ident = (st.st_dev, st.st_ino)
                if first:
                    first = False
                    # The tail and the rest come from one open file: no line in between is lost.
                    for old in collections.deque(fh, maxlen=lines) if lines else ():
                        yield old.rstrip("\n")
                    if not lines:
                        fh.seek(0, os.SEEK_END)
            line = fh.readline()
            if line:
                yield line.rstrip("\n")
                continue
            try:
                st = os.stat(path)
                rotated = (st.st_dev, st.st_ino) != ident
            except FileNotFoundError:
                rotated = True
            if rotated:
                fh.close()
                fh = None  # the rest of the old file was read: a rotated-in file is read from its start
                continue
            time.sleep(interval)
    finally:
        if fh is not None:
            fh.close()


# -- install --------------------------------------------------------------------------------
def qengine_executable() -> list[str]:
    """The command that runs qengine: the ``qengine`` script next to this Python, else ``python -m``."""
    script = Path(sys.executable).parent / "qengine"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "queue_engine"]


def _systemd_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "/._-+:=@,%" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(
    name: str, config: Config, *, kind: str, user: bool = False, processes: int | None = None
) -> tuple[str, str]:
    """``(file name, text)`` of a systemd unit (``kind="systemd"``) or supervisord program
    block (``kind="supervisor"``) running ``qengine daemon run NAME`` in the foreground."""
    spec = find_daemon(name, config)
    if config.source is None:
        raise ServiceError("install needs a config file (qengine --config PATH): the service must find it")
    cmd = [*qengine_executable(), "--config", str(config.source), "daemon", "run", name]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    stop = stop_timeout(config, spec)
    workdir = str(config.source.parent)
    queues = f" (queues {', '.join(spec.queues)})" if spec.queues else ""
    if kind == "systemd":
        account = ""
        if not user:
            import pwd

            account = f"User={pwd.getpwuid(os.getuid()).pw_name}\n"
        text = (
            f"# qengine daemon {name}{queues}, written by: qengine daemon install {name} --systemd\n"
            "[Unit]\n"
            f"Description=qengine daemon {name}\n"
            "After=network.target\n"
            "\n"
            "[Service]\n"
            "Type=simple\n"
            f"{account}"
            f"WorkingDirectory={_systemd_quote(workdir)}\n"
            f"ExecStart={' '.join(_systemd_quote(a) for a in cmd)}\n"
            "ExecReload=/bin/kill -HUP $MAINPID\n"
            "Restart=on-failure\n"
            "RestartSec=5\n"
            "KillSignal=SIGTERM\n"
            "# SIGTERM to the main process only: with --processes it stops its workers itself.\n"
            "KillMode=mixed\n"
            f"TimeoutStopSec={int(stop + 0.999)}\n"
            "Environment=PYTHONUNBUFFERED=1\n"
            "\n"
            "[Install]\n"
            f"WantedBy={'default.target' if user else 'multi-user.target'}\n"
        )
        return f"qengine-{name}.service", text
    if kind == "supervisor":
        import pwd

        text = (
            f"; qengine daemon {name}{queues}, written by: qengine daemon install {name} --supervisor\n"
            f"[program:qengine-{name}]\n"
            f"command={shlex.join(cmd)}\n"
            f"directory={workdir}\n"
            f"user={pwd.getpwuid(os.getuid()).pw_name}\n"
            "autostart=true\n"
            "autorestart=true\n"
            "startsecs=5\n"
            "stopsignal=TERM\n"
            f"stopwaitsecs={int(stop + 0.999)}\n"
            "; SIGTERM to qengine only (it stops its workers); SIGKILL to all after stopwaitsecs.\n"
            "stopasgroup=false\n"
            "killasgroup=true\n"
            "redirect_stderr=true\n"
            f"environment=PYTHONUNBUFFERED=\"1\"\n"
        )
        return f"qengine-{name}.conf", text
    raise ValueError(f"unknown service kind {kind!r}")


def install_path(kind: str, *, user: bool = False) -> Path:
    """Where the system expects a unit or program file."""
    if kind == "systemd":
        if user:
            base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
            return Path(base) / "systemd" / "user"
        return Path("/etc/systemd/system")
    return Path("/etc/supervisor/conf.d")


def write_unit(dest: Path, file_name: str, text: str) -> Path:
    """Write ``text`` to ``dest/file_name`` (0644: service managers read it); ServiceError on failure."""
    path = dest / file_name
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{file_name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        hint = " (run as root, or use --user)" if exc.errno in (errno.EACCES, errno.EPERM) else ""
        raise ServiceError(f"cannot write {str(path)!r}: {exc.strerror or exc}{hint}") from None
    return path
