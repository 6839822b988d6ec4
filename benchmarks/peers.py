"""Adapters giving qengine's file backend and its peers one small interface for bench_file.py.

Every adapter opens its queue in a directory it is given, stores the same message
(``{"id": i, "payload": "x" * 100}``) and hands it back decoded, so each engine pays for its
own serialization. Peers are used with their default durability settings; ``durability``
says what those are (read from the peer's source, or queried at run time where possible).

Peer libraries are imported inside the adapters, so a missing peer only marks its rows
unavailable.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from typing import Any

QUEUE = "bench"
PAYLOAD = "x" * 100


def _peer(module: str) -> Any:
    """Import a peer library lazily (untyped to mypy: peers ship no stubs and live only in .bench-venv)."""
    return importlib.import_module(module)


def message(i: int) -> dict[str, Any]:
    """The benchmark message, the same for every engine."""
    return {"id": i, "payload": PAYLOAD}


class Unsupported(Exception):
    """The engine has no such operation (reported as n/a)."""


class Engine:
    """One queue, opened in ``path``. Subclasses override the operations they have."""

    #: Distribution name whose version is reported (None: not a peer package).
    package: str | None = None
    #: Safe with several processes on one queue (producers and consumers).
    mp_safe: bool = True
    #: A caveat to print next to mp_safe.
    mp_note: str = ""
    #: What a successful call promises about the disk, in the engine's default settings.
    durability: str = ""
    #: How reserve+ack is done, or why it is n/a.
    ack_api: str = ""
    #: How a destructive get is done.
    get_api: str = ""

    def __init__(self, path: str) -> None:
        self.path = path

    def add(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_batch(self, items: list[dict[str, Any]]) -> None:
        """Fill fast (untimed pre-fill); defaults to one add per item."""
        for item in items:
            self.add(item)

    def get(self) -> dict[str, Any] | None:
        """Remove and return the first message, or None when empty."""
        raise NotImplementedError

    def reserve_ack(self) -> dict[str, Any] | None:
        """Take the first message with an acknowledgement step, finish it, return it."""
        raise Unsupported(self.ack_api or "no reserve/ack")

    def close(self) -> None:
        pass


# -- qengine -----------------------------------------------------------------------------


class QEngine(Engine):
    """qengine's file backend (``queue_type="file"``)."""

    fsync = "batch"
    get_api = "get_message"
    ack_api = "reserve(lease=60) + ack"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        from queue_engine import QueueFactory, QueueMessage

        self._message_class = QueueMessage
        self.m = QueueFactory.get_queue_manager(queue_type="file", cache_root=path, fsync=self.fsync)
        self.durability = {
            "never": "fsync=never: no fsync, left to the OS",
            "batch": f"fsync=batch: background fsync every {self.m.config.fsync_interval:g}s",
            "always": "fsync=always: fsync before every call returns",
        }[self.fsync]

    def add(self, data: dict[str, Any]) -> None:
        self.m.add_message(QUEUE, self._message_class(data=data))

    def add_batch(self, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), 1000):
            self.m.add_messages(QUEUE, [self._message_class(data=d) for d in items[start : start + 1000]])

    def get(self) -> dict[str, Any] | None:
        msg = self.m.get_message(QUEUE)
        return None if msg is None else msg.data

    def reserve_ack(self) -> dict[str, Any] | None:
        msg = self.m.reserve(QUEUE, lease=60)
        if msg is None:
            return None
        self.m.ack(QUEUE, msg)
        return msg.data

    def close(self) -> None:
        self.m.close()


class QEngineNever(QEngine):
    fsync = "never"


class QEngineAlways(QEngine):
    fsync = "always"


# -- persist-queue -----------------------------------------------------------------------


def _sqlite_synchronous(conn: Any) -> str:
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    value = conn.execute("PRAGMA synchronous").fetchone()[0]
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return f"journal_mode={mode}, synchronous={names.get(value, value)}"


