"""The RabbitMQ bridge against a real broker: a private RabbitMQ node on loopback (see rabbitmq_server).

Outbox: publish with confirms, unroutable -> retries -> failed store, broker down (nothing
reserved, nothing lost, status banner), broker SIGKILLed mid-stream and restarted while a real
``qengine work`` publishes, ``enabled = false``. Inbox: ``qengine amqp consume`` with acks,
malformed bodies kept, a consumer SIGKILLed mid-stream, the daemon form.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import HANG_GUARD
from rabbitmq_server import RabbitNode
from redis_server import RedisServer

from queue_engine import QueueFactory, QueueManager, QueueMessage
from queue_engine.amqp import (
    AmqpConsumer,
    AmqpError,
    AmqpPublisher,
    Endpoint,
    consumer_settings,
    decode_kept_body,
    endpoint_from_uri,
    outbox_queues,
    outbox_settings,
    publisher_state,
)
from queue_engine.audit import get_audit_log
from queue_engine.cli import cli
from queue_engine.config import load_config
from queue_engine.errors import ConfigurationError, QueueEngineError, StorageError
from queue_engine.runner import WorkerRunner

REPO = Path(__file__).resolve().parent.parent
OUT = "OUTBOX"
INBOX = "INBOX"
MakeConfig = Callable[..., Path]


def rq_name() -> str:
    """A RabbitMQ queue name of this test only (the node is shared by the session)."""
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MakeConfig:
    monkeypatch.delenv("QENGINE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    def make(extra: str = "", queue_extra: str = "") -> Path:
        path = tmp_path / "qengine.ini"
        path.write_text(
            f"[queue]\nqueueType = file\ncacheRoot = {tmp_path / 'data'}\nfsync = never\nlease = 30\n{queue_extra}\n"
            + textwrap.dedent(extra)
        )
        return path

    return make


def outbox_config(make_config: MakeConfig, node: RabbitNode, routing_key: str, more: str = "") -> Path:
    return make_config(
        f"""
        [amqp]
        host = 127.0.0.1
        port = {node.port}
        username = guest
        password = guest
        timeout = 5

        [amqp.{OUT}]
        routingKey = {routing_key}
        {more}

        [worker.{OUT}]
        retries = 3
        backoff = fixed
        retryDelay = 0
        """
    )


def strict_outbox_config(make_config: MakeConfig, node: RabbitNode, routing_key: str) -> Path:
    """An outbox with ``retries = 1`` (any failure that counted would fail the message) and
    ``timeout = 1`` (a publish time limit of 3 s)."""
    path = outbox_config(make_config, node, routing_key)
    path.write_text(path.read_text().replace("timeout = 5", "timeout = 1").replace("retries = 3", "retries = 1"))
    return path


def manager_for(config: Path) -> QueueManager:
    return QueueFactory.get_queue_manager(config)


def publish_all(manager: QueueManager, queue: str = OUT) -> int:
    runner = WorkerRunner(manager, [queue], burst=True)
    worker = runner.handlers[queue].worker
    assert isinstance(worker, AmqpPublisher)
    try:
        return runner.run()
    finally:
        worker.close()


def qengine(config: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QENGINE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "queue_engine", "--config", str(config), *args],
        capture_output=True, text=True, timeout=HANG_GUARD, env=env, cwd=config.parent, **kw,
    )


def spawn(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "QENGINE_CONFIG"}
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "queue_engine", "--config", str(config), *args],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=config.parent,
        )


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- settings -----------------------------------------------------------------------------
def test_uri_is_parsed_and_never_shows_the_password() -> None:
    ep = endpoint_from_uri("amqp://promo:s3cr%2Ft@rabbit.example:5673/sales%2Feu")
    assert (ep.host, ep.port, ep.username, ep.password, ep.virtual_host) == (
        "rabbit.example", 5673, "promo", "s3cr/t", "sales/eu"
    )
    assert "s3cr" not in ep.display() and "s3cr" not in repr(ep)
    assert ep.display() == "amqp://promo@rabbit.example:5673/sales%2Feu"
    bare = endpoint_from_uri("amqp://u:p@h")  # the seed: vhost optional
    assert (bare.port, bare.virtual_host) == (5672, "/")
    assert endpoint_from_uri("amqps://u:p@h/").port == 5671


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("http://u:pw@h/", "scheme must be amqp"),
        ("amqp://u:pw@:5672/", "no host"),
        ("amqp://u:pw@h:99999/", "not an AMQP URI"),
        ("amqp://u:pw@h/a/b", "escape a '/'"),
        ("amqp://u:pw@h/?heartbeat=5", "query"),
    ],
)
def test_bad_uri_is_refused_without_the_password(uri: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        endpoint_from_uri(uri, where="x.ini: [amqp] uri")
    assert fragment in str(info.value) and "x.ini: [amqp] uri" in str(info.value)
    assert "pw" not in str(info.value)


def test_outbox_settings(make_config: MakeConfig) -> None:
    config = load_config(make_config("""
        [amqp]
        uri = amqp://app:pw@rabbit.example:5673/promo
        heartbeat = 10
        [amqp.OUTBOX]
        exchange = promo
        enabled = false
        [amqp.second]
        host = other.example
        username = u2
        password = p2
        virtualHost = v2
        """))
    assert outbox_queues(config) == ["OUTBOX", "second"]
    first = outbox_settings(config, "OUTBOX")
    assert first is not None
    assert (first.exchange, first.routing_key, first.enabled) == ("promo", "OUTBOX", False)
    assert first.endpoint.display() == "amqp://app@rabbit.example:5673/promo" and first.endpoint.heartbeat == 10
    second = outbox_settings(config, "second")  # each part it gives replaces that part of [amqp]'s
    assert second is not None
    assert (second.endpoint.host, second.endpoint.port, second.endpoint.username, second.endpoint.virtual_host) == (
        "other.example", 5673, "u2", "v2"
    )
    assert outbox_settings(config, "plain") is None


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ("[amqp.OUTBOX]\nuri = amqp://u:pw@h/\nhost = h\n", "uri excludes host"),
        ("[amqp]\nuri = amqp://u:pw@h/\npassword = x\n[amqp.OUTBOX]\n", "uri excludes password"),
        ("[amqp.OUTBOX]\nexchnage = x\n", "unknown key exchnage"),
        ("[amqp.OUTBOX]\nprefetch = 5\n", "unknown key prefetch"),
        ("[amqp]\nexchange = x\n[amqp.OUTBOX]\n", "unknown key exchange"),
        ("[amqp.OUTBOX]\nenabled = maybe\n", "enabled = 'maybe'"),
        ("[amqp.OUTBOX]\nport = 70000\n", "port = '70000'"),
        ("[amqp.OUTBOX]\nport = abc\n", "port"),
        ("[amqp]\ntimeout = 0\n[amqp.OUTBOX]\n", "timeout = '0'"),
        ("[amqp]\nheartbeat = 0\n[amqp.OUTBOX]\n", "heartbeat"),
        ("[amqp.OUTBOX]\nroutingKey =\n", "routingKey is empty"),
    ],
)
def test_bad_outbox_settings_name_the_key(make_config: MakeConfig, section: str, fragment: str) -> None:
    path = make_config(section)
    with pytest.raises(ConfigurationError) as info:
        outbox_settings(load_config(path), "OUTBOX")
    assert fragment in str(info.value) and str(path) in str(info.value)
    assert "pw" not in str(info.value)


def test_a_partial_override_keeps_the_rest_of_amqp(make_config: MakeConfig) -> None:
    config = load_config(make_config("""
        [amqp]
        host = rabbit.example
        username = promo
        password = secret
        [amqp.P2]
        virtualHost = sales
        """))
    settings = outbox_settings(config, "P2")
    assert settings is not None
    assert settings.endpoint.display() == "amqp://promo@rabbit.example:5672/sales"
    assert settings.endpoint.password == "secret"


def test_consumer_settings(make_config: MakeConfig) -> None:
    config = load_config(make_config("[amqp]\nhost = r.example\nprefetch = 7\n"))
    endpoint, prefetch = consumer_settings(config)
    assert (endpoint.host, prefetch) == ("r.example", 7)
    endpoint, _ = consumer_settings(config, uri="amqp://a:b@x.example:1234/v")
    assert (endpoint.host, endpoint.port, endpoint.virtual_host) == ("x.example", 1234, "v")
    assert consumer_settings(None)[0] == Endpoint()


# -- outbox -------------------------------------------------------------------------------
def test_publish_with_confirms_in_order(make_config: MakeConfig, rabbit: RabbitNode) -> None:
    target = rq_name()
    rabbit.declare(target)
    manager = manager_for(outbox_config(make_config, rabbit, target))
    try:
        uuids = [manager.add_message(OUT, QueueMessage(data={"n": i, "text": "città"}, alias=f"a{i}"))
                 for i in range(50)]
        assert publish_all(manager) == 50
        got = rabbit.drain(target)
        assert [json.loads(body) for _, body in got] == [{"n": i, "text": "città"} for i in range(50)]
        assert [p.message_id for p, _ in got] == uuids  # receivers can drop a duplicate by id
        first = got[0][0]
        assert first.delivery_mode == 2 and first.content_type == "application/json"
        assert first.headers["x-qengine-queue"] == OUT and first.headers["x-qengine-alias"] == "a0"
        status = manager.queue_status(OUT)
        assert status.messages_to_process == 0 and status.failed == 0
        records = list(get_audit_log(manager).query(OUT))
        assert [r.outcome for r in records] == ["success"] * 50
        assert "guest:guest" not in json.dumps(records[0].extra)  # the user is shown, never the password
        assert f"guest@127.0.0.1:{rabbit.port}" in records[0].extra["target"]
    finally:
        manager.close()


def test_unroutable_is_retried_then_failed_and_shown(make_config: MakeConfig, rabbit: RabbitNode) -> None:
    config = outbox_config(make_config, rabbit, "no-such-queue-" + rq_name())
    manager = manager_for(config)
    try:
        uid = manager.add_message(OUT, QueueMessage(data={"x": 1}))
        assert publish_all(manager) == 3  # three attempts, then the failed store
        [failed] = manager.failed_messages(OUT)
        assert failed.message.uuid == uid and len(failed.errors) == 3
        assert all("unroutable" in e for e in failed.errors)
        state = publisher_state(manager, OUT)
        assert state is not None and state["state"] == "failing" and "unroutable" in state["error"]
    finally:
        manager.close()
    proc = qengine(config, "status", OUT)
    assert proc.returncode == 0
    assert "RABBITMQ PUBLISHING FAILING" in proc.stderr and "unroutable" in proc.stderr
    assert json.loads(qengine(config, "status", OUT, "--json").stdout)["amqp_publisher"]["state"] == "failing"
    proc = qengine(config, "amqp", "status")
    assert proc.returncode == 1 and "RABBITMQ PUBLISHING FAILING" in proc.stdout


def test_missing_exchange_fails_the_attempt_and_reconnects(make_config: MakeConfig, rabbit: RabbitNode) -> None:
    target = rq_name()
    rabbit.declare(target)
    config = outbox_config(make_config, rabbit, target, "exchange = no-such-exchange")
    manager = manager_for(config)
    try:
        manager.add_message(OUT, QueueMessage(data=1))
        publish_all(manager)
        [failed] = manager.failed_messages(OUT)
        assert "NOT_FOUND" in failed.errors[-1] and "no-such-exchange" in failed.errors[-1]
    finally:
        manager.close()


def test_broker_down_reserves_nothing_then_publishes_everything(
    make_config: MakeConfig, rabbit: RabbitNode
) -> None:
    target = rq_name()
    rabbit.declare(target)
    config = outbox_config(make_config, rabbit, target)
    manager = manager_for(config)
    try:
        uuids = [manager.add_message(OUT, QueueMessage(data=i)) for i in range(20)]
        rabbit.stop()
        try:
            assert publish_all(manager) == 0
            status = manager.queue_status(OUT)
            assert (status.messages_to_process, status.in_flight, status.failed) == (20, 0, 0)
            assert [m.attempts for m in manager.find_messages(OUT)] == [0] * 20  # no attempt spent
            state = publisher_state(manager, OUT)
            assert state is not None and state["state"] == "failing" and "unreachable" in state["error"]
            proc = qengine(config, "status", OUT)
            assert "RABBITMQ PUBLISHING FAILING" in proc.stderr and "20 message(s) kept" in proc.stderr
            assert "guest@" in proc.stderr and "guest:guest" not in proc.stderr
        finally:
            rabbit.start()
        assert publish_all(manager) == 20
        assert [p.message_id for p, _ in rabbit.drain(target)] == uuids
        state = publisher_state(manager, OUT)
        assert state is not None and state["state"] == "ok" and state["error"] is None
        assert "RABBITMQ" not in qengine(config, "status", OUT).stderr
    finally:
        manager.close()


def test_connection_lost_while_idle_costs_no_attempt(
    make_config: MakeConfig, rabbit: RabbitNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker restarts while the publisher idles: it reconnects before reserving the next message."""
    import queue_engine.amqp as amqp_module

    monkeypatch.setattr(amqp_module, "_SERVICE_EVERY", 0.0)  # look at the connection on every poll
    target = rq_name()
    rabbit.declare(target)
    manager = manager_for(outbox_config(make_config, rabbit, target))
    runner = WorkerRunner(manager, [OUT], burst=True)
    worker = runner.handlers[OUT].worker
    try:
        manager.add_message(OUT, QueueMessage(data="before"))
        assert runner.run() == 1
        rabbit.stop()
        rabbit.start()
        uid = manager.add_message(OUT, QueueMessage(data="after"))
        assert runner.run() == 1
        assert [r.outcome for r in get_audit_log(manager).query(OUT, uuid=uid)] == ["success"]
        assert [json.loads(body) for _, body in rabbit.drain(target)] == ["before", "after"]
    finally:
        assert isinstance(worker, AmqpPublisher)
        worker.close()
        manager.close()


