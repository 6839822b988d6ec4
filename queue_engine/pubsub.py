"""Publish/subscribe: topics fan a message out to every subscribed queue, all or none.

A subscription lives in the subscribing queue's engine metadata (``queue_meta(q)["topics"]``,
a sorted list of topic names), so it is stored by whichever backend holds the queue. Finding
a topic's subscribers scans ``list_queues()`` and reads each queue's metadata: one read per
queue, fine for the tens or hundreds of queues an installation has.

Publishing copies the payload into N separate queues. The backends have no transaction that
spans queues (the file backend keeps one log per queue; Redis Cluster puts queues in different
hash slots), so :func:`publish` uses a durable *intent* (an outbox record) and two phases:

1. the intent, naming every target queue with the uuid chosen for its copy, is written to
   ``<cacheRoot>/topics/intents/`` (temporary file, fsync, rename, fsync of the directory,
   mode 0600) and kept locked (``flock``) by the publisher while it works;
2. *prepare*: each copy is imported **disabled** (``import_messages``, idempotent by uuid), so
   no consumer can take it yet;
3. *commit*: a ``.committed`` marker is made durable next to the intent; then each copy is
   enabled (``update_message`` with ``disabled=False``);
4. the intent and its marker are deleted.

:func:`recover` (run at the start of every :func:`publish`, and by ``qengine publish
--recover``) finishes every intent no live process holds: before the marker it redoes step 2
and commits; after it, it enables the copies still disabled. A copy already consumed is not
found and not re-created, so a publisher killed at any point leaves the message in every
subscribed queue exactly once, or (killed before the intent was durable) in none. If a copy
cannot be prepared because its alias is held by another pending message, the copies already
prepared are removed and the publish fails with :class:`~queue_engine.errors.DuplicateAlias`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid as uuid_module
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    DuplicateAlias,
    InvalidQueueName,
    InvalidTopicName,
    MessageInFlight,
    MessageNotFound,
    QueueNotFound,
    StorageError,
)
from .manager import QueueManager
from .message import QueueMessage, encode_data, from_epoch, validate_queue_name
from .permissions import PRIVATE, Modes

__all__ = [
    "InvalidTopicName",
    "RecoveredIntent",
    "intents_dir",
    "publish",
    "recover",
    "subscribe",
    "subscribers",
    "subscriptions",
    "topics",
    "unsubscribe",
    "validate_topic_name",
]

log = logging.getLogger(__name__)

#: Key of the per-queue engine metadata holding the queue's subscriptions.
META_KEY = "topics"
_INTENT_VERSION = 1
_COMMITTED = ".committed"

#: Test hook: ``"<phase>:<n>:<marker path>"`` with phase ``prepare`` or ``enable`` makes the
#: publisher create the marker file and hang after its n-th copy of that phase, so a test
#: can SIGKILL a real publisher at that exact point. Unset in production.
STALL_ENV = "QENGINE_TEST_PUBSUB_STALL"


def validate_topic_name(name: object) -> str:
    """Return ``name`` if it is a valid topic name, else raise :class:`InvalidTopicName`.

    Topics follow the queue-name rule: 1-64 letters, digits, ``_ . -``, starting with a
    letter or digit.
    """
    try:
        return validate_queue_name(name)
    except InvalidQueueName:
        raise InvalidTopicName(
            f"invalid topic name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        ) from None


# -- subscriptions ------------------------------------------------------------------------
def _topics_of(manager: QueueManager, queue: str) -> list[str]:
    try:
        value = manager.queue_meta(queue).get(META_KEY)
    except QueueNotFound:  # destroyed while we scanned
        return []
    if not isinstance(value, list):
        return []
    return sorted({t for t in value if isinstance(t, str)})


def _topics_root(manager: QueueManager) -> Path:
    return Path(manager.config.cache_root) / "topics"


@contextlib.contextmanager
def _subscription_lock(manager: QueueManager) -> Iterator[None]:
    """Serialise subscription changes on this host: each is a read-modify-write of one key."""
    path = _topics_root(manager) / "subscriptions.lock"
    try:
        modes = Modes(manager.config.file_mode)
        modes.mkdir(path.parent, parents=True)
        fd = modes.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open the subscription lock {str(path)!r}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def subscribe(manager: QueueManager, topic: str, queue: str) -> bool:
    """Subscribe ``queue`` (created if missing) to ``topic``; False if it already was."""
    topic = validate_topic_name(topic)
    queue = validate_queue_name(queue)
    with _subscription_lock(manager):
        manager.create_queue(queue)
        current = _topics_of(manager, queue)
        if topic in current:
            return False
        manager.update_queue_meta(queue, {META_KEY: sorted([*current, topic])})
    return True


def unsubscribe(manager: QueueManager, topic: str, queue: str) -> bool:
    """Remove the subscription of ``queue`` to ``topic``; False if there was none (or no queue)."""
    topic = validate_topic_name(topic)
    queue = validate_queue_name(queue)
    with _subscription_lock(manager):
        if not manager.queue_exists(queue):
            return False
        current = _topics_of(manager, queue)
        if topic not in current:
            return False
        rest = [t for t in current if t != topic]
        manager.update_queue_meta(queue, {META_KEY: rest or None})
    return True


def subscriptions(manager: QueueManager, queue: str) -> list[str]:
    """The topics ``queue`` is subscribed to, sorted; :class:`QueueNotFound` for a missing queue."""
    value = manager.queue_meta(validate_queue_name(queue)).get(META_KEY)
    return sorted({t for t in value if isinstance(t, str)}) if isinstance(value, list) else []


def topics(manager: QueueManager) -> dict[str, list[str]]:
    """Every topic with at least one subscriber -> its queues, both sorted. Reads every queue's metadata."""
    out: dict[str, list[str]] = {}
    for queue in manager.list_queues():
        for topic in _topics_of(manager, queue):
            out.setdefault(topic, []).append(queue)
    return {topic: sorted(queues) for topic, queues in sorted(out.items())}


