"""Damaged files: opening never crashes, intact messages survive, damage is quarantined and reported.

Each case builds a queue of 1000 messages (20 batches over several 64 KiB segments), takes
100, damages the files with the queue closed, then reopens it in a fresh manager.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from queue_engine import QueueFactory, QueueMessage
from queue_engine.backends.file import FileQueueManager

TOTAL, TAKEN = 1000, 100


def open_manager(root: Path) -> FileQueueManager:
    manager = QueueFactory.get_queue_manager(queue_type="file", cache_root=root, fsync="never", segment_size=64 * 1024)
    assert isinstance(manager, FileQueueManager)
    return manager


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, list[str]]:
    uuids: list[str] = []
    with open_manager(tmp_path) as m:
        for b in range(20):
            uuids += m.add_messages("q", [QueueMessage(data={"i": b * 50 + i, "pad": "x" * 100}) for i in range(50)])
        for _ in range(TAKEN):
            assert m.get_message("q") is not None
    return tmp_path, uuids


def reopen_and_drain(root: Path) -> list[int]:
    with open_manager(root) as m:
        out = []
        while (msg := m.get_message("q")) is not None:
            out.append(msg.data["i"])
        assert m.queue_status("q").ready == 0
        assert m.add_message("q", QueueMessage(data={"i": -1})) and m.get_message("q") is not None  # still works
        return out


def log_dir(root: Path) -> Path:
    return root / "queues" / "q" / "log"


def report(root: Path) -> list[dict[str, object]]:
    path = root / "queues" / "q" / "quarantine" / "REPORT.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def second_segment(root: Path) -> Path:
    return sorted(log_dir(root).glob("*.log"))[1]


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="qengine.file")


def test_a_flipped_byte_loses_only_the_record_it_hit(built: tuple[Path, list[str]]) -> None:
    root, _ = built
    seg = second_segment(root)
    data = bytearray(seg.read_bytes())
    data[30000] ^= 0xFF
    seg.write_bytes(bytes(data))
    got = reopen_and_drain(root)
    assert got == sorted(got) and len(got) >= TOTAL - TAKEN - 1  # at most the damaged record
    assert len(got) == len(set(got))
    [event] = report(root)
    assert event["what"] == "damaged records between valid ones" and Path(str(event["saved_as"])).exists()


@pytest.mark.parametrize("kind", ["emptied", "deleted", "truncated", "garbage"])
def test_a_damaged_middle_segment_costs_only_its_own_messages(built: tuple[Path, list[str]], kind: str) -> None:
    root, _ = built
    seg = second_segment(root)
    if kind == "emptied":
        seg.write_bytes(b"")
    elif kind == "deleted":
        seg.unlink()
    elif kind == "truncated":
        os.truncate(seg, 3000)
    else:
        seg.write_bytes(os.urandom(seg.stat().st_size))
    got = reopen_and_drain(root)
    assert got == sorted(got) and len(got) == len(set(got))
    lost = set(range(TAKEN, TOTAL)) - set(got)
    # what is lost is one contiguous run: the messages that lived in the damaged segment
    assert lost and max(lost) - min(lost) + 1 == len(lost) and len(lost) < 400
    assert report(root), "the damage is reported"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda root: (root / "queues/q/checkpoint.json").write_text("{not json"), id="checkpoint"),
        pytest.param(
            lambda root: [p.write_bytes(os.urandom(p.stat().st_size)) for p in log_dir(root).glob("*.idx")], id="index"
        ),
        pytest.param(lambda root: (root / "queues/q/lock").unlink(), id="lock"),
        pytest.param(
            lambda root: (
                (log_dir(root) / "0000009999.log").write_bytes(os.urandom(4096)),
                (log_dir(root) / "stray.txt").write_text("x"),
            ),
            id="garbage-files",
        ),
    ],
)
def test_damage_outside_the_log_loses_nothing(built: tuple[Path, list[str]], damage: Callable[[Path], object]) -> None:
    root, uuids = built
    damage(root)
    with open_manager(root) as m:
        assert [x.uuid for x in m.find_messages("q", uuid=uuids[-1])] == [uuids[-1]]
    assert reopen_and_drain(root) == list(range(TAKEN, TOTAL))


def test_a_torn_tail_is_cut_and_kept(built: tuple[Path, list[str]]) -> None:
    root, _ = built
    last = sorted(log_dir(root).glob("*.log"))[-1]
    with open(last, "r+b") as fh:  # a half-written record after the last good one
        data = fh.read()
        end = len(data.rstrip(b"\x00"))
        fh.seek(end)
        fh.write(b"qE" + os.urandom(20))
    assert reopen_and_drain(root) == list(range(TAKEN, TOTAL))
    [event] = report(root)
    assert "end of the log" in str(event["what"])


def test_a_log_with_every_segment_gone_starts_afresh(built: tuple[Path, list[str]]) -> None:
    root, _ = built
    for path in log_dir(root).iterdir():
        path.unlink()
    (root / "queues" / "q" / "checkpoint.json").unlink()
    assert reopen_and_drain(root) == []
    assert report(root)[0]["what"] == "no log segment left: starting a new log"
