"""Worker-loop throughput: qengine's WorkerRunner against peers' worker loops, in one run.

Usage (from the repository root, in .bench-venv)::

    python benchmarks/bench_worker.py [--n 10000] [--repeats 3] [--redis] [--src PATH]

A worker loop takes a message, runs a job that does nothing, settles it and records the
outcome. Each case below pre-fills a queue with N messages ``{"id": i, "payload": "x" * 100}``
(untimed), then times draining it; rate = messages handled / seconds.

* ``qengine[file]``: ``WorkerRunner(m, ["Q"], burst=True).run()`` on a file manager
  (``fsync="never"``) whose worker ``QWorker.process`` returns None, loaded from
  ``<tmp>/workers/q.py`` via ``config.ini``. Per message: reserve, process, ack with
  ``processed=True`` (also the queue's last processed message), one audit record.
* ``qengine[file] reserve+ack``: reference without the runner: ``m.reserve("Q", lease=60)``
  then ``m.ack("Q", msg)`` until the queue is empty.
* ``huey[file]``: ``FileHuey(results=False)`` with its default file lock (safe across
  processes, as producers elsewhere need); pre-filled by calling the task; timed: the loop of
  huey's consumer worker without its sleep, ``huey.dequeue()`` then ``huey.execute(task)``.
* ``--redis`` (a private ``redis-server`` on a free loopback port, no persistence, FLUSHALL
  before each measurement): ``qengine[redis]`` and ``qengine[redis] reserve+ack`` as above on
  the redis backend, and ``rq``: jobs of ``bench_worker.noop_job`` enqueued with
  ``result_ttl=0`` (``enqueue_many``), timed ``SimpleWorker([q]).work(burst=True)``
  (the worker is built before the clock starts, like qengine's runner; the clock stops where
  rq's teardown starts: it joins a pubsub thread, up to 1 s once per burst, not per job).

Every measurement runs in a fresh interpreter (``--worker``) on a fresh temporary directory,
``--repeats`` times interleaved across cases; the median is reported. ``--src`` puts a
checkout first on the workers' sys.path (before/after comparisons). Nothing is asserted:
shared machines are noisy, compare within a run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import machine  # noqa: E402  (the benchmarks directory is not a package)
from machine import cpu_model  # noqa: E402

REPO = str(Path(__file__).resolve().parent.parent)
FILE_CASES = ("qengine[file]", "qengine[file] reserve+ack", "huey[file]")
REDIS_CASES = ("qengine[redis]", "qengine[redis] reserve+ack", "rq")
PEERS = {"qengine[file]": ("huey[file]",), "qengine[redis]": ("rq",)}
WORKER_PY = """from queue_engine.worker import Worker


class QWorker(Worker):
    def process(self, message):
        return None
"""


def noop_job(data: Any) -> None:
    """The job of every peer: does nothing (importable as ``bench_worker.noop_job`` for rq)."""
    return None


def message(i: int) -> dict[str, Any]:
    return {"id": i, "payload": "x" * 100}


# == worker side: runs inside a fresh subprocess ============================================


class ErrorCount(logging.Handler):
    """Counts records at ERROR or above, so a loop that fails quietly shows up in the table."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def qengine_manager(root: Path, spec: dict[str, Any]) -> Any:
    from queue_engine import QueueFactory, QueueMessage

    (root / "workers").mkdir()
    (root / "workers" / "q.py").write_text(WORKER_PY)
    (root / "config.ini").write_text(f"[queue]\nworkersPath = {root / 'workers'}\n")
    settings: dict[str, Any] = {"cache_root": str(root)}
    if spec["backend"] == "redis":
        settings.update(queue_type="redis", redis_url=spec["redis_url"])
    else:
        settings.update(queue_type="file", fsync="never")
    m = QueueFactory.get_queue_manager(str(root / "config.ini"), **settings)
    for start in range(0, spec["n"], 1000):
        m.add_messages("Q", [QueueMessage(data=message(i)) for i in range(start, min(start + 1000, spec["n"]))])
    return m


def run_case(case: str, root: Path, spec: dict[str, Any]) -> tuple[int, float]:
    """Set up ``case`` untimed, drain the queue timed; return (messages handled, seconds)."""
    n = spec["n"]
    if case.startswith("qengine"):
        m = qengine_manager(root, spec)
        try:
            if case.endswith("reserve+ack"):
                done = 0
                t0 = time.perf_counter()
                while (msg := m.reserve("Q", lease=60)) is not None:
                    m.ack("Q", msg)
                    done += 1
                return done, time.perf_counter() - t0
            from queue_engine.runner import WorkerRunner

            runner = WorkerRunner(m, ["Q"], burst=True)
            t0 = time.perf_counter()
            done = runner.run()
            return done, time.perf_counter() - t0
        finally:
            m.close()
    if case == "huey[file]":
        huey = importlib.import_module("huey").FileHuey("bench", path=str(root / "huey"), results=False)
        noop = huey.task()(noop_job)
        for i in range(n):
            noop(message(i))
        done = 0
        t0 = time.perf_counter()
        while (task := huey.dequeue()) is not None:
            huey.execute(task)
            done += 1
        return done, time.perf_counter() - t0
    if case == "rq":
        rq = importlib.import_module("rq")
        conn = importlib.import_module("redis").Redis.from_url(spec["redis_url"])
        q = rq.Queue("bench", connection=conn)
        for start in range(0, n, 1000):
            q.enqueue_many([rq.Queue.prepare_data("bench_worker.noop_job", (message(i),), result_ttl=0)
                            for i in range(start, min(start + 1000, n))])
        worker = rq.SimpleWorker([q], connection=conn)
        # The clock stops where teardown starts: rq then joins its pubsub thread, up to 1 s once per
        # burst that a long-running worker never pays per job.
        ended: list[float] = []
        teardown = worker.teardown

        def timed_teardown() -> None:
            ended.append(time.perf_counter())
            teardown()

        worker.teardown = timed_teardown
        t0 = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
        seconds = ended[0] - t0
        failed = len(q.failed_job_registry)  # the worker's own counters live in redis, gone after a burst
        if failed:
            raise RuntimeError(f"rq: {failed} job(s) failed")
        return n - int(q.count), seconds
    raise ValueError(f"unknown case {case!r}")


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, spec["src"])
    errors = ErrorCount()
    logging.getLogger().addHandler(errors)
    if spec.get("redis_url"):
        importlib.import_module("redis").Redis.from_url(spec["redis_url"]).flushall()
    root = Path(tempfile.mkdtemp(prefix="qbench-worker-"))
    try:
        done, seconds = run_case(spec["case"], root, spec)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"ops": done, "seconds": seconds, "logged_errors": errors.count}
    if "queue_engine" in sys.modules:
        qe = sys.modules["queue_engine"]
        result["qengine"] = f"{qe.__version__} from {os.path.dirname(os.path.dirname(qe.__file__ or '?'))}"
    return result


