"""What the benchmarks print about the machine they ran on (imported by the bench_* scripts)."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what platform knows, else ``?``."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        return platform.processor() or "?"
