"""`make run`: the main job end to end on the embedded file backend.

1. Two producer processes fill the ANPR queue (citizen-registry changes, some with an
   alias), plus one deferred and one disabled message and one malformed message.
2. Two real ``qengine work ANPR --burst`` processes run the repository's ``AnprWorker``
   (workers/anpr.py), which writes each request it would send to an outbox file.
3. ``qengine status``, ``qengine failed`` and ``qengine audit`` show the outcome: the
   malformed message is in the failed store, the disabled one is still queued.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from queue_engine import QueueFactory, QueueMessage

QUEUE = "ANPR"
PER_PRODUCER = 500
REPO = Path(__file__).resolve().parent.parent


def produce(config: Path, producer: int) -> None:
    with QueueFactory.get_queue_manager(config) as qm:
        batch = []
        for i in range(PER_PRODUCER):
            data = {"citizen_id": f"CIT{producer}{i:05d}", "op": "update", "fields": {"address": f"Via Roma {i}"}}
            batch.append(QueueMessage(data=data, alias=f"citizen-{producer}-{i}" if i % 10 == 0 else None))
            if len(batch) == 50:
                qm.add_messages(QUEUE, batch)
                batch = []
        qm.add_messages(QUEUE, batch)


def run(*argv: str) -> None:
    print(f"\n$ qengine {' '.join(argv[2:])}", flush=True)
    subprocess.run([sys.executable, "-m", "queue_engine", *argv], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=".run", help="folder for the demo's data (wiped first)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "config.ini"
    config.write_text(
        f"[queue]\nqueueType = file\ncacheRoot = {root / 'data'}\nfsync = batch\nworkersPath = {REPO / 'workers'}\n"
    )
    outbox = root / "anpr-outbox.jsonl"
    os.environ["QENGINE_ANPR_OUTBOX"] = str(outbox)

    with QueueFactory.get_queue_manager(config) as qm:
        qm.create_queue(QUEUE, description="ANPR registry updates")
        soon = datetime.now(timezone.utc) + timedelta(seconds=0.5)
        nightly = {"citizen_id": "CIT-NIGHTLY", "op": "delete"}
        qm.add_message(QUEUE, QueueMessage(data=nightly, alias="nightly", deferred_until=soon))
        qm.add_message(QUEUE, QueueMessage(data={"citizen_id": "CIT-HELD", "op": "delete"}, disabled=True))
        qm.add_message(QUEUE, QueueMessage(data={"op": "update"}, alias="malformed"))  # no citizen_id

    started = time.perf_counter()
    producers = [mp.Process(target=produce, args=(config, p)) for p in range(2)]
    for proc in producers:
        proc.start()
    for proc in producers:
        proc.join()
    time.sleep(max(0.0, 0.6 - (time.perf_counter() - started)))  # let the deferred one come due
    base = [sys.executable, "-m", "queue_engine", "--config", str(config)]
    workers = [subprocess.Popen([*base, "work", QUEUE, "--burst", "--log-level", "error"]) for _ in range(2)]
    codes = [w.wait(timeout=300) for w in workers]
    elapsed = time.perf_counter() - started
    sent = sum(1 for _ in outbox.open()) if outbox.exists() else 0
    print(f"produced {2 * PER_PRODUCER + 3} messages; 2 workers sent {sent} requests in {elapsed:.2f}s")

    run("--config", str(config), "status", QUEUE)
    run("--config", str(config), "failed", QUEUE)
    run("--config", str(config), "audit", QUEUE, "--alias", "nightly")
    with QueueFactory.get_queue_manager(config) as qm:
        status = qm.queue_status(QUEUE)
    ok = codes == [0, 0] and sent == 2 * PER_PRODUCER + 1 and status.failed == 1 and status.disabled == 1
    print("\ndemo", "OK" if ok else "FAILED", json.dumps({"sent": sent, "failed": status.failed}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
