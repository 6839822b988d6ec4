"""`make run`: the main job end to end on the embedded file backend.

Two producer processes fill the ANPR queue (some messages with an alias, one deferred, one
disabled), two consumer processes process it with reserve/ack, and the queue's status is
shown with the real CLI.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from queue_engine import QueueFactory, QueueMessage

QUEUE = "ANPR"
PER_PRODUCER = 500


def manager(root: Path):  # noqa: ANN201 - demo
    return QueueFactory.get_queue_manager(queue_type="file", cache_root=root)


def produce(root: Path, producer: int) -> None:
    with manager(root) as qm:
        for i in range(PER_PRODUCER):
            alias = f"citizen-{producer}-{i}" if i % 10 == 0 else None
            qm.add_message(QUEUE, QueueMessage(data={"producer": producer, "n": i, "op": "update"}, alias=alias))


def consume(root: Path, results: mp.Queue) -> None:  # type: ignore[type-arg]
    done = 0
    idle_since = time.monotonic()
    with manager(root) as qm:
        while time.monotonic() - idle_since < 1.0:
            msg = qm.reserve(QUEUE, lease=30)
            if msg is None:
                time.sleep(0.01)
                continue
            idle_since = time.monotonic()
            # "processing": a real worker would call the ANPR web service here
            qm.ack(QUEUE, msg)
            qm.update_last_message_processed(QUEUE, msg)
            done += 1
    results.put(done)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=".run", help="cacheRoot for the demo (wiped first)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    shutil.rmtree(root, ignore_errors=True)
    config = root / "config.ini"
    root.mkdir(parents=True)
    config.write_text(f"[queue]\nqueueType = file\ncacheRoot = {root / 'data'}\nfsync = batch\n")
    data_root = root / "data"

    with manager(data_root) as qm:
        qm.create_queue(QUEUE, description="ANPR registry updates")
        soon = datetime.now(timezone.utc) + timedelta(seconds=0.5)
        qm.add_message(QUEUE, QueueMessage(data={"op": "nightly-sync"}, alias="nightly", deferred_until=soon))
        qm.add_message(QUEUE, QueueMessage(data={"op": "on-hold"}, alias="held", disabled=True))

    started = time.perf_counter()
    producers = [mp.Process(target=produce, args=(data_root, p)) for p in range(2)]
    results: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    consumers = [mp.Process(target=consume, args=(data_root, results)) for _ in range(2)]
    for proc in producers + consumers:
        proc.start()
    processed = sum(results.get(timeout=120) for _ in consumers)
    for proc in producers + consumers:
        proc.join()
    elapsed = time.perf_counter() - started
    print(
        f"produced {2 * PER_PRODUCER + 1} messages, processed {processed} in {elapsed:.2f}s "
        "(the disabled one stays queued)"
    )
    qengine = [sys.executable, "-m", "queue_engine", "--config", str(config)]
    print(f"\n$ qengine --config {config} status {QUEUE}", flush=True)
    subprocess.run([*qengine, "status", QUEUE], check=True)
    print(f"\n$ qengine --config {config} find {QUEUE} --alias held", flush=True)
    subprocess.run([*qengine, "find", QUEUE, "--alias", "held"], check=True)
    return 0 if processed == 2 * PER_PRODUCER + 1 else 1


if __name__ == "__main__":
    sys.exit(main())
