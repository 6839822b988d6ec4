"""How fast could a Python file queue with qengine's guarantees be? A floor, next to the peers.

Usage (from the repository root, in .bench-venv; peers as for bench_file.py)::

    python benchmarks/bench_floor.py [--n 20000] [--repeats 3]

The *skeleton* does only what any CPython implementation of qengine's file design must do per
operation, and nothing else: for an add, JSON-encode the data, frame it with a CRC, take the
flock, check the tail, ``pwrite``, release; for a get, take the flock, read and CRC-check
the head record from the mapping, JSON-decode it, write a framed TAKE record, release; a
reserve+ack is a get that writes RESERVE plus a second locked write of ACK. No message
objects, no view, no validation, no uuid bookkeeping. A second add variant appends with
``O_APPEND`` and no lock at all (the cheapest crash-detectable multi-process append).

It prints each rate and ratios: skeleton / best peer (what the design allows) and qengine /
skeleton (how much of that qengine uses). Nothing is asserted; shared machines are noisy.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402  (the benchmarks directory is not a package)
from machine import cpu_model  # noqa: E402

_PREFIX = struct.Struct("<2sBBIQQQ")
_CRC = struct.Struct("<I")
_LOG_SIZE = 64 << 20


def _frame(rtype: int, seq: int, body: bytes) -> bytes:
    prefix = _PREFIX.pack(b"qE", rtype, 0, len(body), seq, 0, int(time.time() * 1000))
    return prefix + _CRC.pack(zlib.crc32(body, zlib.crc32(prefix))) + body


def _body(seq: int, i: int) -> bytes:
    return f'{{"uuid":"{seq:032x}","data":{json.dumps(peers.message(i))}}}'.encode()


class _Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(os.path.join(path, "log"), os.O_RDWR | os.O_CREAT)
        os.posix_fallocate(self.fd, 0, _LOG_SIZE)
        self.lock = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT)
        self.mm = mmap.mmap(self.fd, _LOG_SIZE, access=mmap.ACCESS_READ)
        self.end = 0

    def locked_write(self, record: bytes) -> None:
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        if self.mm[self.end] != 0:
            raise RuntimeError("another writer")  # the check a real reader does under the lock
        os.pwrite(self.fd, record, self.end)
        self.end += len(record)
        fcntl.flock(self.lock, fcntl.LOCK_UN)


def skeleton_add(path: str, n: int) -> float:
    log = _Log(path)
    t0 = time.perf_counter()
    for i in range(n):
        log.locked_write(_frame(3, i + 1, _body(i + 1, i)))
    return n / (time.perf_counter() - t0)


def skeleton_add_append(path: str, n: int) -> float:
    fd = os.open(os.path.join(path, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    t0 = time.perf_counter()
    for i in range(n):
        os.write(fd, _frame(3, 0, _body(i + 1, i)))
    return n / (time.perf_counter() - t0)


def skeleton_take(path: str, n: int, ack: bool) -> float:
    log = _Log(path)
    filled = b"".join(_frame(3, i + 1, _body(i + 1, i)) for i in range(n))
    os.pwrite(log.fd, filled, 0)
    log.end = len(filled)
    mm, head = log.mm, 0
    t0 = time.perf_counter()
    for _ in range(n):
        fcntl.flock(log.lock, fcntl.LOCK_EX)
        if mm[log.end] != 0:
            raise RuntimeError("another writer")
        _, _, _, length, seq, _, _ = _PREFIX.unpack_from(mm, head)
        (crc,) = _CRC.unpack_from(mm, head + 32)
        body = mm[head + 36 : head + 36 + length]
        if zlib.crc32(body, zlib.crc32(mm[head : head + 32])) != crc:
            raise RuntimeError("bad record")
        json.loads(body)
        head += 36 + length
        record = _frame(5, seq, b"1234:5678") if ack else _frame(4, seq, b"")
        os.pwrite(log.fd, record, log.end)
        log.end += len(record)
        fcntl.flock(log.lock, fcntl.LOCK_UN)
        if ack:
            log.locked_write(_frame(6, seq, b""))
    return n / (time.perf_counter() - t0)


def engine_add(cls: Callable[[str], peers.Engine], path: str, n: int) -> float:
    engine = cls(path)
    t0 = time.perf_counter()
    for i in range(n):
        engine.add(peers.message(i))
    rate = n / (time.perf_counter() - t0)
    engine.close()
    return rate


def engine_take(cls: Callable[[str], peers.Engine], path: str, n: int, ack: bool) -> float:
    engine = cls(path)
    engine.add_batch([peers.message(i) for i in range(n)])
    engine.close()
    engine = cls(path)
    take = engine.reserve_ack if ack else engine.get
    t0 = time.perf_counter()
    for _ in range(n):
        if take() is None:
            raise RuntimeError(f"{cls.__name__}: queue ran dry")
    rate = n / (time.perf_counter() - t0)
    engine.close()
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="operations per timed phase (default 20000)")
    parser.add_argument("--dirq-n", type=int, default=5_000, help="dirq's phases (slow to pre-fill; default 5000)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n, dn = args.n, args.dirq_n
    lite, dirq, qe = peers.LiteQueueEngine, peers.DirqSimple, peers.QEngineNever
    cases: dict[str, tuple[str, Callable[[str], float]]] = {
        "skeleton add (flock + pwrite)": ("add", lambda p: skeleton_add(p, n)),
        "skeleton add (O_APPEND, no lock)": ("add", lambda p: skeleton_add_append(p, n)),
        "litequeue add": ("add", lambda p: engine_add(lite, p, n)),
        "qengine[fsync=never] add": ("add", lambda p: engine_add(qe, p, n)),
        "skeleton get": ("get", lambda p: skeleton_take(p, n, False)),
        "dirq get": ("get", lambda p: engine_take(dirq, p, dn, False)),
        "qengine[fsync=never] get": ("get", lambda p: engine_take(qe, p, n, False)),
        "skeleton reserve+ack": ("ack", lambda p: skeleton_take(p, n, True)),
        "dirq reserve+ack": ("ack", lambda p: engine_take(dirq, p, dn, True)),
        "qengine[fsync=never] reserve+ack": ("ack", lambda p: engine_take(qe, p, n, True)),
    }
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so noise spreads over every case
        for name, (_, fn) in cases.items():
            path = tempfile.mkdtemp(prefix="qengine-floor-")
            try:
                runs[name].append(fn(path))
            finally:
                shutil.rmtree(path, ignore_errors=True)
    rate = {name: statistics.median(values) for name, values in runs.items()}
    print(f"Machine: {os.cpu_count()} CPU ({cpu_model()}), CPython {sys.version.split()[0]}; median of {args.repeats}")
    print()
    print("| op | skeleton | best peer | qengine | skeleton / peer | qengine / peer | qengine / skeleton |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for op, skeleton, peer in (
        ("add", "skeleton add (flock + pwrite)", "litequeue add"),
        ("get", "skeleton get", "dirq get"),
        ("reserve+ack", "skeleton reserve+ack", "dirq reserve+ack"),
    ):
        ours = rate[f"qengine[fsync=never] {op}"]
        print(
            f"| {op} | {rate[skeleton]:,.0f} | {rate[peer]:,.0f} ({peer.split()[0]}) | {ours:,.0f} "
            f"| {rate[skeleton] / rate[peer]:.2f}x | {ours / rate[peer]:.2f}x | {ours / rate[skeleton]:.2f}x |"
        )
    print()
    print(f"skeleton add with O_APPEND and no lock: {rate['skeleton add (O_APPEND, no lock)']:,.0f}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
