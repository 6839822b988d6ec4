"""``--processes N``: one supervisor process runs N worker processes of the same daemon.

The supervisor holds the daemon's pidfile and writes its state file; each worker process is
a fresh interpreter (``python -m queue_engine.supervisor ...``, so no lock, thread or file
descriptor of the supervisor leaks into it) running the daemon loop, with its own state file
``<pidDir>/NAME.children/<index>.json`` that the supervisor folds into the daemon's.

* A worker process that dies (crash, SIGKILL, OOM killer) is started again after a backoff:
  0.5 s, doubling while it keeps dying within 10 s of its start, at most 30 s.
* SIGTERM / SIGINT to the supervisor: SIGTERM to every worker process (each finishes its
  current message and runs ``execute_stop``), then the supervisor exits 0 once all are gone.
  A second one is forwarded (the workers stop at once) and the supervisor exits 128 + signal.
* SIGHUP: re-read and check the config (a bad one is logged and changes nothing), then
  restart the worker processes gracefully (SIGTERM; each is started again as soon as it
  exited); the new ones load the new config and any changed worker or daemon code.
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
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from .config import Config, load_config
from .daemon import DaemonLoop, DaemonSpec, daemon_settings, find_daemon
from .errors import QueueEngineError
from .service import (
    ServicePaths,
    StateFile,
    StateWriter,
    ensure_dir,
    proc_start_ticks,
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
    carried: dict[str, int] = field(default_factory=lambda: {"messages_processed": 0, "iterations": 0})
    last_exit: int | None = None


class Supervisor:
    """Runs ``count`` worker processes of ``spec`` and keeps them running until stopped."""

    def __init__(
        self, spec: DaemonSpec, config: Config, paths: ServicePaths, count: int, *, writer: StateWriter, stderr: bool
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
        child.proc = None
        child.last_exit = code
        if stopping:
            logger.info("daemon %s: worker process %d (pid %d) exited with %s", self.spec.name, child.index, pid, code)
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
            if isinstance(err_at, (int, float)) and data.get("last_error") and (
                last_error is None or err_at > last_error[0]
            ):
                last_error = (err_at, str(data["last_error"]))
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

    def _write(self, status: str, force: bool = False) -> None:
        try:
            self.writer(force, **self._aggregate(status))
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
        for child in self.children:
            if not self._stop_signals:
                self._spawn(child)
        self._write("running", force=True)
        forwarded = 0
        while True:
            stopping = self._stop_signals > 0
            if self._stop_signals > forwarded:
                forwarded = self._stop_signals
                if forwarded == 1:
                    logger.info("daemon %s got %s: stopping its worker processes", name, self._last_signal.name)
                    self._write("stopping", force=True)
                else:
                    logger.warning("daemon %s got %s again: stopping at once", name, self._last_signal.name)
                self._signal_children(signal.SIGTERM)
            if self._report:
                self._report = False
                logger.info("status: %s", self._aggregate("stopping" if stopping else "running"))
                self._signal_children(signal.SIGUSR1)
            if self._reload and not stopping:
                self._reload = False
                self._do_reload()
            now = time.monotonic()
            alive = 0
            for child in self.children:
                if child.proc is not None:
                    if child.proc.poll() is None:
                        alive += 1
                        continue
                    self._reap(child, stopping)
                if not stopping and child.proc is None and now >= child.due:
                    self._spawn(child)
                    alive += 1
            if stopping and alive == 0:
                break
            if stopping and forwarded > 1:
                # The workers exit at once; do not wait on a slow one.
                self._wait_all(5.0)
                self._write("killed", force=True)
                return 128 + int(self._last_signal)
            self._write("stopping" if stopping else "running")
            time.sleep(_TICK)
        self._write("stopped", force=True)
        logger.info("daemon %s (pid %d) stopped", name, os.getpid())
        return 0

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
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
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
    try:
        config = load_config(args.config)
        settings = daemon_settings(config)
        spec = find_daemon(args.name, config)
        paths = service_paths(args.name, settings)
    except QueueEngineError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    handlers: list[logging.Handler] = [logging.handlers.WatchedFileHandler(paths.logfile, encoding="utf-8")]
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
            on_immediate_stop=lambda signum: writer(True, status="killed"),
            should_stop=lambda: os.getppid() != args.parent,
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
