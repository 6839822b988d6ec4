"""Shared fixtures: one ``manager`` fixture per backend, so every contract test runs on each.

Adding a backend (e.g. Redis) is one more entry in ``BACKENDS``: a builder and, while it may
be absent, a reason to skip.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rabbitmq_server import RabbitNode, rabbitmq_sbin
from redis_server import RedisServer, redis_server_binary

from queue_engine import QueueFactory, QueueManager, QueueMessage

#: Hang guard for polling loops. Never a performance assertion: only stops a stuck test.
HANG_GUARD = 60.0


def _build_memory(cache_root: Path) -> QueueManager:
    return QueueFactory.get_queue_manager(queue_type="memory")


def _build_file(cache_root: Path) -> QueueManager:
    return QueueFactory.get_queue_manager(queue_type="file", cache_root=cache_root, fsync="never")


#: The session's private redis-server URL, set by the ``redis_server`` fixture.
REDIS: dict[str, str] = {}


def _build_redis(cache_root: Path) -> QueueManager:
    return QueueFactory.get_queue_manager(queue_type="redis", redis_url=REDIS["url"], cache_root=cache_root)


def _redis_skip_reason() -> str | None:
    """Skip the redis params where redis-server is missing, except in CI: there they must fail."""
    if redis_server_binary() is not None or os.environ.get("CI") == "true":
        return None
    return "redis-server is not installed (make test installs it where it can; CI=true makes this a failure)"


#: name -> (builder taking the storage root, skip reason or None).
BACKENDS: dict[str, tuple[Callable[[Path], QueueManager], str | None]] = {
    "memory": (_build_memory, None),
    "file": (_build_file, None),
    "redis": (_build_redis, _redis_skip_reason()),
}

#: Backends whose data is shared by every manager opened on the same storage (root or server).
PERSISTENT = {"file", "redis"}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """ONE private redis-server for the session, on a free loopback port; stopped at the end."""
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed, and CI=true requires the Redis tests to run", pytrace=False)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    REDIS["url"] = server.url
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private server's URL, its data flushed for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """ONE private RabbitMQ node for the session (own node name, ports and data); stopped at the end.

    Missing rabbitmq-server: a failure under CI=true (the bridge tests must run there), a
    skip elsewhere. ``make test`` installs Debian's package where it can.
    """
    if rabbitmq_sbin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rabbitmq-server is not installed, and CI=true requires the AMQP tests to run", pytrace=False)
        pytest.skip("rabbitmq-server is not installed (make test installs it where it can)")
    node = RabbitNode(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    yield node
    node.stop()


@pytest.fixture
def rabbit(rabbit_node: RabbitNode) -> RabbitNode:
    """The session's node, running (a test that stopped it and failed may have left it down)."""
    return rabbit_node.start()


def _params(names: list[str]) -> list[Any]:
    return [
        pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])
        for name in names
        for reason in [BACKENDS[name][1]]
    ]


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    """Storage root for a persistent backend (created by the backend)."""
    return tmp_path / "q"


@pytest.fixture(params=_params(list(BACKENDS)))
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name under test."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return str(request.param)


@pytest.fixture(params=_params(sorted(PERSISTENT)))
def persistent_backend(request: pytest.FixtureRequest) -> str:
    """Only backends that share storage between managers and processes."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return str(request.param)


@pytest.fixture
def open_manager(backend: str, cache_root: Path) -> Iterator[Callable[[], QueueManager]]:
    """Open another manager of the backend under test on the same storage; closed at teardown."""
    opened: list[QueueManager] = []

    def factory() -> QueueManager:
        manager = BACKENDS[backend][0](cache_root)
        opened.append(manager)
        return manager

    yield factory
    for manager in reversed(opened):
        manager.close()


@pytest.fixture
def manager(open_manager: Callable[[], QueueManager]) -> QueueManager:
    """A manager of each backend, on fresh storage."""
    return open_manager()


@pytest.fixture
def queue_name() -> str:
    """A unique, valid queue name."""
    return f"q-{uuid.uuid4().hex[:12]}"


def wait_for(predicate: Callable[[], Any], *, timeout: float = HANG_GUARD, interval: float = 0.01) -> Any:
    """Poll until ``predicate()`` is truthy and return its value; fail after ``timeout`` (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition {getattr(predicate, '__name__', predicate)!r} not met within {timeout}s")
        time.sleep(interval)


def drain(manager: QueueManager, queue: str) -> list[QueueMessage]:
    """Every eligible message, taken with ``get_message`` in the order handed out."""
    out = []
    while (msg := manager.get_message(queue)) is not None:
        out.append(msg)
    return out


@pytest.fixture(name="wait_for")
def _wait_for_fixture() -> Callable[..., Any]:
    """:func:`wait_for` as a fixture, for test modules that cannot import conftest."""
    return wait_for


@pytest.fixture(name="drain")
def _drain_fixture() -> Callable[[QueueManager, str], list[QueueMessage]]:
    """:func:`drain` as a fixture."""
    return drain
