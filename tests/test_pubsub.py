"""Publish/subscribe: subscriptions in queue metadata, all-or-none fan-out, crash recovery.

Runs on the file backend and on a real redis-server (both keep data between processes).
The crash tests SIGKILL a real publisher process at a chosen point of the protocol.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from queue_engine import (
    DuplicateAlias,
    InvalidMessage,
    InvalidQueueName,
    QueueFactory,
    QueueManager,
    QueueMessage,
    pubsub,
)
from queue_engine.cli import cli
from queue_engine.permissions import PRIVATE

HANG_GUARD = 60.0  # seconds; only so a broken build cannot hang the suite


def _config_text(backend: str, cache_root: Path, redis_url: str | None) -> str:
    text = f"[queue]\nqueueType = {backend}\ncacheRoot = {cache_root}\n"
    if backend == "file":
        text += "fsync = never\n"
    else:
        text += f"redisUrl = {redis_url}\n"
    return text


@pytest.fixture
def config(persistent_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A config file for the backend under test (file, or the session's redis-server)."""
    redis_url = request.getfixturevalue("redis_url") if persistent_backend == "redis" else None
    path = tmp_path / "qengine.ini"
    path.write_text(_config_text(persistent_backend, tmp_path / "data", redis_url))
    return path


@pytest.fixture
def mgr(config: Path) -> Iterator[QueueManager]:
    manager = QueueFactory.get_queue_manager(config)
    yield manager
    manager.close()


def _wait(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"hang guard: {what} not seen within {HANG_GUARD}s")
        time.sleep(0.02)


# -- subscriptions ------------------------------------------------------------------------
def test_subscribe_unsubscribe_and_listing(mgr: QueueManager) -> None:
    assert pubsub.subscribe(mgr, "products", "orders-copy") is True
    assert mgr.queue_exists("orders-copy")  # created by subscribing
    assert pubsub.subscribe(mgr, "products", "orders-copy") is False
    assert pubsub.subscribe(mgr, "products", "users-copy") is True
    assert pubsub.subscribe(mgr, "orders", "products-copy") is True
    assert pubsub.subscribe(mgr, "users", "orders-copy") is True

    assert pubsub.subscriptions(mgr, "orders-copy") == ["products", "users"]
    assert mgr.queue_meta("orders-copy")["topics"] == ["products", "users"]
    assert pubsub.subscribers(mgr, "products") == ["orders-copy", "users-copy"]
    assert pubsub.topics(mgr) == {
        "orders": ["products-copy"],
        "products": ["orders-copy", "users-copy"],
        "users": ["orders-copy"],
    }
    # subscriptions are engine metadata, never part of the status record
    assert "topics" not in json.dumps(mgr.queue_status("orders-copy").to_dict()["custom_attributes"])

    assert pubsub.unsubscribe(mgr, "products", "orders-copy") is True
    assert pubsub.unsubscribe(mgr, "products", "orders-copy") is False
    assert pubsub.unsubscribe(mgr, "products", "no-such-queue") is False
    assert pubsub.subscribers(mgr, "products") == ["users-copy"]
    assert pubsub.unsubscribe(mgr, "orders", "products-copy") is True
    assert "topics" not in mgr.queue_meta("products-copy")  # the last one removes the key
    assert pubsub.topics(mgr) == {"products": ["users-copy"], "users": ["orders-copy"]}


@pytest.mark.parametrize("bad", ["", "-x", "a b", "x" * 65, "../etc", "t/1"])
def test_bad_topic_names_are_refused(mgr: QueueManager, bad: str) -> None:
    with pytest.raises(pubsub.InvalidTopicName, match="invalid topic name") as info:
        pubsub.subscribe(mgr, bad, "q1")
    assert isinstance(info.value, InvalidQueueName) and repr(bad) in str(info.value)
    with pytest.raises(pubsub.InvalidTopicName):
        pubsub.publish(mgr, bad, {"x": 1})
    assert mgr.list_queues() == []


# -- publishing ---------------------------------------------------------------------------
def test_publish_puts_one_copy_in_each_subscribed_queue(mgr: QueueManager) -> None:
    for queue in ("q-a", "q-b", "q-c"):
        pubsub.subscribe(mgr, "products", queue)
    pubsub.subscribe(mgr, "other", "q-other")
    payload = {"id": 7, "name": "lápiz", "tags": ["a", None]}

    copies = pubsub.publish(mgr, "products", payload, alias="product-7")

    assert sorted(copies) == ["q-a", "q-b", "q-c"]
    assert len(set(copies.values())) == 3
    for queue, uid in copies.items():
        pending = mgr.find_messages(queue)
        assert [(m.uuid, m.data, m.alias, m.disabled) for m in pending] == [(uid, payload, "product-7", False)]
    assert mgr.find_messages("q-other") == []
    assert list(pubsub.intents_dir(mgr).iterdir()) == []  # nothing left to recover
    assert pubsub.recover(mgr) == []
    # consumers take them as ordinary messages
    message = mgr.get_message("q-b")
    assert message is not None and message.uuid == copies["q-b"] and message.data == payload


