"""Workers end to end on the file backend: loading by convention, settings, the runner loop,
retries, the failed store, the audit trail, callbacks, time limits and signals.

Worker code is real files in ``tmp_path`` loaded by the real loader; state that must survive
between attempts lives in files. Every backoff is FixedBackoff(0) unless the test is about
the delay, so nothing sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from queue_engine import (
    Config,
    ConfigurationError,
    QueueFactory,
    QueueManager,
    QueueMessage,
    WorkerError,
    load_config,
)
from queue_engine.audit import get_audit_log
from queue_engine.jobs import FunctionJobWorker
from queue_engine.loader import (
    ENTRY_POINT_GROUP,
    find_worker_class,
    load_worker,
    worker_class_name,
    worker_file_name,
    workers_path,
)
from queue_engine.retry import ExponentialBackoff, LinearBackoff
from queue_engine.runner import WorkerRunner
from queue_engine.worker import Worker, queue_mode, resolve_settings

HANG_GUARD = 120.0

#: A worker whose attempt N fails until ``data["ok_at"]``; every attempt appends to a log file.
FLAKY = """
    import json
    from pathlib import Path
    from queue_engine.retry import FixedBackoff
    from queue_engine.worker import Worker

    class FlakyWorker(Worker):
        queue = "flaky"
        retries = 3
        backoff = FixedBackoff(0)

        def process(self, message):
            log = Path(message.data["log"])
            n = len(log.read_text().splitlines()) + 1 if log.exists() else 1
            with log.open("a") as fh:
                fh.write(f"attempt {n}\\n")
            if n < message.data["ok_at"]:
                raise RuntimeError(f"boom {n}")
            return n

        def on_success(self, message, result):
            with open(message.data["events"], "a") as fh:
                fh.write(json.dumps(["on_success", message.uuid, result]) + "\\n")

        def on_failure(self, message, error):
            with open(message.data["events"], "a") as fh:
                fh.write(json.dumps(["on_failure", message.uuid, str(error)]) + "\\n")
