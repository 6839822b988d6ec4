"""Function jobs and direct mode on the file backend, plus the repository's example workers.

Job functions live in a real module written to ``tmp_path`` and put on ``sys.path``, so the
worker resolves them by import exactly as a separate process would.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import types
import uuid as uuidlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from queue_engine import ExecutionMode, InvalidMessage, QueueFactory, QueueManager, QueueMessage, load_config
from queue_engine.audit import get_audit_log
from queue_engine.jobs import FunctionJobWorker, Queue, job_path
from queue_engine.runner import WorkerRunner

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD = 120.0

JOBS = """
    import json
    from pathlib import Path

    from queue_engine import Unrecoverable


    def record(path, tag, *, extra=None):
        with open(path, "a") as fh:
            fh.write(json.dumps([tag, extra]) + "\\n")
        return tag


    def flaky(log, ok_at):
        log = Path(log)
        n = len(log.read_text().splitlines()) + 1 if log.exists() else 1
        with log.open("a") as fh:
            fh.write("x\\n")
        if n < ok_at:
            raise RuntimeError(f"boom {n}")
        return n


    def hopeless():
        raise Unrecoverable("cannot ever work")


    def make_closure(value):
        def inner():
            return value
        return inner


    class Holder:
        @staticmethod
        def static(path, tag):
            return record(path, tag)


    def _plain_decorator(func):
        def wrapper(*args, **kwargs):
            return func(*args, **kwargs)
        return wrapper


    def original():
        return 1


    old_original = original


    def original():  # rebinding the name: old_original is no longer importable as "original"
        return 2


    square = lambda x: x * x  # noqa: E731
"""


@pytest.fixture
def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A fresh, importable job module."""
    lib = tmp_path / "lib"
    lib.mkdir()
    name = f"qe_jobs_{uuidlib.uuid4().hex[:10]}"
    (lib / f"{name}.py").write_text(textwrap.dedent(JOBS))
    monkeypatch.syspath_prepend(str(lib))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture
def open_app(tmp_path: Path) -> Iterator[Callable[..., QueueManager]]:
    """Open a file-backed manager on ``tmp_path`` with ``[queue]`` lines and extra sections."""
    opened: list[QueueManager] = []

    def factory(extra: str = "") -> QueueManager:
        ini = tmp_path / "config.ini"
        ini.write_text(f"[queue]\nqueueType = file\ncacheRoot = q\nfsync = never\n{textwrap.dedent(extra)}")
        manager = QueueFactory.get_queue_manager(load_config(ini))
        opened.append(manager)
        return manager

    yield factory
    for manager in opened:
        manager.close()


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def audit_rows(manager: QueueManager, queue: str) -> list[tuple[str, int, str, str | None]]:
    return [(r.uuid, r.attempt, r.outcome, r.error) for r in get_audit_log(manager).query(queue)]


# -- enqueue and run --------------------------------------------------------------------------
def test_enqueue_stores_import_path_and_json_arguments(
    jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path
) -> None:
    manager = open_app()
    out = tmp_path / "out"
    uid = Queue("orders", manager).enqueue(jobs.record, str(out), "first", extra={"n": [1, 2]}, job_alias="order-1")
    [message] = manager.find_messages("orders", uuid=uid)
    assert message.data == {
        "job": f"{jobs.__name__}:record",
        "args": [str(out), "first"],
        "kwargs": {"extra": {"n": [1, 2]}},
    }
    assert (message.alias, message.retries) == ("order-1", 0)

    assert WorkerRunner(manager, ["orders"], burst=True).run() == 1
    assert lines(out) == [["first", {"n": [1, 2]}]]
    assert audit_rows(manager, "orders") == [(uid, 1, "success", None)]
    assert get_audit_log(manager).query("orders")[0].worker == "FunctionJobWorker"


def test_job_retries_and_failed_store(
    jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path
) -> None:
    manager = open_app("[worker.orders]\nretryDelay = 0\n")
    q = Queue("orders", manager)
    ok = q.enqueue(jobs.flaky, str(tmp_path / "log1"), 3, job_retries=3)
    bad = q.enqueue(jobs.flaky, str(tmp_path / "log2"), 9, job_retries=2)
    assert WorkerRunner(manager, ["orders"], burst=True).run() == 5
    assert audit_rows(manager, "orders") == [
        (ok, 1, "retry", "RuntimeError: boom 1"),
        (ok, 2, "retry", "RuntimeError: boom 2"),
        (ok, 3, "success", None),
        (bad, 1, "retry", "RuntimeError: boom 1"),
        (bad, 2, "failed", "RuntimeError: boom 2"),
    ]
    [failed] = manager.failed_messages("orders")
    assert (failed.message.uuid, failed.errors) == (bad, ["RuntimeError: boom 1", "RuntimeError: boom 2"])


