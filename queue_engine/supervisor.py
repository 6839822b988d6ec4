"""``--processes N``: one supervisor process runs N worker processes of the same daemon.

The supervisor holds the daemon's pidfile and writes its state file; each worker process is
a fresh interpreter (``python -m queue_engine.supervisor ...``, so no lock, thread or file
descriptor of the supervisor leaks into it) running the daemon loop, with its own state file
``<pidDir>/NAME.children/<index>.json`` that the supervisor folds into the daemon's.

* A worker process that dies (crash, SIGKILL, OOM killer) is started again after a backoff:
  0.5 s, doubling while it keeps dying within 10 s of its start, at most 30 s.
* Start: the daemon reports ``running`` once every worker process has reported running. A
  worker process that exits before that fails the start, with its last error.
* SIGTERM / SIGINT to the supervisor: SIGTERM to every worker process not already stopping
  (each finishes its current message and runs ``execute_stop``), then the supervisor exits
  once all are gone: 0, or 1 when a worker process did not stop cleanly. A second one is
  forwarded (the workers stop at once) and the supervisor exits 128 + signal. Worker
  processes ignore SIGINT: Ctrl-C reaches the whole process group, only the supervisor acts.
* SIGHUP: re-read and check the config (a bad one is logged and changes nothing), then
  restart the worker processes gracefully (SIGTERM, once; each is started again as soon as
  it exited); the new ones load the new config and any changed worker or daemon code. The
  number of worker processes is the one of the start: a changed ``processes`` needs a restart.
* SIGUSR1: a status line in the log, and SIGUSR1 to each worker process (one line each).
* A worker process whose supervisor disappears (SIGKILL) stops by itself, gracefully.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from .config import Config, load_config
from .daemon import DaemonLoop, DaemonSpec, daemon_settings, find_daemon
from .errors import QueueEngineError
from .process import start_ticks as proc_start_ticks
from .service import (
    ServicePaths,
    StateFile,
    StateWriter,
    ensure_dir,
    reload_config,
    service_paths,
    setup_logging,
)
from .worker import error_text

__all__ = ["Supervisor", "child_main"]

logger = logging.getLogger("qengine.daemon")

RESTART_BASE = 0.5
RESTART_MAX = 30.0
#: A worker process that ran at least this long resets its restart backoff.
RESTART_RESET = 10.0
_TICK = 0.05


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    start_ticks: int | None = None
    started: float = 0.0
    restarts: int = 0
    quick_failures: int = 0
    due: float = 0.0  # monotonic time of the next start, when not running
    restart_now: bool = False  # a SIGHUP restart: no backoff
    term_sent: bool = False  # the current process got its (graceful) SIGTERM: never send a second by accident
    last_error: tuple[float, str] | None = None  # of an exited process, from its state file
    carried: dict[str, int] = field(default_factory=lambda: {"messages_processed": 0, "iterations": 0})
    last_exit: int | None = None


class Supervisor:
    """Runs ``count`` worker processes of ``spec`` and keeps them running until stopped."""

    def __init__(
        self, spec: DaemonSpec, config: Config, paths: ServicePaths, count: int, *, writer: StateWriter, stderr: bool,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.spec = spec
        self.config = config
        self.paths = paths
        self.count = count
        self.writer = writer
        self.stderr = stderr
        self.children = [_Child(i) for i in range(count)]
        self._stop_signals = 0
        self._last_signal = signal.SIGTERM
        self._reload = False
        self._report = False
        self._started_at = time.time()
        self._reloads = 0
        self._should_stop = should_stop
        self._up = False  # every worker process has reported running once
        self._unclean: list[str] = []  # worker processes that did not stop cleanly

    # -- signals: flags only --------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop_signals = max(self._stop_signals, 1)

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop_signals += 1
            self._last_signal = signal.Signals(signum)
        elif signum == signal.SIGHUP:
            self._reload = True
        elif signum == signal.SIGUSR1:
            self._report = True

    # -- children ---------------------------------------------------------------------------
    def _command(self, index: int) -> list[str]:
        cmd = [sys.executable, "-m", "queue_engine.supervisor", "--name", self.spec.name, "--index", str(index),
               "--parent", str(os.getpid())]
        if self.config.source is not None:
            cmd += ["--config", str(self.config.source)]
        if self.stderr:
            cmd.append("--stderr")
        return cmd

    def _spawn(self, child: _Child) -> None:
        # stdout/stderr inherited: a detached supervisor's are the log file.
        child.proc = subprocess.Popen(self._command(child.index), stdin=subprocess.DEVNULL)
        child.start_ticks = proc_start_ticks(child.proc.pid)
        child.started = time.monotonic()
        child.restart_now = False
        child.term_sent = False
        logger.info("daemon %s: started worker process %d (pid %d)", self.spec.name, child.index, child.proc.pid)

    def _child_state(self, index: int) -> dict[str, Any]:
        return StateFile(self.paths.children_dir / f"{index}.json").read() or {}

    def _reap(self, child: _Child, stopping: bool) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        pid = child.proc.pid
        data = self._child_state(child.index)
        if data.get("pid") == pid:
            for key in child.carried:
                child.carried[key] += int(data.get(key) or 0)
            err_at = data.get("last_error_at")
            if data.get("last_error") and isinstance(err_at, (int, float)):
                child.last_error = (float(err_at), str(data["last_error"]))
        child.proc = None
        child.last_exit = code
        if stopping:
            logger.info("daemon %s: worker process %d (pid %d) exited with %s", self.spec.name, child.index, pid, code)
            if code != 0:
                self._unclean.append(f"worker process {child.index} (pid {pid}) exited with {_exit_text(code)}")
            return
        if child.restart_now:
            child.due = time.monotonic()
        else:
            ran = time.monotonic() - child.started
            child.quick_failures = child.quick_failures + 1 if ran < RESTART_RESET else 0
            delay = min(RESTART_BASE * 2 ** max(0, child.quick_failures - 1), RESTART_MAX)
            child.due = time.monotonic() + delay
            logger.error("daemon %s: worker process %d (pid %d) died with %s; restarting in %.3gs",
                         self.spec.name, child.index, pid, _exit_text(code), delay)
        child.restarts += 1

    def _terminate(self, child: _Child) -> None:
        """The graceful SIGTERM, once per process: a second one would stop it mid-message."""
        if child.proc is not None and child.proc.poll() is None and not child.term_sent:
            child.term_sent = True
            try:
                child.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:  # pragma: no cover - exited between poll and kill
                pass

    def _signal_children(self, signum: int) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                try:
                    child.proc.send_signal(signum)
                except ProcessLookupError:  # pragma: no cover - exited between poll and kill
                    pass

    # -- state ------------------------------------------------------------------------------
    def _aggregate(self, status: str) -> dict[str, Any]:
        children: list[dict[str, Any]] = []
        total = {"messages_processed": 0, "iterations": 0}
        last_error: tuple[float, str] | None = None
        sleep = 0.0
        for child in self.children:
            running = child.proc is not None and child.proc.poll() is None
            data = self._child_state(child.index) if running else {}
            if running and child.proc is not None and data.get("pid") != child.proc.pid:
                data = {}  # the new process has not written its state yet
            for key in total:
                total[key] += child.carried[key] + int(data.get(key) or 0)
            err_at = data.get("last_error_at")
            errors = [child.last_error] if child.last_error else []
            if isinstance(err_at, (int, float)) and data.get("last_error"):
                errors.append((float(err_at), str(data["last_error"])))
            for error in errors:
                if last_error is None or error[0] > last_error[0]:
                    last_error = error
            sleep = max(sleep, float(data.get("sleep_time") or 0.0))
            children.append({
                "index": child.index,
                "pid": child.proc.pid if running and child.proc is not None else None,
                "start_ticks": child.start_ticks if running else None,
                "status": data.get("status", "starting") if running else "restarting",
                "restarts": child.restarts,
                "last_exit": child.last_exit,
                "heartbeat": data.get("heartbeat"),
                "messages_processed": child.carried["messages_processed"] + int(data.get("messages_processed") or 0),
            })
        return {
            "status": status,
            "started_at": self._started_at,
            "children": children,
            "sleep_time": sleep,
            "reloads": self._reloads,
            "last_error": last_error[1] if last_error else None,
            "last_error_at": last_error[0] if last_error else None,
            **total,
        }

    def _write(self, status: str, force: bool = False, **extra: Any) -> None:
        try:
            self.writer(force, **{**self._aggregate(status), **extra})
        except OSError:
            logger.exception("daemon %s: cannot write its state", self.spec.name)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until stopped; return 0, or 128 + signal after an immediate stop."""
        ensure_dir(self.paths.children_dir)
        wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        previous = {sig: signal.signal(sig, self.handle_signal) for sig in wanted}
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        name = self.spec.name
        logger.info("daemon %s (pid %d) supervising %d worker processes", name, os.getpid(), self.count)
        self._poll_should_stop()
        for child in self.children:
            if not self._stop_signals:
                self._spawn(child)
        self._write("starting", force=True)
        forwarded = 0
        while True:
            self._poll_should_stop()
            stopping = self._stop_signals > 0
            if self._stop_signals > forwarded:
                first = forwarded == 0
                forwarded = self._stop_signals
                if first:
                    logger.info("daemon %s got %s: stopping its worker processes", name, self._last_signal.name)
                    self._write("stopping", force=True)
                    for child in self.children:
                        self._terminate(child)
                else:
                    logger.warning("daemon %s got %s again: stopping at once", name, self._last_signal.name)
                    self._signal_children(signal.SIGTERM)  # their second: they stop at once
            if self._report:
                self._report = False
                logger.info("status: %s", self._aggregate(self._status(stopping)))
                self._signal_children(signal.SIGUSR1)
            if self._reload and not stopping and self._up:
                self._reload = False
                self._do_reload()
            now = time.monotonic()
            alive = 0
            for child in self.children:
                if child.proc is not None:
                    if child.proc.poll() is None:
                        alive += 1
                        continue
                    if not self._up and not stopping:
                        return self._failed_start(child)
                    self._reap(child, stopping)
                if not stopping and child.proc is None and now >= child.due:
                    self._spawn(child)
                    alive += 1
            if stopping and alive == 0:
                break
            if stopping and forwarded > 1:
                # The workers exit at once; do not wait on a slow one.
                self._wait_all(5.0)
                self._write("killed", force=True, exit_code=128 + int(self._last_signal))
                return 128 + int(self._last_signal)
            if not self._up and not stopping and self._all_running():
                self._up = True
                logger.info("daemon %s: all %d worker processes are running", name, self.count)
                self._write("running", force=True)
            self._write(self._status(stopping))
            time.sleep(_TICK)
        if self._unclean:
            logger.error("daemon %s (pid %d) stopped; not cleanly: %s", name, os.getpid(), "; ".join(self._unclean))
            self._write("stopped", force=True, exit_code=1)
            return 1
        self._write("stopped", force=True)
        logger.info("daemon %s (pid %d) stopped", name, os.getpid())
        return 0

    def _poll_should_stop(self) -> None:
        if self._should_stop is not None and not self._stop_signals and self._should_stop():
            self.request_stop()

    def _status(self, stopping: bool) -> str:
        return "stopping" if stopping else "running" if self._up else "starting"

    def _all_running(self) -> bool:
        for child in self.children:
            if child.proc is None:
                return False
            data = self._child_state(child.index)
            if data.get("pid") != child.proc.pid or data.get("status") != "running":
                return False
        return True

    def _failed_start(self, dead: _Child) -> int:
        """A worker process exited before every one reported running: stop the others, report why."""
        assert dead.proc is not None
        pid, code = dead.proc.pid, dead.proc.returncode
        self._reap(dead, True)
        reason = dead.last_error[1] if dead.last_error else f"worker process {dead.index} died with {_exit_text(code)}"
        logger.error("daemon %s: worker process %d (pid %d) exited with %s before it was running: %s",
                     self.spec.name, dead.index, pid, _exit_text(code), reason)
        for child in self.children:
            self._terminate(child)
        self._wait_all(30.0)
        self._write("failed", force=True, last_error=reason, last_error_at=time.time(), exit_code=1)
        return 1

    def _do_reload(self) -> None:
        try:
            self.config = reload_config(self.config)
            self.spec = find_daemon(self.spec.name, self.config)
        except QueueEngineError as exc:
            logger.error("daemon %s: reload failed, the worker processes keep running: %s", self.spec.name, exc)
            return
        self._reloads += 1
        logger.info("daemon %s: configuration reloaded; restarting the worker processes", self.spec.name)
        for child in self.children:
            child.restart_now = True
            self._terminate(child)  # one already stopping (an earlier reload) just finishes
        self._write("running", force=True)

    def _wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is not None:
                try:
                    child.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            pass
    return f"exit status {code}"


