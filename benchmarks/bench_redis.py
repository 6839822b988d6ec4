"""Benchmark qengine on Redis against raw redis-py round trips and RQ, on one private server.

Usage (from the repository root, in .bench-venv, which has ``rq``)::

    .bench-venv/bin/python benchmarks/bench_redis.py [--n 5000] [--repeats 3] [--json]

One redis-server is started on a free loopback port (no persistence) and flushed between
measurements; every engine talks to it over TCP from this one process, one operation per
round trip. Each case runs ``--repeats`` times, interleaved, and the median is reported.
Nothing here asserts a timing: it is a report.

Cases:

* ``add``   messages added per second (qengine ``add_message``, redis-py ``LPUSH``, RQ ``enqueue``);
* ``take``  messages consumed per second from a pre-filled queue: qengine ``reserve`` + ``ack``
  (two scripts per message), redis-py ``BRPOP`` (one command, no lease, nothing to ack);
  RQ has no client-side take without its worker, so n/a.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata

import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine import cpu_model  # noqa: E402 - benchmarks/ is the script folder

from queue_engine import QueueFactory, QueueMessage  # noqa: E402

HANG_GUARD = 30.0
PAYLOAD = {"plate": "AB123CD", "camera": 7, "confidence": 0.93}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + HANG_GUARD
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit("redis-server did not start")
            time.sleep(0.02)
    client.close()
    return proc, port


def rate(n: int, action: Callable[[], None]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        action()
    return n / (time.perf_counter() - start)


# -- engines: each returns {case: ops/s} -------------------------------------------------------
def bench_qengine(url: str, n: int) -> dict[str, float]:
    manager = QueueFactory.get_queue_manager(queue_type="redis", redis_url=url)
    try:
        add = rate(n, lambda: manager.add_message("bench", QueueMessage(data=PAYLOAD)))

        def take() -> None:
            msg = manager.reserve("bench", lease=60)
            assert msg is not None
            manager.ack("bench", msg)

        return {"add": add, "take": rate(n, take)}
    finally:
        manager.close()


def bench_raw(url: str, n: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    try:
        body = json.dumps(PAYLOAD)
        add = rate(n, lambda: client.lpush("raw", body) and None)

        def take() -> None:
            assert client.brpop(["raw"], timeout=1) is not None

        return {"add": add, "take": rate(n, take)}
    finally:
        client.close()


def bench_rq(url: str, n: int) -> dict[str, float]:
    try:
        from rq import Queue
    except ImportError:
        return {}
    client = redis.Redis.from_url(url)
    try:
        queue = Queue("bench", connection=client)
        # by dotted name: RQ refuses functions of __main__; no RQ worker runs it anyway
        return {"add": rate(n, lambda: queue.enqueue("json.dumps", PAYLOAD) and None)}
    finally:
        client.close()


ENGINES: dict[str, Callable[[str, int], dict[str, float]]] = {
    "qengine (redis backend)": bench_qengine,
    "redis-py LPUSH / BRPOP": bench_raw,
    "RQ enqueue": bench_rq,
}
RAW = "redis-py LPUSH / BRPOP"


def machine() -> dict[str, str]:
    cpu = cpu_model()
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    versions = {}
    for dist in ("redis", "hiredis", "rq"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return {
        "cpu": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis-server": next((w.split("=", 1)[1] for w in server if w.startswith("v=")), "?"),
        **{f"{k} (python)": v for k, v in versions.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="operations per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qengine-bench-redis-") as workdir:
        proc, port = start_server(workdir)
        url = f"redis://127.0.0.1:{port}/0"
        flusher = redis.Redis(port=port)
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in ENGINES}
        try:
            for _ in range(args.repeats):
                for name, bench in ENGINES.items():  # interleaved: noise spreads over every engine
                    flusher.flushall()
                    for case, value in bench(url, args.n).items():
                        samples[name].setdefault(case, []).append(value)
        finally:
            flusher.close()
            proc.terminate()
            proc.wait(HANG_GUARD)
    medians = {name: {case: statistics.median(v) for case, v in cases.items()} for name, cases in samples.items()}
    facts = machine()
    if args.json:
        print(json.dumps({"n": args.n, "repeats": args.repeats, "machine": facts, "ops_per_s": medians}, indent=2))
        return
    print(f"Redis benchmark: n={args.n} per measurement, median of {args.repeats}, one client, loopback TCP\n")
    print("| engine | adds/s | vs raw | reserve+ack/s (take/s) | vs raw |")
    print("|---|---:|---:|---:|---:|")
    raw = medians[RAW]
    for name, cases in medians.items():
        cells = []
        for case in ("add", "take"):
            value = cases.get(case)
            cells.append("n/a" if value is None else f"{value:,.0f}")
            cells.append("n/a" if value is None or case not in raw else f"{value / raw[case]:.2f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for key, value in facts.items():
        print(f"- {key}: {value}")


if __name__ == "__main__":
    main()