# == driver side ==============================================================================


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement of this script in a fresh interpreter."""
    return machine.spawn(os.path.abspath(__file__), spec)


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            client.close()
            return proc, port
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit("redis-server did not start")
            time.sleep(0.02)


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def src_revision(src: str) -> str:
    """``git <short hash>[, modified]`` of the checkout at ``src``, or "" outside git (read-only commands)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", src, *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return f", git {head}{', modified' if git('status', '--porcelain', '--untracked-files=no') else ''}" if head else ""


def redis_version() -> str:
    words = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return next((w.split("=", 1)[1] for w in words if w.startswith("v=")), "?")


def render(args: argparse.Namespace, cases: list[str], runs: dict[str, list[dict[str, Any]]]) -> str:
    ok = {c: [r for r in runs[c] if r.get("ops") and r["seconds"] > 0] for c in cases}
    rate = {c: statistics.median(r["ops"] / r["seconds"] for r in ok[c]) for c in cases if ok[c]}
    qengine = next((r["qengine"] for c in cases for r in ok[c] if "qengine" in r), "?")
    out = [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; {platform.python_implementation()} "
        f"{platform.python_version()}.",
        f"qengine {qengine}{src_revision(args.src)}; huey {version_of('huey')}; rq {version_of('rq')}"
        + (f"; redis-server {redis_version()}" if args.redis else "") + ".",
        f"N={args.n:,} messages per run, median of {args.repeats} runs, each in a fresh interpreter.",
        "",
        "| engine | msg/s (median) | runs (min–max msg/s) | vs best peer | share of reserve+ack |",
        "|---|---:|---|---:|---:|",
    ]
    for c in cases:
        rates = sorted(r["ops"] / r["seconds"] for r in ok[c])
        spread = f" ({rates[0]:,.0f}–{rates[-1]:,.0f})" if len(rates) > 1 else ""
        failed = len(runs[c]) - len(ok[c])
        cells = [f"{rate[c]:,.0f}" if c in rate else "error",
                 f"{len(ok[c])}{spread}" + (f", {failed} failed" if failed else ""), "", ""]
        peers = {p: rate[p] for p in PEERS.get(c, ()) if p in rate}
        if c in rate and peers:
            best = max(peers, key=lambda p: peers[p])
            cells[2] = f"{rate[c] / peers[best]:.2f}× {best}"
        if c in rate and f"{c} reserve+ack" in rate:
            cells[3] = f"{rate[c] / rate[c + ' reserve+ack']:.0%}"
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "qengine: fsync=never; the WorkerRunner of the checkout run (reserve, process, ack, last processed, "
        "one audit record per message). "
        "huey: FileHuey(results=False), default file lock; per task dequeue (lists the queue directory, so its "
        "rate falls as N grows) + execute (revoke check and cleanup). rq: result_ttl=0, SimpleWorker (no fork), "
        "logging at WARNING, clock stopped where its teardown starts (a pubsub thread join of up to 1 s per burst). "
        "Nobody stores results; only qengine writes an audit trail. Noisy machine: compare within a run."
    )
    for c in cases:
        for r in runs[c]:
            if "error" in r:
                out.append(f"- error in {c}: `{r['error']}`")
            elif r.get("logged_errors") or r.get("ops") != args.n:
                out.append(f"- {c}: {r.get('ops')} of {args.n} handled, {r.get('logged_errors')} error(s) logged")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="messages per run (default 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported (default 3)")
    parser.add_argument("--redis", action="store_true", help="also run the redis cases (starts a private redis-server)")
    parser.add_argument("--src", default=REPO,
                        help="checkout whose queue_engine the workers import (default: this repo)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    args.src = os.path.abspath(args.src)
    cases = list(FILE_CASES) + (list(REDIS_CASES) if args.redis else [])
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    server: subprocess.Popen[bytes] | None = None
    workdir = tempfile.mkdtemp(prefix="qbench-redis-")
    try:
        url = None
        if args.redis:
            server, port = start_redis(workdir)
            url = f"redis://127.0.0.1:{port}/0"
        for rep in range(args.repeats):
            for case in cases:
                backend = "redis" if case in REDIS_CASES else "file"
                result = spawn({"case": case, "n": args.n, "src": args.src, "backend": backend,
                                "redis_url": url if backend == "redis" else None})
                runs[case].append(result)
                shown = f"{result['ops'] / result['seconds']:>10,.0f} msg/s" if "ops" in result else str(result)
                log(f"[{rep + 1}] {case:28s} {shown}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(args, cases, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
