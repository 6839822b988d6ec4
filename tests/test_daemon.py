"""Daemons as real processes: ``qengine daemon start/run/stop/status/...`` with real signals.

Every daemon gets its own config (cacheRoot, pidDir, logDir, daemonsPath, workersPath under
``tmp_path``). Waits poll the state file, the pidfile lock or the log; their timeouts are
hang guards only. A teardown SIGKILLs whatever a failed test left running.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from queue_engine import QueueFactory, QueueMessage
from queue_engine.audit import get_audit_log
from queue_engine.cli import cli
from queue_engine.service import read_pidfile

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD = 60.0

# A worker whose message blocks until the test creates the release file: "in the middle of
# a slow message" without any timing.
SLOW_WORKER = '''
import os, time
from pathlib import Path
from queue_engine.worker import Worker

class SlowWorker(Worker):
    queue = "Slow"           # the daemon "slow" finds it ignoring case
    time_limit = 50.0        # above the test's own wait; sizes the units' stop timeout: 50 + 30

    def process(self, message):
        base = Path(os.environ["QTEST_DIR"])
        marker = base / f"started-{message.uuid}"
        (base / f".{marker.name}").write_text(str(os.getpid()))
        os.replace(base / f".{marker.name}", marker)  # whole when it appears: tests read the pid
        deadline = time.monotonic() + 60
        while not (base / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        (base / f"finished-{message.uuid}").write_text(str(os.getpid()))
'''

# Workers that record each message they handle, one file per message.
RECORD_WORKER = '''
import os
from pathlib import Path
from queue_engine.worker import Worker

class {cls}(Worker):
    queue = "{queue}"

    def process(self, message):
        (Path(os.environ["QTEST_DIR"]) / f"done-{queue}-{{message.uuid}}").write_text(str(os.getpid()))
'''


class Env:
    """A private qengine installation under ``tmp_path`` and helpers to drive it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workers = root / "workers"
        self.daemons = root / "daemons"
        self.run_dir = root / "run"
        self.log_dir = root / "log"
        self.workers.mkdir()
        self.daemons.mkdir()
        (self.workers / "slow.py").write_text(SLOW_WORKER)
        for name in ("alpha", "beta"):
            (self.workers / f"{name}.py").write_text(RECORD_WORKER.format(cls=name.title() + "Worker", queue=name))
        self.config = root / "qengine.ini"
        self.write_config()
        self.env = {k: v for k, v in os.environ.items() if k != "QENGINE_CONFIG"}
        self.env.update(
            QTEST_DIR=str(root),
            QENGINE_ANPR_OUTBOX=str(root / "outbox.jsonl"),
            QENGINE_ANPR_REPORT=str(root / "report.jsonl"),
        )

    def write_config(self, extra: str = "", daemons_path: str | None = None, daemon_keys: str = "") -> None:
        self.config.write_text(textwrap.dedent(f"""\
            [queue]
            queueType = file
            cacheRoot = {self.root / 'data'}
            fsync = never
            lease = 300
            workersPath = {self.workers}, {REPO / 'workers'}

            [daemon]
            daemonsPath = {daemons_path or self.daemons}
            pidDir = {self.run_dir}
            logDir = {self.log_dir}
            sleep = 0.05
            """) + daemon_keys + "\n" + extra)

    # -- processes ----------------------------------------------------------------------------
    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "queue_engine", "--config", str(self.config), *args]

    def qengine(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.cmd(*args), env=self.env, cwd=self.root, capture_output=True, text=True,
                              timeout=HANG_GUARD)
        if ok:
            assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def start(self, name: str, *extra: str) -> int:
        out = self.qengine("daemon", "start", name, "--timeout", str(HANG_GUARD), *extra).stdout
        assert out.startswith(f"started {name} (pid ")
        return self.pid(name)

    # -- files --------------------------------------------------------------------------------
    def state(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / f"{name}.state.json").read_text())
        except (OSError, ValueError):
            return {}

    def pid(self, name: str) -> int:
        info = read_pidfile(self.run_dir / f"{name}.pid")
        assert info is not None and info.alive and info.pid is not None
        return info.pid

    def alive(self, name: str) -> bool:
        info = read_pidfile(self.run_dir / f"{name}.pid")
        return info is not None and info.alive

    def log(self, name: str) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text()
        except FileNotFoundError:
            return ""

    def manager(self) -> Any:
        return QueueFactory.get_queue_manager(self.config)

    def add(self, queue: str, data: Any = None) -> str:
        manager = self.manager()
        try:
            return manager.add_message(queue, QueueMessage(data=data))
        finally:
            manager.close()

    def cleanup(self) -> None:
        """SIGKILL every daemon (and worker process) still holding a pidfile."""
        if not self.run_dir.is_dir():
            return
        for pidfile in self.run_dir.glob("*.pid"):
            info = read_pidfile(pidfile)
            if info is None or not info.alive or info.pid is None:
                continue
            state = self.state(pidfile.stem)
            for pid in [info.pid, *[c["pid"] for c in state.get("children") or [] if c.get("pid")]]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path)
    yield environment
    environment.cleanup()


