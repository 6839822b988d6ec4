"""The contingency spool: messages the backend could not take, kept locally until requeued.

When the backend cannot take a message (Redis down, a full disk, a lock that cannot be had
in time), :class:`~queue_engine.jobs.Queue` puts it here instead of failing the caller, as
the original's contingency flow did; ``[queue] brokerActive = false`` spools every message
on purpose (the original's ``rabbit_active``). ``qengine requeue --pending`` (or
:meth:`Spool.requeue`) later moves them into their queues.

Layout of the spool directory (``[queue] spoolDir``)::

    <epoch_ns>-<uuid>.json         one pending message (name order = spool order = FIFO)
    processed/<epoch_ns>-<uuid>.json   requeued, kept for audit (delete them when you like)
    .tmp-*                         a write in progress, or torn by a crash: ignored

Each file is written to a temporary name, fsynced, renamed and the directory fsynced, so a
pending file is either complete or absent. Files are 0600 and directories 0700: a spooled
message holds the caller's data.

A requeue adds each message with the uuid it was given when spooled
(:meth:`~queue_engine.manager.QueueManager.import_messages`, which skips a uuid the queue
already has), then moves the file to ``processed/``. A crash between the two therefore
cannot add the message twice, as long as the first copy is still pending or failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs

from .config import APP_NAME, Config, parse_bool
from .errors import ConfigurationError, QueueEngineError, StorageError
from .manager import QueueManager
from .message import QueueMessage, encode_data, to_epoch, validate_queue_name
from .permissions import PRIVATE, Modes

__all__ = ["RequeueResult", "Spool", "SpooledMessage", "broker_active", "spool_dir"]

logger = logging.getLogger("qengine.contingency")

_NAME = re.compile(r"(\d{20})-([0-9a-f-]{36})\.json")
_FORMAT = 1


def broker_active(config: Config | None) -> bool:
    """``[queue] brokerActive`` (default true): false means every message is spooled on purpose."""
    raw = None if config is None else config.setting("queue", "brokerActive")
    if raw is None:
        return True
    assert config is not None
    return parse_bool(config.where("queue", "brokerActive"), raw, hint="; valid: true, false (or 1, 0, yes, no)")


def spool_dir(config: Config) -> Path:
    """``[queue] spoolDir``; default ``<cacheRoot>/spool`` for the file backend, else
    ``<user data dir>/qengine/spool``. A relative path is relative to the config file's folder."""
    raw = config.setting("queue", "spoolDir")
    if raw is None:
        if config.queue_type in ("file", "cache"):
            return Path(config.cache_root) / "spool"
        return Path(platformdirs.user_data_dir(APP_NAME)) / "spool"
    text = raw.strip()
    if not text or "\x00" in text:
        raise ConfigurationError(f"{config.where('queue', 'spoolDir')} = {raw!r} is not a usable path")
    path = Path(os.path.expanduser(os.path.expandvars(text)))
    if not path.is_absolute():
        base = config.source.parent if config.source is not None else Path.cwd()
        path = (base / path).resolve()
    return path