def test_publish_without_subscribers_stores_nothing(mgr: QueueManager) -> None:
    pubsub.subscribe(mgr, "products", "q-a")
    assert pubsub.publish(mgr, "nobody-listens", [1, 2]) == {}
    assert mgr.list_queues() == ["q-a"]
    assert mgr.find_messages("q-a") == []


def test_publish_alias_conflict_is_all_or_none(mgr: QueueManager) -> None:
    for queue in ("q-a", "q-b", "q-c"):
        pubsub.subscribe(mgr, "products", queue)
    held = mgr.add_message("q-c", QueueMessage(data="mine", alias="p-1"))  # q-c is prepared last

    with pytest.raises(DuplicateAlias, match="p-1"):
        pubsub.publish(mgr, "products", {"id": 1}, alias="p-1")

    assert mgr.find_messages("q-a") == [] and mgr.find_messages("q-b") == []
    assert [m.uuid for m in mgr.find_messages("q-c")] == [held]
    assert mgr.queue_status("q-a").last_message_inserted is None  # refused before any queue changed
    assert not pubsub.intents_dir(mgr).exists() or list(pubsub.intents_dir(mgr).iterdir()) == []


def test_an_alias_taken_after_the_check_rolls_the_copies_back(mgr: QueueManager) -> None:
    """The race the up-front check cannot close: the alias is taken between the check and the
    prepare step. The prepared copies are removed again and the intent is finished."""
    for queue in ("q-a", "q-b", "q-c"):
        pubsub.subscribe(mgr, "products", queue)
    held = mgr.add_message("q-c", QueueMessage(data="mine", alias="p-1"))  # q-c is prepared last
    record = QueueMessage(data={"id": 1}, alias="p-1").to_record()
    targets = {queue: str(uuidlib.uuid4()) for queue in ("q-a", "q-b", "q-c")}
    intent = pubsub._write_intent(pubsub.intents_dir(mgr), "products", targets, record, PRIVATE)
    with pytest.raises(DuplicateAlias, match="p-1"):
        pubsub._complete(mgr, intent)
    pubsub._finish(intent)
    assert mgr.find_messages("q-a") == [] and mgr.find_messages("q-b") == []
    assert [m.uuid for m in mgr.find_messages("q-c")] == [held]


def test_invalid_payload_is_refused_before_anything_is_written(mgr: QueueManager) -> None:
    pubsub.subscribe(mgr, "products", "q-a")
    with pytest.raises(InvalidMessage, match="only JSON types"):
        pubsub.publish(mgr, "products", {"when": object()})
    assert mgr.find_messages("q-a") == []
    assert not pubsub.intents_dir(mgr).exists()


def test_seed_004_services_keep_copies_of_each_other(mgr: QueueManager) -> None:
    """Each service subscribes its own copy queue to the other services' topics."""
    pubsub.subscribe(mgr, "products", "orders.products")
    pubsub.subscribe(mgr, "products", "users.products")
    pubsub.subscribe(mgr, "orders", "products.orders")

    pubsub.publish(mgr, "products", {"op": "I", "id": 1, "name": "pen", "stock": 10})
    pubsub.publish(mgr, "orders", {"op": "I", "id": 9, "product": 1, "quantity": 2})
    pubsub.publish(mgr, "products", {"op": "U", "id": 1, "stock": 8})

    assert [m.data["op"] for m in mgr.find_messages("orders.products")] == ["I", "U"]
    assert [m.data["op"] for m in mgr.find_messages("users.products")] == ["I", "U"]
    assert [m.data["id"] for m in mgr.find_messages("products.orders")] == [9]


# -- crashes ------------------------------------------------------------------------------
_PUBLISHER = """
import sys
from queue_engine import QueueFactory, pubsub
manager = QueueFactory.get_queue_manager(sys.argv[1])
print(pubsub.publish(manager, "products", {"id": 42}, alias="p-42"))
"""


