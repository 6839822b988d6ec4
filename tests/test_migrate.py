"""``qengine migrate`` between the file backend and Redis (a private redis-server), both ways.

The CLI runs in-process with CliRunner; one run is a real subprocess. Interruptions are
reproduced by calling the library steps (copy, verify, remove) one at a time.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from redis_server import redis_server_binary

from queue_engine import FailedMessage, QueueFactory, QueueManager, QueueMessage
from queue_engine.backends.memory import MemoryQueueManager
from queue_engine.cli import cli
from queue_engine.migrate import MigrationError, copy_queue, migrate_queue, remove_copied, verify_copy

pytestmark = pytest.mark.skipif(
    redis_server_binary() is None and os.environ.get("CI") != "true",
    reason="redis-server is not installed (CI=true makes this a failure)",
)

Q = "ANPR"
LONG = 600.0


@pytest.fixture
def configs(tmp_path: Path, redis_url: str) -> dict[str, Path]:
    file_ini = tmp_path / "file.ini"
    file_ini.write_text(f"[queue]\nqueueType = file\ncacheRoot = {tmp_path / 'data'}\nfsync = never\n")
    redis_ini = tmp_path / "redis.ini"
    redis_ini.write_text(f"[queue]\nqueueType = redis\nredisUrl = {redis_url}\nredisPrefix = moved\n")
    return {"file": file_ini, "redis": redis_ini}


@pytest.fixture
def managers(configs: dict[str, Path]) -> Iterator[dict[str, QueueManager]]:
    opened = {name: QueueFactory.get_queue_manager(path) for name, path in configs.items()}
    yield opened
    for manager in opened.values():
        manager.close()


def fill(manager: QueueManager, queue: str = Q) -> dict[str, str]:
    """Every kind of message, custom attributes and a last processed message; name -> uuid."""
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    manager.create_queue(queue, site="Milano", lanes=4)
    done = manager.add_message(queue, QueueMessage(data="done"))
    got = manager.get_message(queue)
    assert got is not None and got.uuid == done
    manager.update_last_message_processed(queue, got)
    uuids = {
        "doomed": manager.add_message(queue, QueueMessage(data={"n": 1}, alias="doomed")),
        "plain": manager.add_message(queue, QueueMessage(data={"n": 2}, alias="plate-AB123")),
        "deferred": manager.add_message(queue, QueueMessage(data={"n": 3}, alias="later", deferred_until=later)),
        "disabled": manager.add_message(queue, QueueMessage(data={"n": 4}, disabled=True)),
        "last": manager.add_message(queue, QueueMessage(data={"n": 5})),
    }
    first = manager.reserve(queue, lease=LONG)
    assert first is not None and first.uuid == uuids["doomed"]
    manager.fail(queue, first, "camera offline")
    uuids["done"] = done
    return uuids


def snapshot(manager: QueueManager, queue: str = Q) -> list[tuple[str, object, str | None, str]]:
    """(uuid, data, alias, state) of every message, in export order."""
    out = []
    for item in manager.export_messages(queue):
        if isinstance(item, FailedMessage):
            out.append((str(item.message.uuid), item.message.data, item.message.alias, "failed"))
        else:
            state = "disabled" if item.disabled else ("deferred" if item.deferred_until else "pending")
            out.append((str(item.uuid), item.data, item.alias, state))
    return out


def _runner() -> CliRunner:
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


def run(source: Path, *args: str) -> Result:
    return _runner().invoke(cli, ["--config", str(source), "migrate", *args], catch_exceptions=False)


@pytest.mark.parametrize(("src", "dst"), [("file", "redis"), ("redis", "file")])
def test_migrate_moves_everything(
    configs: dict[str, Path], managers: dict[str, QueueManager], src: str, dst: str
) -> None:
    uuids = fill(managers[src])
    fill(managers[src], "OTHER")
    before = snapshot(managers[src])
    result = run(configs[src], "--to-config", str(configs[dst]), Q)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{Q}: exported 5, imported 5, verified, removed 5\n"
    destination, source = managers[dst], managers[src]
    assert snapshot(destination) == before  # uuids, data, aliases, states and order
    status = destination.queue_status(Q)
    assert (status.ready, status.deferred, status.disabled, status.failed) == (2, 1, 1, 1)
    assert status.custom_attributes == {"site": "Milano", "lanes": 4}
    assert status.last_message_processed is not None and status.last_message_processed.uuid == uuids["done"]
    [failed] = destination.failed_messages(Q)
    assert (failed.message.uuid, failed.errors, failed.message.attempts) == (uuids["doomed"], ["camera offline"], 1)
    [by_alias] = destination.find_messages(Q, alias="plate-AB123")
    assert by_alias.uuid == uuids["plain"]
    # the source keeps its (now empty) queue record; the queue not named was not touched
    assert source.export_messages(Q) == []
    assert source.queue_status(Q).custom_attributes == {"site": "Milano", "lanes": 4}
    assert len(source.export_messages("OTHER")) == 5
    assert destination.queue_exists("OTHER") is False
    # the destination works: FIFO from the original order, requeue to the original place
    got = destination.get_message(Q)
    assert got is not None and got.uuid == uuids["plain"]
    assert destination.requeue_failed(Q) == [uuids["doomed"]]


def test_migrate_every_queue_as_a_real_process(configs: dict[str, Path], managers: dict[str, QueueManager]) -> None:
    fill(managers["file"], "A")
    fill(managers["file"], "B")
    env = {k: v for k, v in os.environ.items() if k != "QENGINE_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "queue_engine", "--config", str(configs["file"]), "migrate",
         "--to-config", str(configs["redis"]), "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["queue"], r["exported"], r["imported"], r["verified"], r["removed"]) for r in rows] == [
        ("A", 5, 5, True, 5),
        ("B", 5, 5, True, 5),
    ]
    assert managers["redis"].list_queues() == ["A", "B"]


def test_dry_run_changes_nothing(configs: dict[str, Path], managers: dict[str, QueueManager]) -> None:
    fill(managers["file"])
    before = snapshot(managers["file"])
    result = run(configs["file"], "--to-config", str(configs["redis"]), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{Q}: would move 5 messages (2 ready, 1 deferred, 1 disabled, 1 failed) to redis ")
    assert snapshot(managers["file"]) == before
    assert managers["redis"].list_queues() == []


def test_rerun_after_an_interruption_loses_and_duplicates_nothing(
    configs: dict[str, Path], managers: dict[str, QueueManager]
) -> None:
    source, destination = managers["file"], managers["redis"]
    fill(source)
    before = snapshot(source)
    # first run dies after the import, before verification and removal
    items, imported = copy_queue(source, destination, Q)
    assert (len(items), imported) == (5, 5)
    # second run: nothing new to import, then verified and removed
    result = run(configs["file"], "--to-config", str(configs["redis"]), Q)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{Q}: exported 5, imported 0, verified, removed 5\n"
    assert snapshot(destination) == before
    assert source.export_messages(Q) == []


def test_rerun_after_a_partial_removal(configs: dict[str, Path], managers: dict[str, QueueManager]) -> None:
    source, destination = managers["redis"], managers["file"]
    fill(source)
    before = snapshot(source)
    items, _ = copy_queue(source, destination, Q)
    verify_copy(destination, Q, items)
    remove_copied(source, Q, items[:2])  # dies after removing two of five
    source.add_message(Q, QueueMessage(data="added meanwhile"))  # a producer still running
    result = run(configs["redis"], "--to-config", str(configs["file"]), Q)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{Q}: exported 4, imported 1, verified, removed 4\n"
    after = snapshot(destination)
    assert len(after) == len(before) + 1  # each uuid once
    assert {u for u, *_ in before} < {u for u, *_ in after}
    assert [d for _, d, _, s in after if s != "failed"][-1] == "added meanwhile"
    assert source.export_messages(Q) == []


class LossyManager(MemoryQueueManager):
    """A backend that loses the last message of every import (to prove verification)."""

    def _import_messages(self, queue: str, items: list[QueueMessage | FailedMessage]) -> int:
        return super()._import_messages(queue, items[:-1])


def test_failed_verification_leaves_the_source_intact(managers: dict[str, QueueManager]) -> None:
    source = managers["redis"]
    fill(source)
    before = snapshot(source)
    lossy = LossyManager(source.config)
    with pytest.raises(MigrationError, match="lacks 0 pending and 1 failed"):
        migrate_queue(source, lossy, Q)
    assert snapshot(source) == before


def test_alias_conflict_in_the_destination_stops_before_removal(
    configs: dict[str, Path], managers: dict[str, QueueManager]
) -> None:
    fill(managers["file"])
    before = snapshot(managers["file"])
    managers["redis"].add_message(Q, QueueMessage(data="already there", alias="plate-AB123"))
    result = run(configs["file"], "--to-config", str(configs["redis"]), Q)
    assert result.exit_code == 4
    assert "'plate-AB123'" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(managers["file"]) == before
    assert len(managers["redis"].export_messages(Q)) == 1


def test_same_storage_is_refused(configs: dict[str, Path], managers: dict[str, QueueManager], tmp_path: Path) -> None:
    fill(managers["redis"])
    twin = tmp_path / "twin.ini"
    twin.write_text(configs["redis"].read_text())
    result = run(configs["redis"], "--to-config", str(twin))
    assert result.exit_code == 2
    assert "same storage" in result.stderr
    assert len(managers["redis"].export_messages(Q)) == 5


# -- regressions from review ---------------------------------------------------------------


def _run_migrate(source: Path, target: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(source), "migrate", "--to-config", str(target), *args])


def test_same_redis_server_named_differently_is_refused(tmp_path: Path, redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    by_url = tmp_path / "a.ini"
    by_url.write_text(f"[queue]\nqueueType = redis\nredisUrl = redis://localhost:{port}/0\n")
    by_parts = tmp_path / "b.ini"
    by_parts.write_text(f"[queue]\nqueueType = redis\nredisHost = 127.0.0.1\nredisPort = {port}\n")
    with QueueFactory.get_queue_manager(by_url) as manager:
        for i in range(5):
            manager.add_message(Q, QueueMessage(data=i))
    result = _run_migrate(by_url, by_parts)
    assert result.exit_code != 0 and "same storage" in result.stderr, result.stderr
    with QueueFactory.get_queue_manager(by_parts) as manager:
        assert manager.queue_status(Q).ready == 5


def test_same_cache_root_spelled_differently_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    a = tmp_path / "a.ini"
    a.write_text(f"[queue]\ncacheRoot = {real}\nfsync = never\n")
    b = tmp_path / "b.ini"
    b.write_text(f"[queue]\ncacheRoot = {real}/../real\nfsync = never\n")
    with QueueFactory.get_queue_manager(a) as manager:
        manager.add_message(Q, QueueMessage(data=1))
    result = _run_migrate(a, b)
    assert result.exit_code != 0 and "same storage" in result.stderr, result.stderr
    with QueueFactory.get_queue_manager(a) as manager:
        assert manager.queue_status(Q).ready == 1


def test_a_queue_with_messages_in_flight_is_not_migrated(managers: dict[str, QueueManager]) -> None:
    source, destination = managers["file"], managers["redis"]
    source.add_message(Q, QueueMessage(data=1))
    source.add_message(Q, QueueMessage(data=2))
    assert source.reserve(Q, lease=LONG) is not None
    with pytest.raises(MigrationError, match="in flight"):
        migrate_queue(source, destination, Q)
    assert source.queue_status(Q).messages_to_process == 2
    assert not destination.queue_exists(Q)