def test_resource_alarm_sends_nothing_to_the_failed_store(make_config: MakeConfig, rabbit: RabbitNode) -> None:
    """A memory alarm blocks publishers: a blocked publish is a broker fault, retried without end."""
    target = rq_name()
    rabbit.declare(target)
    path = strict_outbox_config(make_config, rabbit, target)
    manager = manager_for(path)
    try:
        uid = manager.add_message(OUT, QueueMessage(data="during the alarm"))
        rabbit.ctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            publish_all(manager)  # bounded by the publish time limit (3 x timeout)
            status = manager.queue_status(OUT)
            assert (status.failed, status.messages_to_process) == (0, 1)  # retries = 1, yet not failed
            state = publisher_state(manager, OUT)
            assert state is not None and state["state"] == "failing" and state["cause"] == "connection"
        finally:
            rabbit.ctl("set_vm_memory_high_watermark", "0.4")
        wait_for(lambda: publish_all(manager) >= 0 and manager.queue_status(OUT).messages_to_process == 0,
                 "the publish after the alarm")
        got = [p.message_id for p, _ in rabbit.drain(target)]
        assert got.count(uid) >= 1 and set(got) == {uid}
        assert manager.queue_status(OUT).failed == 0
    finally:
        manager.close()


def test_stalled_broker_is_bounded_by_the_time_limit(make_config: MakeConfig, rabbit: RabbitNode) -> None:
    """SIGSTOPped broker: the confirm wait ends at the time limit; the message stays queued, never failed."""
    target = rq_name()
    rabbit.declare(target)
    path = strict_outbox_config(make_config, rabbit, target)
    manager = manager_for(path)
    runner = WorkerRunner(manager, [OUT], burst=True)
    worker = runner.handlers[OUT].worker
    assert isinstance(worker, AmqpPublisher)
    try:
        manager.add_message(OUT, QueueMessage(data="warm-up"))
        assert runner.run() == 1  # connected
        uid = manager.add_message(OUT, QueueMessage(data="stalled"))
        rabbit.pause()
        try:
            t0 = time.monotonic()
            runner.run()
            assert time.monotonic() - t0 < HANG_GUARD  # a hang guard, not a measurement
        finally:
            rabbit.resume()
        status = manager.queue_status(OUT)
        assert status.failed == 0 and status.messages_to_process == 1
        wait_for(lambda: runner.run() >= 0 and manager.queue_status(OUT).messages_to_process == 0,
                 "the publish after the stall")
        got = [p.message_id for p, _ in rabbit.drain(target)]
        # The stalled publish may still be read by the broker once it runs again: at most one
        # duplicate, dropped by message_id.
        assert set(got) == {got[0], uid} and got.count(uid) in (1, 2)
    finally:
        worker.close()
        manager.close()


