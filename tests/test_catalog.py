"""The queue catalogue: ``create --description/--manual/--class``, ``queues [--json]``, manual
insertion refused or processed at once (``[queue] manualMode``), on the file backend."""

from __future__ import annotations

import inspect
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from queue_engine import QueueFactory, QueueManager, QueueMessage
from queue_engine.catalog import ManualInsertionRefused, add_manual, get_entry, manual_mode
from queue_engine.cli import cli
from queue_engine.config import load_config
from queue_engine.contingency import Spool
from queue_engine.errors import ConfigurationError


def _runner() -> CliRunner:
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


def write_config(path: Path, extra: str = "") -> Path:
    path.write_text(
        f"[queue]\nqueueType = file\ncacheRoot = {path.parent / 'data'}\nfsync = never\nspoolDir = spool\n{extra}"
    )
    return path


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("QENGINE_CONFIG", raising=False)
    return write_config(tmp_path / "qengine.ini")


@pytest.fixture
def mgr(config: Path) -> Iterator[QueueManager]:
    manager = QueueFactory.get_queue_manager(config)
    yield manager
    manager.close()


def run(config: Path, *args: str) -> Result:
    return _runner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def test_create_and_list_json(config: Path, mgr: QueueManager, tmp_path: Path) -> None:
    assert ok(run(config, "create", "VKM", "--description", "Notificar a VKM", "--class", "Shipping")) == "created\n"
    assert ok(run(config, "create", "ANPR", "--no-manual")) == "created\n"
    ok(run(config, "create", "plain"))
    mgr.add_message("VKM", QueueMessage(data=1))
    mgr.add_message("VKM", QueueMessage(data=2, disabled=True))
    Spool(tmp_path / "spool").put("VKM", QueueMessage(data=3), "test")
    rows = {row["queue"]: row for row in json.loads(ok(run(config, "queues", "--json")))}
    assert list(rows) == ["ANPR", "VKM", "plain"]
    assert rows["VKM"] == {
        "queue": "VKM", "description": "Notificar a VKM", "manual": True, "class": "Shipping", "catalogued": True,
        "ready": 1, "deferred": 0, "in_flight": 0, "disabled": 1, "failed": 0, "spooled": 1, "manual_adds": 0,
    }
    assert (rows["ANPR"]["manual"], rows["ANPR"]["description"]) == (False, None)
    assert (rows["plain"]["catalogued"], rows["plain"]["manual"]) == (False, True)


@pytest.mark.parametrize("option", ["--description", "--class"])
def test_create_with_bad_catalogue_text_creates_nothing(config: Path, mgr: QueueManager, option: str) -> None:
    result = run(config, "create", "brandnew", option, "x" * 1001)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "at most 1000 characters" in result.stderr
    assert mgr.queue_exists("brandnew") is False


def test_create_updates_an_existing_entry(config: Path, mgr: QueueManager) -> None:
    ok(run(config, "create", "VKM", "--description", "old", "--class", "Shipping"))
    assert ok(run(config, "create", "VKM", "--description", "new", "--no-manual")) == "exists\n"
    entry = get_entry(mgr, "VKM")
    assert entry is not None
    assert (entry.description, entry.manual, entry.class_name) == ("new", False, "Shipping")  # class kept


def test_queues_human_output_names_failures(config: Path, mgr: QueueManager) -> None:
    ok(run(config, "create", "VKM", "--description", "Notify VKM"))
    mgr.add_message("VKM", QueueMessage(data=1))
    reserved = mgr.reserve("VKM")
    assert reserved is not None
    mgr.fail("VKM", reserved, "boom")
    result = run(config, "queues")
    lines = ok(result).splitlines()
    assert lines[0].split("\t") == [
        "QUEUE", "READY", "DEFERRED", "IN_FLIGHT", "DISABLED", "FAILED", "SPOOLED", "MANUAL", "CLASS", "DESCRIPTION"
    ]
    assert lines[1].split("\t") == ["VKM", "0", "0", "0", "0", "1", "0", "yes", "-", "Notify VKM"]
    assert "FAILED: VKM (1)" in result.stderr


