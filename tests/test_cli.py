"""The ``qengine`` command line, run in-process with click's CliRunner and as a real process.

Every test gets its own config file and cache root under ``tmp_path``. Bad input must give
one ``Error:`` line on stderr naming the offending value, the documented exit status, no
traceback, and must not change any queue.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from queue_engine import QueueFactory, QueueManager, QueueMessage, __version__
from queue_engine.cli import LAZY_COMMANDS, AppContext, cli, echo_json, json_option, pass_app

QUEUE_TYPE = "file"
HANG_GUARD = 120  # seconds; only so a broken build cannot hang the suite


def _runner() -> CliRunner:
    # click < 8.2 mixes stderr into stdout unless told otherwise; 8.2+ always separates them.
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


def _write_config(path: Path, cache_root: Path, queue_type: str = QUEUE_TYPE, extra: str = "") -> Path:
    path.write_text(f"[queue]\nqueueType = {queue_type}\ncacheRoot = {cache_root}\nfsync = never\n{extra}")
    return path


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("QENGINE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./config.ini
    return _write_config(tmp_path / "qengine.ini", tmp_path / "data")


Run = Callable[..., Result]


@pytest.fixture
def run(config: Path) -> Run:
    runner = _runner()

    def invoke(*args: str, input: str | bytes | None = None) -> Result:
        return runner.invoke(cli, ["--config", str(config), *args], input=input, catch_exceptions=False)

    return invoke


def _pending(config: Path, queue: str) -> list[QueueMessage] | None:
    """The queue's pending messages read by a fresh manager, or None if the queue is absent."""
    mgr: QueueManager = QueueFactory.get_queue_manager(config)
    try:
        if not mgr.queue_exists(queue):
            return None
        return mgr.find_messages(queue)
    finally:
        mgr.close()


