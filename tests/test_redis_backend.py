"""Redis-specific behaviour; the contract itself runs on Redis through the conftest ``backend`` param.

Every test uses a real, private redis-server: the session's (``redis_url``, flushed per test)
or, where a test stops its server, one of its own. No fake Redis, no timed assertions.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import redis
from ports import free_port
from redis_server import RedisServer, redis_server_binary

from queue_engine import ConfigurationError, LeaseLost, QueueFactory, QueueManager, QueueMessage, StorageError
from queue_engine.audit import AuditRecord, get_audit_log
from queue_engine.runner import WorkerRunner

HANG_GUARD = 120.0
CTX = multiprocessing.get_context("spawn")

pytestmark = pytest.mark.skipif(
    redis_server_binary() is None and os.environ.get("CI") != "true",
    reason="redis-server is not installed (CI=true makes this a failure)",
)


def build(url: str, **settings: Any) -> QueueManager:
    return QueueFactory.get_queue_manager(queue_type="redis", redis_url=url, **settings)


@pytest.fixture
def open_redis(redis_url: str) -> Iterator[Callable[..., QueueManager]]:
    opened: list[QueueManager] = []

    def factory(**settings: Any) -> QueueManager:
        manager = build(settings.pop("url", redis_url), **settings)
        opened.append(manager)
        return manager

    yield factory
    for manager in opened:
        manager.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def in_thread(function: Callable[[], Any], guard: float = HANG_GUARD) -> Any:
    """Run ``function`` with a hang guard; return its result or re-raise its exception."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = function()
        except BaseException as exc:  # handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), f"the call hung for more than {guard}s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# -- key layout and prefixes ------------------------------------------------------------------


def test_every_key_of_a_queue_is_under_its_hash_tag(open_redis: Callable[..., QueueManager], raw: redis.Redis) -> None:
    manager = open_redis()
    manager.add_message("ANPR", QueueMessage(data=1, alias="a"))
    manager.add_message("ANPR", QueueMessage(data=2, deferred_until=datetime.now(timezone.utc) + timedelta(hours=1)))
    reserved = manager.reserve("ANPR", lease=600)
    assert reserved is not None
    manager.fail("ANPR", reserved, "boom")
    get_audit_log(manager).record(_audit("ANPR", "u-1"))
    keys = {str(k) for k in raw.keys("*")}
    tagged = {k for k in keys if k.startswith("qengine:{qengine:ANPR}:")}
    assert keys - tagged == {"qengine:queues", "qengine:audit-queues"}
    assert {k.split("}:", 1)[1] for k in tagged if ":m:" not in k} >= {"status", "seq", "failed", "deferred", "audit"}
    assert f"qengine:{{qengine:ANPR}}:m:{reserved.uuid}" in keys


def test_two_prefixes_do_not_see_each_other(open_redis: Callable[..., QueueManager], raw: redis.Redis) -> None:
    app1 = open_redis(redis_prefix="app1")
    app2 = open_redis(redis_prefix="app2")
    app1.add_message("jobs", QueueMessage(data="one", alias="k"))
    app2.add_message("jobs", QueueMessage(data="two", alias="k"))  # same queue and alias, other app
    assert app1.list_queues() == app2.list_queues() == ["jobs"]
    got = app2.get_message("jobs")
    assert got is not None and got.data == "two"
    assert app2.get_message("jobs") is None
    assert app1.queue_status("jobs").messages_to_process == 1
    app2.destroy_queue("jobs")
    assert (app1.list_queues(), app2.list_queues()) == (["jobs"], [])
    assert all(str(k).startswith(("app1:", "app2:")) for k in raw.keys("*"))


def test_list_queues_skips_a_registered_name_whose_queue_is_gone(
    open_redis: Callable[..., QueueManager], raw: redis.Redis
) -> None:
    manager = open_redis()
    manager.create_queue("real")
    raw.sadd("qengine:queues", "ghost")  # as left by a crash between registering and creating
    assert manager.list_queues() == ["real"]