def test_manual_insertion_refused(config: Path, mgr: QueueManager) -> None:
    ok(run(config, "create", "ANPR", "--no-manual"))
    result = run(config, "add", "ANPR", "--data", '{"plate": "AB123"}')
    assert result.exit_code == ManualInsertionRefused.exit_code != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: queue 'ANPR' does not allow manual insertion (catalogue: manual = false)"
    ]
    assert mgr.queue_status("ANPR").messages_to_process == 0  # nothing written
    entry = get_entry(mgr, "ANPR")
    assert entry is not None and entry.manual_adds == 0


def test_manual_insertion_queued_is_recorded(config: Path, mgr: QueueManager) -> None:
    uuid = ok(run(config, "add", "VKM", "--data", "1", "--username", "ana")).strip()
    assert [m.uuid for m in mgr.find_messages("VKM")] == [uuid]
    entry = get_entry(mgr, "VKM")
    assert entry is not None and entry.manual and entry.manual_adds == 1
    assert entry.last_manual_add is not None
    assert (entry.last_manual_add["uuid"], entry.last_manual_add["username"]) == (uuid, "ana")


def test_manual_mode_config(tmp_path: Path) -> None:
    assert manual_mode(load_config(write_config(tmp_path / "a.ini"))) == "queued"
    assert manual_mode(load_config(write_config(tmp_path / "b.ini", "manualMode = Direct\n"))) == "direct"
    with pytest.raises(ConfigurationError, match=r"c\.ini: \[queue\] manualMode = 'rabbit'; valid: queued, direct"):
        manual_mode(load_config(write_config(tmp_path / "c.ini", "manualMode = rabbit\n")))


WORKER = textwrap.dedent("""\
    import json
    from pathlib import Path

    from queue_engine import QueueMessage
    from queue_engine.worker import Worker


    class AnprWorker(Worker):
        queue = "ANPR"
        retries = 2

        def process(self, message: QueueMessage) -> None:
            if message.data.get("fail"):
                raise ValueError("plate unreadable")
            out = Path(__file__).parent / "done.jsonl"
            with out.open("a") as fh:
                fh.write(json.dumps({"uuid": message.uuid, "data": message.data}) + "\\n")
    """)


def test_manual_mode_direct_runs_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QENGINE_CONFIG", raising=False)
    workers = tmp_path / "workers"
    workers.mkdir()
    (workers / "anpr.py").write_text(WORKER)
    config = write_config(
        tmp_path / "qengine.ini",
        f"manualMode = direct\nworkersPath = {workers}\n\n[worker.ANPR]\nbackoff = fixed\nretryDelay = 0\n",
    )
    uuid = ok(run(config, "add", "ANPR", "--data", '{"plate": "AB123"}')).strip()
    done = [json.loads(line) for line in (workers / "done.jsonl").read_text().splitlines()]
    assert done == [{"uuid": uuid, "data": {"plate": "AB123"}}]
    bad = ok(run(config, "add", "ANPR", "--data", '{"fail": true}')).strip()
    with QueueFactory.get_queue_manager(config) as manager:
        assert manager.queue_status("ANPR").messages_to_process == 0  # processed, not stored
        failed = manager.failed_messages("ANPR")
        assert [(f.message.uuid, f.errors) for f in failed] == [(bad, ["ValueError: plate unreadable"] * 2)]
        entry = get_entry(manager, "ANPR")
        assert entry is not None and entry.manual_adds == 2


def test_add_manual_library_refuses(mgr: QueueManager) -> None:
    mgr.create_queue("ANPR")
    from queue_engine.catalog import set_entry

    set_entry(mgr, "ANPR", manual=False)
    with pytest.raises(ManualInsertionRefused, match="'ANPR' does not allow manual insertion"):
        add_manual(mgr, "ANPR", QueueMessage(data=1))
    assert mgr.find_messages("ANPR") == []
