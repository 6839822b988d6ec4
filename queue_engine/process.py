"""Telling processes apart: a pid plus its start time, so a recycled pid is never mistaken
for the process that held it (leases, pidfiles)."""

from __future__ import annotations

__all__ = ["start_ticks"]


def start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None if gone.

    A zombie (exited, not yet reaped by its parent) is gone: it holds nothing any more.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        if fields[0] in (b"Z", b"X"):  # state: zombie, or dead
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None
