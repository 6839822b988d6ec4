"""A private ``redis-server`` for tests: a free loopback port, no persistence, stopped at the end.

Never a shared server: every test session (and a test that needs to stop its server) starts
its own. Waits for PING with a hang guard; no timing assumptions otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis
from ports import free_port

#: Hang guard for start-up and shut-down; never a performance assertion.
START_GUARD = 30.0


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` on PATH (or QENGINE_REDIS_SERVER), or None."""
    return os.environ.get("QENGINE_REDIS_SERVER") or shutil.which("redis-server")


class RedisServer:
    """One redis-server process. :meth:`stop` and :meth:`start` may be called repeatedly (same port)."""

    def __init__(self, workdir: Path, *, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (not on PATH, QENGINE_REDIS_SERVER unset)")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            return self
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self._wait_until(self.ping, "answer PING")
        return self

    def ping(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} exited; see {self.workdir / 'redis.log'}")
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Terminate the server and wait for it (kill after the hang guard)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(START_GUARD)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(START_GUARD)

    def _wait_until(self, predicate: object, what: str) -> None:
        deadline = time.monotonic() + START_GUARD
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not {what} within {START_GUARD}s")
            time.sleep(0.02)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