def test_banner_clears_when_the_broker_is_back_even_with_nothing_to_send(
    make_config: MakeConfig, rabbit: RabbitNode
) -> None:
    target = rq_name()
    rabbit.declare(target)
    good = outbox_config(make_config, rabbit, target)
    text = good.read_text()
    manager = manager_for(good)
    manager.create_queue(OUT)
    manager.close()
    good.write_text(text.replace(f"port = {rabbit.port}", "port = 1"))
    manager = manager_for(good)
    try:
        publish_all(manager)
        state = publisher_state(manager, OUT)
        assert state is not None and state["state"] == "failing" and "Connection refused" in state["error"]
    finally:
        manager.close()
    good.write_text(text)
    assert qengine(good, "amqp", "status").returncode == 1
    assert qengine(good, "work", OUT, "--burst").returncode == 0
    proc = qengine(good, "amqp", "status")
    assert proc.returncode == 0 and "FAILING" not in proc.stdout


def test_invalid_outbox_section_is_named(make_config: MakeConfig) -> None:
    path = make_config("[amqp.bad name!]\nroutingKey = x\n")
    proc = qengine(path, "amqp", "status")
    assert proc.returncode != 0 and "[amqp.bad name!]" in proc.stderr and "Traceback" not in proc.stderr


def test_disabled_outbox_keeps_everything_queued(make_config: MakeConfig, rabbit: RabbitNode) -> None:
    target = rq_name()
    rabbit.declare(target)
    config = outbox_config(make_config, rabbit, target, "enabled = false")
    manager = manager_for(config)
    try:
        for i in range(5):
            manager.add_message(OUT, QueueMessage(data=i))
        assert publish_all(manager) == 0
        assert manager.queue_status(OUT).messages_to_process == 5
        assert rabbit.depth(target) == 0
    finally:
        manager.close()
    assert "RABBITMQ PUBLISHING DISABLED" in qengine(config, "status", OUT).stderr