"""


@dataclass
class App:
    """An application folder: config.ini, workers/, a lib/ on sys.path, and a file-backed queue store."""

    root: Path
    monkeypatch: pytest.MonkeyPatch
    managers: list[QueueManager] = field(default_factory=list)

    @property
    def workers(self) -> Path:
        return self.root / "workers"

    def worker(self, name: str, source: str, folder: Path | None = None) -> Path:
        path = (folder or self.workers) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    def lib(self, source: str) -> str:
        """Write an importable module on sys.path; return its name."""
        name = f"qe_lib_{uuidlib.uuid4().hex[:10]}"
        (self.root / "lib").mkdir(exist_ok=True)
        (self.root / "lib" / f"{name}.py").write_text(textwrap.dedent(source))
        self.monkeypatch.syspath_prepend(str(self.root / "lib"))
        return name

    def config(self, extra: str = "") -> Config:
        ini = self.root / "config.ini"
        ini.write_text(f"[queue]\nqueueType = file\ncacheRoot = q\nfsync = never\n{textwrap.dedent(extra)}")
        return load_config(ini)

    def manager(self, extra: str = "") -> QueueManager:
        manager = QueueFactory.get_queue_manager(self.config(extra))
        self.managers.append(manager)
        return manager

    def file(self, name: str) -> str:
        return str(self.root / name)

    def events(self) -> list[list[Any]]:
        path = self.root / "events"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    application = App(tmp_path / "app", monkeypatch)
    application.root.mkdir()
    yield application
    for manager in application.managers:
        manager.close()


def audit_rows(manager: QueueManager, queue: str) -> list[tuple[str, int, str, str | None]]:
    return [(r.uuid, r.attempt, r.outcome, r.error) for r in get_audit_log(manager).query(queue)]


def add(manager: QueueManager, queue: str, data: Any, **fields: Any) -> str:
    return manager.add_message(queue, QueueMessage(data=data, **fields))


# -- the flaky worker and the hopeless one ---------------------------------------------------
def test_flaky_worker_succeeds_on_third_attempt(app: App) -> None:
    app.worker("flaky.py", FLAKY)
    manager = app.manager()
    uid = add(manager, "flaky", {"log": app.file("log"), "ok_at": 3, "events": app.file("events")}, alias="f1")

    handled = WorkerRunner(manager, ["flaky"], burst=True).run()

    assert handled == 3
    assert audit_rows(manager, "flaky") == [
        (uid, 1, "retry", "RuntimeError: boom 1"),
        (uid, 2, "retry", "RuntimeError: boom 2"),
        (uid, 3, "success", None),
    ]
    records = get_audit_log(manager).query("flaky")
    assert {(r.alias, r.worker, r.pid) for r in records} == {("f1", "FlakyWorker", os.getpid())}
    assert all(r.duration >= 0 and r.host for r in records)
    assert manager.failed_messages("flaky") == []
    status = manager.queue_status("flaky")
    assert (status.messages_to_process, status.failed) == (0, 0)
    assert status.last_message_processed is not None and status.last_message_processed.uuid == uid
    assert app.events() == [["on_success", uid, 3]]


def test_worker_that_never_succeeds_lands_in_failed_store(app: App) -> None:
    app.worker("flaky.py", FLAKY)
    manager = app.manager()
    uid = add(manager, "flaky", {"log": app.file("log"), "ok_at": 99, "events": app.file("events")})

    assert WorkerRunner(manager, ["flaky"], burst=True).run() == 3

    failed = manager.failed_messages("flaky")
    assert [f.message.uuid for f in failed] == [uid]
    assert failed[0].errors == ["RuntimeError: boom 1", "RuntimeError: boom 2", "RuntimeError: boom 3"]
    assert audit_rows(manager, "flaky") == [
        (uid, 1, "retry", "RuntimeError: boom 1"),
        (uid, 2, "retry", "RuntimeError: boom 2"),
        (uid, 3, "failed", "RuntimeError: boom 3"),
    ]
    assert app.events() == [["on_failure", uid, "boom 3"]]  # once, after the last attempt
    status = manager.queue_status("flaky")
    assert (status.messages_to_process, status.failed) == (0, 1)
    assert status.last_message_processed is not None and status.last_message_processed.uuid == uid


def test_requeued_failed_message_runs_again(app: App) -> None:
    app.worker("flaky.py", FLAKY)
    manager = app.manager()
    uid = add(manager, "flaky", {"log": app.file("log"), "ok_at": 4, "events": app.file("events")})
    WorkerRunner(manager, ["flaky"], burst=True).run()
    assert manager.requeue_failed("flaky") == [uid]

    assert WorkerRunner(manager, ["flaky"], burst=True).run() == 1  # attempt 4 of the log succeeds
    assert [row[1:3] for row in audit_rows(manager, "flaky")][-1] == (1, "success")
    assert manager.failed_messages("flaky") == []


def test_config_section_overrides_class_retries(app: App) -> None:
    app.worker("flaky.py", FLAKY)
    manager = app.manager("[worker.flaky]\nretries = 2\n")
    uid = add(manager, "flaky", {"log": app.file("log"), "ok_at": 3, "events": app.file("events")})
    assert WorkerRunner(manager, ["flaky"], burst=True).run() == 2
    assert [f.errors for f in manager.failed_messages("flaky")] == [["RuntimeError: boom 1", "RuntimeError: boom 2"]]
    assert [r[2] for r in audit_rows(manager, "flaky")] == ["retry", "failed"]
    assert app.events() == [["on_failure", uid, "boom 2"]]


def test_message_retries_override_worker_default(app: App) -> None:
    app.worker("flaky.py", FLAKY)
    manager = app.manager()
    add(manager, "flaky", {"log": app.file("log"), "ok_at": 5, "events": app.file("events")}, retries=5)
    assert WorkerRunner(manager, ["flaky"], burst=True).run() == 5
    assert manager.failed_messages("flaky") == []
    assert [r[2] for r in audit_rows(manager, "flaky")] == ["retry"] * 4 + ["success"]


# -- unrecoverable errors -------------------------------------------------------------------
BROKEN = """
    from queue_engine import Unrecoverable
    from queue_engine.retry import FixedBackoff
    from queue_engine.worker import Worker

    class BrokenWorker(Worker):
        queue = "broken"
        retries = 5
        backoff = FixedBackoff(0)
        unrecoverable = (KeyError,)

        def process(self, message):
            kind = message.data["kind"]
            if kind == "unrecoverable":
                raise Unrecoverable("bad shape")
            if kind == "listed":
                raise KeyError("citizen_id")
            raise ValueError("transient")
