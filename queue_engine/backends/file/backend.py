"""FileQueueManager: the embedded default backend (``queueType = file``, or ``cache``)."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...config import Config
from ...errors import QueueEngineError, QueueNotFound, StorageError
from ...manager import _MAX_SECONDS, MessageFilter, OnDuplicate, QueueManager
from ...message import QueueMessage, validate_queue_name
from ...permissions import Modes, check_data_dir
from ...status import FailedMessage, QueueStatus
from .fsck import FsckReport, check_queue
from .store import QueueStore, init_queue_dir

__all__ = ["FileQueueManager"]


_OPEN_MANAGERS: weakref.WeakSet[FileQueueManager] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Release, in a forked child, the locks and descriptors inherited from the parent.

    The parent's handles are dropped: the child's first use of each queue opens it anew
    through :meth:`FileQueueManager._store`, which also starts the child's own fsync thread.
    """
    for manager in list(_OPEN_MANAGERS):
        manager._stores_lock = threading.Lock()
        for store in list(manager._stores.values()):
            store.after_fork_in_child()
        manager._stores = {}


os.register_at_fork(after_in_child=_after_fork_in_child)


class FileQueueManager(QueueManager):
    """Queues as folders of append-only logs under ``<cacheRoot>/queues``.

    Safe for any number of threads and processes on one host. See
    :mod:`queue_engine.backends.file.store` for the layout and the crash-safety argument.
    """

    queue_type = "file"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.root = Path(config.cache_root) / "queues"
        self.modes = Modes(config.file_mode)
        try:
            self.modes.mkdir(Path(config.cache_root), parents=True)
            self.modes.mkdir(self.root)
        except OSError as exc:
            raise StorageError(f"cannot create cacheRoot {str(self.root)!r}: {exc.strerror}") from None
        check_data_dir(Path(config.cache_root), "cacheRoot", self.modes)
        check_data_dir(self.root, "the queues folder", self.modes)
        self._stores: dict[str, QueueStore] = {}
        self._stores_lock = threading.Lock()
        _OPEN_MANAGERS.add(self)
        self._flusher: _Flusher | None = None
        if config.fsync == "batch":
            self._flusher = _Flusher(self, config.fsync_interval)

    # -- store handles ------------------------------------------------------------------
    def _store(self, queue: str, *, create: bool = False) -> QueueStore | None:
        """The open store for ``queue``; None when it does not exist (and ``create`` is off)."""
        store = self._stores.get(queue)
        if store is not None and not store.view.destroyed:
            return store
        # Opening (after a fork too: the child starts with no handle, see _after_fork_in_child)
        flusher = self._flusher
        if flusher is not None and flusher.pid != os.getpid():
            self._flusher = _Flusher(self, self.config.fsync_interval)  # threads do not survive fork
        with self._stores_lock:
            store = self._stores.get(queue)
            if store is not None and store.view.destroyed:
                store.close()
                del self._stores[queue]
                store = None
            if store is None:
                path = self.root / queue
                if not (path / "log").is_dir():
                    if not create:
                        return None
                    self._create_queue(queue, {})
                try:
                    store = QueueStore(
                        queue,
                        path,
                        fsync=self.config.fsync,
                        lock_timeout=self.config.lock_timeout,
                        segment_size=self.config.segment_size, modes=self.modes,
                    )
                except StorageError:
                    if not (path / "log").is_dir():  # destroyed while we opened it
                        return None if not create else self._store(queue, create=True)
                    raise
                self._stores[queue] = store
            return store

    def _with_store(self, queue: str) -> QueueStore:
        store = self._store(queue)
        if store is None:
            raise QueueNotFound(f"queue {queue!r} does not exist")
        return store

    def _retrying(self, queue: str, op: Any, *, create: bool = False, missing: Any = QueueNotFound) -> Any:
        """Run ``op(store)``; if the queue was destroyed under us, reopen once and retry."""
        for _ in range(3):
            store = self._store(queue, create=create)
            if store is None:
                if missing is QueueNotFound:
                    raise QueueNotFound(f"queue {queue!r} does not exist")
                return missing
            result = op(store)
            if not store.view.destroyed:
                return result
        raise StorageError(f"queue {queue!r} keeps being destroyed while in use")

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        with self._stores_lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

    def flush(self) -> None:
        """Make every write so far durable now (whatever the fsync mode)."""
        for store in list(self._stores.values()):
            with store._mutex:
                if not store.closed:
                    store.flush_locked()

    # -- queues -------------------------------------------------------------------------
    def _create_queue(self, queue: str, attributes: dict[str, Any]) -> bool:
        from ...message import encode_data

        encode_data(attributes)
        final = self.root / queue
        if (final / "log").is_dir():
            return False
        tmp = self.root / f".new-{queue}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o700)  # private while it is being laid out, then given its mode
            init_queue_dir(tmp, attributes, self.config.segment_size, self.modes)
            os.chmod(tmp, self.modes.dir)
            if self.config.fsync == "always":
                os.sync()  # a new queue is rare; make its files and folder durable at once
            try:
                os.rename(tmp, final)
            except OSError:  # another process created it first
                return False
            return True
        except OSError as exc:
            raise StorageError(f"cannot create queue {queue!r} in {str(self.root)!r}: {exc.strerror}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _destroy_queue(self, queue: str) -> bool:
        store = self._store(queue)
        if store is None:
            return False
        store.mark_destroyed()  # every other handle sees this record and lets go
        trash = self.root / f".trash-{queue}-{secrets.token_hex(4)}"
        try:
            os.rename(self.root / queue, trash)
        except FileNotFoundError:
            return False
        with self._stores_lock:
            self._stores.pop(queue, None)
        store.close()
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _queue_exists(self, queue: str) -> bool:
        return (self.root / queue / "log").is_dir()

    def _list_queues(self) -> Iterable[str]:
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                try:
                    validate_queue_name(entry.name)
                except ValueError:
                    continue
                if os.path.isdir(os.path.join(entry.path, "log")):
                    yield entry.name

    # -- messages -----------------------------------------------------------------------
    # The per-message methods below are the hot paths: for a queue this manager has open, a
    # call goes to its store at once, without the general path's frames (which validate the
    # queue name: the names of open queues are valid). Anything else, and a queue destroyed
    # under the call, takes the general path of QueueManager; both behave the same.

    def add_message(self, queue: str, message: QueueMessage, *, on_duplicate: OnDuplicate = "error") -> str:
        store = self._stores.get(queue) if queue.__class__ is str and on_duplicate == "error" else None
        if store is not None:
            try:
                uuid = store.add_plain(message)  # a plain message whose fields were checked before
            except QueueEngineError as exc:
                self._last_error = str(exc)
                raise
            if uuid is not None:
                return uuid
        return super().add_message(queue, message, on_duplicate=on_duplicate)

    def get_message(self, queue: str) -> QueueMessage | None:
        store = self._stores.get(queue) if queue.__class__ is str else None
        if store is not None and not store.view.destroyed:
            try:
                message = store.get()
            except QueueEngineError as exc:
                self._last_error = str(exc)
                raise
            if not store.view.destroyed:
                return message
        return super().get_message(queue)

    def reserve(self, queue: str, lease: float | None = None) -> QueueMessage | None:
        store = self._stores.get(queue) if queue.__class__ is str else None
        seconds = self.config.lease if lease is None else lease  # the config's: checked when it was read
        if lease is not None and (
            lease.__class__ is not float and lease.__class__ is not int or not 0 < lease <= _MAX_SECONDS
        ):
            store = None  # the general path names what is wrong
        if store is not None and not store.view.destroyed:
            try:
                message = store.reserve(float(seconds))
            except QueueEngineError as exc:
                self._last_error = str(exc)
                raise
            if not store.view.destroyed:
                return message
        return super().reserve(queue, lease)

    def ack(self, queue: str, message: str | QueueMessage, *, processed: bool = False) -> None:
        store = self._stores.get(queue) if queue.__class__ is str and message.__class__ is QueueMessage else None
        if store is not None and message.uuid and not store.view.destroyed:  # type: ignore[union-attr]
            try:
                if processed:
                    store.ack(message.uuid, message.attempts, processed=True, alias=message.alias)  # type: ignore[union-attr]
                else:
                    store.ack(message.uuid, message.attempts)  # type: ignore[union-attr]
            except QueueEngineError as exc:
                self._last_error = str(exc)
                raise
            return
        super().ack(queue, message, processed=processed)

    # The general path (an open queue's plain message, get, reserve and ack took the short
    # path above): _retrying reopens a queue destroyed under the call.
    def _add_messages(self, queue: str, messages: list[QueueMessage], on_duplicate: OnDuplicate) -> list[str]:
        result: list[str] = self._retrying(queue, lambda s: s.add(messages, on_duplicate), create=True)
        return result

    def _get_message(self, queue: str) -> QueueMessage | None:
        result: QueueMessage | None = self._retrying(queue, lambda s: s.get(), missing=None)
        return result

    def _reserve(self, queue: str, lease: float) -> QueueMessage | None:
        result: QueueMessage | None = self._retrying(queue, lambda s: s.reserve(lease), missing=None)
        return result

    def _ack(self, queue: str, uuid: str, attempt: int | None) -> None:
        self._with_store(queue).ack(uuid, attempt)

    def _ack_processed(self, queue: str, uuid: str, attempt: int | None, alias: str | None) -> None:
        self._with_store(queue).ack(uuid, attempt, processed=True, alias=alias)

    def _release(self, queue: str, uuid: str, attempt: int | None, delay: float, error: str | None) -> None:
        self._with_store(queue).release(uuid, attempt, delay, error)

    def _queue_status(self, queue: str) -> QueueStatus:
        result: QueueStatus = self._retrying(queue, lambda s: s.status())
        return result

    def _set_custom_attributes(self, queue: str, attributes: dict[str, Any], replace: bool) -> dict[str, Any]:
        result: dict[str, Any] = self._retrying(queue, lambda s: s.set_custom(attributes, replace))
        return result

    def _update_last_processed(self, queue: str, uuid: str | None, alias: str | None) -> None:
        self._retrying(queue, lambda s: s.set_last_processed(uuid, alias))

    def _find_messages(self, queue: str, flt: MessageFilter, limit: int | None) -> list[QueueMessage]:
        result: list[QueueMessage] = self._retrying(queue, lambda s: s.find(flt, limit))
        return result

    def _update_message(self, queue: str, message: QueueMessage) -> None:
        self._with_store(queue).update(message)

    def _remove_message(self, queue: str, uuid: str) -> bool:
        result: bool = self._retrying(queue, lambda s: s.remove(uuid))
        return result

    def _queue_meta(self, queue: str) -> dict[str, Any]:
        result: dict[str, Any] = self._retrying(queue, lambda s: s.meta())
        return result

    def _update_queue_meta(self, queue: str, changes: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._retrying(queue, lambda s: s.update_meta(changes))
        return result

    # -- checking -----------------------------------------------------------------------
    def fsck(self, queue: str, *, repair: bool = False) -> FsckReport:
        """Check ``queue``'s files without changing them; with ``repair``, repair first.

        The check reads with its own mappings and never writes. Repairing takes the queue's
        lock, walks the whole log through the reader every operation uses (damaged bytes go
        to quarantine/, see docs/DESIGN.md), rebuilds the indexes and writes a checkpoint.
        """
        name = validate_queue_name(queue)
        path = self.root / name
        if not (path / "log").is_dir():
            raise QueueNotFound(f"queue {name!r} does not exist")
        if repair:
            self._with_store(name).repair()
        report = check_queue(path, name)
        report.repaired = repair
        return report

    # -- failed store -------------------------------------------------------------------
    def _fail(self, queue: str, uuid: str, attempt: int | None, error: str) -> None:
        self._with_store(queue).fail(uuid, attempt, error)

    def _add_failed(self, queue: str, message: QueueMessage, errors: list[str]) -> str:
        result: str = self._retrying(queue, lambda s: s.add_failed(message, errors), create=True)
        return result

    def _failed_messages(
        self, queue: str, since: float | None, until: float | None, limit: int | None
    ) -> list[FailedMessage]:
        result: list[FailedMessage] = self._retrying(queue, lambda s: s.failed(since, until, limit))
        return result

    def _requeue_failed(
        self, queue: str, since: float | None, until: float | None, uuids: set[str] | None
    ) -> list[str]:
        result: list[str] = self._retrying(queue, lambda s: s.requeue_failed(since, until, uuids))
        return result

    def _forget_failed(self, queue: str, since: float | None, until: float | None, uuids: set[str] | None) -> int:
        result: int = self._retrying(queue, lambda s: s.forget_failed(since, until, uuids))
        return result


    def _export_messages(self, queue: str) -> list[QueueMessage | FailedMessage]:
        result: list[QueueMessage | FailedMessage] = self._retrying(queue, lambda s: s.export())
        return result

    def _import_messages(self, queue: str, items: list[QueueMessage | FailedMessage]) -> int:
        result: int = self._retrying(queue, lambda s: s.import_(items), create=True)
        return result


class _Flusher:
    """fsync=batch: a daemon thread that fdatasyncs written segments every ``interval``."""

    def __init__(self, manager: FileQueueManager, interval: float) -> None:
        self._manager = weakref.ref(manager)
        self.pid = os.getpid()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qengine-fsync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            manager = self._manager()
            if manager is None:
                return
            for store in list(manager._stores.values()):
                if store.dirty and not store.closed and store.opened_here():
                    try:
                        with store._mutex:
                            if not store.closed:
                                store.flush_locked()
                    except StorageError:
                        store.dirty = True  # try again next round
            del manager

    def stop(self) -> None:
        self._stop.set()
        if self.pid == os.getpid() and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
