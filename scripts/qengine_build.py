"""PEP 517 build backend: setuptools', deciding first whether to compile (see setup.py).

``QENGINE_COMPILE`` chooses: ``0`` pure Python; ``1`` compiled, pure Python where compiling
fails; ``require`` compiled or no install. Unset (or ``auto``), a wheel is compiled where a C
compiler is found, as ``1``, and is pure Python where none is; an editable install is pure
Python, since a compiled module would shadow edits to its source. The decision is made here,
once per build, and handed to setup.py in the variable; mypy (whose mypyc compiles) is a build
requirement only of a build that compiles, so a pure build downloads nothing more than
setuptools.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the rest of the backend, unchanged)

#: The mypyc the compiled build was tested with (the whole suite passes compiled with it).
MYPYC = "mypy==2.4.1"


def compiler_found() -> bool:
    """Whether the C compiler a build would use (``CC``, else Python's own) is on the PATH."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    try:
        argv = shlex.split(cc)
    except ValueError:
        return False
    return bool(argv) and shutil.which(argv[0]) is not None


def compile_mode(*, editable: bool) -> str:
    """``QENGINE_COMPILE`` with its default resolved: ``0``, ``1`` or ``require`` (setup.py
    refuses any other value, naming it)."""
    value = os.environ.get("QENGINE_COMPILE", "").strip().lower()
    if value not in ("", "auto"):
        return value
    return "1" if not editable and compiler_found() else "0"


@contextmanager
def _decided(editable: bool) -> Iterator[str]:
    """Run a setuptools hook with ``QENGINE_COMPILE`` set to the decision (then restored)."""
    before = os.environ.get("QENGINE_COMPILE")
    mode = os.environ["QENGINE_COMPILE"] = compile_mode(editable=editable)
    try:
        yield mode
    finally:
        if before is None:
            del os.environ["QENGINE_COMPILE"]
        else:
            os.environ["QENGINE_COMPILE"] = before


def _requires(get: Callable[[Any], Any], config_settings: dict[str, Any] | None, editable: bool) -> list[str]:
    with _decided(editable) as mode:
        # setuptools runs setup.py to list its requirements: tell it not to compile yet (mypy,
        # which this call is about to ask for, is not installed at this point).
        os.environ["QENGINE_LISTING_REQUIRES"] = "1"
        try:
            return list(get(config_settings)) + ([MYPYC] if mode in ("1", "require") else [])
        finally:
            del os.environ["QENGINE_LISTING_REQUIRES"]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings, editable=False)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings, editable=True)


def _build(hook: Callable[..., str], editable: bool, *args: Any) -> str:
    with _decided(editable):
        return hook(*args)


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    return _build(_setuptools.build_wheel, False, wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    return _build(_setuptools.build_editable, True, wheel_directory, config_settings, metadata_directory)
