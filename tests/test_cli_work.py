"""``qengine failed / requeue / forget / purge / audit / work``: in-process with CliRunner, and
end to end as real processes running real worker files.

Failed messages are made with the library (add, reserve, fail) on the same file-backend
storage the command reads. Bad input must give one ``Error:`` line, a non-zero exit, and
leave the failed store as it was.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from queue_engine import QueueFactory, QueueManager, QueueMessage
from queue_engine.audit import AuditRecord, get_audit_log
from queue_engine.cli import cli

HANG_GUARD = 180  # seconds; only so a broken build cannot hang the suite


def _runner() -> CliRunner:
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("QENGINE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "qengine.ini"
    path.write_text(f"[queue]\nqueueType = file\ncacheRoot = {tmp_path / 'data'}\nfsync = never\n")
    return path


Run = Callable[..., Result]


@pytest.fixture
def run(config: Path) -> Run:
    runner = _runner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--config", str(config), *args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def mgr(config: Path) -> Iterator[QueueManager]:
    manager = QueueFactory.get_queue_manager(config)
    yield manager
    manager.close()


def assert_ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def assert_user_error(result: Result, exit_code: int, *fragments: str) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _json(result: Result) -> Any:
    return json.loads(assert_ok(result))


def fail_messages(
    manager: QueueManager, queue: str, count: int = 1, *, alias: str | None = None, errors: tuple[str, ...] = ("boom",)
) -> list[str]:
    """Add ``count`` messages and move each to the failed store through reserve/release/fail."""
    uuids = []
    for n in range(count):
        uid = manager.add_message(queue, QueueMessage(data={"n": n}, alias=alias if count == 1 else None))
        for error in errors[:-1]:
            msg = manager.reserve(queue)
            assert msg is not None and msg.uuid == uid
            manager.release(queue, msg, error=error)
        msg = manager.reserve(queue)
        assert msg is not None and msg.uuid == uid
        manager.fail(queue, msg, errors[-1])
        uuids.append(uid)
    return uuids


def failed_uuids(manager: QueueManager, queue: str) -> list[str]:
    return [str(fm.message.uuid) for fm in manager.failed_messages(queue)]


def pending_uuids(manager: QueueManager, queue: str) -> list[str]:
    return [str(m.uuid) for m in manager.find_messages(queue)]


def tick() -> datetime:
    """A time strictly between what was stored before and what is stored after (ms resolution)."""
    time.sleep(0.005)
    now = datetime.now(timezone.utc)
    time.sleep(0.005)
    return now


# -- help -----------------------------------------------------------------------------------
def test_help_lists_the_work_commands(run: Run) -> None:
    out = assert_ok(run("--help"))
    for name in ("work", "failed", "requeue", "forget", "purge", "audit"):
        assert name in out
    assert "'' leaves one blank" in assert_ok(run("requeue", "--help"))


# -- failed ---------------------------------------------------------------------------------
def test_failed_lists_every_queue(run: Run, mgr: QueueManager) -> None:
    assert assert_ok(run("failed")) == "0 messages failed\n"
    assert _json(run("failed", "--json")) == []
    a = fail_messages(mgr, "ANPR", alias="plate-1", errors=("first try\nsecond line", "timeout talking to camera"))
    b = fail_messages(mgr, "OCR", 2)
    lines = assert_ok(run("failed")).splitlines()
    assert lines[-1] == "3 messages failed"
    rows = [line.split("\t") for line in lines[:-1]]
    assert [(r[0], r[1], r[2], r[4], r[5]) for r in rows] == [
        ("ANPR", a[0], "plate-1", "attempts=2", "timeout talking to camera"),
        ("OCR", b[0], "-", "attempts=1", "boom"),
        ("OCR", b[1], "-", "attempts=1", "boom"),
    ]
    assert datetime.fromisoformat(rows[0][3]).tzinfo is not None
    data = _json(run("failed", "--json"))
    assert [(d["queue"], d["uuid"], d["alias"], d["errors"], d["data"]) for d in data] == [
        ("ANPR", a[0], "plate-1", ["first try\nsecond line", "timeout talking to camera"], {"n": 0}),
        ("OCR", b[0], None, ["boom"], {"n": 0}),
        ("OCR", b[1], None, ["boom"], {"n": 1}),
    ]
    assert all("failed_at" in d for d in data)
    assert [d["uuid"] for d in _json(run("failed", "OCR", "--json"))] == b
    assert [d["uuid"] for d in _json(run("failed", "--json", "--limit", "2"))] == [a[0], b[0]]
    assert [d["uuid"] for d in _json(run("failed", "", "--json"))] == a + b
    assert assert_ok(run("failed", "OCR", "--limit", "0")) == "0 messages failed\n"


def test_failed_clips_long_errors(run: Run, mgr: QueueManager) -> None:
    fail_messages(mgr, "ANPR", errors=("Traceback (most recent call last):\n  ...\nValueError: " + "x" * 200,))
    error = assert_ok(run("failed", "ANPR")).splitlines()[0].split("\t")[-1]
    assert error.startswith("ValueError: xxx") and error.endswith("...") and len(error) == 80


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["failed", "NOPE"], 3, ["'NOPE'"]),
        (["failed", "bad/name"], 2, ["'bad/name'"]),
        (["failed", "--limit", "-1"], 2, ["--limit", "'-1'"]),
    ],
)
def test_failed_bad_input(run: Run, args: list[str], code: int, fragments: list[str]) -> None:
    assert_user_error(run(*args), code, *fragments)


# -- requeue ------------------------------------------------------------------------------
def test_requeue_everything_then_nothing(run: Run, mgr: QueueManager) -> None:
    a = fail_messages(mgr, "ANPR", 2)
    b = fail_messages(mgr, "OCR")
    assert assert_ok(run("requeue")) == "requeued 3 messages\n"
    assert failed_uuids(mgr, "ANPR") == [] and failed_uuids(mgr, "OCR") == []
    assert pending_uuids(mgr, "ANPR") == a and pending_uuids(mgr, "OCR") == b
    requeued = mgr.reserve("ANPR")
    assert requeued is not None and requeued.attempts == 1  # attempts start again
    mgr.release("ANPR", requeued)
    assert assert_ok(run("requeue")) == "requeued 0 messages\n"
    assert mgr.queue_status("ANPR").failed == 0


def test_requeue_one_queue(run: Run, mgr: QueueManager) -> None:
    a = fail_messages(mgr, "ANPR")
    b = fail_messages(mgr, "OCR")
    assert assert_ok(run("requeue", "OCR")) == "requeued 1 message\n"
    assert failed_uuids(mgr, "ANPR") == a and pending_uuids(mgr, "OCR") == b


def test_requeue_time_ranges(run: Run, mgr: QueueManager) -> None:
    early = fail_messages(mgr, "ANPR")
    boundary = tick()
    late = fail_messages(mgr, "ANPR")
    other = fail_messages(mgr, "OCR")
    iso = boundary.isoformat()
    # TO without FROM: refused, nothing moved.
    assert_user_error(run("requeue", "ANPR", "", iso), 2, "TO needs FROM")
    assert failed_uuids(mgr, "ANPR") == early + late
    # A range that ends before anything failed moves nothing.
    assert assert_ok(run("requeue", "ANPR", "2000-01-01", "2000-12-31")) == "requeued 0 messages\n"
    # FROM alone: from then on; '' as the queue: every queue.
    dry = assert_ok(run("requeue", "", iso, "--dry-run")).splitlines()
    assert [line.split("\t")[:2] for line in dry[:-1]] == [["ANPR", late[0]], ["OCR", other[0]]]
    assert dry[-1] == "would requeue 2 messages"
    assert failed_uuids(mgr, "ANPR") == early + late  # dry run changed nothing
    assert assert_ok(run("requeue", "ANPR", iso)) == "requeued 1 message\n"
    assert failed_uuids(mgr, "ANPR") == early and pending_uuids(mgr, "ANPR") == late
    # FROM and TO, with a space as separator as in the seed's example.
    start = (boundary - timedelta(hours=1)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert assert_ok(run("requeue", "", start, iso)) == "requeued 1 message\n"
    assert failed_uuids(mgr, "ANPR") == [] and failed_uuids(mgr, "OCR") == other


def test_requeue_bare_dates_cover_whole_days(run: Run, mgr: QueueManager) -> None:
    uids = fail_messages(mgr, "ANPR", 2)
    today = date.today().isoformat()
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    assert assert_ok(run("requeue", "ANPR", tomorrow)) == "requeued 0 messages\n"
    assert assert_ok(run("requeue", "ANPR", yesterday, yesterday)) == "requeued 0 messages\n"
    # TO as a bare date is the end of that day: today's failures are inside.
    assert assert_ok(run("requeue", "ANPR", today, today, "--dry-run")).splitlines()[-1] == "would requeue 2 messages"
    assert assert_ok(run("requeue", "ANPR", today, today)) == "requeued 2 messages\n"
    assert pending_uuids(mgr, "ANPR") == uids


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["requeue", "", "", "2024-07-01"], 2, ["TO needs FROM"]),
        (["requeue", "ANPR", "yesterday"], 2, ["invalid FROM 'yesterday'", "ISO 8601"]),
        (["requeue", "ANPR", "2024-07-01", "2024-02-30"], 2, ["invalid TO '2024-02-30'"]),
        (["requeue", "ANPR", "2024-07-02", "2024-07-01"], 2, ["empty range"]),
        (["requeue", "bad/name"], 2, ["'bad/name'"]),
        (["requeue", "NOPE"], 3, ["'NOPE'"]),
        (["requeue", "ANPR", "2024-07-01", "2024-07-02", "extra"], 2, ["extra"]),
    ],
)
def test_requeue_bad_input_moves_nothing(
    run: Run, mgr: QueueManager, args: list[str], code: int, fragments: list[str]
) -> None:
    uids = fail_messages(mgr, "ANPR")
    result = run(*args)
    if args[-1] == "extra":  # click's own usage error: several lines, exit 2
        assert result.exit_code == 2 and "extra" in result.stderr
    else:
        assert_user_error(result, code, *fragments)
    assert failed_uuids(mgr, "ANPR") == uids


def test_requeue_keeps_a_message_whose_alias_is_taken(run: Run, mgr: QueueManager) -> None:
    (uid,) = fail_messages(mgr, "ANPR", alias="plate-1")
    newer = mgr.add_message("ANPR", QueueMessage(alias="plate-1"))
    result = run("requeue", "ANPR")
    assert assert_ok(result) == "requeued 0 messages\n"
    assert f"warning: ANPR {uid} was not requeued" in result.stderr
    assert failed_uuids(mgr, "ANPR") == [uid] and pending_uuids(mgr, "ANPR") == [newer]


def test_requeue_many_shows_progress_and_moves_in_batches(run: Run, mgr: QueueManager) -> None:
    uids = [mgr.add_message("ANPR", QueueMessage(data=n)) for n in range(250)]
    for _ in uids:
        msg = mgr.reserve("ANPR")
        assert msg is not None
        mgr.fail("ANPR", msg, "boom")
    result = run("requeue", "ANPR")
    assert assert_ok(result) == "requeued 250 messages\n"
    assert "requeueing 250 messages" in result.stderr  # click prints only the label off a terminal
    assert pending_uuids(mgr, "ANPR") == uids
    assert assert_ok(run("requeue", "ANPR")) == "requeued 0 messages\n"


def test_requeue_few_shows_no_progress(run: Run, mgr: QueueManager) -> None:
    fail_messages(mgr, "ANPR", 3)
    result = run("requeue", "ANPR")
    assert assert_ok(result) == "requeued 3 messages\n" and result.stderr == ""


# -- forget / purge -------------------------------------------------------------------------
def test_forget(run: Run, mgr: QueueManager) -> None:
    uids = fail_messages(mgr, "ANPR", 3)
    assert assert_ok(run("forget", "ANPR", uids[0], uids[2], uids[0])) == "forgot 2 messages\n"
    assert failed_uuids(mgr, "ANPR") == [uids[1]]
    assert mgr.queue_status("ANPR").failed == 1


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["forget", "ANPR", "{first}", "no-such-uuid"], 3, ["no-such-uuid", "'ANPR'"]),
        (["forget", "ANPR", ""], 2, ["UUID must not be empty"]),
        (["forget", "NOPE", "x"], 3, ["'NOPE'"]),
    ],
)
def test_forget_bad_input_drops_nothing(
    run: Run, mgr: QueueManager, args: list[str], code: int, fragments: list[str]
) -> None:
    uids = fail_messages(mgr, "ANPR", 2)
    assert_user_error(run(*[a.format(first=uids[0]) for a in args]), code, *fragments)
    assert failed_uuids(mgr, "ANPR") == uids


def test_forget_needs_a_uuid(run: Run) -> None:
    result = run("forget", "ANPR")
    assert result.exit_code == 2 and "UUID" in result.stderr


def test_purge(run: Run, mgr: QueueManager) -> None:
    early = fail_messages(mgr, "ANPR")
    boundary = tick()
    late = fail_messages(mgr, "ANPR")
    other = fail_messages(mgr, "OCR")
    assert assert_ok(run("purge", "ANPR", boundary.isoformat(), "--yes")) == "purged 1 message\n"
    assert failed_uuids(mgr, "ANPR") == early
    assert pending_uuids(mgr, "ANPR") == []  # purged means gone, not requeued
    assert late[0] not in failed_uuids(mgr, "ANPR")
    assert assert_ok(run("purge", "--yes")) == "purged 2 messages\n"
    assert failed_uuids(mgr, "ANPR") == [] and failed_uuids(mgr, "OCR") == []
    assert other and assert_ok(run("purge", "--yes")) == "purged 0 messages\n"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["purge", "ANPR"], ["without confirmation", "--yes", "'ANPR'"]),
        (["purge"], ["without confirmation", "every queue"]),
        (["purge", "ANPR", "", "2030-01-01", "--yes"], ["TO needs FROM"]),
        (["purge", "ANPR", "soon", "--yes"], ["'soon'"]),
    ],
)
def test_purge_bad_input_drops_nothing(run: Run, mgr: QueueManager, args: list[str], fragments: list[str]) -> None:
    uids = fail_messages(mgr, "ANPR")
    assert_user_error(run(*args, input="y\n"), 2, *fragments)
    assert failed_uuids(mgr, "ANPR") == uids


@pytest.mark.parametrize(("answer", "left"), [("n\n", 1), ("y\n", 0)])
def test_purge_asks_on_a_terminal(
    run: Run, mgr: QueueManager, monkeypatch: pytest.MonkeyPatch, answer: str, left: int
) -> None:
    from queue_engine import cli_work

    monkeypatch.setattr(cli_work, "_stdin_is_tty", lambda: True)
    fail_messages(mgr, "ANPR")
    result = run("purge", "ANPR", input=answer)
    assert "Drop 1 failed message(s) of queue 'ANPR' for good?" in result.stdout
    assert result.exit_code == (1 if left else 0)
    assert len(failed_uuids(mgr, "ANPR")) == left


# -- audit ----------------------------------------------------------------------------------
def _audit(mgr: QueueManager, uuid: str, attempt: int, outcome: str, started_at: float, **kw: Any) -> None:
    get_audit_log(mgr).record(
        AuditRecord(queue="ANPR", uuid=uuid, alias=kw.pop("alias", None), attempt=attempt, outcome=outcome,
                    started_at=started_at, duration=kw.pop("duration", 0.0123), host="box", pid=77,
                    worker="AnprWorker", error=kw.pop("error", None), extra=kw)
    )


def test_audit(run: Run, mgr: QueueManager) -> None:
    now = time.time()
    _audit(mgr, "u1", 1, "retry", now - 30, alias="plate-1", error="camera offline")
    _audit(mgr, "u1", 2, "success", now - 20, alias="plate-1")
    _audit(mgr, "u2", 1, "failed", now - 10, error="Traceback...\nValueError: bad plate", status=500)
    assert assert_ok(run("audit", "EMPTY")) == ""
    assert _json(run("audit", "EMPTY", "--json")) == []
    rows = _json(run("audit", "ANPR", "--json"))
    assert [(r["uuid"], r["attempt"], r["outcome"], r["error"], r["alias"]) for r in rows] == [
        ("u1", 1, "retry", "camera offline", "plate-1"),
        ("u1", 2, "success", None, "plate-1"),
        ("u2", 1, "failed", "Traceback...\nValueError: bad plate", None),
    ]
    assert rows[2]["extra"] == {"status": 500} and rows[0]["host"] == "box" and rows[0]["pid"] == 77
    lines = [line.split("\t") for line in assert_ok(run("audit", "ANPR")).splitlines()]
    assert [line[1:] for line in lines] == [
        ["u1", "plate-1", "attempt=1", "retry", "12.3ms", "box:77", "camera offline"],
        ["u1", "plate-1", "attempt=2", "success", "12.3ms", "box:77", "-"],
        ["u2", "-", "attempt=1", "failed", "12.3ms", "box:77", "ValueError: bad plate"],
    ]
    assert [r["attempt"] for r in _json(run("audit", "ANPR", "--uuid", "u1", "--json"))] == [1, 2]
    assert [r["uuid"] for r in _json(run("audit", "ANPR", "--alias", "plate-1", "--json"))] == ["u1", "u1"]
    assert [r["uuid"] for r in _json(run("audit", "ANPR", "--limit", "1", "--json"))] == ["u1"]
    since = datetime.fromtimestamp(now - 25, tz=timezone.utc).isoformat()
    until = datetime.fromtimestamp(now - 15, tz=timezone.utc).isoformat()
    got = _json(run("audit", "ANPR", "--since", since, "--until", until, "--json"))
    assert [(r["uuid"], r["attempt"]) for r in got] == [("u1", 2)]
    today = date.today().isoformat()
    assert len(_json(run("audit", "ANPR", "--since", today, "--until", today, "--json"))) == 3


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["audit", "ANPR", "--since", "noon"], ["--since 'noon'"]),
        (["audit", "ANPR", "--since", "2024-07-02", "--until", "2024-07-01"], ["empty range"]),
        (["audit", "bad/name"], ["'bad/name'"]),
        (["audit", "ANPR", "--limit", "x"], ["--limit", "'x'"]),
    ],
)
def test_audit_bad_input(run: Run, args: list[str], fragments: list[str]) -> None:
    assert_user_error(run(*args), 2, *fragments)


def test_audit_bad_retention_config(run: Run, config: Path) -> None:
    config.write_text(config.read_text() + "[audit]\nretentionDays = forever\n")
    assert_user_error(run("audit", "ANPR"), 2, "[audit] retentionDays", "'forever'", str(config.name))


# -- work: argument errors (the runs are end to end, below) ---------------------------------
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["work"], "QUEUE"),
        (["work", "bad/name"], "'bad/name'"),
        (["work", "ANPR", "--max-jobs", "0"], "--max-jobs"),
        (["work", "ANPR", "--max-time", "-1"], "--max-time"),
        (["work", "ANPR", "--sleep", "nan"], "--sleep"),
    ],
)
def test_work_bad_arguments(run: Run, args: list[str], fragment: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert fragment in result.stderr and "Traceback" not in result.stderr


# -- end to end: real worker files, real processes ------------------------------------------
FLAKY = '''\
"""Succeeds on its third attempt; counts attempts per message in a file next to it."""

from pathlib import Path

from queue_engine.worker import Worker

COUNTS = Path(__file__).with_name("flaky-counts")


class FlakyWorker(Worker):
    queue = "FLAKY"
    retries = 1  # config [worker.FLAKY] retries = 3 overrides it

    def process(self, message):
        COUNTS.mkdir(exist_ok=True)
        counter = COUNTS / message.uuid
        seen = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(seen + 1))
        if seen + 1 < 3:
            raise RuntimeError(f"flaky attempt {seen + 1}")
        return {"attempts": seen + 1}

    def on_success(self, message, result):
        with open(Path(__file__).with_name("successes.log"), "a") as fh:
            fh.write(f"{message.uuid} {result['attempts']}\\n")
'''

BROKEN = '''\
"""Never succeeds."""

from pathlib import Path

from queue_engine.worker import Worker


class BrokenWorker(Worker):
    queue = "BROKEN"

    def process(self, message):
        raise ValueError(f"cannot handle {message.data!r}")

    def on_failure(self, message, error):
        with open(Path(__file__).with_name("failures.log"), "a") as fh:
            fh.write(f"{message.uuid} {error}\\n")
'''


ECHO = '''\
from queue_engine.worker import Worker


class EchoWorker(Worker):
    queue = "ECHO"

    def process(self, message):
        return message.data
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A config and a workers/ folder, as an application would have them."""
    workers = tmp_path / "app" / "workers"
    workers.mkdir(parents=True)
    (workers / "flaky.py").write_text(FLAKY)
    (workers / "broken.py").write_text(BROKEN)
    (workers / "echo.py").write_text(ECHO)
    config = tmp_path / "app" / "config.ini"
    config.write_text(textwrap.dedent(f"""\
        [queue]
        queueType = file
        cacheRoot = {tmp_path / "data"}
        fsync = never
        workersPath = {workers}

        [worker.FLAKY]
        backoff = fixed
        retryDelay = 0
        retries = 3

        [worker.BROKEN]
        backoff = fixed
        retryDelay = 0
        retries = 3
        """))
    return config


