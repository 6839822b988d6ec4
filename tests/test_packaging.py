"""Packaging: the wheel holds the library only, so installing it never claims `workers` or `daemons`."""

from __future__ import annotations

import os
import shutil
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


def _copy_tree(tmp_path: Path) -> Path:
    """A copy of the tree to build in (a build leaves its C files in build/ of its tree)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "__pycache__", "*.egg-info", "*.so"))
    return src


def _env(compile_mode: str | None, **env: str) -> dict[str, str]:
    """This environment with ``QENGINE_COMPILE=compile_mode`` (None: unset) and ``env``."""
    result = {k: v for k, v in os.environ.items() if k != "QENGINE_COMPILE"}
    if compile_mode is not None:
        result["QENGINE_COMPILE"] = compile_mode
    return {**result, **env}


def _wheel(tmp_path: Path, compile_mode: str | None, **env: str) -> list[str]:
    """Build a wheel with ``QENGINE_COMPILE=compile_mode`` (None: unset) from a copy of the
    tree (``tmp_path / "src"``, made if missing); return its file names."""
    src = tmp_path / "src" if (tmp_path / "src").is_dir() else _copy_tree(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(src)],
        check=True,
        timeout=600,
        env=_env(compile_mode, **env),
    )
    [wheel] = tmp_path.glob("qengine-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def _backend(src: Path, call: str, compile_mode: str | None, **env: str) -> str:
    """What ``call`` (Python, on the build backend ``b``) prints, run in ``src`` as pip would."""
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, 'scripts'); import qengine_build as b; print({call})"],
        cwd=src, capture_output=True, text=True, timeout=600, env=_env(compile_mode, **env),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_compiled_wheel_keeps_its_modules_inside_the_package_and_works(tmp_path: Path) -> None:
    names = _wheel(tmp_path, "require")
    native = sorted(n for n in names if n.endswith(".so"))
    assert native, "QENGINE_COMPILE=require built no extension module"
    assert all(n.startswith("queue_engine/") for n in native), native  # mypyc's shared library too
    assert any(n.startswith("queue_engine/backends/file/store.") for n in native)
    assert "queue_engine/backends/file/store.py" in names  # the source ships too (tracebacks)
    site = tmp_path / "site"
    [wheel] = tmp_path.glob("qengine-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True, timeout=300,
    )
    script = (
        "import sys, tempfile\n"
        "from queue_engine import QueueFactory, QueueMessage\n"
        "from queue_engine.backends.file import COMPILED\n"
        "import queue_engine.backends.file.store as s\n"
        "assert COMPILED and s.__file__.startswith(sys.argv[1]), s.__file__\n"
        "m = QueueFactory.get_queue_manager(queue_type='file', cache_root=tempfile.mkdtemp())\n"
        "u = m.add_message('q', QueueMessage(data={'n': 1}))\n"
        "r = m.reserve('q', lease=5)\n"
        "assert r is not None and r.uuid == u and r.data == {'n': 1}\n"
        "m.ack('q', r, processed=True)\n"
        "assert m.queue_status('q').last_message_processed.uuid == u\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(site)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("compile_mode", ["1", None])
def test_a_failed_compile_installs_pure_python(tmp_path: Path, compile_mode: str | None) -> None:
    names = _wheel(tmp_path, compile_mode, CC="false")  # a compiler that always fails
    assert not [n for n in names if n.endswith(".so")]
    assert "queue_engine/backends/file/store.py" in names


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("compile_mode", [None, "auto"])
def test_a_plain_install_is_compiled_where_a_compiler_is_found(tmp_path: Path, compile_mode: str | None) -> None:
    src = _copy_tree(tmp_path)
    assert "mypy==" in _backend(src, "b.get_requires_for_build_wheel()", compile_mode)  # mypyc builds it
    names = _wheel(tmp_path, compile_mode)
    assert any(n.startswith("queue_engine/backends/file/store.") and n.endswith(".so") for n in names), names


@pytest.mark.slow
def test_without_a_compiler_a_plain_install_is_pure_and_needs_no_mypy(tmp_path: Path) -> None:
    src = _copy_tree(tmp_path)
    assert "mypy" not in _backend(src, "b.get_requires_for_build_wheel()", None, CC="/nonexistent/cc")
    names = _wheel(tmp_path, None, CC="/nonexistent/cc")
    assert not [n for n in names if n.endswith(".so")]


@pytest.mark.slow
def test_an_editable_install_is_pure_unless_asked(tmp_path: Path) -> None:
    """A compiled module would shadow edits to its source: editable means pure by default."""
    src = _copy_tree(tmp_path)
    assert "mypy" not in _backend(src, "b.get_requires_for_build_editable()", None)
    assert "mypy==" in _backend(src, "b.get_requires_for_build_editable()", "1")
    wheel = _backend(src, f"b.build_editable({str(tmp_path)!r})", None)
    assert wheel.endswith("-py3-none-any.whl"), wheel
    assert not list(src.rglob("*.so"))


def test_metadata_and_sdist_hooks_take_auto(tmp_path: Path) -> None:
    """pip asks for metadata (and an sdist) through hooks that run setup.py undecided."""
    src = _copy_tree(tmp_path)
    out = tmp_path / "meta"
    out.mkdir()
    assert _backend(src, f"b.prepare_metadata_for_build_wheel({str(out)!r})", "auto").endswith(".dist-info")
    assert "mypy" not in _backend(src, "b.get_requires_for_build_sdist()", "auto")


def test_an_invalid_compile_mode_is_refused_by_name(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "--name"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=_env("yes"),
    )
    assert out.returncode != 0
    assert "invalid QENGINE_COMPILE 'yes'" in out.stderr