def test_static_method_job(jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path) -> None:
    manager = open_app()
    Queue("orders", manager).enqueue(jobs.Holder.static, str(tmp_path / "out"), "s")
    WorkerRunner(manager, ["orders"], burst=True).run()
    assert lines(tmp_path / "out") == [["s", None]]


def test_job_gone_at_run_time_fails_without_retries(open_app: Callable[..., QueueManager]) -> None:
    manager = open_app()
    uid = manager.add_message(
        "orders", QueueMessage(data={"job": "qe_no_such_module_here:func", "args": []}, retries=5)
    )
    assert WorkerRunner(manager, ["orders"], burst=True).run() == 1
    [failed] = manager.failed_messages("orders")
    assert failed.message.uuid == uid
    assert failed.errors == [
        "Unrecoverable: job 'qe_no_such_module_here:func' cannot be imported: "
        "ModuleNotFoundError: No module named 'qe_no_such_module_here'"
    ]


def test_job_path_that_is_not_a_function_fails(open_app: Callable[..., QueueManager]) -> None:
    manager = open_app()
    manager.add_message("orders", QueueMessage(data={"job": "json:JSONDecoder"}))
    WorkerRunner(manager, ["orders"], burst=True).run()
    assert manager.failed_messages("orders")[0].errors == [
        "Unrecoverable: job 'json:JSONDecoder' is a type, not a function"
    ]


# -- refusals at enqueue time -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("pick", "expected"),
    [
        (lambda m: m.square, r"a job cannot be a lambda \(qe_jobs_\w+\.<lambda>\)"),
        (lambda m: m.make_closure(3), r"a job cannot be a nested function or closure \(qe_jobs_\w+\.make_closure"),
        (
            lambda m: m._plain_decorator(m.record),
            r"nested function or closure \(qe_jobs_\w+\._plain_decorator\.<locals>",
        ),
        (lambda m: m.old_original, r"job qe_jobs_\w+\.original is not the object found at 'qe_jobs_\w+:original'"),
        (lambda m: len, r"a job must be a plain function defined in a module, not a builtin_function_or_method"),
        (lambda m: m.Holder(), r"not a Holder"),
        (lambda m: "qe_jobs:record", r"not a str"),
    ],
)
def test_refused_callables(jobs: types.ModuleType, pick: Callable[[Any], Any], expected: str) -> None:
    manager = QueueFactory.get_queue_manager(queue_type="memory")
    with pytest.raises(InvalidMessage, match=expected):
        Queue("orders", manager).enqueue(pick(jobs))
    assert not manager.queue_exists("orders")


def test_refused_function_defined_in_main(tmp_path: Path) -> None:
    script = tmp_path / "producer.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from queue_engine import InvalidMessage, QueueFactory
            from queue_engine.jobs import Queue

            def local_job():
                pass

            try:
                Queue("orders", QueueFactory.get_queue_manager(queue_type="memory")).enqueue(local_job)
            except InvalidMessage as exc:
                print(exc)
                sys.exit(0)
            sys.exit(1)
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("a job cannot be defined in __main__ (local_job)")


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((object(),), {}, r"argument 0 of job qe_jobs_\w+:record: message data holds a object"),
        (("p", ("tuple", 1)), {}, r"argument 1 of job .*holds a tuple"),
        (("p", "t"), {"extra": {1: "x"}}, r"argument extra= of job .*non-string key 1"),
        (("p", float("nan")), {}, r"argument 1 of job .*nan"),
        (("p", {"a", "b"}), {}, r"argument 1 of job .*holds a set"),
        (("p", datetime.now()), {}, r"argument 1 of job .*holds a datetime"),
    ],
)
def test_non_json_arguments_are_refused(
    jobs: types.ModuleType, args: tuple[Any, ...], kwargs: dict[str, Any], expected: str
) -> None:
    manager = QueueFactory.get_queue_manager(queue_type="memory")
    with pytest.raises(InvalidMessage, match=expected):
        Queue("orders", manager).enqueue(jobs.record, *args, **kwargs)


def test_job_path_of_a_good_function(jobs: types.ModuleType) -> None:
    assert job_path(jobs.record) == f"{jobs.__name__}:record"
    assert job_path(jobs.Holder.static) == f"{jobs.__name__}:Holder.static"


