"""The file backend: per-queue append-only logs on local disk. See :mod:`.store`."""

from .backend import FileQueueManager

__all__ = ["FileQueueManager"]
