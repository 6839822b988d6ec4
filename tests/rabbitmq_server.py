"""A private RabbitMQ node for tests: its own node name, free loopback ports, its own data dir.

Never the machine's shared broker: the tests stop, kill and restart this node to prove that
nothing is lost, and other tests' queues must not see that. The node runs as the current
user from ``/usr/lib/rabbitmq/bin`` (Debian's layout; ``QENGINE_RABBITMQ_SBIN`` overrides),
with no plugins and ``HOME`` in its data dir (so its Erlang cookie is private too). A start
takes a few seconds; the tests share one node per session and restart it where they need to.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pika
import pika.exceptions
from ports import free_port

#: Hang guard for start-up and shut-down; never a performance assertion.
START_GUARD = 90.0


def rabbitmq_sbin() -> Path | None:
    """The folder holding ``rabbitmq-server`` (run directly, not through Debian's su wrapper)."""
    candidates = [os.environ.get("QENGINE_RABBITMQ_SBIN"), "/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/sbin"]
    for folder in candidates:
        if folder and (Path(folder) / "rabbitmq-server").is_file():
            return Path(folder)
    found = shutil.which("rabbitmq-server")
    return Path(found).parent if found and "sbin" not in found else None


class RabbitNode:
    """One RabbitMQ node. :meth:`stop` / :meth:`kill` and :meth:`start` may repeat (same ports, same data)."""

    def __init__(self, workdir: Path) -> None:
        sbin = rabbitmq_sbin()
        if sbin is None:
            raise RuntimeError("rabbitmq-server is not installed (make test installs Debian's where it can)")
        self.sbin = sbin
        self.workdir = workdir
        for sub in ("mnesia", "log"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "enabled_plugins").write_text("[].\n")
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"qtest{uuid.uuid4().hex[:8]}@localhost"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbit.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "none"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "none-advanced.config"),
        }

    def start(self) -> RabbitNode:
        if self.alive():
            return self
        pidfile = self.workdir / "rabbit.pid"
        pidfile.unlink(missing_ok=True)
        with open(self.workdir / "start.log", "ab") as log:
            subprocess.run(
                [str(self.sbin / "rabbitmq-server"), "-detached"],
                env=self.env(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=60,
            )
        deadline = time.monotonic() + START_GUARD
        while time.monotonic() < deadline:
            if self.pid is None and pidfile.exists():
                text = pidfile.read_text().strip()
                self.pid = int(text) if text.isdigit() else None
            if self.pid is not None and not self.alive():
                break
            if self.pid is not None and self.ready():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"RabbitMQ node {self.node} did not start; see {self.workdir / 'log'}")

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie (our child after -detached? no: init's) counts as dead
            return Path(f"/proc/{self.pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    def ready(self) -> bool:
        """True once an AMQP login works."""
        try:
            connection = pika.BlockingConnection(self.parameters(timeout=1.0))
        except (pika.exceptions.AMQPError, OSError):
            return False
        connection.close()
        return True

    def parameters(self, *, timeout: float = 5.0) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host="127.0.0.1", port=self.port, credentials=pika.PlainCredentials("guest", "guest"),
            socket_timeout=timeout, stack_timeout=timeout, connection_attempts=1,
        )

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node; return its output."""
        done = subprocess.run(
            [str(self.sbin / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(), cwd=self.workdir, capture_output=True, text=True, timeout=START_GUARD, check=True,
        )
        return done.stdout

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open, nothing is answered (a stalled broker)."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + START_GUARD
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): the broker writes what it holds and exits."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the broker: only what it had confirmed to disk survives."""
        self._signal(signal.SIGKILL)

    # -- helpers for tests --------------------------------------------------------------
    def channel(self) -> tuple[pika.BlockingConnection, pika.adapters.blocking_connection.BlockingChannel]:
        connection = pika.BlockingConnection(self.parameters())
        return connection, connection.channel()

    def declare(self, name: str) -> None:
        """A durable queue ``name`` (bound to the default exchange under its name)."""
        connection, channel = self.channel()
        try:
            channel.queue_declare(name, durable=True)
        finally:
            connection.close()

    def publish(self, queue: str, bodies: list[bytes], *, message_ids: list[str | None] | None = None) -> None:
        """Publish ``bodies`` persistent, with confirms, to ``queue`` through the default exchange."""
        connection, channel = self.channel()
        try:
            channel.confirm_delivery()
            ids = message_ids or [None] * len(bodies)
            for body, mid in zip(bodies, ids, strict=True):
                channel.basic_publish(
                    "", queue, body, pika.BasicProperties(delivery_mode=2, message_id=mid), mandatory=True
                )
        finally:
            connection.close()

    def drain(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        """Every message now in ``queue``, acked (removed)."""
        out = []
        connection, channel = self.channel()
        try:
            while True:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return out
                out.append((properties, body))
        finally:
            connection.close()

    def depth(self, queue: str) -> int:
        connection, channel = self.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        finally:
            connection.close()