# -- deferral ---------------------------------------------------------------------------------
def test_enqueue_in_and_at_defer(jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path) -> None:
    manager = open_app()
    q = Queue("orders", manager)
    out = str(tmp_path / "out")
    later = q.enqueue_in(3600, jobs.record, out, "in an hour")
    later2 = q.enqueue_in(timedelta(days=1), jobs.record, out, "tomorrow")
    at = q.enqueue_at(datetime.now(timezone.utc) + timedelta(hours=2), jobs.record, out, "at")
    now = q.enqueue_in(0, jobs.record, out, "now")
    past = q.enqueue_at(datetime(2000, 1, 1), jobs.record, out, "past (naive, local)")
    messages = {m.uuid: m for m in manager.find_messages("orders")}
    assert all(messages[u].execution_mode is ExecutionMode.DEFERRED for u in (later, later2, at, now, past))
    assert messages[later2].deferred_until is not None and messages[later].deferred_until is not None
    assert messages[later2].deferred_until > messages[later].deferred_until

    assert WorkerRunner(manager, ["orders"], burst=True).run() == 2
    assert sorted(tag for tag, _ in lines(tmp_path / "out")) == ["now", "past (naive, local)"]
    assert manager.queue_status("orders").deferred == 3


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), "10", True])
def test_bad_delays(jobs: types.ModuleType, delay: Any) -> None:
    q = Queue("orders", QueueFactory.get_queue_manager(queue_type="memory"))
    with pytest.raises(InvalidMessage, match="invalid delay"):
        q.enqueue_in(delay, jobs.record, "p", "t")
    with pytest.raises(InvalidMessage, match="invalid when"):
        q.enqueue_at("tomorrow", jobs.record, "p", "t")  # type: ignore[arg-type]


# -- direct mode ------------------------------------------------------------------------------
def test_direct_mode_runs_in_the_caller(
    jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path
) -> None:
    manager = open_app("mode = direct\n")
    q = Queue("orders", manager)
    assert q.mode == "direct"
    uid = q.enqueue(jobs.record, str(tmp_path / "out"), "direct", job_alias="d1")
    assert lines(tmp_path / "out") == [["direct", None]]  # done before enqueue returned
    status = manager.queue_status("orders")
    assert (status.messages_to_process, status.failed) == (0, 0)
    assert status.last_message_processed is not None
    assert (status.last_message_processed.uuid, status.last_message_processed.alias) == (uid, "d1")
    assert audit_rows(manager, "orders") == [(uid, 1, "success", None)]


def test_direct_mode_failure_goes_to_failed_store_then_requeue(
    jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path
) -> None:
    manager = open_app("[worker.orders]\nmode = direct\nretries = 3\nbackoff = fixed\nretryDelay = 3600\n")
    q = Queue("orders", manager)
    log = str(tmp_path / "log")
    uid = q.enqueue(jobs.flaky, log, 5)  # returns, does not raise; no hour-long waits in between
    [failed] = manager.failed_messages("orders")
    assert failed.message.uuid == uid and failed.message.data["job"].endswith(":flaky")
    assert failed.errors == ["RuntimeError: boom 1", "RuntimeError: boom 2", "RuntimeError: boom 3"]
    assert audit_rows(manager, "orders") == [
        (uid, 1, "retry", "RuntimeError: boom 1"),
        (uid, 2, "retry", "RuntimeError: boom 2"),
        (uid, 3, "failed", "RuntimeError: boom 3"),
    ]
    # The contingency flow: requeue, and a worker finishes it (attempt 4 and 5 of the log).
    assert manager.requeue_failed("orders") == [uid]
    manager2 = open_app("[worker.orders]\nretries = 3\nretryDelay = 0\n")
    assert WorkerRunner(manager2, ["orders"], burst=True).run() == 2
    assert [row[2] for row in audit_rows(manager2, "orders")][-2:] == ["retry", "success"]


