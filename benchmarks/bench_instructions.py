"""Instructions per file-backend operation, counted by valgrind's callgrind.

Wall time on a shared 2-CPU machine moves by 30% between runs; the number of instructions
an operation executes does not (within a few percent: timestamps, hashing and random
uuids vary). This counts them for ``add_message``, ``get_message``, reserve+ack and a
worker's loop (``WorkerRunner`` with a worker that does nothing: reserve, ack, last processed,
audit record per message): one run of N operations and one of none, each in a fresh
interpreter under callgrind, and the difference divided by N. It needs ``valgrind`` on the
PATH; kernel time (the syscalls) is not counted.

    .venv/bin/python benchmarks/bench_instructions.py [--n 1000] [--ops add,get,ack,work] [--src PATH]

``--src`` counts the queue_engine of another tree: ``--src build/compiled`` counts the
compiled build (``make test-compiled`` builds it there).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFILL = 25_000  # messages queued before get / reserve+ack (the same for the N and the 0 run)
OPS = ("add", "get", "ack", "work")
_NOOP_WORKER = """\
from queue_engine.worker import Worker


class QWorker(Worker):
    def process(self, message):
        return None
"""


def workload(op: str, n: int, root: str) -> None:
    """Run ``n`` operations of ``op`` after the same set-up whatever ``n`` is."""
    from queue_engine import QueueFactory, QueueMessage

    payload = "x" * 200
    if op == "work":
        workers = Path(root, "workers")
        workers.mkdir(exist_ok=True)
        (workers / "q.py").write_text(_NOOP_WORKER)
        Path(root, "config.ini").write_text(f"[queue]\nworkersPath = {workers}\n")
    config = Path(root, "config.ini") if op == "work" else None
    m = QueueFactory.get_queue_manager(config, queue_type="file", cache_root=root, fsync="never")
    m.create_queue("Q")
    if op != "add":
        for start in range(0, PREFILL, 1000):
            m.add_messages("Q", [QueueMessage(data={"id": i, "payload": payload}) for i in range(start, start + 1000)])
        m.close()  # consumers usually open a queue someone else filled
        m = QueueFactory.get_queue_manager(config, queue_type="file", cache_root=root, fsync="never")
        m.queue_status("Q")  # opening (checkpoint and replay) belongs to the set-up, not to the ops
    if op == "add":
        for i in range(n):
            m.add_message("Q", QueueMessage(data={"id": i, "payload": payload}))
    elif op == "get":
        for _ in range(n):
            if m.get_message("Q") is None:
                raise SystemExit("queue empty")
    elif op == "work":
        from queue_engine.runner import WorkerRunner

        runner = WorkerRunner(m, ["Q"], max_jobs=n or None)  # loading the worker is set-up
        if n and runner.run() != n:
            raise SystemExit("queue empty")
    else:
        for _ in range(n):
            msg = m.reserve("Q", lease=60)
            if msg is None:
                raise SystemExit("queue empty")
            m.ack("Q", msg)
    m.close()


def count(op: str, n: int, src: str) -> int:
    with tempfile.TemporaryDirectory() as root:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "--src", src, "--run", op, str(n), root],
            capture_output=True, text=True, check=True,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no callgrind total in its output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="operations in the measured run (default 1000)")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of add,get,ack")
    parser.add_argument("--src", default=str(REPO), help="tree whose queue_engine is counted (default: this one)")
    parser.add_argument("--run", nargs=3, metavar=("OP", "N", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.src = os.path.abspath(args.src)
    sys.path.insert(0, args.src)
    if args.run:
        workload(args.run[0], int(args.run[1]), args.run[2])
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing to count", file=sys.stderr)
        return 1
    ops = [op for op in args.ops.split(",") if op]
    unknown = [op for op in ops if op not in OPS]
    if unknown or not 0 < args.n <= PREFILL:
        print(f"invalid --ops {unknown} or --n {args.n} (1..{PREFILL})", file=sys.stderr)
        return 2
    names = {"add": "add_message", "get": "get_message", "ack": "reserve + ack", "work": "worker loop (per message)"}
    from queue_engine.backends.file import COMPILED

    build = "compiled" if COMPILED else "pure Python"
    print(f"| operation | instructions per op ({build}; callgrind, N={args.n:,}) |")
    print("|---|---:|")
    for op in ops:
        t0 = time.monotonic()
        per_op = (count(op, args.n, args.src) - count(op, 0, args.src)) // args.n
        print(f"| {names[op]} | {per_op:,} |", flush=True)
        print(f"  ({op}: {time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