def _start_publisher(config: Path, stall: str, marker: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{pubsub.STALL_ENV: f"{stall}:{marker}"})
    return subprocess.Popen(
        [sys.executable, "-c", _PUBLISHER, str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == -signal.SIGKILL


QUEUES = ("q-a", "q-b", "q-c")


@pytest.fixture
def subscribed(mgr: QueueManager) -> QueueManager:
    for queue in QUEUES:
        pubsub.subscribe(mgr, "products", queue)
    return mgr


def _copies(mgr: QueueManager) -> dict[str, list[QueueMessage]]:
    return {queue: mgr.find_messages(queue) for queue in QUEUES}


def test_publisher_killed_while_preparing_is_completed_once(
    subscribed: QueueManager, config: Path, tmp_path: Path
) -> None:
    mgr, marker = subscribed, tmp_path / "stalled"
    proc = _start_publisher(config, "prepare:2", marker)
    try:
        _wait(marker.exists, "the publisher stalled after 2 of 3 copies")
        # while the publisher lives, its intent is locked: recover leaves it alone
        assert pubsub.recover(mgr) == []
    finally:
        _kill(proc)
    before = _copies(mgr)
    assert [len(before[q]) for q in QUEUES] == [1, 1, 0]
    assert all(m.disabled for q in QUEUES for m in before[q])  # prepared copies are not eligible
    assert mgr.get_message("q-a") is None

    done = pubsub.recover(mgr)

    assert [(d.topic, d.outcome, sorted(d.targets)) for d in done] == [("products", "delivered", list(QUEUES))]
    after = _copies(mgr)
    assert {q: [(m.uuid, m.data, m.alias, m.disabled) for m in after[q]] for q in QUEUES} == {
        q: [(done[0].targets[q], {"id": 42}, "p-42", False)] for q in QUEUES
    }
    assert after["q-a"][0].uuid == before["q-a"][0].uuid  # the prepared copy itself, not a second one
    assert pubsub.recover(mgr) == []  # a second run is a no-op
    assert {q: len(mgr.find_messages(q)) for q in QUEUES} == {q: 1 for q in QUEUES}


def test_publisher_killed_while_enabling_never_duplicates_a_consumed_copy(
    subscribed: QueueManager, config: Path, tmp_path: Path
) -> None:
    mgr, marker = subscribed, tmp_path / "stalled"
    proc = _start_publisher(config, "enable:1", marker)
    try:
        _wait(marker.exists, "the publisher stalled after enabling 1 of 3 copies")
    finally:
        _kill(proc)
    consumed = mgr.get_message("q-a")  # a consumer took the enabled copy before recovery ran
    assert consumed is not None and consumed.data == {"id": 42}
    assert all(m.disabled for q in ("q-b", "q-c") for m in mgr.find_messages(q))

    done = pubsub.recover(mgr)

    assert len(done) == 1 and done[0].targets["q-a"] == consumed.uuid
    assert mgr.find_messages("q-a") == []  # not re-created
    for queue in ("q-b", "q-c"):
        assert [(m.uuid, m.disabled) for m in mgr.find_messages(queue)] == [(done[0].targets[queue], False)]
    assert pubsub.recover(mgr) == []


def test_next_publish_recovers_first(subscribed: QueueManager, config: Path, tmp_path: Path) -> None:
    mgr, marker = subscribed, tmp_path / "stalled"
    proc = _start_publisher(config, "prepare:1", marker)
    try:
        _wait(marker.exists, "the publisher stalled after 1 of 3 copies")
    finally:
        _kill(proc)
    pubsub.publish(mgr, "products", {"id": 43})
    for queue in QUEUES:  # the interrupted publish first, then the new one, in every queue
        assert [(m.data, m.disabled) for m in mgr.find_messages(queue)] == [({"id": 42}, False), ({"id": 43}, False)]


def test_intent_not_yet_durable_means_none(subscribed: QueueManager) -> None:
    directory = pubsub.intents_dir(subscribed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".00000000000000000001-dead.json.tmp").write_text('{"version": 1, "topic": "prod')
    assert pubsub.recover(subscribed) == []
    assert list(directory.iterdir()) == []
    assert all(subscribed.find_messages(q) == [] for q in QUEUES)


def test_corrupt_intent_is_set_aside(subscribed: QueueManager, caplog: pytest.LogCaptureFixture) -> None:
    directory = pubsub.intents_dir(subscribed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "00000000000000000001-bad.json").write_text("not json")
    assert pubsub.recover(subscribed) == []
    assert [p.name for p in directory.iterdir()] == ["00000000000000000001-bad.json.corrupt"]
    assert "unreadable" in caplog.text


def test_intent_files_are_private(subscribed: QueueManager, config: Path, tmp_path: Path) -> None:
    marker = tmp_path / "stalled"
    proc = _start_publisher(config, "prepare:1", marker)
    try:
        _wait(marker.exists, "the publisher stalled")
        intents = list(pubsub.intents_dir(subscribed).glob("*.json"))
        assert len(intents) == 1 and intents[0].stat().st_mode & 0o777 == 0o600
        doc = json.loads(intents[0].read_text())
        assert doc["topic"] == "products" and sorted(doc["targets"]) == list(QUEUES)
    finally:
        _kill(proc)
    assert len(pubsub.recover(subscribed)) == 1


# -- command line -------------------------------------------------------------------------
def _runner() -> CliRunner:
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:  # click < 8.2
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


@pytest.fixture
def run(config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Result]:
    monkeypatch.delenv("QENGINE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = _runner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--config", str(config), *args], input=input, catch_exceptions=False)

    return invoke


def _ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def test_cli_subscribe_publish_topics(run: Callable[..., Result], mgr: QueueManager, tmp_path: Path) -> None:
    assert _ok(run("subscribe", "products", "q-a")) == "subscribed\n"
    assert _ok(run("subscribe", "products", "q-a")) == "already subscribed\n"
    _ok(run("subscribe", "products", "q-b"))
    _ok(run("subscribe", "users", "q-b"))
    assert _ok(run("topics")) == "products\tq-a q-b\nusers\tq-b\n"
    assert json.loads(_ok(run("topics", "--json"))) == {"products": ["q-a", "q-b"], "users": ["q-b"]}

    out = _ok(run("publish", "products", "--data", '{"id": 1}'))
    lines = dict(line.split("\t") for line in out.splitlines())
    assert sorted(lines) == ["q-a", "q-b"]
    assert [m.uuid for m in mgr.find_messages("q-a")] == [lines["q-a"]]

    payload = tmp_path / "p.json"
    payload.write_text('{"id": 2}')
    doc = json.loads(_ok(run("publish", "products", "--data", f"@{payload}", "--alias", "p2", "--json")))
    assert doc["topic"] == "products" and sorted(doc["messages"]) == ["q-a", "q-b"]
    doc = json.loads(_ok(run("publish", "users", "--data", "-", "--json", input='[3]')))
    assert [m.data for m in mgr.find_messages("q-b")] == [{"id": 1}, {"id": 2}, [3]]

    result = run("publish", "nobody", "--data", "1")
    assert _ok(result) == "" and "no subscribers" in result.stderr

    assert _ok(run("unsubscribe", "products", "q-a")) == "unsubscribed\n"
    assert _ok(run("unsubscribe", "products", "q-a")) == "not subscribed\n"
    assert json.loads(_ok(run("topics", "--json"))) == {"products": ["q-b"], "users": ["q-b"]}
    assert json.loads(_ok(run("publish", "--recover", "--json"))) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("subscribe", "bad topic", "q-a"), "invalid topic name 'bad topic'"),
        (("subscribe", "products", "q z"), "invalid queue name 'q z'"),
        (("publish", "a/b", "--data", "1"), "invalid topic name 'a/b'"),
        (("publish", "products", "--data", "{nope"), "--data is not valid JSON"),
        (("publish", "products", "--data", "NaN"), "NaN is not valid JSON"),
        (("publish", "products", "--data", "@/no/such/file"), "cannot read file"),
        (("publish", "products"), "missing option --data"),
        (("publish", "--data", "1"), "missing argument TOPIC"),
        (("publish", "products", "--data", "1", "--alias", ""), "invalid alias"),
        (("publish", "products", "--recover"), "--recover takes no TOPIC"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(
    run: Callable[..., Result], mgr: QueueManager, args: tuple[str, ...], fragment: str
) -> None:
    pubsub.subscribe(mgr, "products", "q-z")
    result = run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    assert mgr.list_queues() == ["q-z"] and mgr.find_messages("q-z") == []
    assert not pubsub.intents_dir(mgr).exists()


def test_cli_recover_finishes_a_killed_publisher(
    subscribed: QueueManager, config: Path, tmp_path: Path
) -> None:
    """``qengine publish`` killed for real, then ``qengine publish --recover``, both as processes."""
    marker = tmp_path / "stalled"
    env = dict(os.environ, **{pubsub.STALL_ENV: f"prepare:1:{marker}"})
    argv = [sys.executable, "-m", "queue_engine", "--config", str(config)]
    proc = subprocess.Popen([*argv, "publish", "products", "--data", '{"id": 5}'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(marker.exists, "the qengine publish process stalled")
    finally:
        _kill(proc)
    done = subprocess.run([*argv, "publish", "--recover"], capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "delivered\tproducts\tq-a,q-b,q-c\n"
    assert {q: [m.data for m in subscribed.find_messages(q)] for q in QUEUES} == {q: [{"id": 5}] for q in QUEUES}
    again = subprocess.run([*argv, "publish", "--recover"], capture_output=True, text=True, timeout=HANG_GUARD)
    assert again.returncode == 0 and again.stdout == ""