def subscribers(manager: QueueManager, topic: str) -> list[str]:
    """The queues subscribed to ``topic``, sorted. Reads every queue's metadata."""
    topic = validate_topic_name(topic)
    return sorted(q for q in manager.list_queues() if topic in _topics_of(manager, q))


# -- intents ------------------------------------------------------------------------------
def intents_dir(manager: QueueManager) -> Path:
    """Where the publish intents of ``manager``'s storage live: ``<cacheRoot>/topics/intents``.

    With the Redis backend this is a local directory: each host recovers its own publishers.
    """
    return _topics_root(manager) / "intents"


@dataclass
class _Intent:
    path: Path
    fd: int
    topic: str
    targets: dict[str, str]  # queue -> uuid of its copy
    record: dict[str, Any]
    committed: bool = False

    @property
    def marker(self) -> Path:
        return self.path.with_name(self.path.name + _COMMITTED)


@dataclass(frozen=True)
class RecoveredIntent:
    """What :func:`recover` did with one leftover intent."""

    topic: str
    #: queue -> uuid of its copy.
    targets: dict[str, str] = field(default_factory=dict)
    #: ``delivered`` (every copy is in its queue) or ``rolled back`` (none is: alias conflict).
    outcome: str = "delivered"
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {"topic": self.topic, "targets": dict(self.targets), "outcome": self.outcome, "error": self.error}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_intent(
    directory: Path, topic: str, targets: dict[str, str], record: dict[str, Any], modes: Modes = PRIVATE
) -> _Intent:
    """Make the intent durable and return it, locked by this process."""
    try:
        return _write_intent_file(directory, topic, targets, record, modes)
    except OSError as exc:
        raise StorageError(f"cannot write a publish intent in {str(directory)!r}: {exc.strerror or exc}") from None