Wait = Callable[..., Any]


def _runner() -> CliRunner:
    import inspect

    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


# -- the ported camelCase daemon from the repository's daemons/ -----------------------------
def test_ported_anpr_daemon_start_status_stop(env: Env, wait_for: Wait) -> None:
    env.write_config(daemons_path=str(REPO / "daemons"), extra="[daemon.anpr]\nsleep = 0.05\n")
    pid = env.start("anpr")
    uid = env.add("ANPR", {"citizen_id": "RSSMRA80A01H501U", "op": "delete"})
    outbox = env.root / "outbox.jsonl"
    wait_for(lambda: outbox.exists() and uid in outbox.read_text())

    wait_for(lambda: env.state("anpr").get("messages_processed") == 1)
    proc = env.qengine("daemon", "status", "anpr", "--json")
    status = json.loads(proc.stdout)
    assert status["name"] == "anpr" and status["state"] == "running" and status["status"] == "ONLINE"
    assert status["pid"] == pid and status["messages_processed"] == 1 and status["queues"] == ["ANPR"]
    assert status["last_error"] is None and status["uptime"] >= 0 and status["heartbeat"]
    assert {"started_at", "heartbeat_age", "iterations", "pidfile", "logfile"} <= set(status)

    again = env.qengine("daemon", "start", "anpr", ok=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"Error: daemon anpr is already running (pid {pid}, pidfile {env.run_dir}/anpr.pid)"

    assert env.qengine("daemon", "stop", "anpr").stdout.strip() == f"anpr: stopped (pid {pid})"
    report = [json.loads(line) for line in (env.root / "report.jsonl").read_text().splitlines()]
    assert report == [{"stopped_at": report[0]["stopped_at"], "pid": pid, "sent": 1}]  # executeStop ran
    assert not (env.run_dir / "anpr.pid").exists()
    stopped = env.qengine("daemon", "status", "anpr", ok=False)
    assert stopped.returncode == 3 and "state: stopped" in stopped.stdout and "status: OFFLINE" in stopped.stdout
    assert env.state("anpr")["status"] == "stopped"
    assert (env.run_dir.stat().st_mode & 0o777, (env.run_dir / "anpr.state.json").stat().st_mode & 0o777) == (
        0o700, 0o600)
    assert (env.log_dir / "anpr.log").stat().st_mode & 0o777 == 0o600


# -- crash recovery -------------------------------------------------------------------------
def test_sigkilled_daemon_leaves_a_stale_pidfile_that_does_not_block(env: Env, wait_for: Wait) -> None:
    pid = env.start("alpha")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not env.alive("alpha"))
    assert (env.run_dir / "alpha.pid").exists()
    dead = env.qengine("daemon", "status", "alpha", "--json", ok=False)
    assert dead.returncode == 1 and json.loads(dead.stdout)["state"] == "dead"

    new_pid = env.start("alpha")  # the lock is free: stale, replaced
    assert new_pid != pid
    uid = env.add("alpha")
    wait_for(lambda: (env.root / f"done-alpha-{uid}").exists())
    assert env.qengine("daemon", "stop", "alpha").stdout.strip() == f"alpha: stopped (pid {new_pid})"


