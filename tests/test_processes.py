"""Real processes, threads and SIGKILL against backends whose storage is shared between processes.

Children are started with the ``spawn`` context (no inherited locks or threads) and open their
own manager on the same ``cache_root``. Every wait has a generous hang guard; nothing here
asserts on speed.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest

from queue_engine import QueueFactory, QueueManager, QueueMessage

CTX = multiprocessing.get_context("spawn")
Q = "work"
HANG_GUARD = 120.0
#: Small segments, so a test's data spans files the way a long-lived queue's does.
SETTINGS: dict[str, Any] = {"queue_type": "file", "fsync": "never", "segment_size": 64 * 1024}


def open_manager(root: str) -> QueueManager:
    return QueueFactory.get_queue_manager(cache_root=root, **SETTINGS)


@pytest.fixture
def root(cache_root: Path) -> str:
    """Storage root of the file backend, shared by the test and its child processes.

    These tests are about one host's processes and signals, which is the file backend's
    promise; the Redis backend's process tests live in test_redis_backend.py.
    """
    return str(cache_root)


# -- process helpers ------------------------------------------------------------------------


def start(target: Callable[..., None], *args: Any) -> BaseProcess:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def join_ok(*procs: BaseProcess, timeout: float = HANG_GUARD) -> None:
    """Wait for every child; fail if one hangs or exits other than 0."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, f"children did not finish within {timeout}s: {[p.name for p in hung]}"
    assert [p.exitcode for p in procs] == [0] * len(procs)


def recv(conn: Connection, timeout: float = HANG_GUARD) -> Any:
    if not conn.poll(timeout):
        pytest.fail(f"no message from the child within {timeout}s")
    return conn.recv()