def test_broker_killed_mid_stream_loses_nothing(make_config: MakeConfig, rabbit: RabbitNode, tmp_path: Path) -> None:
    """A real `qengine work` publishes while producers add; the broker is SIGKILLed and restarted."""
    target = rq_name()
    rabbit.declare(target)
    config = outbox_config(make_config, rabbit, target, "").read_text()
    path = tmp_path / "qengine.ini"
    # Unlimited-ish attempts so a publish refused during the outage is not failed for good.
    path.write_text(config.replace("retries = 3", "retries = 1000").replace("retryDelay = 0", "retryDelay = 0.2"))
    total = 3000
    manager = manager_for(path)
    added: list[str] = []
    worker = spawn(path, "work", OUT, "--sleep", "0.1", log=tmp_path / "work.log")
    try:
        def produce() -> None:
            for i in range(total):
                added.append(manager.add_message(OUT, QueueMessage(data={"i": i})))
                if i % 100 == 0:
                    time.sleep(0.02)

        producer = threading.Thread(target=produce)
        producer.start()
        wait_for(lambda: rabbit.depth(target) >= 300, "the first publishes")
        rabbit.kill()  # mid-stream: only confirmed publishes survive, and only those were acked
        time.sleep(1.0)
        rabbit.start()
        producer.join()
        wait_for(lambda: manager.queue_status(OUT).messages_to_process == 0
                 and manager.queue_status(OUT).in_flight == 0, "the outbox to drain")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=HANG_GUARD)
    try:
        got = [p.message_id for p, _ in rabbit.drain(target)]
        assert set(got) == set(added) and len(added) == total  # nothing lost
        duplicates = len(got) - len(set(got))
        # A publish the broker stored but whose confirm died with it is published again: the
        # receivers' message_id check drops it. Bounded by the publishes in flight at the kill.
        assert duplicates <= 1, duplicates
        assert manager.queue_status(OUT).failed == 0
        print(f"\nbroker SIGKILLed mid-stream: {total} added, {len(got)} received, {duplicates} duplicate(s)")
    finally:
        manager.close()


