"""The audit trail: one record per attempt, kept outside the messages, append-only.

Workers record every attempt (queue, uuid, alias, attempt number, host, pid, start time,
duration, outcome, error); ``qengine audit`` and :meth:`AuditLog.query` read them back.

Backends:

* :class:`FileAuditLog` for the file backend: JSON lines under
  ``<cache_root>/audit/<queue>/<YYYY-MM-DD>.jsonl``, one file per UTC day of the attempt's
  start. Each record is one ``os.write`` on an ``O_APPEND`` descriptor, so records written
  by concurrent processes never interleave. Day files older than ``[audit] retentionDays``
  (default 30) are deleted.
* :class:`MemoryAuditLog` for the in-process memory backend.

:func:`get_audit_log` returns the log that belongs to a queue manager.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time as _clock
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from . import codec
from .errors import ConfigurationError, InvalidMessage, StorageError
from .manager import QueueManager
from .message import to_epoch, validate_queue_name
from .permissions import PRIVATE, Modes

__all__ = [
    "OUTCOMES",
    "AuditLog",
    "AuditRecord",
    "FileAuditLog",
    "MemoryAuditLog",
    "DEFAULT_RETENTION_DAYS",
    "check_retention",
    "get_audit_log",
    "register_audit_log",
    "retention_from_config",
]

logger = logging.getLogger(__name__)

#: Outcomes of one attempt: it succeeded, it failed and will be retried, it failed for good.
OUTCOMES = ("success", "retry", "failed")
DEFAULT_RETENTION_DAYS = 30.0
#: Storage format version, the first key of every stored line (see FileAuditLog._parse_line).
_FORMAT = 1
_LINE_START = b'{"v":'
_DAY_FILE = re.compile(r"(\d{4})-(\d{2})-(\d{2})\.jsonl")


@dataclass(frozen=True)
class AuditRecord:
    """One attempt at one message.

    ``started_at`` is epoch seconds, ``duration`` seconds. ``outcome`` is one of
    :data:`OUTCOMES`. ``extra`` holds JSON-safe details that depend on the job (a webhook
    adds listener, status code, response excerpt).
    """

    queue: str
    uuid: str
    alias: str | None
    attempt: int
    outcome: str
    started_at: float
    duration: float
    host: str
    pid: int
    worker: str
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_queue_name(self.queue)
        if self.outcome not in OUTCOMES:
            raise InvalidMessage(f"invalid audit outcome {self.outcome!r}; valid: {', '.join(OUTCOMES)}")
        if not isinstance(self.uuid, str) or not self.uuid:
            raise InvalidMessage(f"invalid audit uuid {self.uuid!r}: a non-empty string")
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 1:
            raise InvalidMessage(f"invalid audit attempt {self.attempt!r}: a whole number >= 1")
        for name in ("started_at", "duration"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidMessage(f"invalid audit {name} {value!r}: a finite number of seconds")
        if self.duration < 0:
            raise InvalidMessage(f"invalid audit duration {self.duration!r}: seconds >= 0")

    @property
    def started(self) -> datetime:
        """``started_at`` as a timezone-aware (UTC) datetime."""
        return datetime.fromtimestamp(self.started_at, tz=timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view with ISO 8601 times (UTC), as printed by ``qengine audit --json``."""
        return {
            "queue": self.queue,
            "uuid": self.uuid,
            "alias": self.alias,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "started_at": self.started.isoformat(),
            "finished_at": datetime.fromtimestamp(self.started_at + self.duration, tz=timezone.utc).isoformat(),
            "duration": self.duration,
            "host": self.host,
            "pid": self.pid,
            "worker": self.worker,
            "error": self.error,
            "extra": dict(self.extra),
        }

    def to_record(self) -> dict[str, Any]:
        """The stored form: epoch seconds, format version first."""
        return {
            "v": _FORMAT,
            "queue": self.queue,
            "uuid": self.uuid,
            "alias": self.alias,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "started_at": self.started_at,
            "duration": self.duration,
            "host": self.host,
            "pid": self.pid,
            "worker": self.worker,
            "error": self.error,
            "extra": self.extra,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AuditRecord:
        """Rebuild a record stored with :meth:`to_record`; raises InvalidMessage/KeyError/TypeError."""
        return cls(
            queue=record["queue"],
            uuid=record["uuid"],
            alias=record.get("alias"),
            attempt=record["attempt"],
            outcome=record["outcome"],
            started_at=record["started_at"],
            duration=record["duration"],
            host=record.get("host", ""),
            pid=record.get("pid", 0),
            worker=record.get("worker", ""),
            error=record.get("error"),
            extra=dict(record.get("extra") or {}),
        )

    def matches(self, *, uuid: str | None, alias: str | None, since: float | None, until: float | None) -> bool:
        """True when the record meets every given criterion (None means any)."""
        return (
            (uuid is None or self.uuid == uuid)
            and (alias is None or self.alias == alias)
            and (since is None or self.started_at >= since)
            and (until is None or self.started_at <= until)
        )


class AuditLog:
    """Where attempts are recorded. Subclasses implement the three methods below.

    Contract:

    * :meth:`record` appends one record durably enough to survive the recording process
      being killed right after it returns (not necessarily a power loss). It never blocks
      other writers for long, and concurrent writers (threads or processes) never corrupt
      each other's records. It raises :class:`StorageError` when the record cannot be kept.
    * :meth:`query` returns the records of ``queue`` whose ``started_at`` lies within
      ``[since, until]`` and that match ``uuid`` / ``alias``, in ``started_at`` order (ties
      in the order recorded); ``limit`` keeps the first (oldest) ``limit`` of them. A queue
      with no records (or that never existed) gives ``[]``.
    * :meth:`prune` drops records older than the retention and returns how many storage
      units (files, records) it removed.
    """

    def record(self, rec: AuditRecord) -> None:
        raise NotImplementedError

    def query(
        self,
        queue: str,
        *,
        uuid: str | None = None,
        alias: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """See the class docstring. Subclasses provide :meth:`_batches`."""
        self._check_query(queue, limit, since, until)
        lo = None if since is None else to_epoch(since)
        hi = None if until is None else to_epoch(until)
        out: list[AuditRecord] = []
        for batch in self._batches(queue, lo, hi):
            found = [r for r in batch if r.matches(uuid=uuid, alias=alias, since=lo, until=hi)]
            found.sort(key=lambda r: r.started_at)  # stable: ties keep the order recorded
            out.extend(found)
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    def _batches(self, queue: str, since: float | None, until: float | None) -> Iterable[Iterable[AuditRecord]]:
        """Candidate records of ``queue`` for [since, until] (epoch seconds or None), in batches.

        Every record of a batch started after every record of the batches before it, so
        :meth:`query` can stop once it has ``limit`` records. Extra records are fine (they
        are filtered); missing ones are not.
        """
        raise NotImplementedError

    def prune(self, now: float | None = None) -> int:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Idempotent."""

    @staticmethod
    def _check_query(queue: str, limit: int | None, since: datetime | None, until: datetime | None) -> None:
        validate_queue_name(queue)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidMessage(f"invalid limit {limit!r}: a whole number >= 0")
        for name, value in (("since", since), ("until", until)):
            if value is not None and not isinstance(value, datetime):
                raise InvalidMessage(f"invalid {name} {value!r}: a datetime is required")


def check_retention(retention_days: float | None) -> float | None:
    if retention_days is None:
        return None
    if isinstance(retention_days, bool) or not isinstance(retention_days, (int, float)) or not (
        math.isfinite(retention_days) and retention_days > 0
    ):
        raise ConfigurationError(f"invalid audit retention {retention_days!r}: a number of days > 0")
    return float(retention_days)


class MemoryAuditLog(AuditLog):
    """Records kept in this process, for the memory backend and tests. Thread-safe.

    ``retention_days`` None keeps everything; otherwise :meth:`prune` drops records that
    started more than that long ago.
    """

    def __init__(self, retention_days: float | None = None) -> None:
        self.retention_days = check_retention(retention_days)
        self._records: dict[str, list[AuditRecord]] = {}
        self._lock = threading.Lock()

    def record(self, rec: AuditRecord) -> None:
        if not isinstance(rec, AuditRecord):
            raise InvalidMessage(f"expected an AuditRecord, got {type(rec).__name__}")
        with self._lock:
            self._records.setdefault(rec.queue, []).append(rec)

    def _batches(self, queue: str, since: float | None, until: float | None) -> Iterable[Iterable[AuditRecord]]:
        with self._lock:
            return [list(self._records.get(queue, ()))]

    def prune(self, now: float | None = None) -> int:
        if self.retention_days is None:
            return 0
        cutoff = (_now() if now is None else now) - self.retention_days * 86400.0
        removed = 0
        with self._lock:
            for queue, records in self._records.items():
                kept = [r for r in records if r.started_at >= cutoff]
                removed += len(records) - len(kept)
                self._records[queue] = kept
        return removed


_STR_OR_NONE = (str, type(None))
_NUMBER = (int, float)


def _line(rec: AuditRecord) -> str:
    """``codec.dumps(rec.to_record())``, formatted directly when every field has its usual
    type (a worker writes one record per message; the generic encoder costs twice as much)."""
    if not (
        rec.alias.__class__ in _STR_OR_NONE
        and rec.error.__class__ in _STR_OR_NONE
        and rec.uuid.__class__ is str
        and rec.host.__class__ is str
        and rec.worker.__class__ is str
        and rec.pid.__class__ is int
        and rec.attempt.__class__ is int
        and rec.started_at.__class__ in _NUMBER
        and rec.duration.__class__ in _NUMBER
    ):
        return codec.dumps(rec.to_record())
    alias = codec.string_or_null(rec.alias)
    error = codec.string_or_null(rec.error)
    extra = "{}" if rec.extra.__class__ is dict and not rec.extra else codec.dumps(rec.extra)
    # queue (a valid queue name) and outcome (one of OUTCOMES) need no escaping
    return (
        f'{{"v":{_FORMAT},"queue":"{rec.queue}","uuid":{codec.string(rec.uuid)},"alias":{alias},'
        f'"attempt":{rec.attempt!r},"outcome":"{rec.outcome}","started_at":{rec.started_at!r},'
        f'"duration":{rec.duration!r},"host":{codec.string(rec.host)},"pid":{rec.pid!r},'
        f'"worker":{codec.string(rec.worker)},"error":{error},"extra":{extra}}}'
    )


def _now() -> float:
    return _clock.time()


def _utc_day(epoch: float) -> date:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).date()


class FileAuditLog(AuditLog):
    """JSON lines under ``root/<queue>/<YYYY-MM-DD>.jsonl`` (UTC day of ``started_at``).

    Safe for any number of writing processes on a local filesystem: a record is a single
    ``os.write`` of one line on an ``O_APPEND`` descriptor. Records are not fsynced: they
    survive the death of the process, not a power loss. A line torn by a writer killed
    mid-write (or a full disk) is skipped when reading; a record appended after it is
    still found. Files are created 0600 and directories 0700, or with ``modes`` (from
    ``[queue] fileMode``).

    Retention: :meth:`prune` deletes day files whose whole day ended more than
    ``retention_days`` ago; :meth:`record` calls it at most once per UTC day per instance.
    """

    def __init__(
        self, root: str | os.PathLike[str], retention_days: float = DEFAULT_RETENTION_DAYS, modes: Modes = PRIVATE
    ) -> None:
        self.root = Path(root)
        self.modes = modes
        self.retention_days: float = check_retention(retention_days) or DEFAULT_RETENTION_DAYS
        self._pruned_day = -1  # the UTC day number (epoch // 86400) of the last prune
        self._paths: dict[tuple[str, int], str] = {}  # (queue, UTC day number) -> day file
        self._lock = threading.Lock()

    # -- writing ----------------------------------------------------------------------
    def _path(self, queue: str, dayno: int) -> str:
        """The day file of ``queue`` for UTC day number ``dayno`` (epoch seconds // 86400)."""
        key = (queue, dayno)
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) >= 256:  # a worker meets few queues and days: bound the memory
                self._paths.clear()
            day = date(1970, 1, 1) + timedelta(days=dayno)
            path = self._paths[key] = os.path.join(self.root, queue, f"{day.isoformat()}.jsonl")
        return path

    def record(self, rec: AuditRecord) -> None:
        if not isinstance(rec, AuditRecord):
            raise InvalidMessage(f"expected an AuditRecord, got {type(rec).__name__}")
        try:
            line = _line(rec)
            try:
                data = line.encode("utf-8") + b"\n"
            except UnicodeEncodeError:  # lone surrogates (e.g. from a decoded filename): escape them
                data = json.dumps(rec.to_record(), allow_nan=False, separators=(",", ":")).encode("ascii") + b"\n"
        except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: a cycle in ``extra``
            raise InvalidMessage(f"audit record of {rec.uuid!r} is not JSON-serializable: {exc}") from None
        self._maybe_prune()
        path = self._path(rec.queue, int(rec.started_at // 86400))  # POSIX time: UTC days of 86400 s
        try:
            fd = self._open_append(path)
        except OSError as exc:
            raise StorageError(f"cannot open audit file {path!r}: {exc.strerror or exc}") from None
        try:
            written = os.write(fd, data)
        except OSError as exc:
            raise StorageError(f"cannot write audit file {path!r}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if written != len(data):  # full disk: the torn line is skipped by readers
            raise StorageError(f"short write to audit file {path!r}: {written} of {len(data)} bytes")

    def _open_append(self, path: str) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            return self.modes.open(path, flags)
        except FileNotFoundError:
            self.modes.mkdir(Path(path).parent, parents=True)
            return self.modes.open(path, flags)

    def _maybe_prune(self) -> None:
        today = int(_now() // 86400)
        if self._pruned_day == today:  # the usual case, without the lock: an int compare
            return
        with self._lock:
            if self._pruned_day == today:
                return
            self._pruned_day = today
        try:
            self.prune()
        except (OSError, StorageError) as exc:  # retention must never cost a record
            logger.warning("audit retention at %s failed: %s", self.root, exc)

    # -- reading ----------------------------------------------------------------------
    def _day_files(self, queue: str) -> list[tuple[date, Path]]:
        try:
            names = os.listdir(self.root / queue)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list audit directory {str(self.root / queue)!r}: {exc.strerror}") from None
        days = []
        for name in names:
            match = _DAY_FILE.fullmatch(name)
            if match is None:
                continue
            try:
                day = date(int(match[1]), int(match[2]), int(match[3]))
            except ValueError:
                continue
            days.append((day, self.root / queue / name))
        return sorted(days)

    @staticmethod
    def _parse_line(line: bytes) -> AuditRecord | None:
        """The record on ``line``, or None for a torn or foreign line.

        A writer killed mid-line leaves a fragment without a newline; the next record is then
        appended to it. Every record starts with ``{"v":``, so the last such start is tried too.
        """
        for start in (0, line.rfind(_LINE_START)):
            if start < 0:
                continue
            try:
                raw = json.loads(line[start:])
                if isinstance(raw, dict) and raw.get("v") == _FORMAT:
                    return AuditRecord.from_record(raw)
            except (ValueError, KeyError, TypeError, InvalidMessage):
                pass
        return None

    def _read(self, path: Path) -> list[AuditRecord]:
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:  # pruned meanwhile
            return []
        except OSError as exc:
            raise StorageError(f"cannot read audit file {str(path)!r}: {exc.strerror or exc}") from None
        records = []
        for line in blob.split(b"\n"):
            if line.strip():
                rec = self._parse_line(line)
                if rec is not None:
                    records.append(rec)
        return records

    def _batches(self, queue: str, since: float | None, until: float | None) -> Iterable[Iterable[AuditRecord]]:
        # A day file holds exactly the records that started on that (UTC) day.
        first = None if since is None else _utc_day(since)
        last = None if until is None else _utc_day(until)
        for day, path in self._day_files(queue):
            if (first is None or day >= first) and (last is None or day <= last):
                yield self._read(path)

    # -- retention --------------------------------------------------------------------
    def prune(self, now: float | None = None) -> int:
        """Delete day files whose day ended more than ``retention_days`` ago; return how many."""
        cutoff = (_now() if now is None else now) - self.retention_days * 86400.0
        try:
            queues = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError(f"cannot list audit directory {str(self.root)!r}: {exc.strerror}") from None
        removed = 0
        for queue in sorted(queues):
            if not (self.root / queue).is_dir():
                continue
            for day, path in self._day_files(queue):
                day_end = datetime.combine(day + timedelta(days=1), time(), tzinfo=timezone.utc).timestamp()
                if day_end <= cutoff:
                    try:
                        path.unlink()
                        removed += 1
                    except FileNotFoundError:  # another process pruned it first
                        pass
        return removed


# -- which log belongs to a manager -------------------------------------------------------
def retention_from_config(manager: QueueManager) -> float:
    config = manager.config
    parser = config.parser
    source = str(config.source) if config.source is not None else "configuration"
    if not parser.has_section("audit"):
        return DEFAULT_RETENTION_DAYS
    value: float = DEFAULT_RETENTION_DAYS
    for key, raw in parser.items("audit"):
        if key.lower() != "retentiondays":
            raise ConfigurationError(f"{source}: unknown key [audit] {key}; valid: retentionDays")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{source}: [audit] {key} = {raw!r} is not a number of days") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigurationError(f"{source}: [audit] {key} = {raw!r} must be a finite number of days > 0")
    return value


def _file_audit_log(manager: QueueManager) -> AuditLog:
    return FileAuditLog(
        Path(manager.config.cache_root) / "audit", retention_from_config(manager), Modes(manager.config.file_mode)
    )


def _memory_audit_log(manager: QueueManager) -> AuditLog:
    return MemoryAuditLog()


#: Backend ``queue_type`` (the manager class attribute) -> builder of its audit log.
_BUILDERS: dict[str, Callable[[QueueManager], AuditLog]] = {
    "file": _file_audit_log,
    "cache": _file_audit_log,
    "memory": _memory_audit_log,
}
_logs: weakref.WeakKeyDictionary[QueueManager, AuditLog] = weakref.WeakKeyDictionary()
_logs_lock = threading.Lock()


def register_audit_log(queue_type: str, builder: Callable[[QueueManager], AuditLog]) -> None:
    """Make managers whose class has ``queue_type`` use ``builder(manager)`` for their audit log."""
    _BUILDERS[queue_type.lower()] = builder


def get_audit_log(manager: QueueManager) -> AuditLog:
    """The audit log of ``manager``, built once per manager instance.

    The file backend's lives under ``<cache_root>/audit`` with ``[audit] retentionDays``; the
    memory backend's lives in the manager's process. Raises :class:`ConfigurationError` for a
    bad retention setting or a backend that has no audit log.
    """
    with _logs_lock:
        log = _logs.get(manager)
        if log is None:
            kind = (type(manager).queue_type or manager.config.queue_type).lower()
            builder = _BUILDERS.get(kind)
            if builder is None:
                raise ConfigurationError(
                    f"queue type {kind!r} has no audit log yet; audit logs exist for: {', '.join(sorted(_BUILDERS))}"
                )
            log = builder(manager)
            _logs[manager] = log
        return log