def qengine(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QENGINE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "queue_engine", "--config", str(config), *args],
        capture_output=True, text=True, timeout=HANG_GUARD, env=env, cwd=config.parent,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stdout


def add(config: Path, queue: str, *args: str) -> str:
    return ok(qengine(config, "add", queue, *args)).strip()


def needs_runner() -> None:
    try:
        import queue_engine.runner  # noqa: F401
    except ImportError:  # pragma: no cover - only while the runner is being written
        pytest.fail("queue_engine.runner is missing")


def test_e2e_flaky_and_broken_workers(project: Path) -> None:
    needs_runner()
    flaky = add(project, "FLAKY", "--alias", "f-1", "--data", '{"plate": "AB123CD"}')
    broken = add(project, "BROKEN", "--alias", "b-1", "--data", '"junk"')

    proc = qengine(project, "work", "FLAKY", "BROKEN", "--burst")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stdout == "handled 6 attempts\n"  # 3 of the flaky message, 3 of the broken one
    assert "RuntimeError: flaky attempt 1" in proc.stderr  # failed attempts are logged

    # The flaky message succeeded on attempt 3, the broken one failed 3 times.
    assert (project.parent / "workers" / "successes.log").read_text() == f"{flaky} 3\n"
    failures = (project.parent / "workers" / "failures.log").read_text().splitlines()
    assert failures == [f"{broken} cannot handle 'junk'"]

    failed = json.loads(ok(qengine(project, "failed", "--json")))
    assert [(f["queue"], f["uuid"], f["alias"]) for f in failed] == [("BROKEN", broken, "b-1")]
    assert failed[0]["errors"] == ["ValueError: cannot handle 'junk'"] * 3
    assert failed[0]["attempts"] == 3

    rows = json.loads(ok(qengine(project, "audit", "FLAKY", "--json")))
    assert [(r["uuid"], r["alias"], r["attempt"], r["outcome"]) for r in rows] == [
        (flaky, "f-1", 1, "retry"), (flaky, "f-1", 2, "retry"), (flaky, "f-1", 3, "success")
    ]
    assert [r["error"] for r in rows] == ["RuntimeError: flaky attempt 1", "RuntimeError: flaky attempt 2", None]
    assert {r["worker"] for r in rows} == {"FlakyWorker"}
    assert all(r["pid"] > 0 and r["host"] for r in rows)
    rows = json.loads(ok(qengine(project, "audit", "BROKEN", "--json")))
    assert [(r["uuid"], r["attempt"], r["outcome"]) for r in rows] == [
        (broken, 1, "retry"), (broken, 2, "retry"), (broken, 3, "failed")
    ]
    assert [r["error"] for r in rows] == ["ValueError: cannot handle 'junk'"] * 3

    status = json.loads(ok(qengine(project, "status", "BROKEN", "--json")))
    assert (status["failed"], status["messages_to_process"]) == (1, 0)
    assert status["last_message_processed"]["uuid"] == broken
    assert json.loads(ok(qengine(project, "status", "FLAKY", "--json")))["failed"] == 0

    # Requeue: the message goes back; a second requeue finds nothing.
    assert ok(qengine(project, "requeue", "BROKEN")) == "requeued 1 message\n"
    assert ok(qengine(project, "requeue", "BROKEN")) == "requeued 0 messages\n"
    assert json.loads(ok(qengine(project, "status", "BROKEN", "--json")))["failed"] == 0
    assert json.loads(ok(qengine(project, "failed", "--json"))) == []

    # It fails again, three more attempts; numbering restarts with the requeue.
    proc = qengine(project, "work", "BROKEN", "--burst", "--log-level", "error")
    assert (proc.returncode, proc.stdout) == (0, "handled 3 attempts\n"), proc.stderr
    rows = json.loads(ok(qengine(project, "audit", "BROKEN", "--uuid", broken, "--json")))
    assert [(r["attempt"], r["outcome"]) for r in rows] == [
        (1, "retry"), (2, "retry"), (3, "failed"), (1, "retry"), (2, "retry"), (3, "failed")
    ]
    assert json.loads(ok(qengine(project, "status", "BROKEN", "--json")))["failed"] == 1
    assert ok(qengine(project, "purge", "BROKEN", "--yes")) == "purged 1 message\n"
    assert json.loads(ok(qengine(project, "status", "BROKEN", "--json")))["failed"] == 0