def _write_intent_file(
    directory: Path, topic: str, targets: dict[str, str], record: dict[str, Any], modes: Modes
) -> _Intent:
    modes.mkdir(directory, parents=True)
    # the name sorts by creation time, so recover() finishes intents in publish order
    name = f"{time.time_ns():020d}-{uuid_module.uuid4().hex}.json"
    tmp, final = directory / f".{name}.tmp", directory / name
    body = json.dumps(
        {"version": _INTENT_VERSION, "topic": topic, "targets": targets, "record": record, "pid": os.getpid()},
        ensure_ascii=False,
    ).encode("utf-8")
    fd = modes.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the rename: recover() must never see it unlocked
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return _Intent(final, fd, topic, targets, record)


def _lock_existing(path: Path) -> int | None:
    """Open and lock ``path`` without waiting; None if a live process holds it or it is gone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # the holder may have finished and unlinked it between our open and our lock
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_intent(path: Path, fd: int) -> _Intent:
    with os.fdopen(os.dup(fd), "rb") as fh:
        doc = json.loads(fh.read().decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != _INTENT_VERSION:
        raise ValueError(f"unknown intent format {doc.get('version') if isinstance(doc, dict) else doc!r}")
    targets, record = doc["targets"], doc["record"]
    if not isinstance(targets, dict) or not isinstance(record, dict):
        raise ValueError("targets and record must be objects")
    intent = _Intent(path, fd, str(doc["topic"]), {str(q): str(u) for q, u in targets.items()}, record)
    intent.committed = intent.marker.exists()
    return intent


def _finish(intent: _Intent) -> None:
    """Forget a completed (or rolled back) intent, then release it."""
    try:
        intent.path.unlink(missing_ok=True)
        intent.marker.unlink(missing_ok=True)
    finally:
        os.close(intent.fd)


def _stall(phase: str, done: int) -> None:
    spec = os.environ.get(STALL_ENV)
    if not spec:
        return
    want_phase, count, marker = spec.split(":", 2)
    if want_phase == phase and int(count) == done:
        Path(marker).touch()
        while True:  # wait here for the test's SIGKILL
            time.sleep(3600)


def _prepare(manager: QueueManager, intent: _Intent) -> None:
    """Import every copy disabled; on an alias conflict remove the prepared ones and re-raise."""
    for done, (queue, uid) in enumerate(sorted(intent.targets.items()), start=1):
        message = QueueMessage.from_record(dict(intent.record, uuid=uid, disabled=True))
        try:
            manager.import_messages(queue, [message])
        except DuplicateAlias:
            _roll_back(manager, intent)
            raise
        _stall("prepare", done)


def _roll_back(manager: QueueManager, intent: _Intent) -> None:
    for queue, uid in intent.targets.items():
        # only disabled copies exist before the commit marker: no consumer holds any of them
        with contextlib.suppress(QueueNotFound, MessageNotFound, MessageInFlight):
            manager.remove_message(queue, uid)


def _commit(intent: _Intent, modes: Modes = PRIVATE) -> None:
    fd = modes.open(intent.marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(intent.path.parent)
    intent.committed = True


def _enable(manager: QueueManager, intent: _Intent) -> None:
    """Make every copy eligible. A copy not found was already enabled and consumed: leave it."""
    for done, (queue, uid) in enumerate(sorted(intent.targets.items()), start=1):
        try:
            found = manager.find_messages(queue, uuid=uid, limit=1)
            if found and found[0].disabled:
                manager.update_message(queue, found[0].copy(disabled=False))
        except (QueueNotFound, MessageNotFound, MessageInFlight):
            pass  # destroyed, or consumed / taken by a consumer since: it was enabled
        _stall("enable", done)


def _complete(manager: QueueManager, intent: _Intent) -> None:
    if not intent.committed:
        _prepare(manager, intent)
        _commit(intent, Modes(manager.config.file_mode))
    _enable(manager, intent)


def recover(manager: QueueManager) -> list[RecoveredIntent]:
    """Finish every publish intent that no live process holds; return what was done, oldest first.

    Safe to run at any time and from several processes at once (each intent is locked while
    it is worked on); a second run finds nothing. An intent whose copy cannot be prepared
    because of an alias conflict is rolled back (no copy stays) and reported. A storage error
    propagates and leaves the intent for the next run. An unreadable intent file is renamed to
    ``*.corrupt`` and logged.
    """
    directory = intents_dir(manager)
    if not directory.is_dir():
        return []
    out: list[RecoveredIntent] = []
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        if entry.startswith(".") and entry.endswith(".tmp"):
            # a publisher died before its intent was durable: nothing was written anywhere
            fd = _lock_existing(path)
            if fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                os.close(fd)
            continue
        if entry.endswith(_COMMITTED):
            if not path.with_name(entry[: -len(_COMMITTED)]).exists():
                path.unlink(missing_ok=True)  # left by a crash between the two unlinks of _finish
            continue
        if not entry.endswith(".json"):
            continue
        fd = _lock_existing(path)
        if fd is None:
            continue
        try:
            intent = _read_intent(path, fd)
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            os.close(fd)
            log.error("publish intent %s is unreadable (%s); renamed to %s.corrupt", path, exc, path.name)
            os.replace(path, path.with_name(path.name + ".corrupt"))
            continue
        except BaseException:
            os.close(fd)
            raise
        try:
            _complete(manager, intent)
        except DuplicateAlias as exc:
            _finish(intent)
            log.error("publish to topic %r rolled back during recovery: %s", intent.topic, exc)
            out.append(RecoveredIntent(intent.topic, intent.targets, "rolled back", str(exc)))
            continue
        except BaseException:
            os.close(fd)
            raise
        _finish(intent)
        log.warning("completed an interrupted publish to topic %r: %s", intent.topic, sorted(intent.targets))
        out.append(RecoveredIntent(intent.topic, intent.targets))
    return out


def publish(
    manager: QueueManager,
    topic: str,
    payload: Any,
    *,
    alias: str | None = None,
    retries: int = 0,
    username: str | None = None,
) -> dict[str, str]:
    """Put one copy of ``payload`` into every queue subscribed to ``topic``; return queue -> uuid.

    Each copy carries ``data = payload`` unchanged and ``alias`` if given, with its own uuid.
    All or none: when this returns, every copy is in its queue; if it raises
    :class:`DuplicateAlias` (the alias is held in one of the queues), no copy is; if the
    process dies or a :class:`~queue_engine.errors.StorageError` is raised after the intent
    was written, :func:`recover` (run by the next publish) completes it. A topic with no
    subscribers returns ``{}`` and stores nothing.
    """
    topic = validate_topic_name(topic)
    encode_data(payload)
    message = QueueMessage(data=payload, alias=alias, retries=retries, username=username)
    recover(manager)
    queues = subscribers(manager, topic)
    if not queues:
        log.info("topic %r has no subscribers: nothing published", topic)
        return {}
    if alias is not None:  # refuse before any queue changes (the prepare step still catches a race)
        for queue in queues:
            held = manager.find_messages(queue, alias=alias, limit=1)
            if held:
                raise DuplicateAlias(
                    f"cannot publish to topic {topic!r}: queue {queue!r} already has a pending message "
                    f"with alias {alias!r} (uuid {held[0].uuid})",
                    queue=queue,
                    alias=alias,
                    uuid=held[0].uuid or "",
                )
    message.inserted_at = from_epoch(time.time())  # one publish time for every copy
    record = message.to_record()
    targets = {queue: str(uuid_module.uuid4()) for queue in queues}
    intent = _write_intent(intents_dir(manager), topic, targets, record, Modes(manager.config.file_mode))
    try:
        _complete(manager, intent)
    except DuplicateAlias:
        _finish(intent)  # _prepare removed the copies: nothing to recover
        raise
    except StorageError:
        os.close(intent.fd)
        log.error("publish to topic %r interrupted; intent %s is left for recover()", topic, intent.path)
        raise
    except BaseException:
        os.close(intent.fd)
        raise
    _finish(intent)
    return dict(targets)
