"""The compiled build; the package's metadata is in setup.cfg.

``QENGINE_COMPILE=1`` compiles the file backend's hot path (:data:`COMPILED`) with mypyc:
the same source, turned into C extension modules. If that fails (no C compiler, no Python
headers, a mypyc error) the package installs as pure Python and says so; with
``QENGINE_COMPILE=require`` the install fails instead; ``0`` is pure Python.
``pip install`` goes through ``scripts/qengine_build.py`` (the build backend), which decides
when the variable is unset (a wheel is compiled where a C compiler is found, an editable
install is pure) and adds mypy to the build requirements of a build that compiles. Run
directly, or for metadata and the sdist, this file takes unset (or ``auto``) as ``0``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: The modules compiled: everything an add, get, reserve or ack runs inside the library.
COMPILED = [
    "queue_engine/codec.py",
    "queue_engine/backends/file/records.py",
    "queue_engine/backends/file/segments.py",
    "queue_engine/backends/file/view.py",
    "queue_engine/backends/file/store.py",
]
#: The shared library mypyc builds for them, kept inside the package (never a top-level name).
GROUP = "queue_engine._compiled"


def _warn(text: str) -> None:
    print(f"qengine: {text}", file=sys.stderr)


def _mode() -> str:
    value = os.environ.get("QENGINE_COMPILE", "0").strip().lower()
    if value not in ("", "auto", "0", "1", "require"):
        raise SystemExit(f"qengine: invalid QENGINE_COMPILE {value!r}: use 0, 1, require or auto (the default)")
    # auto here: a hook the backend does not decide for (metadata, sdist), which compiles nothing
    return value if value in ("1", "require") else "0"


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python when compiling fails (unless required).

    All or nothing: after a failure, whatever extension was already built is removed, so a
    module is never half compiled.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # the compiler, the linker, missing headers
            if _mode() == "require":
                raise
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.unlink(path)
            self.extensions = []  # not clear(): that list is also the distribution's, whose wheel layout is set
            _warn(f"compiling failed ({exc}); installing pure Python (same behaviour, slower)")


def ext_modules() -> list[Any]:
    mode = _mode()
    if mode == "0" or os.environ.get("QENGINE_LISTING_REQUIRES"):  # see scripts/qengine_build.py
        return []
    try:
        from mypyc.build import mypycify

        return list(mypycify(COMPILED, opt_level="3", group_name=GROUP))
    except (Exception, SystemExit) as exc:  # mypy missing, or mypyc refused the source
        if mode == "require":
            raise
        _warn(f"mypyc is unavailable or failed ({exc}); installing pure Python (same behaviour, slower)")
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
