"""The Daemon class rules, the loop, pidfiles and ``[daemon]`` settings, in process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from queue_engine import ConfigurationError, QueueFactory, QueueMessage, WorkerError, load_config
from queue_engine.daemon import Daemon, DaemonLoop, WorkerDaemon, daemon_settings, find_daemon
from queue_engine.service import PidFile, ServiceError, read_pidfile, remove_stale_pidfile


class Ported(Daemon):
    """A PHP daemon ported as is: camelCase only."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def executeStart(self) -> int:  # noqa: N802
        self.calls.append("start")
        if len(self.calls) == 3:
            raise RuntimeError("registry down")
        if len(self.calls) >= 4:
            self.stop()  # the loop stops after this iteration, as on SIGTERM
        return 2

    def executeStop(self) -> None:  # noqa: N802
        self.calls.append("stop")

    def getSleepTime(self) -> int:  # noqa: N802
        return 0


def _loop(daemon: Daemon) -> DaemonLoop:
    return DaemonLoop(daemon, name="ported", config=None)


def test_camelcase_methods_are_called_by_the_snake_case_ones() -> None:
    daemon = Ported()
    loop = _loop(daemon)
    # The failing third iteration is followed by a 1 s backoff: stop the loop from the 4th.
    assert loop.run() == 0
    assert daemon.calls == ["start", "start", "start", "start", "stop"]
    assert loop.state.iterations == 4 and loop.state.messages_processed == 6
    assert loop.state.last_error is not None and "RuntimeError: registry down" in loop.state.last_error
    assert loop.state.status == "stopping"


def test_snake_case_wins_and_a_class_with_neither_is_refused() -> None:
    class Both(Ported):
        def get_sleep_time(self) -> float:
            return 7.0

    assert Both().get_sleep_time() == 7.0
    assert Ported().get_sleep_time() == 0.0

    class Plain(Daemon):
        def execute_start(self) -> None:
            pass

    Plain.check_class()
    assert Plain().get_sleep_time() == 1.0
    Plain().execute_stop()  # the default does nothing

    class Empty(Daemon):
        pass

    with pytest.raises(WorkerError, match="defines neither execute_start nor executeStart"):
        Empty.check_class()


def test_find_daemon_convention_and_worker_fallback(tmp_path: Path) -> None:
    (tmp_path / "daemons").mkdir()
    (tmp_path / "workers").mkdir()
    (tmp_path / "daemons" / "send_mail.py").write_text(
        "from queue_engine.daemon import Daemon\n\nclass SendMailDaemon(Daemon):\n"
        "    def executeStart(self):\n        pass\n"
    )
    (tmp_path / "daemons" / "empty.py").write_text(
        "from queue_engine.daemon import Daemon\n\nclass EmptyDaemon(Daemon):\n    pass\n"
    )
    (tmp_path / "workers" / "ocr.py").write_text(
        "from queue_engine.worker import Worker\n\nclass OcrWorker(Worker):\n    queue = 'OCR'\n"
        "    def process(self, message):\n        pass\n"
    )
    ini = tmp_path / "q.ini"
    ini.write_text(f"[queue]\ncacheRoot = {tmp_path / 'data'}\n[daemon]\npidDir = run\nlogDir = log\n")
    config = load_config(ini)
    spec = find_daemon("send-mail", config)
    assert spec.kind == "class" and spec.cls is not None and spec.cls.__name__ == "SendMailDaemon"
    assert find_daemon("ocr", config).queues == ("OCR",)  # the worker's spelling
    with pytest.raises(WorkerError, match="EmptyDaemon defines neither"):
        find_daemon("empty", config)
    settings = daemon_settings(config)
    assert settings.pid_dir == tmp_path / "run" and settings.log_dir == tmp_path / "log"
    assert settings.daemons_path == (tmp_path / "daemons",)


def test_worker_daemon_processes_one_message_per_iteration(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "echo.py").write_text(
        "from queue_engine.worker import Worker\n\nclass EchoWorker(Worker):\n    queue = 'echo'\n"
        "    def process(self, message):\n        return message.data\n"
    )
    ini = tmp_path / "q.ini"
    ini.write_text(f"[queue]\ncacheRoot = {tmp_path / 'data'}\nfsync = never\n")
    config = load_config(ini)
    manager = QueueFactory.get_queue_manager(config)
    try:
        for n in range(2):
            manager.add_message("echo", QueueMessage(data=n))
        daemon = WorkerDaemon(["echo"], sleep=3.0, manager=manager)
        daemon.config = config
        daemon.setup()
        assert [daemon.execute_start(), daemon.get_sleep_time()] == [1, 0.0]
        assert daemon.execute_start() == 1
        assert [daemon.execute_start(), daemon.get_sleep_time()] == [0, 3.0]  # idle: sleep
        assert daemon.status() == {"workers": {"echo": "EchoWorker"}}
        daemon.execute_stop()  # a given manager is not closed
        assert manager.queue_status("echo").messages_to_process == 0
    finally:
        manager.close()