class PersistAck(Engine):
    """persist-queue ``SQLiteAckQueue(multithreading=True)``: get marks a row unack, ack marks it acked."""

    package = "persist-queue"
    mp_note = ("producers only: a get is a SELECT then an UPDATE in separate transactions under a thread lock; "
               "in a side test 2 consumer processes draining 3,000 messages received 4 of them twice")
    get_api = "get(block=False) (row marked unack, kept)"
    ack_api = "get(block=False) + ack(item)"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        persistqueue = _peer("persistqueue")

        self._empty = persistqueue.Empty
        self.q = persistqueue.SQLiteAckQueue(path, multithreading=True)
        self.durability = (
            f"SQLite {_sqlite_synchronous(self.q._putter)}, auto_commit=True (a commit per put/get/ack); "
            "acked rows stay until clear_acked_data()"
        )

    def add(self, data: dict[str, Any]) -> None:
        self.q.put(data)

    def get(self) -> dict[str, Any] | None:
        try:
            item: dict[str, Any] = self.q.get(block=False)
        except self._empty:
            return None
        return item

    def reserve_ack(self) -> dict[str, Any] | None:
        item = self.get()
        if item is not None:
            self.q.ack(item)
        return item

    def close(self) -> None:
        self.q.close()


class PersistFile(Engine):
    """persist-queue file ``Queue``: chunk files plus an ``info`` file; in-process locks only."""

    package = "persist-queue"
    mp_safe = False
    get_api = "get(block=False) + task_done()"
    ack_api = "n/a: task_done() only persists the read position, no per-message ack"
    durability = (
        "put: write+flush, info file rewritten via temp file+rename (no fsync; fsync only when a "
        "100-item chunk fills); get persisted at task_done(); NOT multi-process safe"
    )

    def __init__(self, path: str) -> None:
        super().__init__(path)
        persistqueue = _peer("persistqueue")

        self._empty = persistqueue.Empty
        # tempdir inside the queue dir: its info file is renamed into place, which needs one filesystem.
        tmp = os.path.join(path, ".tmp")
        os.makedirs(tmp, exist_ok=True)
        self.q = persistqueue.Queue(os.path.join(path, "q"), tempdir=tmp)

    def add(self, data: dict[str, Any]) -> None:
        self.q.put(data)

    def get(self) -> dict[str, Any] | None:
        try:
            item: dict[str, Any] = self.q.get(block=False)
        except self._empty:
            return None
        self.q.task_done()
        return item


# -- diskcache ---------------------------------------------------------------------------


class DiskcacheDeque(Engine):
    """diskcache ``Deque``: a SQLite-indexed cache with ``eviction_policy='none'``."""

    package = "diskcache"
    get_api = "popleft()"
    ack_api = "n/a: no reserve/ack"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        diskcache = _peer("diskcache")

        self.q = diskcache.Deque(directory=path)
        self.durability = f"SQLite {_sqlite_synchronous(self.q._cache._con)}"

    def add(self, data: dict[str, Any]) -> None:
        self.q.append(data)

    def add_batch(self, items: list[dict[str, Any]]) -> None:
        with self.q.transact():
            self.q.extend(items)

    def get(self) -> dict[str, Any] | None:
        try:
            item: dict[str, Any] = self.q.popleft()
        except IndexError:
            return None
        return item

    def close(self) -> None:
        self.q._cache.close()


# -- dirq --------------------------------------------------------------------------------