"""


@pytest.mark.parametrize(
    ("kind", "errors"),
    [
        ("unrecoverable", ["Unrecoverable: bad shape"]),
        ("listed", ["KeyError: 'citizen_id'"]),
        ("other", ["ValueError: transient"] * 5),
    ],
)
def test_unrecoverable_errors_skip_remaining_attempts(app: App, kind: str, errors: list[str]) -> None:
    app.worker("broken.py", BROKEN)
    manager = app.manager()
    uid = add(manager, "broken", {"kind": kind})
    assert WorkerRunner(manager, ["broken"], burst=True).run() == len(errors)
    assert [f.errors for f in manager.failed_messages("broken")] == [errors]
    outcomes = ["retry"] * (len(errors) - 1) + ["failed"]
    expected = [(uid, n, o, e) for n, (o, e) in enumerate(zip(outcomes, errors, strict=True), 1)]
    assert audit_rows(manager, "broken") == expected


# -- backoff, time limit ---------------------------------------------------------------------
def test_backoff_delay_defers_the_next_attempt(app: App) -> None:
    app.worker(
        "slowretry.py",
        """
        from queue_engine.retry import FixedBackoff
        from queue_engine.worker import Worker

        class SlowretryWorker(Worker):
            retries = 3
            backoff = FixedBackoff(3600)

            def process(self, message):
                raise OSError("service down")
        """,
    )
    manager = app.manager()
    add(manager, "slowretry", None)
    assert WorkerRunner(manager, ["slowretry"], burst=True).run() == 1  # the retry is an hour away
    status = manager.queue_status("slowretry")
    assert (status.ready, status.deferred, status.failed) == (0, 1, 0)
    assert [r[2:] for r in audit_rows(manager, "slowretry")] == [("retry", "OSError: service down")]


def test_time_limit_fails_an_attempt(app: App) -> None:
    app.worker(
        "sleepy.py",
        """
        import time
        from queue_engine.worker import Worker

        class SleepyWorker(Worker):
            time_limit = 0.2

            def process(self, message):
                time.sleep(600)  # the hang guard: without the limit the test would stall here
        """,
    )
    manager = app.manager()
    uid = add(manager, "sleepy", None)
    assert WorkerRunner(manager, ["sleepy"], burst=True).run() == 1
    [failed] = manager.failed_messages("sleepy")
    assert failed.errors == [
        f"TimeLimitExceeded: attempt 1 of message {uid} (sleepy) ran longer than its time limit of 0.2s"
    ]
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.default_int_handler, None)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_time_limit_from_config_and_lease(app: App) -> None:
    app.worker(
        "sleepy.py",
        """
        import time
        from queue_engine.worker import Worker

        class SleepyWorker(Worker):
            def process(self, message):
                time.sleep(600)
        """,
    )
    manager = app.manager("lease = 5\n[worker.sleepy]\ntimeLimit = 0.2\nretries = 2\nretryDelay = 0\n")
    add(manager, "sleepy", None)
    runner = WorkerRunner(manager, ["sleepy"], burst=True)
    assert runner.handlers["sleepy"].lease == 5
    assert runner.run() == 2
    assert [e.split(":")[0] for e in manager.failed_messages("sleepy")[0].errors] == ["TimeLimitExceeded"] * 2


# -- callbacks -------------------------------------------------------------------------------
def test_configured_dotted_callbacks_run_after_class_hooks(app: App) -> None:
    app.worker("flaky.py", FLAKY)
    events = app.file("events")
    lib = app.lib(
        f"""
        import json

        def done(message, result):
            with open({events!r}, "a") as fh:
                fh.write(json.dumps(["onSuccess", message.uuid, result]) + "\\n")

        def gave_up(message, error):
            with open({events!r}, "a") as fh:
                fh.write(json.dumps(["onFailure", message.uuid, type(error).__name__]) + "\\n")
        """
    )
    manager = app.manager(f"[worker.flaky]\nonSuccess = {lib}:done\nonFailure = {lib}.gave_up\n")
    ok = add(manager, "flaky", {"log": app.file("log1"), "ok_at": 1, "events": events})
    bad = add(manager, "flaky", {"log": app.file("log2"), "ok_at": 9, "events": events})
    WorkerRunner(manager, ["flaky"], burst=True).run()
    assert app.events() == [
        ["on_success", ok, 1],
        ["onSuccess", ok, 1],
        ["on_failure", bad, "boom 3"],
        ["onFailure", bad, "RuntimeError"],
    ]


def test_raising_callbacks_are_logged_and_lose_nothing(app: App, caplog: pytest.LogCaptureFixture) -> None:
    app.worker(
        "grumpy.py",
        """
        from queue_engine.worker import Worker

        class GrumpyWorker(Worker):
            def process(self, message):
                if message.data == "fail":
                    raise ValueError("no")
                return "ok"

            def on_success(self, message, result):
                raise RuntimeError("success hook broke")

            def on_failure(self, message, error):
                raise RuntimeError("failure hook broke")
        """,
    )
    manager = app.manager()
    add(manager, "grumpy", "fine")
    bad = add(manager, "grumpy", "fail")
    with caplog.at_level("ERROR", logger="qengine.worker"):
        assert WorkerRunner(manager, ["grumpy"], burst=True).run() == 2
    assert manager.queue_status("grumpy").messages_to_process == 0
    assert [f.message.uuid for f in manager.failed_messages("grumpy")] == [bad]
    assert [r[2] for r in audit_rows(manager, "grumpy")] == ["success", "failed"]
    assert "on_success callback of GrumpyWorker failed" in caplog.text
    assert "on_failure callback of GrumpyWorker failed" in caplog.text


def test_bad_callback_path_is_a_configuration_error(app: App) -> None:
    app.worker("flaky.py", FLAKY)
    manager = app.manager("[worker.flaky]\nonSuccess = no_such_module_qe:func\n")
    with pytest.raises(ConfigurationError, match=r"\[worker\.flaky\] onSuccess = 'no_such_module_qe:func': cannot"):
        WorkerRunner(manager, ["flaky"])


# -- settings --------------------------------------------------------------------------------
class _Plain(Worker):
    queue = "plain"

    def process(self, message: QueueMessage) -> None:
        return None


def test_settings_default_to_class_attributes(app: App) -> None:
    settings = resolve_settings(_Plain(), app.config())
    assert (settings.queue, settings.retries, settings.time_limit, settings.mode) == ("plain", 1, None, "queued")
    assert isinstance(settings.backoff, ExponentialBackoff)


def test_settings_from_config_section(app: App) -> None:
    config = app.config(
        """
        mode = direct
        [worker.plain]
        Retries = 4
        timeLimit = 2.5
        backoff = linear
        retryDelay = 1
        retryIncrement = 2
        """
    )
    settings = resolve_settings(_Plain(), config)
    assert (settings.retries, settings.time_limit, settings.mode) == (4, 2.5, "direct")
    assert isinstance(settings.backoff, LinearBackoff) and settings.backoff.delay(3) == 5


def test_per_queue_mode_overrides_queue_mode(app: App) -> None:
    config = app.config("mode = direct\n[worker.plain]\nmode = queued\n")
    assert queue_mode(config, "plain") == "queued"
    assert queue_mode(config, "other") == "direct"
    assert queue_mode(None, "plain") == "queued"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("retries = 0", r"\[worker\.plain\] retries = '0' must be >= 1"),
        ("retries = many", r"\[worker\.plain\] retries = 'many' is not a whole number"),
        ("timeLimit = -1", r"\[worker\.plain\] timeLimit = '-1' must be a finite number >= 0"),
        ("mode = later", r"\[worker\.plain\] mode = 'later' is not a mode; valid: queued, direct"),
        ("colour = blue", r"\[worker\.plain\] unknown key colour; valid: retries, timeLimit"),
        ("onFailure = nodots", r"\[worker\.plain\] onFailure = 'nodots' is not a dotted path"),
        ("onSuccess = json:nope", r"\[worker\.plain\] onSuccess = 'json:nope': 'json' has no attribute 'nope'"),
        ("onSuccess = json:__doc__", r"\[worker\.plain\] onSuccess = 'json:__doc__' is a str, not a callable"),
    ],
)
def test_bad_worker_settings_name_file_and_key(app: App, section: str, expected: str) -> None:
    config = app.config(f"[worker.plain]\n{section}\n")
    with pytest.raises(ConfigurationError, match=re.escape(str(config.source)) + ": " + expected):
        resolve_settings(_Plain(), config)


def test_timelimit_zero_means_no_limit(app: App) -> None:
    class Limited(_Plain):
        time_limit = 3.0

    assert resolve_settings(Limited(), app.config("[worker.plain]\ntimeLimit = 0\n")).time_limit is None


@pytest.mark.parametrize(
    ("attr", "value", "expected"),
    [
        ("retries", 0, "retries = 0: a whole number >= 1"),
        ("backoff", 5, "backoff = 5: a queue_engine.retry.Backoff is required"),
        ("time_limit", -1, "time_limit = -1: None or a number of seconds > 0"),
        ("unrecoverable", [KeyError], "unrecoverable = \\[<class 'KeyError'>\\]: a tuple of exception classes"),
    ],
)
def test_bad_class_attributes_are_worker_errors(attr: str, value: Any, expected: str) -> None:
    worker = type("OddWorker", (_Plain,), {attr: value})()
    with pytest.raises(WorkerError, match="OddWorker." + expected):
        resolve_settings(worker, None)


# -- loader ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("queue", "file", "cls"),
    [
        ("ANPR", "anpr.py", "AnprWorker"),
        ("send-mail.v2", "send_mail_v2.py", "SendMailV2Worker"),
        ("q_1", "q_1.py", "Q1Worker"),
    ],
)
def test_naming_convention(queue: str, file: str, cls: str) -> None:
    assert (worker_file_name(queue), worker_class_name(queue)) == (file, cls)


def test_found_by_class_name_convention(app: App) -> None:
    path = app.worker(
        "anpr.py",
        """
        from queue_engine.worker import Worker

        class Helper(Worker):
            queue = "OTHER"
            def process(self, message): ...

        class AnprWorker(Worker):
            def process(self, message):
                return "anpr"
        """,
    )
    worker = load_worker("ANPR", app.config())
    assert type(worker).__name__ == "AnprWorker" and worker.queue == "ANPR"
    module = type(worker).__module__
    assert module.startswith("_qengine_workers.") and sys.modules[module].__file__ == str(path.resolve())


def test_found_by_queue_attribute(app: App) -> None:
    app.worker(
        "anpr.py",
        """
        from queue_engine.worker import Worker

        class CitizenSync(Worker):
            queue = "ANPR"
            def process(self, message): ...
        """,
    )
    assert type(load_worker("ANPR", app.config())).__name__ == "CitizenSync"


def test_first_folder_of_workers_path_wins(app: App) -> None:
    for folder, label in (("extra", "Extra"), ("workers", "Default")):
        app.worker(
            "jobs.py",
            f"""
            from queue_engine.worker import Worker

            class {label}(Worker):
                queue = "jobs"
                def process(self, message): ...
            """,
            folder=app.root / folder,
        )
    config = app.config("workersPath = extra, workers\n")
    assert type(load_worker("jobs", config)).__name__ == "Extra"


def test_workers_path_parsing(app: App, tmp_path: Path) -> None:
    assert workers_path(app.config()) == [app.root / "workers"]  # next to the config file
    assert workers_path(None) == [Path.cwd() / "workers"]
    config = app.config(f"workersPath = one,\n  {tmp_path}/abs:two\n")
    assert workers_path(config) == [app.root / "one", tmp_path / "abs", app.root / "two"]


def test_loaded_once_per_path_under_private_name(app: App) -> None:
    app.worker(
        "counted.py",
        """
        from queue_engine.worker import Worker
        import builtins
        builtins.__dict__.setdefault("_qe_loads", []).append(__name__)

        class CountedWorker(Worker):
            def process(self, message): ...
        """,
    )
    import builtins

    config = app.config()
    try:
        a, b = load_worker("counted", config), load_worker("counted", config)
        assert type(a) is type(b)
        loads = [n for n in builtins.__dict__["_qe_loads"] if n == type(a).__module__]
        assert len(loads) == 1
    finally:
        builtins.__dict__.pop("_qe_loads", None)


def test_app_package_named_workers_does_not_collide(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = app.root / "site" / "workers"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("ORIGIN = 'app package'\n")
    (pkg / "anpr.py").write_text("VALUE = 'app module, not a worker'\n")
    app.worker(
        "anpr.py",
        """
        from queue_engine.worker import Worker

        class AnprWorker(Worker):
            def process(self, message): ...
        """,
    )
    monkeypatch.syspath_prepend(str(app.root / "site"))
    monkeypatch.delitem(sys.modules, "workers", raising=False)
    monkeypatch.delitem(sys.modules, "workers.anpr", raising=False)
    import workers  # type: ignore[import-not-found]
    import workers.anpr  # type: ignore[import-not-found]

    worker = load_worker("ANPR", app.config())
    assert type(worker).__module__.startswith("_qengine_workers.")
    assert sys.modules["workers"] is workers and workers.ORIGIN == "app package"
    assert workers.anpr.VALUE == "app module, not a worker"


def test_entry_point_registers_a_worker(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    site = app.root / "site"
    site.mkdir()
    module = f"qe_plugin_{uuidlib.uuid4().hex[:8]}"
    (site / f"{module}.py").write_text(
        "from queue_engine.worker import Worker\n\n"
        "class PluginWorker(Worker):\n"
        "    def process(self, message):\n"
        "        return 'plugin'\n"
    )
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nplugged = {module}:PluginWorker\n")
    monkeypatch.syspath_prepend(str(site))

    worker = load_worker("plugged", app.config())
    assert type(worker).__name__ == "PluginWorker" and worker.queue == "plugged"


def test_unknown_type_error_lists_where_it_looked(app: App) -> None:
    config = app.config("workersPath = workers, more\n")
    with pytest.raises(WorkerError) as info:
        load_worker("ANPR", config, function_jobs=False)
    text = str(info.value)
    assert text.startswith("no worker for queue 'ANPR': looked for anpr.py (class AnprWorker or a Worker with queue")
    assert f"{app.root / 'workers' / 'anpr.py'} (no such file)" in text
    assert f"{app.root / 'more' / 'anpr.py'} (no such file)" in text
    assert f"entry point group '{ENTRY_POINT_GROUP}' (no entry point named 'ANPR')" in text


def test_without_per_type_worker_function_jobs_run(app: App) -> None:
    worker = load_worker("orders", app.config())
    assert isinstance(worker, FunctionJobWorker) and worker.queue == "orders"
    assert find_worker_class("orders", app.config())[0] is None


def test_file_with_workers_for_other_queues_is_an_error(app: App) -> None:
    app.worker(
        "anpr.py",
        """
        from queue_engine.worker import Worker

        class Misnamed(Worker):
            queue = "ANRP"
            def process(self, message): ...
        """,
    )
    with pytest.raises(WorkerError, match=r"anpr\.py defines Misnamed \(queue 'ANRP'\) but no worker for queue 'ANPR'"):
        load_worker("ANPR", app.config())


def test_worker_file_that_fails_to_import(app: App) -> None:
    path = app.worker("anpr.py", "raise ImportError('missing dependency zeep')\n")
    with pytest.raises(WorkerError, match=f"cannot load worker file '{re.escape(str(path.resolve()))}': ImportError"):
        load_worker("ANPR", app.config())
    assert not [m for m in sys.modules if m.startswith("_qengine_workers.") and sys.modules[m].__file__ == str(path)]


def test_non_job_message_on_queue_without_worker_fails_with_search_list(app: App) -> None:
    manager = app.manager()
    add(manager, "ANPR", {"citizen_id": "X"})
    WorkerRunner(manager, ["ANPR"], burst=True).run()
    [failed] = manager.failed_messages("ANPR")
    assert failed.errors[0].startswith("Unrecoverable: message ")
    assert "is not a function job" in failed.errors[0] and "anpr.py (no such file)" in failed.errors[0]


# -- the runner loop -------------------------------------------------------------------------
RECORDER = """
    from queue_engine.worker import Worker

    class {cls}(Worker):
        queue = {queue!r}

        def process(self, message):
            with open(message.data["out"], "a") as fh:
                fh.write(message.data["tag"] + "\\n")
