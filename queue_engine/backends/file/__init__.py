"""The file backend: per-queue append-only logs on local disk. See :mod:`.store`."""

from . import store as _store
from .backend import FileQueueManager

__all__ = ["FileQueueManager", "COMPILED"]

#: Whether this install runs the compiled build of the hot path (what ``pip install`` builds
#: where a C compiler is found; see setup.py) rather than its pure-Python source. Both behave
#: the same.
COMPILED: bool = not (_store.__file__ or "").endswith(".py")