# -- inbox --------------------------------------------------------------------------------
def inbox_config(make_config: MakeConfig, node: RabbitNode) -> Path:
    return make_config(f"[amqp]\nuri = {node.url}\nprefetch = 20\ntimeout = 5\n")


def test_consume_acks_after_add_and_keeps_malformed_bodies(make_config: MakeConfig, rabbit: RabbitNode) -> None:
    source = rq_name()
    rabbit.declare(source)
    bodies = [json.dumps({"n": i}).encode() for i in range(30)]
    bad = [b"not json {", b"\xff\xfe\x00 binary", b"", b"[" * 100_000 + b"]" * 100_000]
    rabbit.publish(source, bodies[:10] + bad + bodies[10:], message_ids=[None] * 34)
    config = inbox_config(make_config, rabbit)
    proc = qengine(config, "amqp", "consume", source, "--into", INBOX, "--burst", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"source": source, "into": INBOX, "handled": 34, "added": 30, "malformed": 4}
    assert rabbit.depth(source) == 0  # all acked
    manager = manager_for(config)
    try:
        assert [m.data for m in manager.find_messages(INBOX)] == [{"n": i} for i in range(30)]
        kept = manager.failed_messages(INBOX)
        assert [decode_kept_body(f.message.data) for f in kept] == bad  # the raw bytes, exactly
        assert kept[0].message.data["amqp_body"] == "not json {"
        assert kept[1].message.data["amqp_body"] is None  # not UTF-8: base64 only
        assert kept[0].message.data["amqp"]["routing_key"] == source
        assert all("not UTF-8 JSON" in f.errors[0] and source in f.errors[0] for f in kept)
    finally:
        manager.close()