def assert_ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def assert_user_error(result: Result, exit_code: int, *fragments: str) -> str:
    """One ``Error:`` line on stderr containing every fragment; nothing on stdout."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _add(run: Run, queue: str, *args: str, input: str | None = None) -> str:
    uid = assert_ok(run("add", queue, *args, input=input)).strip()
    assert len(uid) >= 8 and "\n" not in uid
    return uid


def _json(result: Result) -> Any:
    return json.loads(assert_ok(result))


# -- group --------------------------------------------------------------------------------
def test_version_names_the_build(run: Run) -> None:
    from queue_engine.backends.file import COMPILED

    out = assert_ok(run("--version"))
    assert out.strip() == f"qengine {__version__} (file backend: {'compiled' if COMPILED else 'pure Python'})"


def test_help_lists_the_commands(run: Run) -> None:
    out = assert_ok(run("--help"))
    for name in ("create", "destroy", "add", "get", "status", "list", "find", "show"):
        assert name in out


def test_config_from_environment(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QENGINE_CONFIG", str(config))
    result = _runner().invoke(cli, ["create", "envq"], catch_exceptions=False)
    assert assert_ok(result) == "created\n"
    assert _pending(config, "envq") == []


@click.command("hello")
@click.option("--fail", is_flag=True)
@json_option
@pass_app
def _hello_command(app: AppContext, fail: bool, as_json: bool) -> None:
    """A command that lives in another module, as later commands (work, daemon, ...) will."""
    if fail:
        app.manager.queue_status("no-such-queue")  # a library error, converted by the group
    if as_json:
        echo_json(app.manager.list_queues())
    else:
        click.echo("hello")


def test_lazy_command_from_another_module(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LAZY_COMMANDS, "hello", f"{__name__}:_hello_command")
    assert "hello" in assert_ok(run("--help"))
    assert assert_ok(run("hello")) == "hello\n"
    assert _json(run("hello", "--json")) == []
    assert_user_error(run("hello", "--fail"), 3, "no-such-queue")


# -- create / destroy / list ----------------------------------------------------------------
def test_create_then_exists(run: Run, config: Path) -> None:
    assert assert_ok(run("create", "jobs")) == "created\n"
    assert assert_ok(run("create", "jobs")) == "exists\n"
    assert _pending(config, "jobs") == []


def test_create_with_attributes(run: Run) -> None:
    assert_ok(run("create", "jobs", "--attr", "n=1", "--attr", "owner=ops team", "--attr", 'cfg={"x": [1, true]}',
                  "--attr", "empty=", "--attr", "nan=NaN"))
    attrs = _json(run("status", "jobs", "--json"))["custom_attributes"]
    assert attrs == {"n": 1, "owner": "ops team", "cfg": {"x": [1, True]}, "empty": "", "nan": "NaN"}


def test_create_with_attributes_named_like_parameters(run: Run) -> None:
    assert_ok(run("create", "jobs", "--attr", "queue=1", "--attr", "self=2"))
    assert _json(run("status", "jobs", "--json"))["custom_attributes"] == {"queue": 1, "self": 2}


@pytest.mark.parametrize("attr", ["novalue", "=1"])
def test_create_bad_attribute(run: Run, config: Path, attr: str) -> None:
    assert_user_error(run("create", "jobs", "--attr", attr), 2, repr(attr))
    assert _pending(config, "jobs") is None


def test_destroy(run: Run, config: Path) -> None:
    _add(run, "jobs")
    assert assert_ok(run("destroy", "jobs", "--yes")) == "destroyed\n"
    assert _pending(config, "jobs") is None
    assert assert_ok(run("destroy", "jobs", "--yes")) == "absent\n"


def test_destroy_without_yes_is_refused_when_not_interactive(run: Run, config: Path) -> None:
    _add(run, "jobs")
    assert_user_error(run("destroy", "jobs", input="y\n"), 2, "--yes", "'jobs'")
    assert _pending(config, "jobs") is not None


def test_list(run: Run) -> None:
    assert assert_ok(run("list")) == ""
    assert _json(run("list", "--json")) == []
    for name in ("b-q", "a.q", "c_q"):
        assert_ok(run("create", name))
    assert assert_ok(run("list")).splitlines() == ["a.q", "b-q", "c_q"]
    assert _json(run("list", "--json")) == ["a.q", "b-q", "c_q"]


# -- add ----------------------------------------------------------------------------------
def test_add_data_sources(run: Run, tmp_path: Path) -> None:
    data_file = tmp_path / "payload.json"
    data_file.write_text('{"from": "file", "text": "h\u00e9llo \u2603"}', encoding="utf-8")
    _add(run, "jobs", "--data", '{"from": "inline", "n": [1, 2.5, null]}')
    _add(run, "jobs", "--data", f"@{data_file}")
    _add(run, "jobs", "--data", "-", input='"from stdin"')
    _add(run, "jobs")
    got = [_json(run("get", "jobs", "--json"))["data"] for _ in range(4)]
    assert got == [{"from": "inline", "n": [1, 2.5, None]}, {"from": "file", "text": "h\u00e9llo \u2603"},
                   "from stdin", None]


def test_add_options_are_stored(run: Run) -> None:
    uid = _add(run, "jobs", "--alias", "a1", "--retries", "3", "--disabled", "--username", "bob",
               "--defer-until", "2030-01-02T03:04:05")
    shown = _json(run("show", "jobs", uid, "--json"))
    assert shown["uuid"] == uid and shown["alias"] == "a1" and shown["queue"] == "jobs"
    assert shown["retries"] == 3 and shown["disabled"] is True and shown["username"] == "bob"
    assert shown["execution_mode"] == "deferred"
    # a naive time is local time
    assert datetime.fromisoformat(shown["deferred_until"]) == datetime(2030, 1, 2, 3, 4, 5).astimezone()


def test_add_defer_until_with_offset(run: Run) -> None:
    uid = _add(run, "jobs", "--defer-until", "2030-01-02T03:04:05Z")
    shown = _json(run("show", "jobs", uid, "--json"))
    assert datetime.fromisoformat(shown["deferred_until"]) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_add_delay(run: Run) -> None:
    before = datetime.now(timezone.utc)
    uid = _add(run, "jobs", "--delay", "3600")
    after = datetime.now(timezone.utc)
    shown = _json(run("show", "jobs", uid, "--json"))
    until = datetime.fromisoformat(shown["deferred_until"])
    assert before + timedelta(seconds=3599) <= until <= after + timedelta(seconds=3601)
    assert shown["execution_mode"] == "deferred"
    assert _json(run("get", "jobs", "--json")) is None  # not due yet


def test_add_duplicate_alias(run: Run, config: Path) -> None:
    first = _add(run, "jobs", "--alias", "once", "--data", "1")
    assert_user_error(run("add", "jobs", "--alias", "once", "--data", "2"), 4, "once")
    assert len(_pending(config, "jobs") or []) == 1
    assert _add(run, "jobs", "--alias", "once", "--data", "3", "--on-duplicate", "ignore") == first
    assert _json(run("show", "jobs", "once", "--json"))["data"] == 1
    assert _add(run, "jobs", "--alias", "once", "--data", "4", "--on-duplicate", "replace") == first
    assert _json(run("show", "jobs", "once", "--json"))["data"] == 4
    assert len(_pending(config, "jobs") or []) == 1


# -- bad input: nothing is written ------------------------------------------------------------
BAD_ADD_ARGS: list[tuple[list[str], str | None, int, list[str]]] = [
    # (arguments after the queue name, stdin, exit code, fragments of the error line)
    (["--data", '{"a": '], None, 2, ["--data is not valid JSON", "line 1 col 7", "inline", '{"a": ']),
    (["--data", "{'single': 1}"], None, 2, ["--data is not valid JSON", "line 1 col 2", "{'single': 1}"]),
    (["--data", "NaN"], None, 2, ["--data is not valid JSON", "NaN"]),
    (["--data", "[1, Infinity]"], None, 2, ["--data is not valid JSON", "Infinity"]),
    (["--data", "-"], "{oops", 2, ["--data is not valid JSON", "line 1 col 2", "stdin"]),
    (["--data", "-"], "", 2, ["--data is not valid JSON", "stdin"]),
    (["--data", "@missing.json"], None, 2, ["'missing.json'", "--data"]),
    (["--data", "@bad.json"], None, 2, ["--data is not valid JSON", "line 2 col 1", "'bad.json'"]),
    (["--data", "@latin1.json"], None, 2, ["--data", "'latin1.json'", "UTF-8"]),
    (["--data", "@."], None, 2, ["--data", "'.'"]),
    (["--data", "[" * 5000], None, 2, ["--data"]),
    (["--defer-until", "garbage"], None, 2, ["--defer-until", "'garbage'"]),
    (["--defer-until", "2030-13-01"], None, 2, ["--defer-until", "'2030-13-01'"]),
    (["--delay", "-5"], None, 2, ["--delay", "'-5'"]),
    (["--delay", "nan"], None, 2, ["--delay", "'nan'"]),
    (["--delay", "soon"], None, 2, ["--delay", "'soon'"]),
    (["--delay", "1e12"], None, 2, ["--delay", "out of the range"]),  # past year 9999
    (["--defer-until", "0001-01-01T00:00:00+01:00"], None, 2, ["--defer-until", "0001-01-01", "out of the range"]),
    (["--defer-until", "9999-12-31T23:59:59.999999+00:00"], None, 2, ["--defer-until", "out of the range"]),
    (["--delay", "5", "--defer-until", "2030-01-01T00:00:00"], None, 2, ["--delay", "--defer-until"]),
    (["--retries", "-1"], None, 2, ["--retries", "'-1'"]),
    (["--retries", "2000000"], None, 2, ["--retries", "'2000000'"]),
    (["--alias", ""], None, 2, ["alias", "''"]),
    (["--alias", "a\x00b"], None, 2, ["alias", "'a\\x00b'"]),
]


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "existing"])
@pytest.mark.parametrize(("args", "stdin", "exit_code", "fragments"), BAD_ADD_ARGS,
                         ids=[" ".join(case[0])[:40] for case in BAD_ADD_ARGS])
def test_add_bad_input_writes_nothing(
    run: Run, config: Path, tmp_path: Path, existing: bool,
    args: list[str], stdin: str | None, exit_code: int, fragments: list[str],
) -> None:
    (tmp_path / "bad.json").write_text('{"a": 1,\n}')
    (tmp_path / "latin1.json").write_bytes('"caf\u00e9"'.encode("latin-1"))
    if existing:
        _add(run, "jobs", "--data", '"keep"')
    assert_user_error(run("add", "jobs", *args, input=stdin), exit_code, *fragments)
    pending = _pending(config, "jobs")
    if existing:
        assert pending is not None and [m.data for m in pending] == ["keep"]
    else:
        assert pending is None


@pytest.mark.parametrize(("command", "options", "extra"), [
    ("create", [], []), ("destroy", ["--yes"], []), ("add", [], []), ("get", [], []), ("status", [], []),
    ("find", [], []), ("show", [], ["x"]),
])
@pytest.mark.parametrize("name", ["bad/name", "-dash", "", "x" * 65, "sp ace", "caf\u00e9"])
def test_bad_queue_name(run: Run, config: Path, command: str, options: list[str], extra: list[str], name: str) -> None:
    assert_user_error(run(command, *options, "--", name, *extra), 2, "invalid queue name", repr(name))
    mgr = QueueFactory.get_queue_manager(config)
    try:
        assert mgr.list_queues() == []
    finally:
        mgr.close()


# -- get ----------------------------------------------------------------------------------
def test_get_json_and_empty(run: Run) -> None:
    uid = _add(run, "jobs", "--alias", "g1", "--data", '{"k": "v"}')
    got = _json(run("get", "jobs", "--json"))
    assert got["uuid"] == uid and got["alias"] == "g1" and got["data"] == {"k": "v"} and got["queue"] == "jobs"
    assert set(got) == set(QueueMessage().to_dict())
    empty = run("get", "jobs", "--json")
    assert assert_ok(empty).strip() == "null"
    assert_user_error(run("get", "never-created", "--json"), 3, "'never-created'", "does not exist")


def test_get_prints_json_without_the_flag(run: Run) -> None:
    uid = _add(run, "jobs", "--alias", "g1", "--data", '{"k": "\u00e9"}')
    got = _json(run("get", "jobs"))
    assert (got["uuid"], got["alias"], got["data"], got["deferred_until"]) == (uid, "g1", {"k": "\u00e9"}, None)
    empty = run("get", "jobs")
    assert assert_ok(empty).strip() == "null" and "no eligible message" in empty.stderr


# -- status -------------------------------------------------------------------------------
def test_status_json_is_the_library_view(run: Run, config: Path) -> None:
    assert_ok(run("create", "jobs", "--attr", "owner=ops"))
    _add(run, "jobs", "--alias", "s1")
    _add(run, "jobs", "--disabled")
    shown = _json(run("status", "jobs", "--json"))
    mgr = QueueFactory.get_queue_manager(config)
    try:
        assert shown == mgr.queue_status("jobs").to_dict()
    finally:
        mgr.close()
    assert shown["custom_attributes"] == {"owner": "ops"}
    assert shown["last_message_inserted"]["alias"] is None  # the disabled one came last


def test_status_human(run: Run) -> None:
    assert_ok(run("create", "jobs", "--attr", "owner=ops", "--attr", "n=2"))
    uid = _add(run, "jobs", "--alias", "s1")
    lines = dict(line.split(": ", 1) for line in assert_ok(run("status", "jobs")).splitlines())
    assert lines["queue"] == "jobs"
    assert lines["messages_to_process"] == "1" and lines["ready"] == "1" and lines["in_flight"] == "0"
    assert lines["last_message_inserted"].startswith(f"{uid} alias=s1 at=")
    stamp = lines["last_message_inserted"].rsplit("at=", 1)[1]
    assert datetime.fromisoformat(stamp).utcoffset() == datetime.now().astimezone().utcoffset()
    assert lines["last_message_processed"] == "-"
    assert lines["attribute.owner"] == "ops" and lines["attribute.n"] == "2"


def test_status_missing_queue(run: Run) -> None:
    assert_user_error(run("status", "nope"), 3, "nope")


# -- find / show ----------------------------------------------------------------------------
def test_find(run: Run) -> None:
    a = _add(run, "jobs", "--alias", "a", "--username", "ann")
    b = _add(run, "jobs", "--alias", "b", "--username", "bob", "--disabled")
    c = _add(run, "jobs", "--username", "ann", "--defer-until", "2030-01-01T00:00:00+00:00")

    def uuids(*args: str) -> list[str]:
        return [m["uuid"] for m in _json(run("find", "jobs", "--json", *args))]

    assert uuids() == [a, b, c]
    assert uuids("--username", "ann") == [a, c]
    assert uuids("--disabled") == [b]
    assert uuids("--enabled") == [a, c]
    assert uuids("--mode", "deferred") == [c]
    assert uuids("--mode", "immediate") == [a, b]
    assert uuids("--alias", "b") == [b]
    assert uuids("--uuid", c) == [c]
    assert uuids("--limit", "2") == [a, b]
    assert uuids("--from", "2000-01-01") == [a, b, c]
    assert uuids("--to", "2000-01-01") == []
    lines = assert_ok(run("find", "jobs")).splitlines()
    assert [line.split("\t") for line in lines] == [
        [a, "a", lines[0].split("\t")[2], "immediate", "-"],
        [b, "b", lines[1].split("\t")[2], "immediate", "disabled"],
        [c, "-", lines[2].split("\t")[2], lines[2].split("\t")[3], "-"],
    ]
    assert lines[2].split("\t")[3].startswith("deferred@")


@pytest.mark.parametrize(("args", "fragments"), [
    (["--from", "yesterday"], ["--from", "'yesterday'"]),
    (["--to", "2030-02-30"], ["--to", "'2030-02-30'"]),
    (["--from", "0001-01-01T00:00:00+01:00"], ["--from", "out of the range"]),
    (["--from", "2030-01-02", "--to", "2030-01-01"], ["--from", "is after --to"]),
    (["--limit", "-1"], ["--limit", "'-1'"]),
    (["--limit", "many"], ["--limit", "'many'"]),
])
def test_find_bad_input(run: Run, args: list[str], fragments: list[str]) -> None:
    _add(run, "jobs")
    assert_user_error(run("find", "jobs", *args), 2, *fragments)


def test_show(run: Run) -> None:
    uid = _add(run, "jobs", "--alias", "my alias", "--data", "[1]")
    by_uuid = _json(run("show", "jobs", uid, "--json"))
    assert by_uuid == _json(run("show", "jobs", "my alias", "--json"))
    assert by_uuid["data"] == [1] and by_uuid["attempts"] == 0
    lines = dict(line.split(": ", 1) for line in assert_ok(run("show", "jobs", uid)).splitlines())
    assert lines["uuid"] == uid and lines["alias"] == "my alias" and lines["data"] == "[1]"
    # show does not consume
    assert len(_json(run("find", "jobs", "--json"))) == 1


def test_show_unknown(run: Run) -> None:
    _add(run, "jobs")
    assert_user_error(run("show", "jobs", "no-such-thing"), 3, "'no-such-thing'", "'jobs'")


# -- configuration errors ---------------------------------------------------------------------
def test_missing_config_file(tmp_path: Path, config: Path) -> None:
    missing = tmp_path / "nowhere.ini"
    result = _runner().invoke(cli, ["--config", str(missing), "list"], catch_exceptions=False)
    assert_user_error(result, 2, str(missing))


@pytest.mark.parametrize(("extra", "queue_type", "fragments"), [
    ("bogusKey = 1\n", QUEUE_TYPE, ["bogusKey", "queueType"]),
    ("", "nosuch", ["'nosuch'", "file", "cache"]),
    ("lockTimeout = soon\n", QUEUE_TYPE, ["lockTimeout", "'soon'"]),
])
def test_bad_config(tmp_path: Path, config: Path, extra: str, queue_type: str, fragments: list[str]) -> None:
    bad = _write_config(tmp_path / "bad.ini", tmp_path / "data", queue_type=queue_type, extra=extra)
    result = _runner().invoke(cli, ["--config", str(bad), "add", "jobs", "--data", "1"], catch_exceptions=False)
    assert_user_error(result, 2, str(bad), *fragments)
    assert not (tmp_path / "data").exists() or _pending(config, "jobs") is None


def test_bad_input_is_reported_before_the_config_is_read(tmp_path: Path, config: Path) -> None:
    result = _runner().invoke(cli, ["--config", str(tmp_path / "nowhere.ini"), "add", "jobs", "--data", "{"],
                              catch_exceptions=False)
    assert_user_error(result, 2, "--data is not valid JSON")


# -- real processes ---------------------------------------------------------------------------
def _commands() -> list[list[str]]:
    script = Path(sys.executable).parent / "qengine"
    return [[str(script)], [sys.executable, "-m", "queue_engine"]]


def _proc(argv: list[str], config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QENGINE_CONFIG"}
    return subprocess.run([*argv, "--config", str(config), *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=HANG_GUARD, check=False)


@pytest.mark.parametrize("argv", _commands(), ids=["qengine", "python-m"])
def test_subprocess_add_status_get(config: Path, argv: list[str]) -> None:
    added = _proc(argv, config, "add", "jobs", "--alias", "p1", "--data", "-", stdin='{"n": 1}')
    assert added.returncode == 0, added.stderr
    uid = added.stdout.strip()
    status = _proc(argv, config, "status", "jobs", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["messages_to_process"] == 1 and shown["last_message_inserted"]["uuid"] == uid
    got = _proc(argv, config, "get", "jobs", "--json")
    assert got.returncode == 0, got.stderr
    message = json.loads(got.stdout)
    assert message["uuid"] == uid and message["data"] == {"n": 1}
    empty = _proc(argv, config, "get", "jobs", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) is None


def test_subprocess_errors_are_one_line(config: Path) -> None:
    argv = _commands()[0]
    _proc(argv, config, "add", "jobs", "--alias", "dup")
    for args, code in ((("add", "jobs", "--data", "{x"), 2), (("add", "jobs", "--alias", "dup"), 4),
                       (("status", "absent-queue"), 3), (("add", "jobs", "--data", "@/nonexistent/x.json"), 2)):
        proc = _proc(argv, config, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("Error: ")
    assert len(_pending(config, "jobs") or []) == 1


@pytest.mark.parametrize(("answer", "exit_code", "remains"), [("y\n", 0, False), ("n\n", 1, True)])
def test_subprocess_destroy_prompts_on_a_terminal(config: Path, answer: str, exit_code: int, remains: bool) -> None:
    argv = _commands()[0]
    assert _proc(argv, config, "create", "jobs").returncode == 0
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([*argv, "--config", str(config), "destroy", "jobs"], stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(slave)
        slave = -1
        os.write(master, answer.encode())
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == exit_code, (out, err)
    assert "Destroy queue 'jobs'" in out and "Traceback" not in err
    assert (_pending(config, "jobs") is not None) is remains


def test_status_shows_failures_prominently(run: Run, config: Path) -> None:
    from queue_engine import QueueFactory

    _add(run, "jobs", "--data", "1")
    manager = QueueFactory.get_queue_manager(config)
    reserved = manager.reserve("jobs")
    assert reserved is not None
    manager.fail("jobs", reserved, "boom")
    manager.close()
    human = run("status", "jobs")
    assert "FAILED: 1 message(s) - see: qengine failed jobs" in human.stderr
    assert assert_ok(human).splitlines()[1] == "failed: 1"
    as_json = run("status", "jobs", "--json")
    assert _json(as_json)["failed"] == 1 and "FAILED" not in as_json.stdout


@pytest.mark.parametrize("command", [["status", "jobs"], ["get", "jobs"], ["add", "jobs"], ["find", "jobs"],
                                     ["failed", "jobs"], ["fsck", "jobs", "--repair"], ["queues"]])
def test_a_queue_file_that_cannot_be_opened_is_one_line(run: Run, tmp_path: Path, command: list[str]) -> None:
    """A queue's files must be readable and writable, even to read it (readers lock too). A
    lock file that cannot be opened (here a directory; for another user, its permissions) is
    an ``Error:`` line naming the file, exit 5, and the queue is left as it was."""
    _add(run, "jobs", "--data", '"keep"')
    lock = tmp_path / "data" / "queues" / "jobs" / "lock"
    lock.unlink()
    lock.mkdir()
    assert_user_error(run(*command), 5, str(lock), "Is a directory")
    lock.rmdir()
    assert json.loads(assert_ok(run("get", "jobs")))["data"] == "keep"
