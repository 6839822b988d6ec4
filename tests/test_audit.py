"""The audit trail: the AuditLog contract on every implementation, the file log's on-disk
promises (day files, permissions, torn lines, concurrent writers, retention) and
:func:`get_audit_log`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_engine import ConfigurationError, InvalidMessage, InvalidQueueName, QueueFactory, StorageError, codec
from queue_engine.audit import (
    AuditLog,
    AuditRecord,
    FileAuditLog,
    MemoryAuditLog,
    _line,
    get_audit_log,
    register_audit_log,
)
from queue_engine.backends.memory import MemoryQueueManager
from queue_engine.config import load_config

DAY = 86400.0
#: Retention long enough that records of 2024 are not pruned by the first record of a process.
KEEP = 1_000_000.0
# 2024-07-01T00:00:00Z and friends, so day files are predictable.
T0 = datetime(2024, 7, 1, tzinfo=timezone.utc).timestamp()


def rec(
    uuid: str = "u1",
    *,
    queue: str = "ANPR",
    started_at: float = T0 + 3600,
    attempt: int = 1,
    outcome: str = "success",
    alias: str | None = None,
    error: str | None = None,
    duration: float = 0.25,
    **extra: Any,
) -> AuditRecord:
    return AuditRecord(
        queue=queue, uuid=uuid, alias=alias, attempt=attempt, outcome=outcome, started_at=started_at,
        duration=duration, host="host-1", pid=4242, worker="AnprWorker", error=error, extra=dict(extra),
    )


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


@pytest.fixture(params=["file", "memory"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditLog]:
    built: AuditLog = FileAuditLog(tmp_path / "audit", KEEP) if request.param == "file" else MemoryAuditLog()
    yield built
    built.close()


# -- AuditRecord --------------------------------------------------------------------------
def test_record_to_dict_has_iso_times() -> None:
    r = rec(error="boom", duration=1.5, status=500)
    d = r.to_dict()
    assert d["started_at"] == "2024-07-01T01:00:00+00:00"
    assert d["finished_at"] == "2024-07-01T01:00:01.500000+00:00"
    assert d["extra"] == {"status": 500}
    assert (d["queue"], d["uuid"], d["attempt"], d["outcome"], d["error"], d["host"], d["pid"], d["worker"]) == (
        "ANPR", "u1", 1, "success", "boom", "host-1", 4242, "AnprWorker"
    )
    assert AuditRecord.from_record(json.loads(json.dumps(r.to_record()))) == r


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"outcome": "maybe"}, "'maybe'"),
        ({"attempt": 0}, "attempt 0"),
        ({"attempt": True}, "attempt True"),
        ({"uuid": ""}, "uuid ''"),
        ({"duration": -1.0}, "duration -1.0"),
        ({"started_at": float("nan")}, "started_at nan"),
    ],
)
def test_record_rejects_bad_fields(changes: dict[str, Any], fragment: str) -> None:
    fields: dict[str, Any] = {"uuid": "u1", "outcome": "success", "attempt": 1, "duration": 0.1, "started_at": T0}
    fields.update(changes)
    with pytest.raises(InvalidMessage, match=fragment.replace("(", r"\(")):
        AuditRecord(queue="Q", alias=None, host="h", pid=1, worker="W", **fields)


def test_record_rejects_bad_queue_name() -> None:
    with pytest.raises(InvalidQueueName):
        rec(queue="../etc")


# -- the contract, on every implementation ------------------------------------------------
def test_query_returns_time_order_and_filters(log: AuditLog) -> None:
    # Recorded out of order, across two UTC days.
    log.record(rec("b", started_at=T0 + DAY + 10, attempt=1, outcome="retry", alias="plate-2", error="timeout"))
    log.record(rec("a", started_at=T0 + 5, attempt=1, outcome="retry", alias="plate-1", error="e1"))
    log.record(rec("a", started_at=T0 + 20, attempt=2, outcome="failed", alias="plate-1", error="e2"))
    log.record(rec("b", started_at=T0 + DAY + 30, attempt=2, outcome="success", alias="plate-2"))
    log.record(rec("x", queue="OTHER", started_at=T0 + 1))

    everything = log.query("ANPR")
    assert [(r.uuid, r.attempt, r.outcome) for r in everything] == [
        ("a", 1, "retry"), ("a", 2, "failed"), ("b", 1, "retry"), ("b", 2, "success")
    ]
    assert [r.attempt for r in log.query("ANPR", uuid="a")] == [1, 2]
    assert [r.uuid for r in log.query("ANPR", alias="plate-2")] == ["b", "b"]
    assert [(r.uuid, r.attempt) for r in log.query("ANPR", since=utc(T0 + 20))] == [("a", 2), ("b", 1), ("b", 2)]
    assert [(r.uuid, r.attempt) for r in log.query("ANPR", until=utc(T0 + 20))] == [("a", 1), ("a", 2)]
    assert [(r.uuid, r.attempt) for r in log.query("ANPR", since=utc(T0 + 20), until=utc(T0 + DAY + 10))] == [
        ("a", 2), ("b", 1)
    ]
    assert [(r.uuid, r.attempt) for r in log.query("ANPR", limit=3)] == [("a", 1), ("a", 2), ("b", 1)]
    assert log.query("ANPR", limit=0) == []
    assert log.query("ANPR", uuid="nope") == []
    assert [r.uuid for r in log.query("OTHER")] == ["x"]
    assert log.query("NEVER-USED") == []
    assert everything[1].error == "e2" and everything[1].alias == "plate-1"


def test_query_accepts_local_naive_datetimes(log: AuditLog) -> None:
    log.record(rec("a", started_at=T0))
    naive_local = utc(T0).astimezone().replace(tzinfo=None)
    assert [r.uuid for r in log.query("ANPR", since=naive_local, until=naive_local)] == ["a"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"limit": -1}, InvalidMessage), ({"limit": True}, InvalidMessage), ({"since": "2024-07-01"}, InvalidMessage)],
)
def test_query_rejects_bad_arguments(log: AuditLog, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        log.query("ANPR", **kwargs)


def test_query_rejects_bad_queue_name(log: AuditLog) -> None:
    with pytest.raises(InvalidQueueName):
        log.query("../x")


def test_record_rejects_non_records(log: AuditLog) -> None:
    with pytest.raises(InvalidMessage):
        log.record({"uuid": "x"})  # type: ignore[arg-type]


def test_memory_retention() -> None:
    log = MemoryAuditLog(retention_days=1)
    log.record(rec("old", started_at=T0))
    log.record(rec("new", started_at=T0 + 2 * DAY))
    assert log.prune(now=T0 + 2 * DAY + 1) == 1
    assert [r.uuid for r in log.query("ANPR")] == ["new"]
    assert MemoryAuditLog().prune(now=T0 + 1000 * DAY) == 0


@pytest.mark.parametrize("days", [0, -1, float("inf"), float("nan"), "30", True])
def test_retention_must_be_positive_days(tmp_path: Path, days: Any) -> None:
    with pytest.raises(ConfigurationError, match="retention"):
        FileAuditLog(tmp_path, days)
    with pytest.raises(ConfigurationError, match="retention"):
        MemoryAuditLog(days)


# -- the file log on disk -----------------------------------------------------------------
def test_file_layout_and_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        log = FileAuditLog(tmp_path / "audit", KEEP)
        log.record(rec("a", started_at=T0 + DAY - 0.5))  # 2024-07-01T23:59:59.5Z
        log.record(rec("b", started_at=T0 + DAY))  # 2024-07-02T00:00:00Z
    finally:
        os.umask(old)
    queue_dir = tmp_path / "audit" / "ANPR"
    assert sorted(p.name for p in queue_dir.iterdir()) == ["2024-07-01.jsonl", "2024-07-02.jsonl"]
    assert stat.S_IMODE(queue_dir.stat().st_mode) == 0o700
    for path in queue_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = (queue_dir / "2024-07-01.jsonl").read_bytes().splitlines()
    assert len(lines) == 1 and lines[0].startswith(b'{"v":1,')
    assert json.loads(lines[0])["uuid"] == "a"


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # what UTF-8 can hold
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    uuid=_text.filter(bool),
    alias=st.none() | _text | st.integers(),  # alias and the next fields are not validated: any JSON
    error=st.none() | _text,
    host=_text | st.just(None),
    worker=_text,
    pid=st.integers(-1, 2**40) | st.booleans(),
    attempt=st.integers(1, 2**70),
    started_at=st.floats(-1e12, 1e12) | st.integers(-(10**12), 10**12),
    duration=st.floats(0, 1e9) | st.integers(0, 10**9),
    extra=st.dictionaries(_text, _json, max_size=4),
)
def test_record_line_is_the_generic_encoding(**fields: Any) -> None:
    """The file log formats the usual record itself (a worker writes one per message): it
    must be exactly what the generic encoder makes of to_record(), escapes included."""
    record = AuditRecord(queue="ANPR", outcome="retry", **fields)
    assert _line(record) == codec.dumps(record.to_record())
    assert json.loads(_line(record)) == json.loads(json.dumps(record.to_record()))


def test_query_reads_only_the_days_in_range(tmp_path: Path) -> None:
    log = FileAuditLog(tmp_path, KEEP)
    log.record(rec("a", started_at=T0 + 10))
    log.record(rec("c", started_at=T0 + 2 * DAY + 10))
    # A day file that cannot be read: any query that opens it fails loudly.
    (tmp_path / "ANPR" / "2024-07-02.jsonl").mkdir()
    with pytest.raises(StorageError, match="2024-07-02.jsonl"):
        log.query("ANPR")
    assert [r.uuid for r in log.query("ANPR", until=utc(T0 + DAY - 1), since=utc(T0))] == ["a"]
    assert [r.uuid for r in log.query("ANPR", since=utc(T0 + 2 * DAY))] == ["c"]


def test_torn_lines_are_skipped_and_later_records_kept(tmp_path: Path) -> None:
    log = FileAuditLog(tmp_path, KEEP)
    log.record(rec("a", started_at=T0 + 1))
    path = tmp_path / "ANPR" / "2024-07-01.jsonl"
    whole = json.dumps(rec("torn", started_at=T0 + 2).to_record()).encode()
    with open(path, "ab") as fh:  # a writer killed mid-record: no newline
        fh.write(whole[: len(whole) // 2])
    log.record(rec("b", started_at=T0 + 3))  # appended onto the torn fragment's line
    with open(path, "ab") as fh:
        fh.write(b"\nnot json at all\n" + whole[:10])  # foreign and torn lines at the end
    assert [r.uuid for r in log.query("ANPR")] == ["a", "b"]
    (tmp_path / "ANPR" / "notes.txt").write_text("ignored: not a day file")
    (tmp_path / "ANPR" / "2024-13-45.jsonl").write_text("ignored: not a date")
    assert [r.uuid for r in log.query("ANPR")] == ["a", "b"]


def _append_many(root: str, writer: int, count: int, pad: int) -> None:
    log = FileAuditLog(root, KEEP)
    for n in range(count):
        log.record(rec(f"w{writer}-{n}", started_at=T0 + n, attempt=n + 1, pad="x" * pad))


def test_concurrent_writer_processes_never_interleave(tmp_path: Path) -> None:
    # Lines far larger than PIPE_BUF: a single O_APPEND write of a regular file is still atomic.
    ctx = multiprocessing.get_context("spawn")
    writers, count, pad = 4, 150, 20_000
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, count, pad)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)  # hang guard
        assert p.exitcode == 0
    raw = (tmp_path / "ANPR" / "2024-07-01.jsonl").read_bytes().splitlines()
    assert len(raw) == writers * count
    assert all(json.loads(line)["extra"]["pad"] == "x" * pad for line in raw)
    found = FileAuditLog(tmp_path, KEEP).query("ANPR")
    assert sorted(r.uuid for r in found) == sorted(f"w{w}-{n}" for w in range(writers) for n in range(count))
    for w in range(writers):  # each writer's records keep their order
        assert [r.attempt for r in found if r.uuid.startswith(f"w{w}-")] == list(range(1, count + 1))


def test_prune_deletes_whole_days_older_than_retention(tmp_path: Path) -> None:
    log = FileAuditLog(tmp_path, retention_days=2)
    for day in range(5):  # 2024-07-01 .. 2024-07-05
        log.record(rec(f"d{day}", started_at=T0 + day * DAY + 60))
    log.record(rec("o", queue="OTHER", started_at=T0 + 60))
    # Now: 2024-07-05T12:00Z; cutoff 2024-07-03T12:00Z: days that ended by then go.
    assert log.prune(now=T0 + 4.5 * DAY) == 3  # ANPR 07-01, 07-02 and OTHER 07-01
    assert [r.uuid for r in log.query("ANPR")] == ["d2", "d3", "d4"]
    assert log.query("OTHER") == []
    assert log.prune(now=T0 + 4.5 * DAY) == 0
    assert FileAuditLog(tmp_path / "missing", 1).prune() == 0


def test_record_prunes_once_per_day(tmp_path: Path) -> None:
    FileAuditLog(tmp_path, KEEP).record(rec("stale", started_at=T0))
    log = FileAuditLog(tmp_path, retention_days=1)
    log.record(rec("stale", queue="OTHER", started_at=T0))  # the first record of the instance prunes first
    assert log.query("ANPR") == []
    assert [r.uuid for r in log.query("OTHER")] == ["stale"]  # written after pruning: kept until tomorrow
    log.record(rec("again", queue="OTHER", started_at=T0))
    assert [r.uuid for r in log.query("OTHER")] == ["stale", "again"]


def test_unwritable_root_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = FileAuditLog(blocker / "audit", 30)
    with pytest.raises(StorageError, match="audit"):
        log.record(rec())


# -- get_audit_log ------------------------------------------------------------------------
def test_memory_manager_gets_one_memory_log_per_instance() -> None:
    first = QueueFactory.get_queue_manager(queue_type="memory")
    second = QueueFactory.get_queue_manager(queue_type="memory")
    try:
        log = get_audit_log(first)
        assert isinstance(log, MemoryAuditLog)
        assert get_audit_log(first) is log
        assert get_audit_log(second) is not log
        log.record(rec())
        assert get_audit_log(second).query("ANPR") == []
    finally:
        first.close()
        second.close()


def _file_manager(tmp_path: Path, text: str) -> Any:
    config = tmp_path / "config.ini"
    config.write_text(f"[queue]\nqueueType = file\ncacheRoot = {tmp_path / 'data'}\nfsync = never\n{text}")
    return QueueFactory.get_queue_manager(config)


@pytest.mark.parametrize(("text", "days"), [("", 30.0), ("[audit]\nretentionDays = 7.5\n", 7.5),
                                            ("[audit]\nRETENTIONDAYS = 2\n", 2.0)])
def test_file_manager_gets_a_file_log_under_cache_root(tmp_path: Path, text: str, days: float) -> None:
    manager = _file_manager(tmp_path, text)
    try:
        log = get_audit_log(manager)
        assert isinstance(log, FileAuditLog)
        assert log.root == tmp_path / "data" / "audit"
        assert log.retention_days == days
        assert get_audit_log(manager) is log
        log.record(rec())
        assert (tmp_path / "data" / "audit" / "ANPR" / "2024-07-01.jsonl").is_file()
    finally:
        manager.close()


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[audit]\nretentionDays = soon\n", ["[audit] retentionDays", "'soon'", "config.ini"]),
        ("[audit]\nretentionDays = 0\n", ["[audit] retentionDays", "'0'", "> 0"]),
        ("[audit]\nretention = 3\n", ["unknown key [audit] retention", "retentionDays"]),
    ],
)
def test_bad_audit_config_is_a_configuration_error(tmp_path: Path, text: str, fragments: list[str]) -> None:
    manager = _file_manager(tmp_path, text)
    try:
        with pytest.raises(ConfigurationError) as info:
            get_audit_log(manager)
        for fragment in fragments:
            assert fragment in str(info.value)
    finally:
        manager.close()


class _OddManager(MemoryQueueManager):
    queue_type = "odd"


def test_backend_without_audit_log_is_a_clear_error() -> None:
    manager = _OddManager(load_config(None))
    with pytest.raises(ConfigurationError, match="'odd' has no audit log"):
        get_audit_log(manager)


def test_register_audit_log(monkeypatch: pytest.MonkeyPatch) -> None:
    from queue_engine import audit

    monkeypatch.setattr(audit, "_BUILDERS", dict(audit._BUILDERS))
    made: list[AuditLog] = []

    def build(manager: Any) -> AuditLog:
        made.append(MemoryAuditLog(retention_days=3))
        return made[-1]

    register_audit_log("ODD", build)
    manager = _OddManager(load_config(None))
    assert get_audit_log(manager) is made[0]
    assert get_audit_log(manager) is made[0]


def test_naive_range_in_local_time_matches_utc_day_files(tmp_path: Path) -> None:
    log = FileAuditLog(tmp_path, KEEP)
    starts = [T0 + h * 3600 for h in range(-30, 31, 3)]  # around two UTC day boundaries
    for n, start in enumerate(starts):
        log.record(rec(f"m{n}", started_at=start))
    lo, hi = utc(starts[3]).astimezone().replace(tzinfo=None), utc(starts[-4]).astimezone().replace(tzinfo=None)
    assert [r.started_at for r in log.query("ANPR", since=lo, until=hi)] == starts[3:-3]
    assert [r.started_at for r in log.query("ANPR", since=lo + timedelta(microseconds=1))] == starts[4:]