def test_consume_errors_are_one_line(make_config: MakeConfig, rabbit: RabbitNode, tmp_path: Path) -> None:
    config = inbox_config(make_config, rabbit)
    proc = qengine(config, "amqp", "consume", "no-such-queue-" + rq_name(), "--into", INBOX, "--burst")
    assert proc.returncode != 0 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = qengine(config, "amqp", "consume", "x", "--into", "../bad", "--burst")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = qengine(config, "amqp", "consume", "x", "--into", INBOX, "--uri", "http://u:secretpw@h/", "--burst")
    assert proc.returncode == 2 and "scheme must be amqp" in proc.stderr and "secretpw" not in proc.stderr
    closed = f"amqp://guest:guest@127.0.0.1:{rabbit.port + 1 if rabbit.port < 65535 else 1}/"
    proc = qengine(config, "amqp", "consume", "x", "--into", INBOX, "--uri", closed, "--burst")
    assert proc.returncode != 0 and "unreachable" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "queues" / INBOX).exists()  # nothing written


def test_consumer_killed_mid_stream_loses_nothing(make_config: MakeConfig, rabbit: RabbitNode, tmp_path: Path) -> None:
    source = rq_name()
    rabbit.declare(source)
    total = 2000
    ids = [f"m-{i}" for i in range(total)]
    rabbit.publish(source, [json.dumps({"i": i}).encode() for i in range(total)], message_ids=ids)
    config = inbox_config(make_config, rabbit)
    manager = manager_for(config)
    try:
        consumer = spawn(config, "amqp", "consume", source, "--into", INBOX, log=tmp_path / "consume.log")
        wait_for(lambda: manager.queue_exists(INBOX) and manager.queue_status(INBOX).messages_to_process >= 300,
                 "the consumer to add messages")
        consumer.send_signal(signal.SIGKILL)  # between an add and its ack, or anywhere
        consumer.wait(timeout=HANG_GUARD)
        proc = qengine(config, "amqp", "consume", source, "--into", INBOX, "--burst")
        assert proc.returncode == 0, proc.stderr
        messages = manager.find_messages(INBOX)
        # The delivery added but not acked comes back redelivered; its message_id is the
        # alias of the pending copy, so it is not added twice.
        assert sorted(m.alias for m in messages if m.alias) == sorted(ids)
        assert len(messages) == total
        assert rabbit.depth(source) == 0
    finally:
        manager.close()


