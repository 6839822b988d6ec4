"""Chaos: producers and reserve/ack consumers SIGKILLed at random, restarted, for a bounded time.

Each child appends one journal line per step *after* the library call returned (``added``,
``got``, ``acked``), so the journals say what the engine promised. Checked afterwards:

* every message whose add returned is delivered at least once;
* a message is never delivered again after its ack returned;
* duplicates come only from messages in flight at a consumer kill (at most one per kill);
* the queue opens and drains afterwards.

The counts are printed (run with ``-s``) and reported in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

DURATION = float(os.environ.get("QENGINE_CHAOS_SECONDS", "12"))

_CHILD = r"""
import os, sys, time, logging
logging.disable(logging.WARNING)
from queue_engine import QueueFactory, QueueMessage
role, root, journal, ident, redis_url = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
if redis_url:
    m = QueueFactory.get_queue_manager(queue_type="redis", redis_url=redis_url)
else:
    m = QueueFactory.get_queue_manager(queue_type="file", cache_root=root, fsync="never", segment_size=65536)
fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
def note(kind, uuid):
    os.write(fd, f"{time.time():.6f} {kind} {uuid}\n".encode())
if role == "producer":
    n = 0
    while True:
        if ident == "p1":  # an all-or-none batch: a kill lands inside multi-message operations too
            batch = [QueueMessage(data={"p": ident, "n": n + i, "pad": "x" * 64}) for i in range(10)]
            for uuid in m.add_messages("chaos", batch):
                note("added", uuid)
            n += 10
            continue
        uuid = m.add_message("chaos", QueueMessage(data={"p": ident, "n": n, "pad": "x" * 64}))
        note("added", uuid)
        n += 1
else:
    idle = 0.0
    while True:
        msg = m.reserve("chaos", lease=1.0)
        if msg is None:
            if role == "drainer":
                idle += 0.05
                if idle > 3.0:
                    break
            time.sleep(0.05)
            continue
        idle = 0.0
        note("got", msg.uuid)
        m.ack("chaos", msg)
        note("acked", msg.uuid)
"""


_WORKER = """
import os, time
from queue_engine import Worker


class ChaosWorker(Worker):
    queue = "chaos"

    def _note(self, kind, uuid):
        fd = os.open(os.environ["CHAOS_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{time.time():.6f} {kind} {uuid}\\n".encode())
        finally:
            os.close(fd)

    def process(self, message):
        self._note("got", message.uuid)

    def on_success(self, message, result):  # runs after the ack returned
        self._note("acked", message.uuid)
"""


def _daemon_config(tmp: Path, root: Path, redis_url: str) -> Path:
    workers = tmp / "workers"
    workers.mkdir(exist_ok=True)
    (workers / "chaos.py").write_text(_WORKER)
    backend = f"queueType = redis\nredisUrl = {redis_url}\n" if redis_url else f"cacheRoot = {root}\nfsync = never\n"
    config = tmp / "chaos.ini"
    config.write_text(
        f"[queue]\n{backend}workersPath = {workers}\nlease = 1\n"
        f"[daemon]\npidDir = {tmp / 'run'}\nlogDir = {tmp / 'log'}\nsleep = 0.05\n"
    )
    return config


def _spawn(role: str, root: Path, journal: Path, ident: str, redis_url: str = "") -> subprocess.Popen[bytes]:
    if role == "daemon":
        config = _daemon_config(root.parent, root, redis_url)
        env = dict(os.environ, CHAOS_JOURNAL=str(journal))
        cmd = [sys.executable, "-m", "queue_engine", "--config", str(config), "daemon", "run", "chaos"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-c", _CHILD, role, str(root), str(journal), ident, redis_url])


def _read(journal: Path) -> list[tuple[float, str, str]]:
    out = []
    for line in journal.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("added", "got", "acked") and len(parts[2]) == 36:
            out.append((float(parts[0]), parts[1], parts[2]))  # a line cut by SIGKILL is skipped
    return out


@pytest.fixture(params=["file", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """ "" for the file backend, else the URL of the session's private redis-server."""
    if request.param == "file":
        return ""
    return str(request.getfixturevalue("redis_url"))


@pytest.mark.slow
def test_random_sigkills_lose_nothing_and_never_redeliver_an_acked_message(tmp_path: Path, backend_url: str) -> None:
    root = tmp_path / "q"
    journals = tmp_path / "journals"
    journals.mkdir()
    rng = random.Random(int(os.environ.get("QENGINE_CHAOS_SEED", "0")) or None)
    children: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    generation = defaultdict(int)
    for ident, role in (("p0", "producer"), ("p1", "producer"), ("c0", "consumer"), ("d0", "daemon")):
        children[ident] = (role, _spawn(role, root, journals / f"{ident}.0", ident, backend_url))
    kills = {"producer": 0, "consumer": 0, "daemon": 0}
    deadline = time.monotonic() + DURATION
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 0.4))
            ident = rng.choice(sorted(children))
            role, proc = children[ident]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills[role] += 1
            generation[ident] += 1
            children[ident] = (role, _spawn(role, root, journals / f"{ident}.{generation[ident]}", ident, backend_url))
    finally:
        for _role, proc in children.values():  # stop everything; producers stop adding here
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    drainer = _spawn("drainer", root, journals / "drain", "d", backend_url)
    assert drainer.wait(timeout=300) == 0

    by_daemon = sum(1 for path in journals.glob("d0.*") for _, kind, _ in _read(path) if kind == "acked")
    assert by_daemon > 0, "the daemon processed nothing: check its log under the test's tmp folder"
    events = sorted(e for path in journals.iterdir() for e in _read(path))
    added = {u for _, kind, u in events if kind == "added"}
    got: dict[str, list[float]] = defaultdict(list)
    acked: dict[str, float] = {}
    for at, kind, uuid in events:
        if kind == "got":
            got[uuid].append(at)
        elif kind == "acked":
            acked.setdefault(uuid, at)
    lost = added - set(got)
    redelivered_after_ack = [u for u, at in acked.items() if any(t > at for t in got[u])]
    duplicates = sum(len(times) - 1 for times in got.values())
    print(
        f"\nchaos {backend_url and 'redis' or 'file'} {DURATION:.0f}s: {len(added)} adds returned, "
        f"{len(got)} delivered, {duplicates} duplicate deliveries ({by_daemon} by the daemon), "
        f"{kills['producer']} producer, {kills['consumer']} consumer and {kills['daemon']} daemon SIGKILLs, "
        f"lost {len(lost)}, redelivered after ack {len(redelivered_after_ack)}"
    )
    assert len(added) > 100 and kills["consumer"] + kills["daemon"] > 0  # the test did exercise something
    assert not lost, f"{len(lost)} messages whose add returned were never delivered"
    assert not redelivered_after_ack
    assert duplicates <= kills["consumer"] + kills["daemon"]

    from queue_engine import QueueFactory

    settings = (
        {"queue_type": "redis", "redis_url": backend_url} if backend_url else {"queue_type": "file", "cache_root": root}
    )
    with QueueFactory.get_queue_manager(**settings) as manager:
        status = manager.queue_status("chaos")
        assert (status.messages_to_process, status.in_flight) == (0, 0)