class DirqSimple(Engine):
    """dirq ``QueueSimple``: one file per message; consumers lock (hard link), read, remove."""

    package = "dirq"
    get_api = "lock(name) + get(name) + remove(name)"
    ack_api = "lock(name) + get(name) + remove(name) (same as get: lock is its reservation)"
    durability = "one file per message, written then hard-linked into place; no fsync"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        QueueSimple = _peer("dirq.QueueSimple").QueueSimple

        self.q = QueueSimple(path)
        self._cursor: str | None = None

    def add(self, data: dict[str, Any]) -> None:
        self.q.add(json.dumps(data))

    def _take(self) -> dict[str, Any] | None:
        # Walk the cached listing as a dirq consumer does; list the directories again when it runs out.
        name = self.q.next() if self._cursor else self.q.first()
        rescanned = self._cursor is None
        while True:
            if not name:
                if rescanned:
                    self._cursor = None
                    return None
                name, rescanned = self.q.first(), True
                continue
            self._cursor = name
            if self.q.lock(name):
                data = self.q.get(name)
                self.q.remove(name)
                result: dict[str, Any] = json.loads(data)
                return result
            name = self.q.next()

    def get(self) -> dict[str, Any] | None:
        return self._take()

    def reserve_ack(self) -> dict[str, Any] | None:
        return self._take()


# -- huey --------------------------------------------------------------------------------


class HueyFile(Engine):
    """huey ``FileStorage``: one file per message, a global flock around every operation."""

    package = "huey"
    get_api = "dequeue()"
    ack_api = "n/a: no reserve/ack"
    durability = "one file per message, plain write; no fsync; dequeue lists and sorts the whole directory"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        FileStorage = _peer("huey.storage").FileStorage

        self.q = FileStorage("bench", path)

    def add(self, data: dict[str, Any]) -> None:
        self.q.enqueue(json.dumps(data).encode())

    def get(self) -> dict[str, Any] | None:
        raw = self.q.dequeue()
        if raw is None:
            return None
        result: dict[str, Any] = json.loads(raw)
        return result


# -- litequeue ---------------------------------------------------------------------------


class LiteQueueEngine(Engine):
    """litequeue ``LiteQueue``: pop marks a row LOCKED, done marks it DONE; rows stay until prune()."""

    package = "litequeue"
    get_api = "pop() (row marked LOCKED, kept)"
    ack_api = "pop() + done(message_id)"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        LiteQueue = _peer("litequeue").LiteQueue

        self.q = LiteQueue(os.path.join(path, "queue.sqlite3"))
        self.durability = f"SQLite {_sqlite_synchronous(self.q.conn)}; done rows stay until prune()"

    def add(self, data: dict[str, Any]) -> None:
        self.q.put(json.dumps(data))

    def add_batch(self, items: list[dict[str, Any]]) -> None:
        with self.q.transaction():
            for item in items:
                self.q.put(json.dumps(item))

    def get(self) -> dict[str, Any] | None:
        msg = self.q.pop()
        if msg is None:
            return None
        result: dict[str, Any] = json.loads(msg.data)
        return result

    def reserve_ack(self) -> dict[str, Any] | None:
        msg = self.q.pop()
        if msg is None:
            return None
        self.q.done(msg.message_id)
        result: dict[str, Any] = json.loads(msg.data)
        return result

    def close(self) -> None:
        self.q.close()


#: name -> adapter class; the order is the table's row order.
ENGINES: dict[str, Callable[[str], Engine]] = {
    "qengine[fsync=never]": QEngineNever,
    "qengine[fsync=batch]": QEngine,
    "persist-queue SQLiteAckQueue": PersistAck,
    "persist-queue Queue (file)": PersistFile,
    "diskcache Deque": DiskcacheDeque,
    "dirq QueueSimple": DirqSimple,
    "huey FileStorage": HueyFile,
    "litequeue LiteQueue": LiteQueueEngine,
}
#: Only measured for single-process adds with a small N.
ALWAYS = "qengine[fsync=always]"
#: The compiled build (bench_file.py imports it from its --compiled tree); a row when there is one.
COMPILED = "qengine[compiled, fsync=never]"
ENGINES_EXTRA: dict[str, Callable[[str], Engine]] = {ALWAYS: QEngineAlways, COMPILED: QEngineNever}


def is_qengine(name: str) -> bool:
    return name.startswith("qengine")


def build(name: str, path: str) -> Engine:
    factory = ENGINES.get(name) or ENGINES_EXTRA[name]
    return factory(path)