def test_consumer_survives_a_broker_restart(make_config: MakeConfig, rabbit: RabbitNode, tmp_path: Path) -> None:
    source = rq_name()
    rabbit.declare(source)
    config = inbox_config(make_config, rabbit)
    manager = manager_for(config)
    log = tmp_path / "consume.log"
    consumer = spawn(config, "amqp", "consume", source, "--into", INBOX, log=log)
    try:
        rabbit.publish(source, [b'{"phase": 1}'] * 10)
        wait_for(lambda: manager.queue_exists(INBOX) and manager.queue_status(INBOX).messages_to_process == 10,
                 "the first batch")
        rabbit.stop()
        time.sleep(0.5)
        rabbit.start()
        rabbit.publish(source, [b'{"phase": 2}'] * 10)  # durable queue: it survived the restart
        wait_for(lambda: manager.queue_status(INBOX).messages_to_process == 20, "the batch after the restart")
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(timeout=HANG_GUARD) == 0, log.read_text()
        manager.close()
    text = log.read_text()
    assert "retrying" in text and "Traceback" not in text


def test_consumer_nacks_when_qengine_cannot_store(rabbit: RabbitNode, tmp_path: Path) -> None:
    """The qengine backend is down (a real redis-server, stopped): the delivery stays in RabbitMQ."""
    source = rq_name()
    rabbit.declare(source)
    rabbit.publish(source, [b'{"a": 1}'])
    server = RedisServer(tmp_path / "redis").start()
    manager = QueueFactory.get_queue_manager(queue_type="redis", redis_url=server.url, cache_root=tmp_path / "c")
    try:
        server.stop()
        consumer = AmqpConsumer(manager, source, INBOX, endpoint=endpoint_from_uri(rabbit.url), prefetch=5)
        with pytest.raises(StorageError, match="could not add to qengine queue"):
            consumer.run(burst=True, idle=0.5)
        consumer.close()
        assert rabbit.depth(source) == 1  # nacked back, not lost
        server.start()
        consumer = AmqpConsumer(manager, source, INBOX, endpoint=endpoint_from_uri(rabbit.url), prefetch=5)
        assert consumer.run(burst=True, idle=0.5) == 1
        consumer.close()
        assert [m.data for m in manager.find_messages(INBOX)] == [{"a": 1}]
    finally:
        manager.close()
        server.stop()