def test_e2e_worker_that_cannot_load_is_one_line(project: Path) -> None:
    needs_runner()
    (project.parent / "workers" / "badimport.py").write_text("import no_such_module_for_qengine\n")
    add(project, "BADIMPORT")
    proc = qengine(project, "work", "BADIMPORT", "--burst")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "badimport.py" in lines[0], lines
    assert json.loads(ok(qengine(project, "status", "BADIMPORT", "--json")))["messages_to_process"] == 1


def test_e2e_work_max_jobs(project: Path) -> None:
    needs_runner()
    for n in range(3):
        add(project, "ECHO", "--data", str(n))
    proc = qengine(project, "work", "ECHO", "--burst", "--max-jobs", "2")
    assert (proc.returncode, proc.stdout) == (0, "handled 2 attempts\n"), proc.stderr
    status = json.loads(ok(qengine(project, "status", "ECHO", "--json")))
    assert status["messages_to_process"] == 1
    rows = json.loads(ok(qengine(project, "audit", "ECHO", "--json")))
    assert [(r["attempt"], r["outcome"], r["error"]) for r in rows] == [(1, "success", None)] * 2
    assert status["last_message_processed"]["uuid"] == rows[-1]["uuid"]


def test_work_in_process_logs_to_stderr_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.delenv("QENGINE_CONFIG", raising=False)
    workers = tmp_path / "workers"
    workers.mkdir()
    (workers / "echo.py").write_text(ECHO)
    (workers / "broken.py").write_text(BROKEN)
    config = tmp_path / "config.ini"
    config.write_text(f"[queue]\nqueueType = file\ncacheRoot = {tmp_path / 'data'}\nfsync = never\n"
                      f"workersPath = {workers}\n")
    runner = _runner()
    for queue in ("ECHO", "BROKEN"):
        assert_ok(runner.invoke(cli, ["--config", str(config), "add", queue], catch_exceptions=False))
    before = list(logging.getLogger("qengine").handlers)
    result = runner.invoke(cli, ["--config", str(config), "work", "ECHO", "BROKEN", "--burst"], catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout == "handled 2 attempts\n", result.stderr
    assert "ERROR" in result.stderr and "ValueError: cannot handle None" in result.stderr
    assert logging.getLogger("qengine").handlers == before
    quiet = runner.invoke(cli, ["--config", str(config), "work", "ECHO", "--burst", "--log-level", "ERROR"])
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "handled 0 attempts\n", "")
