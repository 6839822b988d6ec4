"""Checking a file-backend queue without changing it, and repairing it on request.

:func:`check_queue` reads every segment, index, checkpoint and the quarantine folder of one
queue with its own read-only mappings: it never writes, so it is safe on a queue in use
(what it reports may be a moment old). Repairing goes through the queue itself
(:meth:`QueueStore.repair`), under its lock, with the same code every reader uses.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .records import HEADER_SIZE, MAGIC, RecordType, check

__all__ = ["FsckReport", "check_queue"]

_IDX_HEADER = struct.Struct("<Q")
_IDX_SLOT = struct.Struct("<I")


@dataclass
class FsckReport:
    """What :func:`check_queue` found. ``problems`` empty means the queue is sound."""

    queue: str
    segments: int = 0
    records: int = 0
    messages_added: int = 0
    bytes_used: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quarantined_files: int = 0
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _next_valid(mm: mmap.mmap, size: int, start: int) -> int | None:
    pos = start
    while True:
        pos = mm.find(MAGIC, pos)
        if pos < 0 or pos + HEADER_SIZE > size:
            return None
        if check(mm, pos, size):
            return pos
        pos += 1


def check_queue(path: Path, name: str) -> FsckReport:
    """Report every problem in the queue folder ``path``; read only."""
    report = FsckReport(queue=name)
    log_dir = path / "log"
    numbers = sorted(int(p.stem) for p in log_dir.glob("*.log") if p.stem.isdigit())
    stray = sorted(p.name for p in log_dir.iterdir() if not (p.stem.isdigit() and p.suffix in (".log", ".idx")))
    if stray:
        report.notes.append(f"files that are not segments (ignored): {', '.join(stray)}")
    if not numbers:
        report.problems.append("no log segment")
    for previous, current in zip(numbers, numbers[1:], strict=False):  # pairs of neighbours
        if current != previous + 1:
            report.problems.append(f"segments {previous + 1}..{current - 1} are missing")
    for i, segno in enumerate(numbers):
        _check_segment(log_dir, segno, last=i == len(numbers) - 1, report=report)
    _check_checkpoint(path, numbers, report)
    qdir = path / "quarantine"
    if qdir.is_dir():
        report.quarantined_files = sum(1 for p in qdir.iterdir() if p.name != "REPORT.jsonl")
        if report.quarantined_files:
            report.notes.append(f"{report.quarantined_files} file(s) in quarantine/ (see quarantine/REPORT.jsonl)")
    return report


def _check_segment(log_dir: Path, segno: int, *, last: bool, report: FsckReport) -> None:
    path = log_dir / f"{segno:010d}.log"
    size = path.stat().st_size
    report.segments += 1
    if size == 0:
        report.problems.append(f"{path.name}: empty")
        return
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as mm:
        first = check(mm, 0, size)
        if not first or first.type != RecordType.SEGMENT:
            report.problems.append(f"{path.name}: does not start with a segment record (not a segment)")
            return
        adds: dict[int, int] = {}
        off, sealed = 0, False
        while True:
            h = check(mm, off, size)
            if h is None:
                break
            if h is False:
                nxt = _next_valid(mm, size, off + HEADER_SIZE)
                if nxt is None:
                    tail = len(bytes(mm[off:]).rstrip(b"\x00"))
                    kind = "torn tail" if last else "damaged end"
                    report.problems.append(f"{path.name}: {kind} at offset {off} ({tail} bytes)")
                    break
                report.problems.append(f"{path.name}: damaged records at offset {off} ({nxt - off} bytes)")
                off = nxt
                continue
            report.records += 1
            if h.type == RecordType.ADD:
                report.messages_added += 1
                adds[h.seq] = off
            if h.type == RecordType.SEAL:
                sealed = True
                off += HEADER_SIZE + h.length
                break
            off += HEADER_SIZE + h.length
        report.bytes_used += off
        if not last and not sealed:
            report.problems.append(f"{path.name}: ends without a seal although later segments exist")
    _check_index(log_dir, segno, first.seq, adds, report)


def _check_index(log_dir: Path, segno: int, first_seq: int, adds: dict[int, int], report: FsckReport) -> None:
    path = log_dir / f"{segno:010d}.idx"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        report.problems.append(f"{path.name}: missing")
        return
    if len(data) < _IDX_HEADER.size or _IDX_HEADER.unpack_from(data)[0] != first_seq:
        report.problems.append(f"{path.name}: header does not match its segment")
        return
    slots = (len(data) - _IDX_HEADER.size) // _IDX_SLOT.size
    wrong = missing = 0
    for seq, off in adds.items():
        slot = seq - first_seq
        if not 0 <= slot < slots:
            continue
        (value,) = _IDX_SLOT.unpack_from(data, _IDX_HEADER.size + slot * _IDX_SLOT.size)
        if value == 0:
            missing += 1
        elif value != off + 1:
            wrong += 1
    if wrong:
        report.problems.append(f"{path.name}: {wrong} entr{'y' if wrong == 1 else 'ies'} point at the wrong record")
    if missing:
        report.notes.append(f"{path.name}: {missing} entr{'y' if missing == 1 else 'ies'} not written (rebuilt on use)")


def _check_checkpoint(path: Path, numbers: list[int], report: FsckReport) -> None:
    target = path / "checkpoint.json"
    if not target.exists():
        report.notes.append("no checkpoint (opening replays the whole log)")
        return
    try:
        position = json.loads(target.read_bytes())["position"]
    except (ValueError, KeyError, TypeError):
        report.problems.append("checkpoint.json: unreadable")
        return
    if not numbers or position[0] not in numbers:
        report.problems.append(f"checkpoint.json: points at segment {position[0]}, which does not exist")