def test_script_cache_flushed_on_the_server(open_redis: Callable[..., QueueManager], raw: redis.Redis) -> None:
    manager = open_redis()
    manager.add_message("jobs", QueueMessage(data=1))
    raw.script_flush()  # as after a restart or failover: EVALSHA answers NOSCRIPT
    assert manager.queue_status("jobs").ready == 1
    got = manager.get_message("jobs")
    assert got is not None and got.data == 1


def test_components_form_and_conflict(redis_server: RedisServer, redis_url: str, tmp_path: Path) -> None:
    manager = QueueFactory.get_queue_manager(queue_type="redis", redis_host="127.0.0.1", redis_port=redis_server.port)
    try:
        manager.add_message("jobs", QueueMessage(data="x"))
        assert manager.queue_status("jobs").ready == 1
    finally:
        manager.close()
    ini = tmp_path / "both.ini"
    ini.write_text(f"[queue]\nqueueType = redis\nredisUrl = {redis_url}\nredisHost = 127.0.0.1\n")
    with pytest.raises(ConfigurationError, match="not both"):
        QueueFactory.get_queue_manager(ini)


# -- atomicity across processes -----------------------------------------------------------------


def reserve_all(url: str, out: Connection) -> None:
    """Reserve and ack until the queue is empty; send the payloads seen."""
    seen = []
    with build(url) as manager:
        while (msg := manager.reserve("race", lease=HANG_GUARD * 5)) is not None:
            manager.ack("race", msg)
            seen.append(msg.data)
    out.send(seen)
    out.close()


def test_four_processes_reserving_take_each_message_once(
    open_redis: Callable[..., QueueManager], redis_url: str
) -> None:
    manager = open_redis()
    total = 2000
    for start in range(0, total, 200):
        manager.add_messages("race", [QueueMessage(data=i) for i in range(start, start + 200)])
    pipes = [CTX.Pipe(duplex=False) for _ in range(4)]
    procs = [CTX.Process(target=reserve_all, args=(redis_url, w), daemon=True) for _, w in pipes]
    for p in procs:
        p.start()
    results = []
    for (r, _), p in zip(pipes, procs, strict=True):
        assert r.poll(HANG_GUARD), "a consumer process hung"
        results.append(r.recv())
        p.join(HANG_GUARD)
        assert p.exitcode == 0
    everything = [x for seen in results for x in seen]
    assert sorted(everything) == list(range(total))  # each message exactly once
    for seen in results:
        assert seen == sorted(seen)  # each consumer saw queue order
    assert manager.queue_status("race").messages_to_process == 0


def test_a_lease_held_by_another_host_is_redelivered_after_expiry(
    open_redis: Callable[..., QueueManager], wait_for: Callable[..., Any]
) -> None:
    host_a, host_b = open_redis(), open_redis()
    host_a.add_message("jobs", QueueMessage(data="x"))
    first = host_a.reserve("jobs", lease=0.2)
    assert first is not None
    second = wait_for(lambda: host_b.reserve("jobs", lease=600))
    assert (second.uuid, second.attempts) == (first.uuid, 2)
    with pytest.raises(LeaseLost):
        host_a.ack("jobs", first)  # the stale holder cannot ack any more
    host_b.ack("jobs", second)
    assert host_a.queue_status("jobs").messages_to_process == 0


# -- the server going away ----------------------------------------------------------------------


def test_closed_port_is_a_storage_error_naming_the_server() -> None:
    port = free_port()
    manager = build(f"redis://user:s3cret@127.0.0.1:{port}/2", redis_timeout=1.0)
    try:
        with pytest.raises(StorageError) as info:
            in_thread(lambda: manager.add_message("jobs", QueueMessage(data=1)))
    finally:
        manager.close()
    text = str(info.value)
    assert f"redis://127.0.0.1:{port}/2" in text
    assert "s3cret" not in text
    assert manager.get_last_error() == text


def test_components_server_is_named_too() -> None:
    port = free_port()
    manager = QueueFactory.get_queue_manager(
        queue_type="redis", redis_host="127.0.0.1", redis_port=port, redis_password="pw-9", redis_timeout=1.0
    )
    try:
        with pytest.raises(StorageError, match=f"127.0.0.1:{port}") as info:
            in_thread(lambda: manager.queue_status("jobs"))
        assert "pw-9" not in str(info.value)
    finally:
        manager.close()