def test_consumer_refuses_bad_arguments(rabbit: RabbitNode) -> None:
    manager = QueueFactory.get_queue_manager(queue_type="memory")
    with pytest.raises(ConfigurationError):
        AmqpConsumer(manager, "", INBOX)
    with pytest.raises(ConfigurationError):
        AmqpConsumer(manager, "x", INBOX, prefetch=0)
    with pytest.raises(QueueEngineError):
        AmqpConsumer(manager, "x", "../bad")
    with pytest.raises(AmqpError, match="not found"):
        AmqpConsumer(manager, "missing-" + rq_name(), INBOX, endpoint=endpoint_from_uri(rabbit.url)).run(burst=True)


# -- daemon form and the catalog example ----------------------------------------------------
def test_catalog_inbox_daemon_and_worker(make_config: MakeConfig, rabbit: RabbitNode, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 002 end to end: RabbitMQ -> daemons/catalog_inbox.py -> CATALOG -> workers/catalog.py."""
    source = rq_name()
    rabbit.declare(source)
    db = tmp_path / "catalog.sqlite3"
    config = make_config(
        f"""
        [daemon]
        daemonsPath = {REPO / 'daemons'}
        pidDir = {tmp_path / 'run'}
        logDir = {tmp_path / 'log'}
        [amqp]
        uri = {rabbit.url}
        """,
        queue_extra=f"workersPath = {REPO / 'workers'}\n",
    )
    monkeypatch.setenv("QENGINE_CATALOG_SOURCE", source)
    monkeypatch.setenv("QENGINE_CATALOG_DB", str(db))
    proc = qengine(config, "daemon", "start", "catalog_inbox")
    assert proc.returncode == 0, proc.stderr
    try:
        good = {"companyId": "napse", "catalog": "catalogEventTransactionType", "params": [],
                "items": [{"operation": "I", "code": "bf2019", "name": "Black Friday 2019"}]}
        bad_op = {"companyId": "napse", "catalog": "catalogBrand", "items": [{"operation": "X", "code": "b1"}]}
        rabbit.publish(source, [json.dumps(good).encode(), json.dumps(bad_op).encode(), b"<xml/>"])
        manager = manager_for(config)
        try:
            wait_for(lambda: manager.queue_exists("CATALOG")
                     and manager.queue_status("CATALOG").messages_to_process == 2, "the daemon to copy")
            assert rabbit.depth(source) == 0
            proc = qengine(config, "work", "CATALOG", "--burst")
            assert proc.returncode == 0, proc.stderr
            failed = manager.failed_messages("CATALOG")
            errors = sorted(f.errors[-1] for f in failed)
            assert len(failed) == 2  # the unknown operation, and the malformed body kept by the daemon
            assert any("'X'" in e for e in errors) and any("not UTF-8 JSON" in e for e in errors)
        finally:
            manager.close()
        import sqlite3

        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT code FROM catalog_items").fetchall()
        assert rows == [("bf2019",)]
    finally:
        assert qengine(config, "daemon", "stop", "catalog_inbox").returncode == 0


def test_cli_runner_consume_in_process(make_config: MakeConfig, rabbit: RabbitNode) -> None:
    source = rq_name()
    rabbit.declare(source)
    rabbit.publish(source, [b"[1, 2]", b"3"], message_ids=["a", "b"])
    config = inbox_config(make_config, rabbit)
    result = CliRunner().invoke(cli, ["--config", str(config), "amqp", "consume", source, "--into", INBOX,
                                      "--burst", "--idle", "0.3"])
    assert result.exit_code == 0, result.output
    assert "2 message(s)" in result.output and "2 added" in result.output