# -- stopping in the middle of a message ----------------------------------------------------
def test_graceful_stop_lets_the_current_message_finish_and_ack(env: Env, wait_for: Wait) -> None:
    env.start("slow")  # no daemons/slow.py: hosts the worker of queue "Slow"
    uid = env.add("Slow")
    wait_for(lambda: (env.root / f"started-{uid}").exists())
    stopper = subprocess.Popen(env.cmd("daemon", "stop", "slow"), env=env.env, stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "got SIGTERM: stopping after the current iteration" in env.log("slow"))
        assert env.alive("slow")  # still inside process()
        (env.root / "release").touch()
        out, _ = stopper.communicate(timeout=HANG_GUARD)
    finally:
        stopper.kill()
    assert stopper.returncode == 0 and out.startswith("slow: stopped")
    assert (env.root / f"finished-{uid}").exists()
    manager = env.manager()
    try:
        assert manager.queue_status("Slow").messages_to_process == 0  # acked
        outcomes = [r.outcome for r in get_audit_log(manager).query("Slow", uuid=uid)]
        assert outcomes == ["success"]
    finally:
        manager.close()
    assert env.state("slow")["messages_processed"] == 1


def test_second_sigterm_stops_at_once_and_loses_nothing(env: Env, wait_for: Wait) -> None:
    pid = env.start("slow")
    uid = env.add("Slow")
    wait_for(lambda: (env.root / f"started-{uid}").exists())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: "got SIGTERM: stopping after the current iteration" in env.log("slow"))
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not env.alive("slow"))
    state = env.state("slow")
    assert state["status"] == "killed" and state["exit_code"] == 128 + signal.SIGTERM
    assert "got SIGTERM again: stopping at once" in env.log("slow")
    assert not (env.root / f"finished-{uid}").exists()
    manager = env.manager()
    try:
        assert manager.queue_status("Slow").messages_to_process == 1  # unacked: comes back after the lease
        assert [r.outcome for r in get_audit_log(manager).query("Slow", uuid=uid)] == []
    finally:
        manager.close()


def test_stop_timeout_then_stop_again_then_force(env: Env, wait_for: Wait) -> None:
    pid = env.start("slow")
    uid = env.add("Slow")
    wait_for(lambda: (env.root / f"started-{uid}").exists())
    late = env.qengine("daemon", "stop", "slow", "--timeout", "0.2", ok=False)
    assert late.returncode == 1 and late.stderr.startswith(
        f"Error: daemon slow (pid {pid}) is still running 0.2s after SIGTERM")
    # A second stop is a second SIGTERM: the daemon stops at once.
    assert env.qengine("daemon", "stop", "slow").stdout.strip() == f"slow: stopped (pid {pid})"
    assert env.state("slow")["status"] == "killed" and not (env.root / f"finished-{uid}").exists()

    out = env.qengine("daemon", "restart", "slow").stdout.splitlines()
    assert out[0] == "slow: not running" and out[1].startswith("started slow (pid ")
    pid = env.pid("slow")
    uid = env.add("Slow")  # the first one stays leased to the dead process until its lease ends
    wait_for(lambda: (env.root / f"started-{uid}").exists())
    forced = env.qengine("daemon", "stop", "slow", "--timeout", "0.2", "--force").stdout
    assert forced.strip() == f"slow: killed (pid {pid}, still running 0.2s after SIGTERM)"
    assert not env.alive("slow") and not (env.run_dir / "slow.pid").exists()
    assert env.state("slow")["status"] == "killed"