def test_pidfile_lock_is_the_liveness(tmp_path: Path) -> None:
    path = tmp_path / "d.pid"
    first = PidFile(path)
    first.acquire()
    info = read_pidfile(path)
    assert info is not None and info.alive and info.pid == os.getpid()
    with pytest.raises(ServiceError, match=f"already running \\(pid {os.getpid()}"):
        PidFile(path).acquire()  # flock is per open file: conflicts even within one process
    assert not remove_stale_pidfile(path)
    first.release()
    assert not path.exists()

    # A pidfile naming a live process (ours) but with a free lock: stale, never "running".
    path.write_text(f"{os.getpid()} 1\n")
    info = read_pidfile(path)
    assert info is not None and not info.alive
    second = PidFile(path)
    second.acquire()  # replaces it
    assert read_pidfile(path) == read_pidfile(path) and read_pidfile(path).alive  # type: ignore[union-attr]
    second.release()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary files left


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bogus = 1", "unknown key [daemon] bogus; valid: daemonsPath"),
        ("logBackups = -1", "[daemon] logBackups = '-1' must be >= 0"),
        ("heartbeatTimeout = 0", "[daemon] heartbeatTimeout = '0' must be > 0"),
        ("stopTimeout = soon", "[daemon] stopTimeout = 'soon' is not a number"),
    ],
)
def test_daemon_settings_are_validated(tmp_path: Path, line: str, message: str) -> None:
    ini = tmp_path / "q.ini"
    ini.write_text(f"[daemon]\n{line}\n")
    with pytest.raises(ConfigurationError) as info:
        daemon_settings(load_config(ini))
    assert str(info.value).startswith(f"{ini.resolve()}: ") and message in str(info.value)


def test_daemon_name_section_is_validated(tmp_path: Path) -> None:
    ini = tmp_path / "q.ini"
    ini.write_text("[daemon.anpr]\nprocesses = 0\n")
    with pytest.raises(ConfigurationError, match=r"\[daemon.anpr\] processes = '0' must be >= 1"):
        find_daemon("anpr", load_config(ini))
    ini.write_text("[daemon.anpr]\nqueue = ANPR\n")
    with pytest.raises(ConfigurationError, match=r"unknown key \[daemon.anpr\] queue; valid: queues"):
        daemon_settings(load_config(ini))




def test_failed_reload_keeps_the_previous_workers(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "alpha.py").write_text(
        "from queue_engine.worker import Worker\n\nclass AlphaWorker(Worker):\n    queue = 'alpha'\n"
        "    def process(self, message):\n        pass\n"
    )
    (tmp_path / "workers" / "beta.py").write_text("raise RuntimeError('beta is broken')\n")
    ini = tmp_path / "q.ini"
    base = f"[queue]\ncacheRoot = {tmp_path / 'data'}\nfsync = never\nworkersPath = {tmp_path / 'workers'}\n"
    ini.write_text(base + "[daemon.hosted]\nqueues = alpha\n")
    config = load_config(ini)
    spec = find_daemon("hosted", config)
    daemon = spec.create()
    loop = DaemonLoop(daemon, name="hosted", config=config, reload_config=lambda: load_config(ini))
    daemon.setup()
    try:
        ini.write_text(base + "[daemon.hosted]\nqueues = alpha, beta\n")  # beta cannot load
        loop._do_reload()
        assert loop.state.reloads == 0
        manager = QueueFactory.get_queue_manager(config)
        try:
            manager.add_message("alpha", QueueMessage(data=1))
        finally:
            manager.close()
        assert daemon.execute_start() == 1  # the previous workers still run
        assert daemon.status() == {"workers": {"alpha": "AlphaWorker"}}
        assert isinstance(daemon, WorkerDaemon) and daemon.queues == ("alpha",)
    finally:
        daemon.execute_stop()


def test_a_status_probe_does_not_fail_a_start(tmp_path: Path) -> None:
    import fcntl
    import threading

    path = tmp_path / "d.pid"
    path.write_text("999999 1\n")  # stale
    probe = os.open(path, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)  # what read_pidfile holds for an instant
    outcome: list[object] = []
    pidfile = PidFile(path, contention_wait=60.0)  # hang guard: the probe ends long before

    def start() -> None:
        try:
            pidfile.acquire()
            outcome.append("acquired")
        except ServiceError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    try:
        thread.join(0.5)  # let it meet the probe (a start that gives up at once fails here)
    finally:
        fcntl.flock(probe, fcntl.LOCK_UN)
        os.close(probe)
    thread.join(60)
    assert outcome == ["acquired"]
    info = read_pidfile(path)
    assert info is not None and info.alive and info.pid == os.getpid()
    pidfile.release()