# -- a worker process -----------------------------------------------------------------------
class _ChildLogHandler(logging.handlers.WatchedFileHandler):
    """Follows the supervisor's rotations; with ``own_std`` (a detached supervisor: the inherited
    stdout and stderr are its log) stdout and stderr follow too, so a signal handler's notice
    and a crash's traceback land in the current log, not in ``NAME.log.1``."""

    def __init__(self, path: Path, *, own_std: bool) -> None:
        self.own_std = own_std
        super().__init__(path, encoding="utf-8")

    def _open(self) -> Any:
        stream = super()._open()
        if self.own_std:
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
        return stream


def child_main(argv: list[str] | None = None) -> int:
    """Body of one worker process under the supervisor; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m queue_engine.supervisor")
    parser.add_argument("--name", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--stderr", action="store_true")
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group: only the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGTERM before the loop's handlers are installed: stop once it runs (not killed mid-import).
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: early.append(signum))
    try:
        config = load_config(args.config)
        settings = daemon_settings(config)
        spec = find_daemon(args.name, config)
        paths = service_paths(args.name, settings)
    except QueueEngineError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    handlers: list[logging.Handler] = [_ChildLogHandler(paths.logfile, own_std=not args.stderr)]
    if args.stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    setup_logging(handlers)
    state = StateFile(paths.children_dir / f"{args.index}.json")
    writer = StateWriter(state, {"name": args.name, "index": args.index, "pid": os.getpid()})
    try:
        daemon = spec.create()
        loop = DaemonLoop(
            daemon, name=args.name, config=config, heartbeat=writer,
            reload_config=lambda: reload_config(daemon.config or config),
            on_immediate_stop=lambda signum: writer.immediate(status="killed"),
            should_stop=lambda: bool(early) or os.getppid() != args.parent,
            handle_sigint=False,
        )
        writer.loop = loop
        code = loop.run()
    except Exception as exc:
        logging.getLogger("qengine.daemon").error("daemon %s worker process %d failed: %s", args.name, args.index,
                                                  error_text(exc), exc_info=True)
        writer(True, status="failed", last_error=error_text(exc), last_error_at=time.time())
        return 1
    writer(True, status="stopped")
    return code


if __name__ == "__main__":
    sys.exit(child_main())
