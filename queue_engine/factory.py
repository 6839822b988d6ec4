"""QueueFactory: picks the backend named by ``queueType`` and builds its manager."""

from __future__ import annotations

import importlib
import os
from typing import Any

from .config import Config, load_config
from .errors import ConfigurationError
from .manager import QueueManager

__all__ = ["QueueFactory"]


class QueueFactory:
    """Builds queue managers. Backends register here by name, as ``module:Class``."""

    _backends: dict[str, str] = {
        "file": "queue_engine.backends.file:FileQueueManager",
        "cache": "queue_engine.backends.file:FileQueueManager",  # the original's name
        "memory": "queue_engine.backends.memory:MemoryQueueManager",  # in-process, for tests
        "redis": "queue_engine.backends.redis:RedisQueueManager",
    }
    #: Extra a backend needs, named in the error when its client library is missing.
    _extras: dict[str, str] = {"redis": "redis"}

    @classmethod
    def queue_types(cls) -> list[str]:
        """Names accepted as ``queueType``."""
        return sorted(cls._backends)

    @classmethod
    def register(cls, name: str, target: str) -> None:
        """Make ``queueType = name`` build ``target`` (``"package.module:Class"``)."""
        cls._backends[name.lower()] = target

    @classmethod
    def get_queue_manager(cls, config: str | os.PathLike[str] | Config | None = None, **settings: Any) -> QueueManager:
        """Read the configuration (see :mod:`queue_engine.config`) and return its manager.

        Keyword settings override the file, e.g. ``queue_type="file", cache_root="/srv/q"``.
        Raises :class:`ConfigurationError` for an unknown queue type, listing the valid ones.
        """
        resolved = load_config(config, **settings)
        target = cls._backends.get(resolved.queue_type)
        if target is None:  # pragma: no cover - load_config already validated it
            raise ConfigurationError(
                f"unknown queue type {resolved.queue_type!r}; valid: {', '.join(cls.queue_types())}"
            )
        module_name, _, class_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            extra = cls._extras.get(resolved.queue_type)
            if extra is None or exc.name == module_name:
                raise
            raise ConfigurationError(
                f"queueType = {resolved.queue_type} needs the {exc.name!r} package: pip install 'qengine[{extra}]'"
            ) from None
        backend: type[QueueManager] = getattr(module, class_name)
        return backend(resolved)
