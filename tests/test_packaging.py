"""Packaging: the wheel holds the library only, so installing it never claims `workers` or `daemons`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_only_queue_engine(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("qengine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top_level == {"queue_engine"}
    assert "queue_engine/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "qengine = queue_engine.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