def test_server_stopped_mid_stream_then_restarted(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "own") as server:
        manager = build(server.url, redis_timeout=1.0)
        try:
            manager.add_messages("jobs", [QueueMessage(data=i) for i in range(3)])
            got = manager.reserve("jobs", lease=600)
            assert got is not None
            server.stop()
            for call in (
                lambda: manager.add_message("jobs", QueueMessage(data="while down")),
                lambda: manager.reserve("jobs"),
                lambda: manager.ack("jobs", got),
                lambda: manager.list_queues(),
            ):
                with pytest.raises(StorageError, match=f"127.0.0.1:{server.port}"):
                    in_thread(call)
            server.start()  # same port, empty (no persistence): the manager reconnects by itself
            uid = in_thread(lambda: manager.add_message("jobs", QueueMessage(data="after")))
            again = manager.get_message("jobs")
            assert again is not None and (again.uuid, again.data) == (uid, "after")
        finally:
            manager.close()


# -- TLS ----------------------------------------------------------------------------------------


def _make_certs(folder: Path) -> Path | None:
    """A CA and a server certificate for 127.0.0.1, or None without the openssl CLI."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=HANG_GUARD)

    try:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "2", "-subj", "/CN=qengine-test-ca")  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=127.0.0.1")  # fmt: skip
        (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return folder


def test_tls_url(tmp_path: Path) -> None:
    certs = _make_certs(tmp_path / "certs")
    if certs is None:
        pytest.skip("the openssl CLI cannot make a test certificate here")
    tls_port = free_port()
    tls = (
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs / "server.crt"),
        "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.crt"),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    with RedisServer(tmp_path / "tls", extra_args=tls):
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs / 'ca.crt'}"
        with build(url) as manager:
            uid = manager.add_message("secure", QueueMessage(data={"over": "tls"}))
            got = manager.get_message("secure")
            assert got is not None and (got.uuid, got.data) == (uid, {"over": "tls"})
        # without our CA the certificate is refused: a clear error naming the server, no hang
        with build(f"rediss://127.0.0.1:{tls_port}/0", redis_timeout=2.0) as untrusted:
            with pytest.raises(StorageError, match=f"rediss://127.0.0.1:{tls_port}/0"):
                in_thread(lambda: untrusted.queue_status("secure"))


# -- workers, the CLI and the audit trail on Redis ----------------------------------------------

FLAKY = '''\
from pathlib import Path

from queue_engine.retry import FixedBackoff
from queue_engine.worker import Worker

COUNTS = Path(__file__).with_name("counts")


class FlakyWorker(Worker):
    queue = "FLAKY"
    retries = 3
    backoff = FixedBackoff(0)

    def process(self, message):
        COUNTS.mkdir(exist_ok=True)
        counter = COUNTS / message.uuid
        seen = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(seen + 1))
        if seen + 1 < message.data["ok_at"]:
            raise RuntimeError(f"flaky attempt {seen + 1}")
        return seen + 1
'''


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> Path:
    workers = tmp_path / "app" / "workers"
    workers.mkdir(parents=True)
    (workers / "flaky.py").write_text(FLAKY)
    config = tmp_path / "app" / "config.ini"
    config.write_text(textwrap.dedent(f"""\
        [queue]
        queueType = redis
        redisUrl = {redis_url}
        workersPath = {workers}
        """))
    return config


def qengine(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QENGINE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "queue_engine", "--config", str(config), *args],
        capture_output=True, text=True, timeout=HANG_GUARD, env=env, cwd=config.parent,
    )  # fmt: skip


def test_worker_runner_and_qengine_work_run_unchanged_on_redis(project: Path) -> None:
    manager = QueueFactory.get_queue_manager(project)
    try:
        ok = manager.add_message("FLAKY", QueueMessage(data={"ok_at": 2}, alias="ok"))
        doomed = manager.add_message("FLAKY", QueueMessage(data={"ok_at": 99}, alias="doomed"))
        # in-process runner
        assert WorkerRunner(manager, ["FLAKY"], burst=True).run() == 5  # 2 + 3 attempts
        [failed] = manager.failed_messages("FLAKY")
        assert (failed.message.uuid, failed.message.attempts) == (doomed, 3)
        assert failed.errors == [f"RuntimeError: flaky attempt {n}" for n in (1, 2, 3)]
        rows = [(r.uuid, r.attempt, r.outcome) for r in get_audit_log(manager).query("FLAKY")]
        assert rows == [(ok, 1, "retry"), (ok, 2, "success"), (doomed, 1, "retry"), (doomed, 2, "retry"),
                        (doomed, 3, "failed")]  # fmt: skip
        # the CLI as a real process, on the same server
        third = manager.add_message("FLAKY", QueueMessage(data={"ok_at": 1}))
        proc = qengine(project, "work", "FLAKY", "--burst")
        assert (proc.returncode, proc.stdout) == (0, "handled 1 attempt\n"), proc.stderr
        assert manager.queue_status("FLAKY").messages_to_process == 0
        assert manager.queue_status("FLAKY").last_message_processed.uuid == third  # type: ignore[union-attr]
        audit = qengine(project, "audit", "FLAKY", "--uuid", third, "--json")
        assert audit.returncode == 0, audit.stderr
        assert '"outcome": "success"' in audit.stdout
        assert qengine(project, "requeue", "FLAKY").stdout == "requeued 1 message\n"
        assert [m.uuid for m in manager.find_messages("FLAKY")] == [doomed]
    finally:
        manager.close()


def _audit(queue: str, uuid: str, *, started: float | None = None, outcome: str = "success") -> AuditRecord:
    return AuditRecord(
        queue=queue,
        uuid=uuid,
        alias=None,
        attempt=1,
        outcome=outcome,
        started_at=datetime.now(timezone.utc).timestamp() if started is None else started,
        duration=0.5,
        host="h",
        pid=1,
        worker="W",
    )


def test_audit_log_on_redis_query_and_retention(open_redis: Callable[..., QueueManager]) -> None:
    manager = open_redis()
    log = get_audit_log(manager)
    assert type(log).__name__ == "RedisAuditLog"
    now = datetime.now(timezone.utc).timestamp()
    for i, started in enumerate([now - 30, now - 20, now - 10]):
        log.record(_audit("jobs", f"u{i}", started=started))
    log.record(_audit("other", "x"))
    other_host = get_audit_log(open_redis())  # another manager reads the same stream
    assert [r.uuid for r in other_host.query("jobs")] == ["u0", "u1", "u2"]
    since = datetime.fromtimestamp(now - 25, tz=timezone.utc)
    until = datetime.fromtimestamp(now - 15, tz=timezone.utc)
    assert [r.uuid for r in other_host.query("jobs", since=since, until=until)] == ["u1"]
    assert [r.uuid for r in other_host.query("jobs", uuid="u2")] == ["u2"]
    assert [r.uuid for r in other_host.query("jobs", limit=2)] == ["u0", "u1"]
    assert other_host.query("never-used") == []
    # retention: pruning "a year from now" removes every entry recorded so far
    assert log.prune(now=now + 400 * 86400) == 4
    assert log.query("jobs") == []


def test_a_url_with_a_bad_port_is_a_configuration_error() -> None:
    from queue_engine import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        QueueFactory.get_queue_manager(queue_type="redis", redis_url="redis://u:s3cret@h:99999/0")
    assert "s3cret" not in str(info.value)


def test_export_and_import_page_through_big_queues(open_redis: Callable[..., QueueManager]) -> None:
    source = open_redis(redis_prefix="src")
    target = open_redis(redis_prefix="dst")
    total = 2500  # more than two pages / batches
    for start in range(0, total, 500):
        source.add_messages("big", [QueueMessage(data=i, alias=f"a{i}") for i in range(start, start + 500)])
    exported = source.export_messages("big")
    assert [m.data for m in exported] == list(range(total))  # type: ignore[union-attr]
    assert target.import_messages("big", exported) == total
    assert target.import_messages("big", exported) == 0
    assert [m.uuid for m in target.export_messages("big")] == [m.uuid for m in exported]  # type: ignore[union-attr]