def test_logs_follow_prints_new_lines(env: Env, wait_for: Wait) -> None:
    env.log_dir.mkdir()
    log = env.log_dir / "ticker.log"
    log.write_text("old line\n")
    proc = subprocess.Popen(env.cmd("daemon", "logs", "ticker", "-f", "-n", "1"), env=env.env,
                            stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert lines.get(timeout=HANG_GUARD) == "old line\n"
        with open(log, "a") as fh:
            fh.write("new line\n")
        assert lines.get(timeout=HANG_GUARD) == "new line\n"
        log.rename(env.log_dir / "ticker.log.1")  # rotation: the follower moves to the new file
        log.write_text("after rotation\n")
        assert lines.get(timeout=HANG_GUARD) == "after rotation\n"
    finally:
        proc.kill()
        proc.communicate()  # also closes the pipe


# -- SIGHUP, SIGUSR1 --------------------------------------------------------------------------
def test_sighup_reloads_the_config_and_sigusr1_logs_the_status(env: Env, wait_for: Wait) -> None:
    env.write_config(extra="[daemon.pair]\nqueues = alpha\n")
    pid = env.start("pair")
    assert env.state("pair")["queues"] == ["alpha"]
    env.write_config(extra="[daemon.pair]\nqueues = alpha, beta\n")
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: env.state("pair").get("reloads") == 1)
    uid = env.add("beta")  # served only under the new config
    wait_for(lambda: (env.root / f"done-beta-{uid}").exists())

    os.kill(pid, signal.SIGUSR1)
    line = wait_for(lambda: next((ln for ln in env.log("pair").splitlines() if "status: {" in ln), None))
    status = json.loads(line.split("status: ", 1)[1])
    assert status["pid"] == pid and status["reloads"] == 1 and status["workers"] == {
        "alpha": "AlphaWorker", "beta": "BetaWorker"}

    env.write_config(daemon_keys="bogus = 1")  # a bad config is refused, the daemon keeps going
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "reload failed" in env.log("pair"))
    assert "unknown key [daemon] bogus" in env.log("pair")
    assert env.alive("pair") and env.state("pair")["reloads"] == 1
    env.write_config(extra="[daemon.pair]\nqueues = alpha, beta\n")
    env.qengine("daemon", "stop", "pair")


# -- --processes ----------------------------------------------------------------------------
def test_processes_restart_a_killed_worker_process(env: Env, wait_for: Wait) -> None:
    supervisor = env.start("alpha", "--processes", "2")

    def children_running() -> list[dict[str, Any]] | None:
        kids = env.state("alpha").get("children") or []
        ok = len(kids) == 2 and all(k["pid"] and k["status"] == "running" for k in kids)
        return kids if ok else None

    first = wait_for(children_running)
    victim = first[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: (kids := children_running()) and kids[0]["pid"] != victim and kids[0]["restarts"] == 1)
    assert f"worker process 0 (pid {victim}) died with SIGKILL" in env.log("alpha")
    assert env.pid("alpha") == supervisor

    uids = [env.add("alpha") for _ in range(3)]
    wait_for(lambda: all((env.root / f"done-alpha-{u}").exists() for u in uids))
    wait_for(lambda: env.state("alpha").get("messages_processed") == 3)  # aggregated over the workers
    survivors = [k["pid"] for k in children_running() or []]
    assert env.qengine("daemon", "stop", "alpha").stdout.startswith("alpha: stopped")
    for pid in survivors:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid))
    assert env.state("alpha")["status"] == "stopped"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# -- foreground ---------------------------------------------------------------------------------
def test_run_in_the_foreground_stops_on_sigterm(env: Env, wait_for: Wait) -> None:
    proc = subprocess.Popen(env.cmd("daemon", "run", "alpha"), env=env.env, cwd=env.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: env.state("alpha").get("status") == "running" and env.alive("alpha"))
        assert env.pid("alpha") == proc.pid
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert f"daemon alpha (pid {proc.pid}) stopped" in err  # logged to stderr ...
    assert f"daemon alpha (pid {proc.pid}) stopped" in env.log("alpha")  # ... and to the log file
    assert not (env.run_dir / "alpha.pid").exists()


def test_logs_list_and_status_of_every_daemon(env: Env) -> None:
    (env.daemons / "ticker.py").write_text("from queue_engine.daemon import Daemon\n\n"
                                           "class TickerDaemon(Daemon):\n    def execute_start(self):\n        pass\n")
    pid = env.start("ticker")
    assert env.qengine("daemon", "list").stdout.splitlines() == ["ticker\trunning\tONLINE"]
    env.qengine("daemon", "stop", "ticker")
    lines = env.qengine("daemon", "logs", "ticker", "-n", "1").stdout.splitlines()
    assert len(lines) == 1 and f"daemon ticker (pid {pid}) stopped" in lines[0]
    listing = env.qengine("daemon", "status").stdout
    assert listing.startswith("ticker\tstopped\tOFFLINE\t")


