"""PEP 517 build backend: setuptools', plus mypy as a build requirement when
``QENGINE_COMPILE`` asks for the compiled build (see setup.py). A pure build needs nothing more
than setuptools, so a plain ``pip install`` does not download mypy."""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the rest of the backend, unchanged)

#: The mypyc the compiled build was tested with (the whole suite passes compiled with it).
MYPYC = "mypy==2.4.1"


def _extra() -> list[str]:
    return [MYPYC] if os.environ.get("QENGINE_COMPILE", "0").strip().lower() in ("1", "require") else []


def _requires(get: Any, config_settings: dict[str, Any] | None) -> list[str]:
    # setuptools runs setup.py to list its requirements: tell it not to compile yet (mypy,
    # which this call is about to ask for, is not installed at this point).
    os.environ["QENGINE_LISTING_REQUIRES"] = "1"
    try:
        return list(get(config_settings)) + _extra()
    finally:
        del os.environ["QENGINE_LISTING_REQUIRES"]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)
