"""RedisQueueManager: the queue contract on a Redis server shared by many hosts.

Key layout (``P`` is ``redisPrefix``, ``Q`` the queue; ``{P:Q}`` is a Redis Cluster hash tag,
so every key of one queue lives in one slot and a Lua script may touch them all)::

    P:{P:Q}:status     HASH  created, modified, attrs (JSON), li_* / lp_* (last inserted / processed)
    P:{P:Q}:seq        STRING insertion counter (queue order)
    P:{P:Q}:pending    ZSET  uuid -> seq, every pending message (ready, deferred, disabled, in flight)
    P:{P:Q}:ready      ZSET  uuid -> seq, eligible now (the lowest score is handed out first)
    P:{P:Q}:deferred   ZSET  uuid -> due time (us): deferred_until or a delayed release
    P:{P:Q}:disabled   ZSET  uuid -> seq
    P:{P:Q}:inflight   ZSET  uuid -> lease deadline (us)
    P:{P:Q}:failed     ZSET  uuid -> failed_at (us), the failed store
    P:{P:Q}:alias      HASH  alias -> uuid of the pending message holding it
    P:{P:Q}:m:<uuid>   HASH  one message (fields in :mod:`.scripts`)
    P:{P:Q}:audit      STREAM the audit trail (see :mod:`.audit`)
    P:queues           SET   queue names, for list_queues (outside the tag: see _register)

Every change is one Lua script (:mod:`.scripts`), with the server's clock. Lookups by uuid
and alias are hash reads; nothing on the hot path scans keys.
"""

from __future__ import annotations

import json
import threading
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, NoReturn
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry

from ...config import Config
from ...errors import (
    ConfigurationError,
    DuplicateAlias,
    LeaseLost,
    LockTimeout,
    MessageInFlight,
    MessageNotFound,
    QueueNotFound,
    StorageError,
)
from ...manager import MessageFilter, OnDuplicate, QueueManager
from ...message import QueueMessage, encode_data, from_epoch
from ...status import FailedMessage, MessageRef, QueueStatus
from .scripts import KEY_NAMES, SCRIPTS

__all__ = ["RedisQueueManager", "describe_server", "redis_errors"]