def kill(proc: BaseProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(HANG_GUARD)
    assert proc.exitcode == -signal.SIGKILL, f"the child had already ended with exit code {proc.exitcode}"


def drain(manager: QueueManager, queue: str = Q) -> list[QueueMessage]:
    """The conftest ``drain``, importable by spawned children."""
    out = []
    while (m := manager.get_message(queue)) is not None:
        out.append(m)
    return out


# -- children (module level, so ``spawn`` can import them) ----------------------------------


def produce(root: str, producer: int, count: int) -> None:
    with open_manager(root) as manager:
        for i in range(count):
            manager.add_message(Q, QueueMessage(data=[producer, i]))


def consume(root: str, done: Any, out: Connection) -> None:
    """Reserve and ack until the producers are done and nothing is left; send what was seen."""
    seen: list[tuple[int, int, int]] = []
    with open_manager(root) as manager:
        while True:
            msg = manager.reserve(Q, lease=HANG_GUARD * 5)
            if msg is None:
                if done.is_set() and manager.reserve(Q, lease=HANG_GUARD * 5) is None:
                    break  # checked again after `done`: nothing can be added any more
                time.sleep(0.002)
                continue
            manager.ack(Q, msg)
            seen.append((msg.data[0], msg.data[1], msg.attempts))
    out.send(seen)
    out.close()


def add_forever(root: str, round_no: int, out: Connection) -> None:
    """Add in a tight loop, reporting each uuid once its add returned, until killed."""
    manager = open_manager(root)
    i = 0
    while True:
        uid = manager.add_message(Q, QueueMessage(data={"round": round_no, "i": i}))
        out.send_bytes(uid.encode())  # one write < PIPE_BUF: a kill never leaves half of it
        i += 1


def reserve_and_hang(root: str, lease: float, out: Connection) -> None:
    manager = open_manager(root)
    msg = manager.reserve(Q, lease=lease)
    out.send(None if msg is None else (msg.uuid, msg.attempts))
    time.sleep(HANG_GUARD * 10)  # hold the lease until killed


def add_then_wait(root: str, count: int, big: int, ctl: Connection) -> None:
    """Add ``count`` messages, then on request one big last one; never closes (killed)."""
    manager = open_manager(root)
    uids = [manager.add_message(Q, QueueMessage(data={"i": i, "pad": "p" * 100})) for i in range(count)]
    ctl.send(uids)
    ctl.recv()
    ctl.send(manager.add_message(Q, QueueMessage(data={"i": count, "pad": "L" * big})))
    time.sleep(HANG_GUARD * 10)


def read_back(root: str, out: Connection) -> None:
    """Reopen, drain, then prove new adds work and survive another reopen."""
    with open_manager(root) as manager:
        got = [(m.uuid, m.data) for m in drain(manager)]
        manager.add_messages(Q, [QueueMessage(data={"new": k}) for k in range(3)])
    with open_manager(root) as manager:
        after = [m.data for m in drain(manager)]
        left = manager.queue_status(Q).messages_to_process
    out.send((got, after, left))
    out.close()


# -- tests ----------------------------------------------------------------------------------


def test_producers_and_consumers_across_processes(root: str) -> None:
    """4 producers x 2000 messages, 3 consumers with reserve/ack: each delivered once, in order."""
    producers, per_producer, consumers = 4, 2000, 3
    with open_manager(root) as manager:
        manager.create_queue(Q)
    done = CTX.Event()
    pipes = [CTX.Pipe(duplex=False) for _ in range(consumers)]
    cons = [start(consume, root, done, w) for _, w in pipes]
    for _, w in pipes:
        w.close()
    prods = [start(produce, root, p, per_producer) for p in range(producers)]
    join_ok(*prods)
    done.set()
    results = [recv(r) for r, _ in pipes]
    for r, _ in pipes:
        r.close()
    join_ok(*cons)

    delivered = sorted((p, i) for seen in results for p, i, _ in seen)
    assert delivered == [(p, i) for p in range(producers) for i in range(per_producer)]  # all, exactly once
    assert {a for seen in results for _, _, a in seen} == {1}  # no redelivery
    for seen in results:  # FIFO: each consumer sees every producer's messages in order
        for p in range(producers):
            order = [i for q, i, _ in seen if q == p]
            assert order == sorted(order)
    with open_manager(root) as manager:
        status = manager.queue_status(Q)
        assert (status.messages_to_process, status.in_flight) == (0, 0)


def test_threads_share_one_manager(manager: QueueManager) -> None:
    """4 adding threads and 4 getting threads on one manager: nothing lost or duplicated."""
    adders, per_adder = 4, 500
    got: list[list[tuple[int, int]]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    done = threading.Event()

    def add(a: int) -> None:
        try:
            for i in range(per_adder):
                manager.add_message(Q, QueueMessage(data=[a, i]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def get(g: int) -> None:
        try:
            while True:
                msg = manager.get_message(Q)
                if msg is None:
                    if done.is_set() and manager.get_message(Q) is None:
                        return
                    time.sleep(0.001)
                    continue
                got[g].append((msg.data[0], msg.data[1]))
        except BaseException as exc:
            errors.append(exc)

    manager.create_queue(Q)
    getters = [threading.Thread(target=get, args=(g,)) for g in range(4)]
    add_threads = [threading.Thread(target=add, args=(a,)) for a in range(adders)]
    for t in getters + add_threads:
        t.start()
    for t in add_threads:
        t.join(HANG_GUARD)
    done.set()
    for t in getters:
        t.join(HANG_GUARD)
    assert not any(t.is_alive() for t in getters + add_threads), "a thread hung"
    assert errors == []
    assert sorted(x for g in got for x in g) == [(a, i) for a in range(adders) for i in range(per_adder)]
    for seen in got:
        for a in range(adders):
            order = [i for b, i in seen if b == a]
            assert order == sorted(order)


def test_sigkill_during_add_loses_no_returned_message(root: str) -> None:
    """Kill an adding process at random moments: every add that returned is kept, exactly once."""
    rounds, rng = 10, random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    reported: list[str] = []
    for round_no in range(rounds):
        r, w = CTX.Pipe(duplex=False)
        proc = start(add_forever, root, round_no, w)
        w.close()
        for _ in range(rng.randint(1, 300)):
            if not r.poll(HANG_GUARD):
                pytest.fail(f"round {round_no}: the adding child went quiet (seed {seed})")
            reported.append(r.recv_bytes().decode())
        time.sleep(rng.random() * 0.005)
        kill(proc)
        while r.poll(0):
            try:
                reported.append(r.recv_bytes().decode())
            except EOFError:
                break
        r.close()

    with open_manager(root) as manager:
        got = drain(manager)
        uids = [m.uuid for m in got]
        assert len(uids) == len(set(uids)), f"duplicates after kills (seed {seed})"
        missing = set(reported) - set(uids)
        assert not missing, f"{len(missing)} returned adds lost (seed {seed})"
        assert len(uids) - len(reported) <= rounds  # at most the one add in progress per kill
        keys = [(m.data["round"], m.data["i"]) for m in got]
        assert keys == sorted(keys), f"FIFO broken after kills (seed {seed})"
        for round_no in range(rounds):  # no holes: add i+1 starts only after add i returned
            seen = [i for rd, i in keys if rd == round_no]
            assert seen == list(range(len(seen)))
        status = manager.queue_status(Q)
        assert (status.messages_to_process, status.in_flight, status.disabled) == (0, 0, 0)
        uid = manager.add_message(Q, QueueMessage(data="after"))
        last = manager.get_message(Q)
        assert last is not None and (last.uuid, last.data) == (uid, "after")


@pytest.mark.parametrize("lease", [2.0, HANG_GUARD * 10], ids=["lease-expires", "holder-dies"])
def test_killed_consumer_message_is_redelivered(root: str, lease: float, wait_for: Callable[..., Any]) -> None:
    """A consumer dies holding a lease: the message comes back with attempts == 2.

    With the long lease only dead-holder detection can bring it back in time.
    """
    with open_manager(root) as manager:
        uid = manager.add_message(Q, QueueMessage(data="job"))
    r, w = CTX.Pipe(duplex=False)
    proc = start(reserve_and_hang, root, lease, w)
    w.close()
    assert recv(r) == (uid, 1)
    r.close()
    with open_manager(root) as manager:
        if lease > HANG_GUARD:
            assert manager.reserve(Q, lease=HANG_GUARD) is None  # a live holder keeps its lease
        kill(proc)
        again = wait_for(lambda: manager.reserve(Q, lease=HANG_GUARD), timeout=HANG_GUARD / 2)
        assert (again.uuid, again.data, again.attempts) == (uid, "job", 2)
        manager.ack(Q, again)
        assert manager.queue_status(Q).messages_to_process == 0


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _largest_change(before: bytes, after: bytes, gap: int = 64) -> tuple[int, int] | None:
    """[start, end) of the largest cluster of changed bytes (gaps up to ``gap`` joined), or None.

    A new or grown file is compared with zeros: preallocated space reads as zeros.
    """
    n = len(after)
    old = before[:n].ljust(n, b"\0")
    best: tuple[int, int] | None = None
    start = prev = -1
    for i in (i for i in range(n) if old[i] != after[i]):
        if start < 0 or i - prev > gap:
            start = i
        prev = i
        if best is None or prev + 1 - start > best[1] - best[0]:
            best = (start, prev + 1)
    return best


DAMAGE = ["truncate-mid-record", "zero-tail-of-record", "flip-byte-in-record", "garbage-after-record", "garbage-at-eof"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_torn_tail_keeps_intact_messages(root: str, damage: str) -> None:
    """Damage the bytes the newest add wrote; a new manager keeps every intact message."""
    count, big = 40, 8000  # the last message dwarfs any other write, so its record is found
    ctl, child_ctl = CTX.Pipe()
    proc = start(add_then_wait, root, count, big, child_ctl)
    child_ctl.close()
    uids = recv(ctl)
    before = _snapshot(Path(root))
    ctl.send("go")
    last_uid = recv(ctl)
    after = _snapshot(Path(root))
    kill(proc)  # a crash, not a clean close
    ctl.close()

    spans = {p: s for p in after if (s := _largest_change(before.get(p, b""), after[p])) is not None}
    target, (start_, end) = max(spans.items(), key=lambda kv: kv[1][1] - kv[1][0])
    assert end - start_ >= big, f"no file took the last add's record; changed: {spans}"
    mid = start_ + (end - start_) // 2
    garbage = random.Random(7).randbytes(64)
    with open(target, "r+b") as fh:
        if damage == "truncate-mid-record":
            fh.truncate(mid)
        elif damage == "zero-tail-of-record":
            fh.seek(mid)
            fh.write(b"\0" * (end - mid))
        elif damage == "flip-byte-in-record":
            fh.seek(mid)
            fh.write(bytes([after[target][mid] ^ 0xFF]))
        elif damage == "garbage-after-record":
            fh.seek(end)
            fh.write(garbage)
        else:
            fh.seek(0, os.SEEK_END)
            fh.write(garbage)

    r, w = CTX.Pipe(duplex=False)
    reader = start(read_back, root, w)
    w.close()
    got, new, left = recv(r)
    r.close()
    join_ok(reader)  # a crash (e.g. SIGBUS on a short mapping) shows here as the exit code

    first = [(u, {"i": i, "pad": "p" * 100}) for i, u in enumerate(uids)]
    everything = first + [(last_uid, {"i": count, "pad": "L" * big})]
    if damage.startswith("garbage"):
        assert got == everything
    else:  # the torn last message is dropped whole, never returned damaged
        assert got == first
    assert new == [{"new": k} for k in range(3)]
    assert left == 0
