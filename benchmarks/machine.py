"""What the bench_* scripts share: the machine they ran on, and one measurement run in a
fresh interpreter."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any

#: Seconds after which a measurement's interpreter is taken as hung (never a measurement limit).
HANG_GUARD = 900.0


def spawn(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --worker SPEC`` in a fresh interpreter; its last stdout line is the JSON
    result, or ``{"error": ...}`` with the last line of its stderr."""
    try:
        proc = subprocess.run(
            [sys.executable, script, "--worker", json.dumps(spec)],
            capture_output=True, text=True, timeout=HANG_GUARD,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"hung for {HANG_GUARD:.0f}s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": tail[:200]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what platform knows, else ``?``."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        return platform.processor() or "?"
