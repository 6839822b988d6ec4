"""fsck: the check reports damage without writing; repair fixes it and keeps intact messages."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from queue_engine import QueueFactory, QueueMessage, QueueNotFound
from queue_engine.backends.file import FileQueueManager


def open_manager(root: Path) -> FileQueueManager:
    manager = QueueFactory.get_queue_manager(queue_type="file", cache_root=root, fsync="never", segment_size=64 * 1024)
    assert isinstance(manager, FileQueueManager)
    return manager


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="qengine.file")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    with open_manager(tmp_path) as m:
        for b in range(10):
            m.add_messages("q", [QueueMessage(data={"i": b * 50 + i, "pad": "x" * 100}) for i in range(50)])
    return tmp_path


def digest(root: Path) -> dict[str, str]:
    base = root / "queues" / "q"
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }


def second_segment(root: Path) -> Path:
    return sorted((root / "queues" / "q" / "log").glob("*.log"))[1]


def test_a_sound_queue_is_ok(root: Path) -> None:
    with open_manager(root) as m:
        report = m.fsck("q")
    assert report.ok and report.messages_added == 500 and report.segments >= 2, report


def test_check_reports_damage_and_writes_nothing(root: Path) -> None:
    seg = second_segment(root)
    data = bytearray(seg.read_bytes())
    data[20000] ^= 0xFF
    seg.write_bytes(bytes(data))
    (root / "queues/q/log/0000000001.idx").write_bytes(os.urandom(2000))
    before = digest(root)
    report = open_manager(root).fsck("q")
    assert not report.ok
    assert any("damaged records" in p for p in report.problems), report.problems
    assert any("0000000001.idx" in p for p in report.problems), report.problems
    assert digest(root) == before


def test_repair_fixes_damage_and_keeps_intact_messages(root: Path) -> None:
    seg = second_segment(root)
    data = bytearray(seg.read_bytes())
    data[20000] ^= 0xFF
    seg.write_bytes(bytes(data))
    (root / "queues/q/log/0000000001.idx").write_bytes(os.urandom(2000))
    with open_manager(root) as m:
        report = m.fsck("q", repair=True)
        assert report.ok and report.repaired and report.quarantined_files == 1, report
        got = []
        while (msg := m.get_message("q")) is not None:
            got.append(msg.data["i"])
    assert got == sorted(got) and len(got) == 499  # the one record the flipped byte hit
    assert open_manager(root).fsck("q").ok


def test_fsck_of_a_missing_queue(root: Path) -> None:
    with pytest.raises(QueueNotFound):
        open_manager(root).fsck("nope")


def test_fsck_command_checks_and_repairs(root: Path) -> None:
    import json
    import subprocess
    import sys

    config = root / "c.ini"
    config.write_text(f"[queue]\ncacheRoot = {root}\nfsync = never\nsegmentSize = 65536\n")
    base = [sys.executable, "-m", "queue_engine", "--config", str(config), "fsck"]
    ok = subprocess.run([*base, "q"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("q: ok"), ok
    seg = second_segment(root)
    data = bytearray(seg.read_bytes())
    data[20000] ^= 0xFF
    seg.write_bytes(bytes(data))
    bad = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and json.loads(bad.stdout)[0]["ok"] is False, bad
    fixed = subprocess.run([*base, "q", "--repair"], capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0 and "(repaired)" in fixed.stdout, fixed
    assert "Traceback" not in ok.stderr + bad.stderr + fixed.stderr