@dataclass(frozen=True)
class SpooledMessage:
    """One spooled message: its queue, the message (uuid kept), why and when it was spooled."""

    queue: str
    message: QueueMessage
    reason: str
    spooled_at: float
    path: Path = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view with ISO 8601 times."""
        return {
            "queue": self.queue,
            "uuid": self.message.uuid,
            "alias": self.message.alias,
            "reason": self.reason,
            "spooled_at": datetime.fromtimestamp(self.spooled_at, tz=timezone.utc).isoformat(),
            "message": self.message.to_dict(),
        }


@dataclass
class RequeueResult:
    """What :meth:`Spool.requeue` did: messages moved, and those that stayed (with the error)."""

    moved: list[SpooledMessage] = field(default_factory=list)
    stayed: list[tuple[SpooledMessage, str]] = field(default_factory=list)


class Spool:
    """A directory of spooled messages. Safe for several threads and processes at once."""

    def __init__(self, directory: str | os.PathLike[str], modes: Modes = PRIVATE) -> None:
        self.directory = Path(directory)
        self.processed_dir = self.directory / "processed"
        self.modes = modes

    @classmethod
    def from_config(cls, config: Config) -> Spool:
        """The spool at ``[queue] spoolDir`` (see :func:`spool_dir`)."""
        return cls(spool_dir(config), Modes(config.file_mode))

    # -- writing ------------------------------------------------------------------------
    def put(self, queue: str, message: QueueMessage, reason: str) -> str:
        """Spool ``message`` for ``queue`` durably; return its uuid (minted if unset).

        Sets ``message.uuid`` and ``message.inserted_at`` (when unset), as an add would.
        Raises :class:`StorageError` if the spool itself cannot be written.
        """
        validate_queue_name(queue)
        message.validate()
        if not message.uuid:
            message.uuid = str(uuidlib.uuid4())
        if message.inserted_at is None:
            message.inserted_at = datetime.now(timezone.utc)
        now_ns = time.time_ns()
        record = {
            "v": _FORMAT,
            "queue": queue,
            "reason": str(reason),
            "spooled_at": now_ns / 1e9,
            "message": message.to_record(),
        }
        text = encode_data(record)
        name = f"{now_ns:020d}-{uuidlib.UUID(message.uuid) if _is_uuid(message.uuid) else uuidlib.uuid4()}.json"
        try:
            self._write(self.directory, name, text.encode("utf-8"))
        except OSError as exc:
            raise StorageError(f"cannot write to the contingency spool {str(self.directory)!r}: {exc}") from None
        return message.uuid

    def _ensure_dir(self, directory: Path) -> None:
        self.modes.mkdir(directory, parents=True)

    def _write(self, directory: Path, name: str, data: bytes) -> None:
        self._ensure_dir(directory)
        tmp = directory / f".tmp-{uuidlib.uuid4().hex}"
        fd = self.modes.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, directory / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)

    # -- reading ------------------------------------------------------------------------
    def _names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if _NAME.fullmatch(n))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list the contingency spool {str(self.directory)!r}: {exc}") from None

    def _read(self, name: str) -> SpooledMessage | None:
        path = self.directory / name
        try:
            record = json.loads(path.read_bytes())
            return SpooledMessage(
                queue=validate_queue_name(record["queue"]),
                message=QueueMessage.from_record(record["message"], queue=record["queue"]),
                reason=str(record.get("reason", "")),
                spooled_at=float(record["spooled_at"]),
                path=path,
            )
        except FileNotFoundError:
            return None  # requeued by another process meanwhile
        except (OSError, ValueError, KeyError, TypeError, QueueEngineError) as exc:
            logger.warning("contingency spool: skipping unreadable file %s: %s", path, exc)
            return None

    def pending(
        self, queue: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> list[SpooledMessage]:
        """Spooled messages not yet requeued, oldest first; only ``queue``'s when given, only
        those spooled within [since, until] (inclusive) when given."""
        return list(self._iter(queue, since, until))

    def _iter(self, queue: str | None, since: datetime | None, until: datetime | None) -> Iterator[SpooledMessage]:
        if queue is not None:
            validate_queue_name(queue)
        low = None if since is None else int(to_epoch(since) * 1e9)
        high = None if until is None else int(to_epoch(until) * 1e9)
        for name in self._names():
            stamp = int(name[:20])  # the file name carries the time: no need to open it to filter
            if (low is not None and stamp < low) or (high is not None and stamp > high):
                continue
            item = self._read(name)
            if item is not None and (queue is None or item.queue == queue):
                yield item

    def count(self, queue: str | None = None) -> int:
        """How many messages are spooled (for ``queue`` when given)."""
        return len(self.pending(queue))

    # -- requeueing ---------------------------------------------------------------------
    def requeue(
        self,
        manager: QueueManager,
        queue: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> RequeueResult:
        """Add the selected spooled messages to their queues (oldest first, uuids kept) and
        mark each processed. A message that still cannot be added stays spooled and is
        listed in ``stayed`` with the error; the others are still moved."""
        result = RequeueResult()
        for item in self._iter(queue, since, until):
            try:
                manager.import_messages(item.queue, [item.message])
            except QueueEngineError as exc:
                result.stayed.append((item, str(exc)))
                continue
            self.mark_processed(item)
            result.moved.append(item)
        return result

    def mark_processed(self, item: SpooledMessage) -> None:
        """Move ``item``'s file to ``processed/`` so no later requeue sees it."""
        try:
            self._ensure_dir(self.processed_dir)
            os.rename(item.path, self.processed_dir / item.path.name)
        except FileNotFoundError:
            return  # another process marked it
        except OSError as exc:
            raise StorageError(f"cannot mark spooled message {item.message.uuid} processed: {exc}") from None
        _fsync_dir(self.directory)
        _fsync_dir(self.processed_dir)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuidlib.UUID(text)) == text
    except ValueError:
        return False


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)