"""


def test_round_robin_over_queues(app: App) -> None:
    for queue in ("alpha", "beta"):
        app.worker(f"{queue}.py", RECORDER.format(cls=queue.title() + "Worker", queue=queue))
    manager = app.manager()
    out = app.file("out")
    for tag in ("a1", "a2", "a3"):
        add(manager, "alpha", {"out": out, "tag": tag})
    for tag in ("b1", "b2"):
        add(manager, "beta", {"out": out, "tag": tag})
    assert WorkerRunner(manager, ["alpha", "beta"], burst=True).run() == 5
    assert Path(out).read_text().split() == ["a1", "b1", "a2", "b2", "a3"]


def test_max_jobs_and_run_once(app: App) -> None:
    app.worker("alpha.py", RECORDER.format(cls="AlphaWorker", queue="alpha"))
    manager = app.manager()
    for n in range(4):
        add(manager, "alpha", {"out": app.file("out"), "tag": str(n)})
    runner = WorkerRunner(manager, ["alpha"], max_jobs=2, sleep=0)
    assert runner.run() == 2
    assert runner.run_once() is True
    assert manager.queue_status("alpha").messages_to_process == 1
    assert runner.run_once() is True and runner.run_once() is False


def test_stop_before_run_returns_at_once(app: App) -> None:
    manager = app.manager()
    add(manager, "orders", {"job": "json:dumps", "args": [1]})
    runner = WorkerRunner(manager, ["orders"])
    runner.stop()
    assert runner.run() == 0
    assert manager.queue_status("orders").ready == 1


def test_sigterm_finishes_current_message_then_stops(app: App) -> None:
    app.worker(
        "term.py",
        """
        import os, signal
        from queue_engine.worker import Worker

        class TermWorker(Worker):
            def process(self, message):
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, delivered mid-message
                return "finished anyway"
        """,
    )
    manager = app.manager()
    first = add(manager, "term", 1)
    add(manager, "term", 2)
    before = signal.getsignal(signal.SIGTERM)
    # Not burst: only the stop flag can end this run (max_time is a hang guard).
    handled = WorkerRunner(manager, ["term"], sleep=0.05, max_time=HANG_GUARD).run()
    assert handled == 1
    assert audit_rows(manager, "term") == [(first, 1, "success", None)]
    assert manager.queue_status("term").ready == 1
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"queues": []}, "no queue to work on"),
        ({"queues": ["ok"], "max_jobs": 0}, "invalid max_jobs 0"),
        ({"queues": ["ok"], "sleep": -1}, "invalid sleep -1"),
        ({"queues": ["ok"], "max_time": float("nan")}, "invalid max_time nan"),
    ],
)
def test_runner_argument_errors(app: App, kwargs: dict[str, Any], expected: str) -> None:
    manager = app.manager()
    queues = kwargs.pop("queues")
    with pytest.raises(WorkerError, match=expected):
        WorkerRunner(manager, queues, **kwargs)


# -- a real `qengine work` process -----------------------------------------------------------
def test_qengine_work_subprocess_flaky_and_hopeless(app: App) -> None:
    app.worker("flaky.py", FLAKY)
    manager = app.manager()
    events = app.file("events")
    ok = add(manager, "flaky", {"log": app.file("log1"), "ok_at": 3, "events": events})
    bad = add(manager, "flaky", {"log": app.file("log2"), "ok_at": 99, "events": events})
    proc = subprocess.run(
        [sys.executable, "-m", "queue_engine", "--config", str(app.root / "config.ini"), "work", "flaky", "--burst"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        cwd=app.root,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("handled 6 ")
    rows = audit_rows(manager, "flaky")
    assert rows == [
        (ok, 1, "retry", "RuntimeError: boom 1"),
        (ok, 2, "retry", "RuntimeError: boom 2"),
        (ok, 3, "success", None),
        (bad, 1, "retry", "RuntimeError: boom 1"),
        (bad, 2, "retry", "RuntimeError: boom 2"),
        (bad, 3, "failed", "RuntimeError: boom 3"),
    ]
    assert {r.pid for r in get_audit_log(manager).query("flaky")} == {_child_pid(manager)}
    [failed] = manager.failed_messages("flaky")
    assert failed.message.uuid == bad
    assert failed.errors == ["RuntimeError: boom 1", "RuntimeError: boom 2", "RuntimeError: boom 3"]
    assert app.events() == [["on_success", ok, 3], ["on_failure", bad, "boom 3"]]


def _child_pid(manager: QueueManager) -> int:
    pids = {r.pid for r in get_audit_log(manager).query("flaky")}
    assert len(pids) == 1 and os.getpid() not in pids
    return pids.pop()



def test_time_limit_is_not_enforced_outside_main_thread(app: App, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    app.worker(
        "slow.py",
        """
        import time
        from queue_engine.worker import Worker

        class SlowWorker(Worker):
            time_limit = 0.01

            def process(self, message):
                time.sleep(0.1)
                return "done"
        """,
    )
    manager = app.manager()
    uid = add(manager, "slow", None)
    runner = WorkerRunner(manager, ["slow"], burst=True)
    results: list[int] = []
    with caplog.at_level("WARNING", logger="qengine.worker"):
        thread = threading.Thread(target=lambda: results.append(runner.run()))
        thread.start()
        thread.join(HANG_GUARD)
    assert results == [1]
    assert audit_rows(manager, "slow") == [(uid, 1, "success", None)]
    assert "time limit of 0.01s is not enforced outside the main thread" in caplog.text