def test_direct_mode_unrecoverable_and_callbacks(
    jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = tmp_path / "events"
    (tmp_path / "lib" / "qe_cb_direct.py").write_text(
        "import json\n"
        "def ok(message, result):\n"
        f"    with open({str(events)!r}, 'a') as fh:\n"
        "        fh.write(json.dumps(['ok', message.uuid, result]) + '\\n')\n"
        "def ko(message, error):\n"
        f"    with open({str(events)!r}, 'a') as fh:\n"
        "        fh.write(json.dumps(['ko', message.uuid, str(error)]) + '\\n')\n"
    )
    monkeypatch.delitem(sys.modules, "qe_cb_direct", raising=False)
    manager = open_app(
        "mode = direct\n[worker.orders]\nretries = 4\nonSuccess = qe_cb_direct:ok\nonFailure = qe_cb_direct:ko\n"
    )
    q = Queue("orders", manager)
    good = q.enqueue(jobs.record, str(tmp_path / "out"), "t")
    bad = q.enqueue(jobs.hopeless)
    assert lines(events) == [["ok", good, "t"], ["ko", bad, "cannot ever work"]]
    assert [f.errors for f in manager.failed_messages("orders")] == [["Unrecoverable: cannot ever work"]]


def test_direct_mode_keeps_deferred_jobs_queued(
    jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path
) -> None:
    manager = open_app("mode = direct\n")
    uid = Queue("orders", manager).enqueue_in(3600, jobs.record, str(tmp_path / "out"), "later")
    assert not (tmp_path / "out").exists()
    assert [m.uuid for m in manager.find_messages("orders")] == [uid]


def test_queued_mode_per_queue_override(
    jobs: types.ModuleType, open_app: Callable[..., QueueManager], tmp_path: Path
) -> None:
    manager = open_app("mode = direct\n[worker.orders]\nmode = queued\n")
    uid = Queue("orders", manager).enqueue(jobs.record, str(tmp_path / "out"), "queued")
    assert not (tmp_path / "out").exists()
    assert [m.uuid for m in manager.find_messages("orders")] == [uid]


def test_queue_builds_and_closes_its_own_manager(jobs: types.ModuleType, tmp_path: Path) -> None:
    ini = tmp_path / "config.ini"
    ini.write_text("[queue]\ncacheRoot = q\nfsync = never\n")
    with Queue("orders", config=load_config(ini)) as q:
        uid = q.enqueue(jobs.record, "p", "t")
        assert repr(q) == "Queue('orders', mode='queued')"
    with QueueFactory.get_queue_manager(load_config(ini)) as manager:
        assert [m.uuid for m in manager.find_messages("orders")] == [uid]


# -- the repository's example workers ---------------------------------------------------------
def test_example_orders_module(
    open_app: Callable[..., QueueManager], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "workers"))
    monkeypatch.setenv("QENGINE_ORDERS_OUTBOX", str(tmp_path / "orders.jsonl"))
    monkeypatch.delitem(sys.modules, "orders", raising=False)
    import orders  # type: ignore[import-not-found]

    manager = open_app(f"workersPath = {REPO / 'workers'}\n")
    q = Queue("orders", manager)
    q.enqueue(orders.process_order, 42)
    bad = q.enqueue(orders.process_order, -1, job_retries=3)
    runner = WorkerRunner(manager, ["orders"], burst=True)
    assert isinstance(runner.handlers["orders"].worker, FunctionJobWorker)
    assert runner.run() == 2
    assert lines(tmp_path / "orders.jsonl") == [{"order_id": 42, "status": "processed"}]
    [failed] = manager.failed_messages("orders")
    assert (failed.message.uuid, failed.errors) == (
        bad,
        ["Unrecoverable: order_id must be a whole number >= 1, got -1"],
    )


def test_example_anpr_worker(open_app: Callable[..., QueueManager], tmp_path: Path) -> None:
    manager = open_app(f"workersPath = {REPO / 'workers'}\n[worker.ANPR]\nbackoff = fixed\n")
    outbox = str(tmp_path / "anpr.jsonl")
    q = Queue("ANPR", manager)
    ok = q.send(
        {"citizen_id": "RSSMRA80A01H501U", "op": "update", "fields": {"address": "Via Roma 1"}, "outbox": outbox}
    )
    bad = q.send({"citizen_id": "RSSMRA80A01H501U", "op": "rename", "outbox": outbox})
    down = q.send({"citizen_id": "X", "op": "delete", "outbox": str(tmp_path / "missing" / "anpr.jsonl")}, retries=2)
    runner = WorkerRunner(manager, ["ANPR"], burst=True)
    assert type(runner.handlers["ANPR"].worker).__name__ == "AnprWorker"
    assert runner.run() == 4
    assert lines(Path(outbox)) == [
        {"citizen_id": "RSSMRA80A01H501U", "op": "update", "fields": {"address": "Via Roma 1"}, "request_id": ok}
    ]
    failed = {f.message.uuid: f.errors for f in manager.failed_messages("ANPR")}
    assert failed[bad] == ["Unrecoverable: ANPR op must be one of update, delete, got 'rename'"]  # no retry
    assert len(failed[down]) == 2 and all(e.startswith("FileNotFoundError: ") for e in failed[down])