def test_start_reports_why_the_daemon_failed(env: Env) -> None:
    (env.daemons / "broken.py").write_text(textwrap.dedent("""\
        from queue_engine.daemon import Daemon

        class BrokenDaemon(Daemon):
            def setup(self):
                raise RuntimeError("cannot reach the registry")

            def execute_start(self):
                pass
        """))
    proc = env.qengine("daemon", "start", "broken", ok=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: daemon broken failed to start: RuntimeError: cannot reach the registry")
    assert len(proc.stderr.strip().splitlines()) == 1 and not env.alive("broken")


# -- CLI input errors and install (in process) -----------------------------------------------
def test_unknown_daemon_and_bad_names(env: Env) -> None:
    runner = _runner()
    result = runner.invoke(cli, ["--config", str(env.config), "daemon", "start", "nosuch"])
    assert result.exit_code == 2
    text = result.stderr.strip()
    assert text.startswith("Error: no daemon 'nosuch': looked for nosuch.py (class NosuchDaemon)")
    assert str(env.daemons / "nosuch.py") in text and str(env.workers / "nosuch.py") in text
    assert len(text.splitlines()) == 1
    result = runner.invoke(cli, ["--config", str(env.config), "daemon", "status", "../x"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: invalid daemon name '../x'")
    env.write_config(daemon_keys="logMaxBytes = lots")
    result = runner.invoke(cli, ["--config", str(env.config), "daemon", "list"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {env.config}: [daemon] logMaxBytes = 'lots' is not a whole number"


def test_install_systemd_and_supervisor(env: Env, tmp_path: Path) -> None:
    runner = _runner()
    base = ["--config", str(env.config), "daemon", "install", "slow"]
    unit = runner.invoke(cli, [*base, "--systemd"])
    assert unit.exit_code == 0, unit.output
    text = unit.stdout
    assert "Type=simple\n" in text and "Restart=on-failure\n" in text and "KillSignal=SIGTERM\n" in text
    assert "TimeoutStopSec=80\n" in text  # SlowWorker.time_limit 50 + 30
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(f"--config {env.config} daemon run slow")
    assert Path(exec_start.split("=", 1)[1].split()[0]).is_absolute()

    block = runner.invoke(cli, [*base, "--supervisor", "--processes", "2"]).stdout
    assert "[program:qengine-slow]\n" in block and "stopsignal=TERM\n" in block and "stopwaitsecs=80\n" in block
    assert "autorestart=true\n" in block and "daemon run slow --processes 2\n" in block

    dest = tmp_path / "units"
    wrote = runner.invoke(cli, [*base, "--systemd", "--user", "--write", "--dest", str(dest)])
    assert wrote.exit_code == 0
    assert wrote.stdout.splitlines()[:2] == [
        f"wrote {dest / 'qengine-slow.service'}",
        "next: systemctl --user daemon-reload && systemctl --user enable --now qengine-slow",
    ]
    assert "WantedBy=default.target" in (dest / "qengine-slow.service").read_text()
    neither = runner.invoke(cli, ["--config", str(env.config), "daemon", "install", "slow"])
    assert neither.exit_code == 2 and neither.stderr.strip() == "Error: choose --systemd or --supervisor"


# -- review fixes: stop signals, failed starts, pidfile races ---------------------------------
def _busy_child(env: Env, uid: str) -> int:
    return int((env.root / f"started-{uid}").read_text())


def test_processes_ctrl_c_lets_the_busy_worker_finish(env: Env, wait_for: Wait) -> None:
    # Ctrl-C sends SIGINT to the whole process group: the workers must ignore it and get one
    # SIGTERM from the supervisor, not SIGINT + SIGTERM (= "stop at once").
    err_path = env.root / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(env.cmd("daemon", "run", "slow", "--processes", "2"), env=env.env, cwd=env.root,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        wait_for(lambda: env.state("slow").get("status") == "running" and env.alive("slow"))
        uid = env.add("Slow")
        wait_for(lambda: (env.root / f"started-{uid}").exists())
        busy = _busy_child(env, uid)
        os.killpg(proc.pid, signal.SIGINT)
        wait_for(lambda: f"(pid {busy}) got SIGTERM" in err_path.read_text())
        (env.root / "release").touch()
        assert proc.wait(timeout=HANG_GUARD) == 0
    finally:
        proc.kill()
        proc.wait()
    text = err_path.read_text()
    assert f"(pid {busy}) got SIGTERM: stopping after the current iteration" in text
    assert "again" not in text and f"(pid {busy}) got SIGINT" not in text
    assert (env.root / f"finished-{uid}").exists()
    assert env.state("slow")["status"] == "stopped"


def test_processes_reload_then_stop_does_not_kill_the_busy_worker(env: Env, wait_for: Wait) -> None:
    supervisor = env.start("slow", "--processes", "2")
    uid = env.add("Slow")
    wait_for(lambda: (env.root / f"started-{uid}").exists())
    busy = _busy_child(env, uid)
    os.kill(supervisor, signal.SIGHUP)  # the busy worker gets its SIGTERM: restart after this message
    wait_for(lambda: f"(pid {busy}) got SIGTERM: stopping after the current iteration" in env.log("slow"))
    os.kill(supervisor, signal.SIGHUP)  # a second reload must not resend it
    wait_for(lambda: env.state("slow").get("reloads") == 2)
    os.kill(supervisor, signal.SIGTERM)
    wait_for(lambda: "got SIGTERM: stopping its worker processes" in env.log("slow"))
    # A status line is logged after the supervisor forwarded the stop: anything it sent is sent.
    os.kill(supervisor, signal.SIGUSR1)
    wait_for(lambda: f"qengine.daemon[{supervisor}]: status: " in env.log("slow") or not env.alive("slow"))
    (env.root / "release").touch()
    wait_for(lambda: not env.alive("slow"))
    assert (env.root / f"finished-{uid}").exists()
    assert "again" not in env.log("slow")
    state = env.state("slow")
    assert state["status"] == "stopped" and state.get("exit_code") is None
    manager = env.manager()
    try:
        assert manager.queue_status("Slow").messages_to_process == 0  # acked
    finally:
        manager.close()


def test_processes_start_fails_when_a_worker_process_cannot_start(env: Env) -> None:
    (env.daemons / "broken.py").write_text(textwrap.dedent("""\
        from queue_engine.daemon import Daemon

        class BrokenDaemon(Daemon):
            def setup(self):
                raise RuntimeError("cannot connect to the database")

            def execute_start(self):
                pass
        """))
    proc = env.qengine("daemon", "start", "broken", "--processes", "2", "--timeout", str(HANG_GUARD), ok=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: daemon broken failed to start: RuntimeError: cannot connect to the database")
    assert not env.alive("broken")
    state = env.state("broken")
    assert state["status"] == "failed" and state["last_error"] == "RuntimeError: cannot connect to the database"


def test_second_sigterm_does_not_run_daemon_code_in_the_handler(env: Env, wait_for: Wait) -> None:
    # status() takes a lock the running iteration holds: called from the signal handler, it
    # would deadlock the "stop at once".
    (env.daemons / "locky.py").write_text(textwrap.dedent("""\
        import os, threading, time
        from pathlib import Path
        from queue_engine.daemon import Daemon

        class LockyDaemon(Daemon):
            def __init__(self):
                self.lock = threading.Lock()

            def execute_start(self):
                base = Path(os.environ["QTEST_DIR"])
                with self.lock:
                    (base / "in-job").write_text(str(os.getpid()))
                    deadline = time.monotonic() + 60
                    while not (base / "release").exists() and time.monotonic() < deadline:
                        time.sleep(0.01)

            def status(self):
                with self.lock:
                    return {"locked": False}
        """))
    pid = env.start("locky")
    wait_for(lambda: (env.root / "in-job").exists())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: "got SIGTERM: stopping after the current iteration" in env.log("locky"))
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not env.alive("locky"))
    state = env.state("locky")
    assert state["status"] == "killed" and state["exit_code"] == 128 + signal.SIGTERM
    assert "got SIGTERM again: stopping at once" in env.log("locky")


def test_a_process_forked_by_the_daemon_does_not_hold_its_pidfile(env: Env, wait_for: Wait) -> None:
    (env.daemons / "forker.py").write_text(textwrap.dedent("""\
        import os, time
        from pathlib import Path
        from queue_engine.daemon import Daemon

        class ForkerDaemon(Daemon):
            sleep_time = 0.05
            forked = False

            def execute_start(self):
                if self.forked:
                    return
                self.forked = True
                base = Path(os.environ["QTEST_DIR"])
                if os.fork() == 0:  # outlives the daemon until the test releases it
                    (base / "grandchild").write_text(str(os.getpid()))
                    deadline = time.monotonic() + 60
                    while not (base / "release").exists() and time.monotonic() < deadline:
                        time.sleep(0.01)
                    os._exit(0)
        """))
    pid = env.start("forker")
    try:
        wait_for(lambda: (env.root / "grandchild").exists())
        os.kill(pid, signal.SIGKILL)  # no cleanup: the pidfile stays, its lock must die with the daemon
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid))
        assert not env.alive("forker")
        dead = env.qengine("daemon", "status", "forker", "--json", ok=False)
        assert dead.returncode == 1 and json.loads(dead.stdout)["state"] == "dead"
    finally:
        (env.root / "release").touch()


def test_stop_when_the_pid_in_the_pidfile_has_exited(env: Env, wait_for: Wait) -> None:
    # The lock is held (here by a helper) but the pid named in the file is gone: stop must not
    # crash with ProcessLookupError.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    env.run_dir.mkdir(mode=0o700)
    pidfile = env.run_dir / "alpha.pid"
    pidfile.write_text(f"{gone.pid} -\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); sys.stdin.read()", str(pidfile)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert env.alive("alpha")
        proc = env.qengine("daemon", "stop", "alpha", ok=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"alpha: not running (pid {gone.pid} has exited)"
    finally:
        holder.kill()
        holder.communicate()


def test_processes_stop_reports_a_worker_killed_mid_message(env: Env, wait_for: Wait) -> None:
    err_path = env.root / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(env.cmd("daemon", "run", "slow", "--processes", "2"), env=env.env, cwd=env.root,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        wait_for(lambda: env.state("slow").get("status") == "running" and env.alive("slow"))
        uid = env.add("Slow")
        wait_for(lambda: (env.root / f"started-{uid}").exists())
        busy = _busy_child(env, uid)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: f"(pid {busy}) got SIGTERM: stopping after the current iteration" in err_path.read_text())
        os.kill(busy, signal.SIGKILL)  # e.g. the OOM killer, while it finishes its message
        assert proc.wait(timeout=HANG_GUARD) == 1
    finally:
        proc.kill()
        proc.wait()
    state = env.state("slow")
    assert state["status"] == "stopped" and state["exit_code"] == 1
    assert f"(pid {busy}) exited with SIGKILL" in env.log("slow")


@pytest.mark.parametrize(("processes", "target", "caller"), [("1", "signals", ""), ("2", "ensure_dir", "run")])
def test_a_stop_signal_just_before_the_handlers_are_installed_is_not_lost(
    env: Env, wait_for: Wait, processes: str, target: str, caller: str
) -> None:
    # A profile hook sends SIGTERM at the last moment before the loop (or supervisor) installs
    # its handlers: the detached process's early handler catches it, and it must still stop.
    (env.daemons / "racy.py").write_text(textwrap.dedent(f"""\
        import os, signal, sys
        from queue_engine.daemon import Daemon

        def _hook(frame, event, arg):
            if (event == "call" and frame.f_code.co_name == {target!r} and "queue_engine" in frame.f_code.co_filename
                    and (not {caller!r} or frame.f_back.f_code.co_name == {caller!r})):
                sys.setprofile(None)
                os.kill(os.getpid(), signal.SIGTERM)

        class RacyDaemon(Daemon):
            sleep_time = 0.05

            def execute_start(self):
                pass

        if "queue_engine.supervisor" not in sys.argv[0] and "daemon" in sys.argv and "--detach" in sys.argv:
            sys.setprofile(_hook)
        """))
    env.qengine("daemon", "run", "racy", "--detach", "--processes", processes)
    wait_for(lambda: env.state("racy").get("status") == "stopped" and not env.alive("racy"))
