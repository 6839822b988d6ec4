"""Soak: 1M messages through 4 producer and 4 consumer processes on the file backend.

Consumers sample their own RSS and open descriptors as they go; afterwards both must be
flat (no growth with the number of messages processed), every message delivered exactly
once, and the disk space of the drained queue given back. ``QENGINE_SOAK_MESSAGES``
overrides the count (default 1,000,000).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOTAL = int(os.environ.get("QENGINE_SOAK_MESSAGES", "1000000"))
PRODUCERS = CONSUMERS = 4

_CHILD = r"""
import json, os, sys, time, logging
logging.disable(logging.WARNING)
from queue_engine import QueueFactory, QueueMessage
role, root, out, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
m = QueueFactory.get_queue_manager(queue_type="file", cache_root=root)
def sample():
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return {"rss_kib": rss, "fds": len(os.listdir("/proc/self/fd"))}
if role == "producer":
    ident = int(sys.argv[5])
    for start in range(0, count, 500):
        m.add_messages("soak", [QueueMessage(data={"p": ident, "n": n}) for n in range(start, min(count, start + 500))])
    m.close()
else:
    seen, samples, idle = [], [], 0.0
    while True:
        msg = m.reserve("soak", lease=300)
        if msg is None:
            idle += 0.02
            if idle > 5.0:
                break
            time.sleep(0.02)
            continue
        idle = 0.0
        m.ack("soak", msg)
        seen.append(f"{msg.data['p']}:{msg.data['n']}")
        if len(seen) % 10000 == 0:
            samples.append(sample() | {"done": len(seen)})
    m.close()
    json.dump({"seen": seen, "samples": samples}, open(out, "w"))
"""


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_million_messages_keep_memory_descriptors_and_disk_flat(tmp_path: Path) -> None:
    root = tmp_path / "q"
    per_producer = TOTAL // PRODUCERS
    started = time.monotonic()
    consumers = [
        subprocess.Popen([sys.executable, "-c", _CHILD, "consumer", str(root), str(tmp_path / f"c{i}.json"), "0"])
        for i in range(CONSUMERS)
    ]
    producers = [
        subprocess.Popen([sys.executable, "-c", _CHILD, "producer", str(root), "-", str(per_producer), str(i)])
        for i in range(PRODUCERS)
    ]
    for proc in producers:
        assert proc.wait(timeout=1800) == 0
    for proc in consumers:
        assert proc.wait(timeout=1800) == 0
    elapsed = time.monotonic() - started

    results = [json.loads((tmp_path / f"c{i}.json").read_text()) for i in range(CONSUMERS)]
    seen = [key for r in results for key in r["seen"]]
    assert len(seen) == per_producer * PRODUCERS and len(set(seen)) == len(seen)  # exactly once

    for r in results:  # flat: the last sample is not above the first by more than noise
        samples = r["samples"]
        if len(samples) < 3:
            continue
        first, last = samples[0], samples[-1]
        assert last["rss_kib"] - first["rss_kib"] < 32 * 1024, samples
        assert last["fds"] - first["fds"] <= 4, samples
    disk = _du(root / "queues" / "soak")
    peak_rss = max(s["rss_kib"] for r in results for s in r["samples"]) if any(r["samples"] for r in results) else 0
    print(f"\nsoak: {len(seen)} messages in {elapsed:.0f}s, peak consumer RSS {peak_rss / 1024:.1f} MiB, "
          f"disk after drain {disk / 2**20:.1f} MiB")
    assert disk < 64 * 2**20  # a few segments at most, not the ~90 MiB the messages took
