"""RedisAuditLog: the audit trail of the Redis backend, one stream per queue.

``<prefix>:{<prefix>:<queue>}:audit`` (the queue's hash tag) holds one entry per attempt,
field ``r`` = the record's JSON. Entry ids are the server's time when the attempt was
recorded (after it started), so a query reads from ``since`` (minus a margin for clocks of
other hosts) to the end and filters by ``started_at``. Each XADD trims entries older than
``[audit] retentionDays`` (``MINID ~``, approximate and cheap); :meth:`prune` trims exactly.
A stream survives ``destroy_queue``, as the file backend's audit files do.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ...audit import (
    DEFAULT_RETENTION_DAYS,
    AuditLog,
    AuditRecord,
    check_retention,
    register_audit_log,
    retention_from_config,
)
from ...errors import InvalidMessage
from ...manager import QueueManager
from .backend import redis_errors

if TYPE_CHECKING:
    from .backend import RedisQueueManager

__all__ = ["RedisAuditLog"]

#: Seconds a worker host's clock may run ahead of the server's and still have its records found.
CLOCK_MARGIN = 300.0
_PAGE = 1000


class RedisAuditLog(AuditLog):
    """Audit records in Redis streams, shared by every host using the server."""

    def __init__(self, manager: RedisQueueManager, retention_days: float = DEFAULT_RETENTION_DAYS) -> None:
        self.retention_days: float = check_retention(retention_days) or DEFAULT_RETENTION_DAYS
        self._manager = manager
        self._known: set[str] = set()

    @property
    def registry_key(self) -> str:
        """SET of the queues that have an audit stream (for :meth:`prune`)."""
        return f"{self._manager.prefix}:audit-queues"

    def key(self, queue: str) -> str:
        return f"{self._manager.base(queue)}:audit"

    def record(self, rec: AuditRecord) -> None:
        if not isinstance(rec, AuditRecord):
            raise InvalidMessage(f"expected an AuditRecord, got {type(rec).__name__}")
        try:
            text = json.dumps(rec.to_record(), allow_nan=False, separators=(",", ":"))  # ASCII: surrogates too
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f"audit record of {rec.uuid!r} is not JSON-serializable: {exc}") from None
        cutoff = int((time.time() - self.retention_days * 86400.0) * 1000)
        client = self._manager.client
        with redis_errors(self._manager.server):
            client.xadd(self.key(rec.queue), {"r": text}, minid=str(max(cutoff, 0)), approximate=True)
            if rec.queue not in self._known:
                client.sadd(self.registry_key, rec.queue)
                self._known.add(rec.queue)

    def _batches(self, queue: str, since: float | None, until: float | None) -> Iterable[Iterable[AuditRecord]]:
        start = "-" if since is None else str(max(0, math.floor((since - CLOCK_MARGIN) * 1000)))
        found: list[AuditRecord] = []
        client = self._manager.client
        with redis_errors(self._manager.server):
            while True:
                page: list[Any] = client.xrange(self.key(queue), min=start, count=_PAGE) or []
                for _entry_id, fields in page:
                    rec = _parse((fields or {}).get("r"))
                    if rec is not None:
                        found.append(rec)
                if len(page) < _PAGE:
                    break
                start = f"({page[-1][0]}"
        return [found]  # stream ids follow the server clock, not started_at: one batch

    def prune(self, now: float | None = None) -> int:
        cutoff = int(((time.time() if now is None else now) - self.retention_days * 86400.0) * 1000)
        client = self._manager.client
        removed = 0
        with redis_errors(self._manager.server):
            for queue in sorted(str(q) for q in client.smembers(self.registry_key)):
                removed += int(client.xtrim(self.key(queue), minid=str(max(cutoff, 0)), approximate=False))
        return removed


def _parse(text: str | None) -> AuditRecord | None:
    if not text:
        return None
    try:
        raw = json.loads(text)
        return AuditRecord.from_record(raw) if isinstance(raw, dict) else None
    except (ValueError, KeyError, TypeError, InvalidMessage):
        return None


def _redis_audit_log(manager: QueueManager) -> AuditLog:
    from .backend import RedisQueueManager

    if not isinstance(manager, RedisQueueManager):  # pragma: no cover - registered for queue_type "redis" only
        raise TypeError(f"a RedisAuditLog needs a RedisQueueManager, not {type(manager).__name__}")
    return RedisAuditLog(manager, retention_from_config(manager))


register_audit_log("redis", _redis_audit_log)