#: Tries of a command after a connection error or timeout (the first try included), and backoff.
_RETRIES = 2
_PAGE = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _epoch_us(value: datetime) -> int:
    """Exact integer microseconds since the epoch (a naive value is local time)."""
    if value.tzinfo is None:
        value = value.astimezone()
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _us_text(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def _clean(text: str) -> str:
    """Text Redis can store as UTF-8 (lone surrogates replaced)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def describe_server(config: Config) -> str:
    """The server a config points at, for error messages: never with the password."""
    if config.redis_url:
        parts = urlsplit(config.redis_url)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        host = parts.hostname or "localhost"
        port = parts.port or 6379
        db = parts.path.strip("/") or "0"
        return f"{parts.scheme}://{host}:{port}/{db}"
    return f"redis://{config.redis_host or 'localhost'}:{config.redis_port or 6379}/{config.redis_db or 0}"


@contextmanager
def redis_errors(server: str) -> Iterator[None]:
    """Map redis-py exceptions to the error tree, naming ``server``. The one place that does it."""
    try:
        yield
    except redis.exceptions.AuthenticationError as exc:
        raise StorageError(f"redis server {server} refused the credentials: {exc}") from None
    except redis.exceptions.TimeoutError as exc:
        raise StorageError(f"redis server {server} did not answer in time: {exc}") from None
    except redis.exceptions.ConnectionError as exc:
        raise StorageError(f"redis server {server} is unreachable: {exc}") from None
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith("BUSY"):
            raise LockTimeout(f"redis server {server} is busy running a script: {exc}") from None
        raise StorageError(f"redis server {server} refused a command: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise StorageError(f"redis server {server} failed: {exc}") from None


def connect(config: Config) -> redis.Redis:
    """A client with bounded timeouts and retries: a down server is an error, never a hang."""
    options: dict[str, Any] = {
        "socket_timeout": config.redis_timeout,
        "socket_connect_timeout": config.redis_timeout,
        # Retry a refused or reset connection only: after a timeout the script may have run,
        # and running ack, take or add_failed twice is not the same as running them once.
        "retry": Retry(
            ExponentialBackoff(cap=0.5, base=0.05), _RETRIES, supported_errors=(redis.exceptions.ConnectionError,)
        ),
        "decode_responses": True,
        "client_name": "qengine",
    }
    if config.redis_url:
        try:
            return redis.Redis.from_url(config.redis_url, **options)
        except ValueError as exc:  # e.g. a port out of range; the URL may hold a password
            raise ConfigurationError(f"redisUrl is not a usable Redis URL: {str(exc).split(':')[0]}") from None
    return redis.Redis(
        host=config.redis_host or "localhost",
        port=config.redis_port or 6379,
        db=config.redis_db or 0,
        username=config.redis_username,
        password=config.redis_password,
        **options,
    )


class RedisQueueManager(QueueManager):
    """Queues on a Redis server (``queueType = redis``); any number of hosts may share them.

    FIFO, aliases, leases and the failed store behave exactly as on the file backend.
    Leases are the only cross-host liveness signal: a reservation whose holder died comes
    back when its lease ends. Thread-safe (redis-py's connection pool) and fork-safe.
    """

    queue_type = "redis"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.prefix = config.redis_prefix
        self.server = describe_server(config)
        self.client = connect(config)
        self._scripts: dict[str, Script] = {name: self.client.register_script(src) for name, src in SCRIPTS.items()}
        self._registered: set[str] = set()
        self._lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------
    def base(self, queue: str) -> str:
        """Common start of every key of ``queue``: ``<prefix>:{<prefix>:<queue>}``."""
        return f"{self.prefix}:{{{self.prefix}:{queue}}}"

    @property
    def registry_key(self) -> str:
        return f"{self.prefix}:queues"

    def _run(self, name: str, queue: str, *args: Any) -> Any:
        base = self.base(queue)
        keys = [f"{base}:{suffix}" for suffix in KEY_NAMES]
        with redis_errors(self.server):
            return self._scripts[name](keys=keys, args=[f"{base}:m:", *args])

    def _call(self, function: Any, *args: Any) -> Any:
        with redis_errors(self.server):
            return function(*args)

    def _register(self, queue: str, created: bool | None = None) -> None:
        """Keep ``queue`` in the registry set used by :meth:`list_queues`.

        The set is another key (another cluster slot), so this is the one step not atomic
        with the change itself. It is added before the first write of a manager to a queue
        (a crash in between leaves a name whose queue does not exist yet: list_queues skips
        it) and again after a write that created the queue (in case a concurrent destroy
        removed the name meanwhile).
        """
        if created is None:
            if queue in self._registered:
                return
        elif not created:
            return
        self._call(self.client.sadd, self.registry_key, queue)
        with self._lock:
            self._registered.add(queue)

    def close(self) -> None:
        with self._lock:
            client = getattr(self, "client", None)
        if client is not None:
            try:
                client.close()
            except redis.exceptions.RedisError:  # pragma: no cover - closing never needs the server
                pass

    def _missing(self, queue: str) -> NoReturn:
        raise QueueNotFound(f"queue {queue!r} does not exist")

    @staticmethod
    def _record_text(message: QueueMessage) -> str:
        """The stored record: to_record() without uuid and inserted_at (kept in their own fields)."""
        data = encode_data(message.data)
        record = message.to_record()
        del record["uuid"], record["inserted_at"], record["data"]
        head = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return f'{head[:-1]},"data":{data}}}'

    @staticmethod
    def _placement(message: QueueMessage) -> tuple[str, str]:
        due = "" if message.deferred_until is None else str(_epoch_us(message.deferred_until))
        return ("1" if message.disabled else "0", due)

    @staticmethod
    def _message(queue: str, uid: str, rec: str, ins: str, att: str | None) -> QueueMessage:
        record = json.loads(rec)
        record["uuid"] = uid
        record["inserted_at"] = float(ins)
        return QueueMessage.from_record(record, attempts=int(att or 0), queue=queue)

    @staticmethod
    def _errors(text: str | None) -> list[str]:
        if not text:
            return []
        value = json.loads(text)
        return [str(e) for e in value] if isinstance(value, list) else []  # cjson writes {} for []

    def _failed(self, queue: str, fields: list[Any]) -> FailedMessage:
        uid, rec, ins, att, err, fat = fields[:6]
        return FailedMessage(
            self._message(queue, uid, rec, ins, att),
            datetime.fromtimestamp(float(fat) / 1e6, tz=timezone.utc),
            self._errors(err),
        )

    # -- queues -------------------------------------------------------------------------
    def _create_queue(self, queue: str, attributes: dict[str, Any]) -> bool:
        text = encode_data(attributes)
        self._register(queue)
        created = bool(self._run("create", queue, text))
        self._register(queue, created)
        return created

    def _destroy_queue(self, queue: str) -> bool:
        removed = bool(self._run("destroy", queue))
        with self._lock:
            self._registered.discard(queue)
        self._call(self.client.srem, self.registry_key, queue)
        # re-created meanwhile by another host (its SADD may have come before our SREM): keep its name
        if self._call(self.client.exists, f"{self.base(queue)}:status"):
            self._call(self.client.sadd, self.registry_key, queue)
        return removed

    def _queue_exists(self, queue: str) -> bool:
        return bool(self._call(self.client.exists, f"{self.base(queue)}:status"))

    def _list_queues(self) -> Iterable[str]:
        names = sorted(self._call(self.client.smembers, self.registry_key))
        if not names:
            return []
        with redis_errors(self.server):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.exists(f"{self.base(name)}:status")
            alive = pipe.execute()
        return [name for name, ok in zip(names, alive, strict=True) if ok]

    # -- producing ----------------------------------------------------------------------
    def _add_messages(self, queue: str, messages: list[QueueMessage], on_duplicate: OnDuplicate) -> list[str]:
        args: list[Any] = [on_duplicate, len(messages)]
        for m in messages:  # every record is built (and checked) before anything is sent
            args += [str(uuidlib.uuid4()), m.alias or "", self._record_text(m), *self._placement(m)]
        self._register(queue)
        reply = self._run("add", queue, *args)
        if reply[0] == "dup":
            alias, holder = reply[1], reply[2]
            raise DuplicateAlias(
                f"alias {alias!r} is already held by pending message {holder or '(same batch)'} in queue {queue!r}",
                queue=queue,
                alias=alias,
                uuid=holder,
            )
        self._register(queue, bool(reply[1]))
        uuids = []
        for i, m in enumerate(messages):
            uid, ins = reply[2 + 2 * i], reply[3 + 2 * i]
            m.uuid, m.inserted_at = uid, from_epoch(float(ins))
            uuids.append(uid)
        return uuids

    # -- consuming ----------------------------------------------------------------------
    def _get_message(self, queue: str) -> QueueMessage | None:
        reply = self._run("take", queue, "get", 0)
        return None if not reply else self._message(queue, *reply)

    def _reserve(self, queue: str, lease: float) -> QueueMessage | None:
        reply = self._run("take", queue, "reserve", max(1, round(lease * 1e6)))
        return None if not reply else self._message(queue, *reply)

    def _settle(
        self, op: str, queue: str, uuid: str, attempt: int | None, delay: float, error: str | None,
        processed: bool = False, alias: str | None = None,
    ) -> None:
        """Ack, release or fail a reservation; with ``processed`` (ack only), also record the
        message (``uuid``, ``alias``) as the last processed."""
        reply = self._run(
            "settle",
            queue,
            op,
            uuid,
            "" if attempt is None else str(attempt),
            round(delay * 1e6),
            "0" if error is None else "1",
            _clean(error or ""),
            "1" if processed else "0",
            alias or "",
        )
        status = reply[0]
        if status == "noqueue":
            self._missing(queue)
        if status == "lost":
            raise LeaseLost(f"message {uuid!r} in queue {queue!r} is not reserved (acked, released or unknown)")
        if status == "stale":
            raise LeaseLost(
                f"reservation {attempt} of message {uuid!r} in queue {queue!r} was lost: "
                f"the message was handed out again (attempt {reply[1]})"
            )

    def _ack(self, queue: str, uuid: str, attempt: int | None) -> None:
        self._settle("ack", queue, uuid, attempt, 0.0, None)

    def _ack_processed(self, queue: str, uuid: str, attempt: int | None, alias: str | None) -> None:
        self._settle("ack", queue, uuid, attempt, 0.0, None, processed=True, alias=alias)

    def _release(self, queue: str, uuid: str, attempt: int | None, delay: float, error: str | None) -> None:
        self._settle("release", queue, uuid, attempt, delay, error or None)

    # -- inspecting and changing --------------------------------------------------------
    def _queue_status(self, queue: str) -> QueueStatus:
        reply = self._run("status", queue)
        if reply[0] == "noqueue":
            self._missing(queue)
        ready, deferred, disabled, in_flight, failed = (int(x) for x in reply[1:6])
        raw = reply[6]
        fields = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else dict(raw)

        def ref(kind: str) -> MessageRef | None:
            if not fields.get(f"{kind}_uuid"):
                return None
            return MessageRef(
                fields[f"{kind}_uuid"], fields.get(f"{kind}_alias") or None, from_epoch(float(fields[f"{kind}_ts"]))
            )

        modified = fields.get("modified")
        return QueueStatus(
            queue=queue,
            last_message_inserted=ref("li"),
            last_message_processed=ref("lp"),
            last_queue_modify_time=None if modified is None else from_epoch(float(modified)),
            messages_to_process=ready + deferred + in_flight,
            ready=ready,
            deferred=deferred,
            disabled=disabled,
            in_flight=in_flight,
            failed=failed,
            custom_attributes=json.loads(fields.get("attrs") or "{}"),
        )

    def _queue_meta(self, queue: str) -> dict[str, Any]:
        fields = self._call(self.client.hgetall, f"{self.base(queue)}:status")
        if not fields:
            self._missing(queue)
        return {k[5:]: json.loads(v) for k, v in fields.items() if k.startswith("meta:")}

    def _update_queue_meta(self, queue: str, changes: dict[str, Any]) -> dict[str, Any]:
        args: list[str] = []
        for key, value in changes.items():
            args += [key, "" if value is None else encode_data(value)]
        if self._run("set_meta", queue, *args)[0] == "noqueue":
            self._missing(queue)
        return self._queue_meta(queue)

    def _set_custom_attributes(self, queue: str, attributes: dict[str, Any], replace: bool) -> dict[str, Any]:
        status_key = f"{self.base(queue)}:status"
        for _ in range(100):  # compare and set: a concurrent writer makes us merge again
            if replace:
                merged, check, current = dict(attributes), "0", ""
            else:
                current = self._call(self.client.hget, status_key, "attrs")
                if current is None:
                    self._missing(queue)
                merged, check = {**json.loads(current), **attributes}, "1"
            text = encode_data(merged)
            reply = self._run("set_attrs", queue, text, check, current)
            if reply[0] == "noqueue":
                self._missing(queue)
            if reply[0] == "ok":
                result: dict[str, Any] = json.loads(text)
                return result
        raise LockTimeout(f"custom attributes of queue {queue!r} kept changing under this update")

    def _update_last_processed(self, queue: str, uuid: str | None, alias: str | None) -> None:
        if self._run("last_processed", queue, uuid or "", alias or "")[0] == "noqueue":
            self._missing(queue)

    def _find_messages(self, queue: str, flt: MessageFilter, limit: int | None) -> list[QueueMessage]:
        if limit == 0:
            if not self._queue_exists(queue):
                self._missing(queue)
            return []
        if flt.uuid is not None or flt.alias is not None:  # an index lookup, no scan
            by, value = ("uuid", flt.uuid) if flt.uuid is not None else ("alias", flt.alias)
            reply = self._run("find_one", queue, by, value)
            if reply[0] == "noqueue":
                self._missing(queue)
            if len(reply) == 1:
                return []
            message = self._message(queue, *reply[1:5])
            return [message] if flt.matches(message.to_record()) else []
        found: list[QueueMessage] = []
        after = "0"
        while True:
            reply = self._run("find_page", queue, after, _PAGE)
            if reply[0] == "noqueue":
                self._missing(queue)
            rows = reply[1:]
            for i in range(0, len(rows), 5):
                message = self._message(queue, *rows[i : i + 4])
                if flt.matches(message.to_record()):
                    found.append(message)
                    if limit is not None and len(found) >= limit:
                        return found
            if len(rows) < 5 * _PAGE:
                return found
            after = rows[-1]

    def _update_message(self, queue: str, message: QueueMessage) -> None:
        uid = message.uuid or ""
        record = self._record_text(message)
        reply = self._run("update", queue, uid, message.alias or "", record, *self._placement(message))
        status = reply[0]
        if status == "noqueue":
            self._missing(queue)
        if status == "notfound":
            raise MessageNotFound(f"no pending message {uid!r} in queue {queue!r}")
        if status == "inflight":
            raise MessageInFlight(f"message {uid!r} in queue {queue!r} is reserved by a consumer")
        if status == "dup":
            raise DuplicateAlias(
                f"alias {message.alias!r} is already held by pending message {reply[1]} in queue {queue!r}",
                queue=queue,
                alias=message.alias or "",
                uuid=reply[1],
            )

    def _remove_message(self, queue: str, uuid: str) -> bool:
        status = self._run("remove", queue, uuid)[0]
        if status == "noqueue":
            self._missing(queue)
        if status == "inflight":
            raise MessageInFlight(f"message {uuid!r} in queue {queue!r} is reserved by a consumer")
        return bool(status == "ok")

    # -- failed store -------------------------------------------------------------------
    def _fail(self, queue: str, uuid: str, attempt: int | None, error: str) -> None:
        self._settle("fail", queue, uuid, attempt, 0.0, error)

    def _add_failed(self, queue: str, message: QueueMessage, errors: list[str]) -> str:
        errors_text = json.dumps([_clean(e) for e in errors], ensure_ascii=False)
        self._register(queue)
        reply = self._run(
            "add_failed",
            queue,
            message.uuid or "",
            str(uuidlib.uuid4()),
            message.alias or "",
            self._record_text(message),
            *self._placement(message),
            message.attempts,
            errors_text,
        )
        self._register(queue, bool(reply[1]))
        message.uuid, message.inserted_at = reply[2], from_epoch(float(reply[3]))
        return str(reply[2])

    @staticmethod
    def _bound(value: float | None, infinite: str) -> str:
        return infinite if value is None else str(round(value * 1e6))

    def _failed_messages(
        self, queue: str, since: float | None, until: float | None, limit: int | None
    ) -> list[FailedMessage]:
        reply = self._run("failed_list", queue, self._bound(since, "-inf"), self._bound(until, "+inf"))
        if reply[0] == "noqueue":
            self._missing(queue)
        rows = [reply[i : i + 7] for i in range(1, len(reply), 7)]
        rows.sort(key=lambda row: int(row[6]))  # queue order
        return [self._failed(queue, row) for row in rows[:limit]]

    def _move_failed(
        self, op: str, queue: str, since: float | None, until: float | None, uuids: set[str] | None
    ) -> list[str]:
        if uuids is not None and not uuids:
            if not self._queue_exists(queue):
                self._missing(queue)
            return []
        reply = self._run(
            "failed_move",
            queue,
            op,
            self._bound(since, "-inf"),
            self._bound(until, "+inf"),
            "0" if uuids is None else "1",
            *sorted(uuids or ()),
        )
        if reply[0] == "noqueue":
            self._missing(queue)
        return [str(u) for u in reply[1:]]

    def _requeue_failed(
        self, queue: str, since: float | None, until: float | None, uuids: set[str] | None
    ) -> list[str]:
        return self._move_failed("requeue", queue, since, until, uuids)

    def _forget_failed(self, queue: str, since: float | None, until: float | None, uuids: set[str] | None) -> int:
        return len(self._move_failed("forget", queue, since, until, uuids))

    # -- moving queues between backends ---------------------------------------------------
    def _export_pages(self, queue: str, which: str, width: int) -> list[list[Any]]:
        """Rows of ``width`` fields for pending ('p') or failed ('f') messages, page by page."""
        rows: list[list[Any]] = []
        start = 0
        while True:
            reply = self._run("export", queue, which, start, _PAGE)
            if reply[0] == "noqueue":
                self._missing(queue)
            flat = reply[1]
            rows += [flat[i : i + width] for i in range(0, len(flat), width)]
            if len(flat) < _PAGE * width:
                return rows
            start += _PAGE

    def _export_messages(self, queue: str) -> list[QueueMessage | FailedMessage]:
        out: list[QueueMessage | FailedMessage] = [
            self._message(queue, *row) for row in self._export_pages(queue, "p", 4)
        ]
        failed = self._export_pages(queue, "f", 7)
        failed.sort(key=lambda row: int(row[6]))
        out += [self._failed(queue, row) for row in failed]
        return out

    def _import_messages(self, queue: str, items: list[QueueMessage | FailedMessage]) -> int:
        # Aliases are checked for the whole import first, so a conflict adds nothing; then
        # the messages go in batches (each one script) so the server is never held for long.
        self._check_import_aliases(queue, items)
        added = 0
        for start in range(0, len(items), _PAGE):
            added += self._import_batch(queue, items[start : start + _PAGE])
        return added

    def _check_import_aliases(self, queue: str, items: list[QueueMessage | FailedMessage]) -> None:
        wanted: dict[str, str] = {}
        for item in items:
            if isinstance(item, QueueMessage) and item.alias is not None:
                if item.alias in wanted and wanted[item.alias] != item.uuid:
                    raise DuplicateAlias(
                        f"queue {queue!r}: alias {item.alias!r} appears twice in the import",
                        queue=queue, alias=item.alias, uuid="",
                    )
                wanted[item.alias] = str(item.uuid)
        if not wanted:
            return
        holders = self._call(self.client.hmget, f"{self.base(queue)}:alias", list(wanted))
        for (alias, uuid), holder in zip(wanted.items(), holders, strict=True):
            if holder is not None and holder != uuid:
                raise DuplicateAlias(
                    f"queue {queue!r} already has a pending message with alias {alias!r} ({holder})",
                    queue=queue, alias=alias, uuid=holder,
                )

    def _import_batch(self, queue: str, items: list[QueueMessage | FailedMessage]) -> int:
        args: list[Any] = [len(items)]
        for item in items:
            message = item.message if isinstance(item, FailedMessage) else item
            ins = "" if message.inserted_at is None else _us_text(_epoch_us(message.inserted_at))
            if isinstance(item, FailedMessage):
                kind, errors, failed_at = "f", json.dumps([_clean(e) for e in item.errors], ensure_ascii=False), str(
                    _epoch_us(item.failed_at)
                )
            else:
                kind, errors, failed_at = "p", "[]", "0"
            args += [
                kind,
                str(message.uuid),
                message.alias or "",
                self._record_text(message),
                *self._placement(message),
                ins,
                message.attempts,
                errors,
                failed_at,
            ]
        self._register(queue)
        reply = self._run("import", queue, *args)
        if reply[0] == "dup":
            alias, holder = reply[1], reply[2]
            raise DuplicateAlias(
                f"queue {queue!r} already has a pending message with alias {alias!r}"
                + (f" ({holder})" if holder else " (twice in the import)"),
                queue=queue,
                alias=alias,
                uuid=holder,
            )
        self._register(queue, bool(reply[1]))
        return int(reply[2])
