"""RabbitMQ bridge: a qengine queue as a reliable outbox and inbox for AMQP 0-9-1 systems.

RabbitMQ is a bridge here, not a backend: it cannot find or update messages in place, so
the qengine queue stays the store of record on both sides.

**Outbound (outbox).** A queue with a ``[amqp.QUEUE]`` section is drained by
:class:`AmqpPublisher`, the worker the loader gives such a queue (``qengine work QUEUE`` or
any daemon hosting it). Each message is published persistent, ``mandatory`` (an unroutable
message is an error, not silently dropped), with publisher confirms, and acked in qengine
only once RabbitMQ confirmed it. Every publish carries ``message_id = <qengine uuid>`` so a
receiver can drop the rare duplicate (a publisher killed between the confirm and the ack).

* RabbitMQ unreachable or blocking publishers (a resource alarm): the publisher does not
  reserve anything; messages stay queued, untouched and in order, and it tries to reconnect
  after the configured backoff (``[worker.QUEUE]`` backoff keys; default exponential, 1 s
  to 5 min). No attempt is spent.
* The message refused (unroutable, nacked, exchange missing): that message is retried with
  the worker's strategy and ends in the failed store after ``retries`` attempts
  (``qengine requeue`` brings it back).
* The broker failing during a publish (connection lost, blocked, no confirm within the
  publish time limit of 3 x ``timeout``): the connection is dropped and the message retried
  without end (:attr:`PublishFailed.retry_forever`); it may have reached RabbitMQ, so the
  retry may be a duplicate with the same ``message_id``.
* ``enabled = false``: nothing is published on purpose; everything stays queued (the
  original's ``rabbit_active = false``).

The publisher's state (failing since, last error, disabled) is kept in the queue's engine
metadata under ``"amqp"`` and shown by ``qengine status QUEUE`` as a banner.

**Inbound (inbox).** :class:`AmqpConsumer` (``qengine amqp consume RABBITQUEUE --into
QUEUE``, or :class:`AmqpConsumerDaemon`) consumes with manual acks and a prefetch limit,
adds each message to the qengine queue and acks RabbitMQ only after the add returned. A body
that is not UTF-8 JSON goes to the failed store of the target queue with the raw body kept
(base64) and the AMQP properties that came with it. An AMQP ``message_id`` becomes the
qengine alias (``on_duplicate="ignore"``), so a redelivery after a consumer crash does not
add a second copy while the first is still pending.

Config::

    [amqp]                        ; connection defaults for every outbox and for consumers
    uri = amqp://user:secret@rabbit.example:5672/vhost
    ; or, never both:  host, port, username, password, virtualHost
    heartbeat = 30                ; seconds (>= 1)
    timeout = 10                  ; seconds to connect; a publish may take 3 x timeout
    prefetch = 100                ; unacked deliveries a consumer holds at most

    [amqp.PROMOTIONS]             ; queue PROMOTIONS is an outbox
    exchange = promo              ; default: "" (the default exchange)
    routingKey = promotion        ; default: the queue name
    enabled = true
    ; a uri here replaces [amqp]'s connection; host / port / ... replace just those parts

Passwords never appear in logs, errors, status or audit records (see :meth:`Endpoint.display`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .config import Config, parse_bool, parse_int, parse_seconds
from .daemon import Daemon
from .errors import (
    ConfigurationError,
    InvalidMessage,
    QueueEngineError,
    QueueNotFound,
    StorageError,
    TimeLimitExceeded,
)

try:
    import pika
    import pika.exceptions
    from pika.adapters.blocking_connection import BlockingChannel
except ModuleNotFoundError as exc:  # an optional extra: say how to get it, in one line
    raise ConfigurationError(
        f"the RabbitMQ bridge needs the {exc.name!r} package: pip install 'qengine[amqp]'"
    ) from None
from .manager import QueueManager
from .message import QueueMessage, encode_data, validate_queue_name
from .retry import Backoff, ExponentialBackoff
from .worker import Worker, error_text, time_limit

__all__ = [
    "AMQP_KEYS",
    "AMQP_META_KEY",
    "AmqpConsumer",
    "AmqpConsumerDaemon",
    "AmqpError",
    "AmqpPublisher",
    "BrokerUnavailable",
    "Endpoint",
    "OutboxSettings",
    "PublishFailed",
    "consumer_settings",
    "endpoint_from_uri",
    "outbox_queues",
    "outbox_settings",
    "publisher_state",
]

logger = logging.getLogger("qengine.amqp")
# pika logs every refused connection at ERROR with a traceback; this module reports each
# failure once, in one line. A level the application set on "pika" itself is kept.
if logging.getLogger("pika").level == logging.NOTSET:
    logging.getLogger("pika").setLevel(logging.CRITICAL)

#: Keys of a connection, in ``[amqp]`` or ``[amqp.QUEUE]``; ``uri`` excludes the others.
CONNECTION_KEYS = ("uri", "host", "port", "username", "password", "virtualHost")
#: Keys accepted in ``[amqp]`` and ``[amqp.QUEUE]``, as written in config.ini (case-insensitive).
AMQP_KEYS = (*CONNECTION_KEYS, "heartbeat", "timeout", "prefetch", "exchange", "routingKey", "enabled")
_OUTBOX_ONLY = ("exchange", "routingKey", "enabled")
_CONSUMER_ONLY = ("prefetch",)
#: Top-level queue-meta key holding the publisher's state.
AMQP_META_KEY = "amqp"
DEFAULT_PORT = 5672
DEFAULT_HEARTBEAT = 30
DEFAULT_TIMEOUT = 10.0
DEFAULT_PREFETCH = 100
#: Default publisher strategy: a refused publish is retried 10 times over about 17 minutes.
DEFAULT_RETRIES = 10
DEFAULT_BACKOFF: Backoff = ExponentialBackoff(base=1.0, factor=2.0, max_delay=300.0)
#: Seconds of publisher silence after which it services the connection (heartbeats, closes).
_SERVICE_EVERY = 5.0
#: Errors pika raises for a broker that cannot be reached or went away.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    OSError,
)


# -- errors -------------------------------------------------------------------------------
class AmqpError(QueueEngineError):
    """A RabbitMQ operation failed."""


class BrokerUnavailable(AmqpError, StorageError):
    """RabbitMQ could not be reached, refused the login or the vhost, or the connection dropped."""


class PublishFailed(AmqpError):
    """RabbitMQ did not confirm a publish (unroutable, nacked, exchange missing, connection lost).

    ``retry_forever`` is true when the broker, not the message, is at fault (connection lost,
    blocked by a resource alarm, no confirm in time): the runner then retries it whatever the
    attempt count instead of moving it to the failed store.
    """

    def __init__(self, text: str, *, retry_forever: bool = False) -> None:
        super().__init__(text)
        self.retry_forever = retry_forever


# -- settings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """Where a RabbitMQ broker is and how to log in. ``password`` never shows in ``repr``."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    virtual_host: str = "/"
    heartbeat: int = DEFAULT_HEARTBEAT
    timeout: float = DEFAULT_TIMEOUT
    tls: bool = False

    def parameters(self) -> pika.ConnectionParameters:
        """pika's connection parameters: one connection attempt, bounded timeouts."""
        ssl_options = None
        if self.tls:
            import ssl

            ssl_options = pika.SSLOptions(ssl.create_default_context(), self.host)
        return pika.ConnectionParameters(
            host=self.host,
            port=self.port,
            virtual_host=self.virtual_host,
            credentials=pika.PlainCredentials(self.username, self.password),
            heartbeat=self.heartbeat,
            socket_timeout=self.timeout,
            stack_timeout=self.timeout,
            blocked_connection_timeout=self.timeout * 6,
            connection_attempts=1,
            ssl_options=ssl_options,
            client_properties={"connection_name": "qengine"},
        )

    def display(self) -> str:
        """``amqp://user@host:port/vhost``: safe to log and print (no password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{quote(self.username, safe='')}@{host}:{self.port}/{quote(self.virtual_host, safe='')}"


def endpoint_from_uri(uri: str, *, where: str = "uri", heartbeat: int = DEFAULT_HEARTBEAT,
                      timeout: float = DEFAULT_TIMEOUT) -> Endpoint:
    """Parse ``amqp[s]://user:password@host:port/vhost`` (the seed's form; vhost optional).

    Raises :class:`ConfigurationError` naming ``where`` and the URI with its password masked.
    """
    text = uri.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{where} = {_mask(text)!r} is not an AMQP URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"{where} = {_mask(text)!r}: the scheme must be amqp or amqps")
    if not parts.hostname:
        raise ConfigurationError(f"{where} = {_mask(text)!r}: no host")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{where} = {_mask(text)!r}: query and fragment are not supported")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if "/" in path:
        raise ConfigurationError(f"{where} = {_mask(text)!r}: escape a '/' in the vhost as %2F")
    return Endpoint(
        host=parts.hostname,
        port=port if port is not None else (5671 if scheme == "amqps" else DEFAULT_PORT),
        username=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        virtual_host=unquote(path) if path else "/",
        heartbeat=heartbeat,
        timeout=timeout,
        tls=scheme == "amqps",
    )


def _mask(uri: str) -> str:
    """``uri`` with the password replaced by ``***``."""
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
        netloc = parts.netloc.rsplit("@", 1)
        return uri.replace(netloc[0], f"{parts.username}:***", 1) if len(netloc) == 2 else uri
    except ValueError:
        return "<invalid uri>"


@dataclass(frozen=True)
class OutboxSettings:
    """``[amqp.QUEUE]`` merged over ``[amqp]``, checked."""

    queue: str
    endpoint: Endpoint
    exchange: str = ""
    routing_key: str = ""
    enabled: bool = True

    def target(self) -> str:
        """``<endpoint> exchange=... routing_key=...`` for logs and status."""
        return f"{self.endpoint.display()} exchange={self.exchange!r} routing_key={self.routing_key!r}"


def _source(config: Config | None) -> str:
    return str(config.source) if config is not None and config.source is not None else "configuration"


def _section(config: Config | None, name: str, *, refuse: tuple[str, ...] = ()) -> tuple[dict[str, str], str]:
    """The keys of ``[name]`` (canonical spelling -> unquoted value) and the error prefix."""
    prefix = f"{_source(config)}: [{name}]"
    if config is None:
        return {}, prefix
    found = config.find_section(name)
    if found is None:
        return {}, prefix
    prefix = f"{_source(config)}: [{found}]"
    canonical = {k.lower(): k for k in AMQP_KEYS}
    out: dict[str, str] = {}
    for key in config.parser.options(found):
        known = canonical.get(key.lower())
        if known is None or known in refuse:
            valid = [k for k in AMQP_KEYS if k not in refuse]
            raise ConfigurationError(f"{prefix} unknown key {key}; valid: {', '.join(valid)}")
        out[known] = config.setting(found, key) or ""
    return out, prefix


def _endpoint(section: Mapping[str, str], prefix: str, fallback: Endpoint | None) -> Endpoint:
    heartbeat = fallback.heartbeat if fallback is not None else DEFAULT_HEARTBEAT
    timeout = fallback.timeout if fallback is not None else DEFAULT_TIMEOUT
    if "heartbeat" in section:
        # >= 1: heartbeats are what detects a stalled broker while a confirm or a close is awaited
        heartbeat = parse_int(f"{prefix} heartbeat", section["heartbeat"], minimum=1)
    if "timeout" in section:
        timeout = parse_seconds(f"{prefix} timeout", section["timeout"], maximum=300)
    parts = [k for k in CONNECTION_KEYS[1:] if k in section]
    if "uri" in section:
        if parts:
            raise ConfigurationError(
                f"{prefix} uri excludes {', '.join(parts)}: give either the full uri or its parts, never both"
            )
        return endpoint_from_uri(section["uri"], where=f"{prefix} uri", heartbeat=heartbeat, timeout=timeout)
    base = fallback if fallback is not None else Endpoint()  # each part given replaces that part only
    port = base.port
    if "port" in section:
        port = parse_int(f"{prefix} port", section["port"], minimum=1)
        if port > 65535:
            raise ConfigurationError(f"{prefix} port = {section['port']!r} is not a TCP port (1-65535)")
    host = section.get("host", base.host).strip()
    if not host:
        raise ConfigurationError(f"{prefix} host is empty")
    return Endpoint(
        host=host,
        port=port,
        username=section.get("username", base.username),
        password=section.get("password", base.password),
        virtual_host=section.get("virtualHost", base.virtual_host) or "/",
        heartbeat=heartbeat,
        timeout=timeout,
        tls=base.tls,
    )


def _bool(section: Mapping[str, str], key: str, prefix: str, default: bool) -> bool:
    return parse_bool(f"{prefix} {key}", section[key]) if key in section else default


def consumer_settings(config: Config | None, *, uri: str | None = None) -> tuple[Endpoint, int]:
    """The endpoint and prefetch consumers use: ``[amqp]``, or ``uri`` when given (it wins).

    Default endpoint: ``amqp://guest:guest@localhost:5672/``. Raises :class:`ConfigurationError`.
    """
    section, prefix = _section(config, "amqp", refuse=_OUTBOX_ONLY)
    endpoint = _endpoint(section, prefix, None)
    if uri is not None:
        endpoint = endpoint_from_uri(uri, where="--uri", heartbeat=endpoint.heartbeat, timeout=endpoint.timeout)
    prefetch = DEFAULT_PREFETCH
    if "prefetch" in section:
        prefetch = parse_int(f"{prefix} prefetch", section["prefetch"], minimum=1)
        if prefetch > 65535:
            raise ConfigurationError(f"{prefix} prefetch = {section['prefetch']!r}: at most 65535")
    return endpoint, prefetch


def outbox_queues(config: Config | None) -> list[str]:
    """The queues configured as outboxes (one ``[amqp.QUEUE]`` section each), as written.

    Raises :class:`ConfigurationError` naming the file and section for an invalid queue name.
    """
    if config is None:
        return []
    names = []
    for section in config.parser.sections():
        if section.lower().startswith("amqp."):
            try:
                names.append(validate_queue_name(section[5:]))
            except QueueEngineError as exc:
                raise ConfigurationError(f"{_source(config)}: [{section}]: {exc}") from None
    return names


def outbox_settings(config: Config | None, queue: str) -> OutboxSettings | None:
    """The outbox settings of ``queue``, or None when it has no ``[amqp.QUEUE]`` section.

    Raises :class:`ConfigurationError` for an unknown key, a bad value, or a connection given
    both as ``uri`` and as parts.
    """
    validate_queue_name(queue)
    if config is None or config.find_section(f"amqp.{queue}") is None:
        return None
    shared, shared_prefix = _section(config, "amqp", refuse=_OUTBOX_ONLY)
    base = _endpoint(shared, shared_prefix, None)
    own, prefix = _section(config, f"amqp.{queue}", refuse=_CONSUMER_ONLY)
    endpoint = _endpoint(own, prefix, base)
    routing_key = own.get("routingKey", queue)
    exchange = own.get("exchange", "")
    if not exchange and not routing_key:
        raise ConfigurationError(
            f"{prefix} routingKey is empty: the default exchange routes by queue name, so every publish "
            "would be unroutable; name the RabbitMQ queue, or set an exchange"
        )
    for key, value in (("exchange", exchange), ("routingKey", routing_key)):
        if len(value.encode("utf-8")) > 255:
            raise ConfigurationError(f"{prefix} {key} = {value[:40]!r}...: at most 255 bytes")
    return OutboxSettings(queue, endpoint, exchange, routing_key, _bool(own, "enabled", prefix, True))


# -- connections --------------------------------------------------------------------------
def _connect(endpoint: Endpoint) -> pika.BlockingConnection:
    """A new blocking connection, or :class:`BrokerUnavailable` saying why (no password)."""
    try:
        return pika.BlockingConnection(endpoint.parameters())
    except pika.exceptions.ProbableAuthenticationError:
        who = endpoint.username
        raise BrokerUnavailable(f"RabbitMQ at {endpoint.display()} refused the login of {who!r}") from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise BrokerUnavailable(
            f"RabbitMQ at {endpoint.display()}: access to vhost {endpoint.virtual_host!r} refused"
        ) from None
    except (*_CONNECTION_ERRORS, pika.exceptions.AMQPError) as exc:
        raise BrokerUnavailable(f"RabbitMQ at {endpoint.display()} unreachable: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The innermost cause pika wrapped (``ConnectionRefusedError: ...``), one line, bounded."""
    for _ in range(8):
        inner: object = None
        wrapped = getattr(exc, "exceptions", None)  # AMQPConnectionWorkflowFailed: one per try
        if isinstance(wrapped, (list, tuple)) and wrapped:
            inner = wrapped[-1]
        elif isinstance(getattr(exc, "exception", None), BaseException):  # a connector phase error
            inner = exc.exception  # type: ignore[attr-defined]
        elif exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return error_text(exc)[:300]


def _abort(connection: pika.BlockingConnection | None) -> None:
    """Drop ``connection`` at once, without the close handshake a stalled broker never answers.

    pika has no public abort; shutting its socket down is enough: the broker sees the
    connection gone (unconfirmed publishes and unacked deliveries are its to redeliver).
    """
    if connection is None:
        return
    sock = getattr(getattr(getattr(connection, "_impl", None), "_transport", None), "_sock", None)
    if sock is None:
        _close(connection)
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()  # the connection object is never used again
    try:
        connection._impl.ioloop.close()  # its poller and wake-up socket pair
    except Exception:  # best effort: a pika without this layout leaves them to the GC
        logger.debug("closing an aborted connection's I/O loop failed", exc_info=True)


def _close(connection: pika.BlockingConnection | None) -> None:
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except TimeLimitExceeded:
        raise
    except Exception:  # closing a broken connection: nothing left to save
        logger.debug("closing a RabbitMQ connection failed", exc_info=True)


# -- outbox -------------------------------------------------------------------------------
def publisher_state(manager: QueueManager, queue: str) -> dict[str, Any] | None:
    """The publisher state of ``queue`` (``state`` ok | failing | disabled, ``error``,
    ``since``, ``target``), or None when no publisher ever ran on it."""
    try:
        state = manager.queue_meta(queue).get(AMQP_META_KEY)
    except QueueNotFound:
        return None
    return dict(state) if isinstance(state, dict) else None


class AmqpPublisher(Worker):
    """Publishes the messages of an outbox queue to RabbitMQ, one confirmed publish per message.

    The worker the loader returns for a queue with a ``[amqp.QUEUE]`` section. Defaults:
    ``retries = 10`` with exponential backoff from 1 s to 5 min, and a time limit per
    publish of three times the connection ``timeout`` (``[worker.QUEUE]`` may override
    them). While the broker is unreachable, blocked by a resource alarm, or publishing is
    disabled, :meth:`paused_for` keeps the runner from reserving its messages. Attempts
    only count against ``retries`` when the message itself is refused (unroutable, nacked,
    exchange missing); a broker fault is retried without end (:class:`PublishFailed`).
    """

    retries = DEFAULT_RETRIES
    backoff = DEFAULT_BACKOFF

    def __init__(self, manager: QueueManager, settings: OutboxSettings, *, backoff: Backoff | None = None) -> None:
        self.manager = manager
        self.settings = settings
        self.queue = settings.queue
        if backoff is not None:
            self.backoff = backoff
        # A stalled broker never answers: the time limit bounds the wait for a confirm.
        self.time_limit = 3 * settings.endpoint.timeout
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._finalizer: weakref.finalize | None = None
        self._blocked = False  # the broker sent connection.blocked (a memory or disk alarm)
        self._failures = 0  # consecutive connection failures
        self._retry_at = 0.0  # monotonic time of the next connection attempt
        self._state: tuple[str, str | None] | None = None  # last (state, error) recorded
        self._since: str | None = None  # when the recorded state began
        self._last_io = 0.0  # monotonic time of the last exchange with the broker
        self._cause: str | None = None  # connection | publish: what the recorded failure is about

    # -- connection -----------------------------------------------------------------------
    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        connection = _connect(self.settings.endpoint)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            connection.add_on_connection_blocked_callback(self._on_blocked)
            connection.add_on_connection_unblocked_callback(self._on_unblocked)
        except Exception as exc:
            _close(connection)
            raise BrokerUnavailable(f"RabbitMQ at {self.settings.endpoint.display()}: {_reason(exc)}") from None
        self._connection, self._channel, self._blocked = connection, channel, False
        self._last_io = time.monotonic()
        self._finalizer = weakref.finalize(self, _close, connection)  # a runner drops workers unclosed
        logger.info("%s: connected to %s", self.queue, self.settings.target())
        return channel

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        self._blocked = True
        reason = getattr(getattr(frame, "method", None), "reason", "") or "resource alarm"
        logger.warning("%s: RabbitMQ blocks publishing (%s): messages stay queued", self.queue, reason)
        self._set_state("failing", f"RabbitMQ at {self.settings.endpoint.display()} blocks publishing: {reason}",
                        cause="connection")

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        self._blocked = False
        logger.info("%s: RabbitMQ accepts publishing again", self.queue)

    def close(self, *, abort: bool = False) -> None:
        """Close the connection (it is reopened on demand). Idempotent.

        ``abort``: drop it without the close handshake (the broker may be stalled).
        """
        connection, self._connection, self._channel = self._connection, None, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        (_abort if abort else _close)(connection)

    def paused_for(self) -> float:
        """0 when a message may be reserved; else the seconds until the broker is tried again.

        Publishing disabled: the runner's idle wait (1 s). Broker unreachable: the worker's
        backoff for the number of consecutive connection failures. Broker blocked by a
        resource alarm: 1 s, until it unblocks.
        """
        if not self.settings.enabled:
            text = f"publishing disabled by configuration ([amqp.{self.queue}] enabled = false)"
            if self._state != ("disabled", text):
                logger.warning("%s: %s: messages stay queued", self.queue, text)
                self._set_state("disabled", text)
            return 1.0
        now = time.monotonic()
        if now < self._retry_at:
            return self._retry_at - now
        if self._channel is not None and self._channel.is_open:
            if not self._blocked and now - self._last_io < _SERVICE_EVERY:
                return 0.0
            # Idle for a while, or blocked: answer heartbeats, take the unblock, and notice a
            # connection the broker closed, so the next message spends no attempt on it.
            self._last_io = now
            try:
                assert self._connection is not None
                self._connection.process_data_events(time_limit=0)
                if self._channel is not None and self._channel.is_open:
                    return 1.0 if self._blocked else 0.0
            except (pika.exceptions.AMQPError, *_CONNECTION_ERRORS) as exc:
                logger.info("%s: connection to %s lost while idle: %s", self.queue,
                            self.settings.endpoint.display(), _reason(exc))
            self.close(abort=True)
        try:
            self._open()
        except BrokerUnavailable as exc:
            self._failures += 1
            wait = max(0.1, self.backoff.delay(self._failures))
            self._retry_at = time.monotonic() + wait
            logger.warning("%s: %s; messages stay queued, next try in %.3gs", self.queue, exc, wait)
            self._set_state("failing", str(exc), cause="connection")
            return wait
        self._failures = 0
        self._clear_connection_failure()
        return 0.0

    # -- publishing -----------------------------------------------------------------------
    def properties(self, message: QueueMessage) -> pika.BasicProperties:
        """Persistent, JSON, ``message_id`` = the qengine uuid, with the origin in headers."""
        headers: dict[str, Any] = {"x-qengine-queue": self.queue, "x-qengine-attempt": message.attempts}
        if message.alias is not None:
            headers["x-qengine-alias"] = message.alias
        stamp = message.inserted_at.timestamp() if message.inserted_at is not None else time.time()
        return pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message.uuid,
            timestamp=int(stamp),
            app_id="qengine",
            headers=headers,
        )

    def process(self, message: QueueMessage) -> dict[str, Any]:
        """Publish ``message`` and wait for the broker's confirm; raise :class:`PublishFailed` otherwise."""
        body = encode_data(message.data).encode("utf-8")
        where = f"publish of {message.uuid} to {self.settings.target()}"
        t0 = time.monotonic()
        try:
            channel = self._open()
            channel.basic_publish(
                self.settings.exchange, self.settings.routing_key, body, self.properties(message), mandatory=True
            )
        except pika.exceptions.UnroutableError:
            raise self._refused(f"{where}: unroutable (no queue bound to it)") from None
        except pika.exceptions.NackError:
            raise self._refused(f"{where}: nacked by the broker") from None
        except pika.exceptions.ChannelClosedByBroker as exc:  # e.g. 404: the exchange does not exist
            self.close()
            raise self._refused(f"{where}: {exc.reply_code} {exc.reply_text}") from None
        except BrokerUnavailable as exc:
            raise self._broker_fault(f"{where}: {exc}", abort=False) from None
        except (pika.exceptions.AMQPError, *_CONNECTION_ERRORS) as exc:
            # Connection lost or blocked too long: the message may or may not have reached
            # RabbitMQ; if it did, the retry is the duplicate receivers drop by message_id.
            raise self._broker_fault(f"{where}: {_reason(exc)}", abort=True) from None
        except TimeLimitExceeded:
            raise self._broker_fault(
                f"{where}: no confirm within {self.time_limit:g}s (it may have reached RabbitMQ)", abort=True
            ) from None
        except BaseException:
            self.close(abort=True)  # interrupted inside pika: the connection state is unknown
            raise
        self._last_io = time.monotonic()
        self._set_state("ok", None)
        return {"target": self.settings.target(), "duration_ms": round((time.monotonic() - t0) * 1000, 1)}

    def _refused(self, text: str) -> PublishFailed:
        """The message itself was refused: retried, then the failed store."""
        self._set_state("failing", text, cause="publish")
        return PublishFailed(text)

    def _broker_fault(self, text: str, *, abort: bool) -> PublishFailed:
        """The broker failed, not the message: reconnect later, retry the message without end."""
        self.close(abort=abort)
        self._failures += 1
        self._retry_at = time.monotonic() + max(0.1, self.backoff.delay(self._failures))
        self._set_state("failing", text, cause="connection")
        return PublishFailed(text, retry_forever=True)

    def audit_extra(self, message: QueueMessage, outcome: str, result_or_error: Any) -> dict[str, Any]:
        """The audit ``extra``: the broker and exchange (no password), and the confirm time."""
        if isinstance(result_or_error, dict):
            return dict(result_or_error)
        return {"target": self.settings.target()}

    # -- state shown by `qengine status` ---------------------------------------------------
    def _clear_connection_failure(self) -> None:
        """Connected: a recorded connection failure or a stale ``disabled`` no longer holds."""
        current = self._state
        if current is None:
            recorded = self._recorded()
            stale = recorded.get("state") == "disabled" or (
                recorded.get("state") == "failing" and recorded.get("cause") == "connection"
            )
            if stale or (recorded.get("state") == "failing" and recorded.get("target") != self.settings.target()):
                self._set_state("ok", None)
        elif current[0] == "disabled" or (current[0] == "failing" and self._cause == "connection"):
            self._set_state("ok", None)

    def _recorded(self) -> dict[str, Any]:
        """The state recorded by an earlier run; {} if none or unreadable (never raises)."""
        try:
            return publisher_state(self.manager, self.queue) or {}
        except QueueEngineError as exc:
            logger.warning("%s: could not read the publisher state: %s", self.queue, exc)
            return {}

    def _set_state(self, state: str, error: str | None, *, cause: str | None = None) -> None:
        """Record a change of state in the queue meta; repeats write nothing (the hot path)."""
        if self._state == (state, error):
            return
        previous = self._state
        self._state = (state, error)
        self._cause = cause
        if state == "ok" and previous is None and self._recorded().get("state", "ok") == "ok":
            return  # nothing to clear
        if previous is None or previous[0] != state:
            # "since" is when this state began: a new error text during one outage keeps it
            recorded = self._recorded() if previous is None else {}
            if recorded.get("state") == state and recorded.get("since"):
                self._since = str(recorded["since"])
            else:
                self._since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        value: dict[str, Any] = {
            "state": state,
            "error": error,
            "cause": cause,
            "since": self._since,
            "target": self.settings.target(),
        }
        if state == "ok":
            logger.info("%s: publishing to %s works", self.queue, self.settings.target())
        try:
            self.manager.update_queue_meta(self.queue, {AMQP_META_KEY: value})
        except QueueNotFound:
            pass  # nothing was ever added to the outbox: there is nothing to report on
        except QueueEngineError as exc:
            logger.warning("%s: could not record the publisher state %s: %s", self.queue, state, exc)


# -- inbox --------------------------------------------------------------------------------
def _alias(message_id: object) -> str | None:
    if isinstance(message_id, str) and message_id and len(message_id) <= 255 and "\x00" not in message_id:
        return message_id
    return None


def _json_safe(value: Any) -> Any:
    """AMQP header values as JSON (bytes become text, datetimes ISO strings)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def delivery_info(method: Any, properties: pika.BasicProperties) -> dict[str, Any]:
    """What RabbitMQ said about a delivery, JSON-safe: kept with a malformed body."""
    return {
        "exchange": method.exchange,
        "routing_key": method.routing_key,
        "redelivered": bool(method.redelivered),
        "message_id": _json_safe(properties.message_id),
        "content_type": _json_safe(properties.content_type),
        "timestamp": _json_safe(properties.timestamp),
        "headers": _json_safe(properties.headers or {}),
    }


class AmqpConsumer:
    """Moves the messages of RabbitMQ queue ``source`` into qengine queue ``into``.

    Manual acks, at most ``prefetch`` unacked deliveries; each delivery is acked only after
    the qengine add returned, so a consumer killed at any point loses nothing (RabbitMQ
    redelivers what was not acked). A qengine storage error nacks the delivery back to
    RabbitMQ and waits (1 s doubling to 30 s) before consuming again.
    """

    def __init__(
        self,
        manager: QueueManager,
        source: str,
        into: str,
        *,
        endpoint: Endpoint | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        if not isinstance(source, str) or not source or len(source.encode("utf-8")) > 255:
            raise ConfigurationError(f"invalid RabbitMQ queue name {source!r}: 1-255 bytes")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 65535:
            raise ConfigurationError(f"invalid prefetch {prefetch!r}: a whole number from 1 to 65535")
        self.manager = manager
        self.source = source
        self.into = validate_queue_name(into)
        self.endpoint = endpoint if endpoint is not None else Endpoint()
        self.prefetch = prefetch
        self.added = 0
        self.malformed = 0
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._stopping = False
        #: Also consulted between deliveries: a daemon passes its own stop flag here.
        self.should_stop: Callable[[], bool] | None = None

    def stop(self) -> None:
        """Return from :meth:`run` after the current delivery. Safe from a signal handler."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping or (self.should_stop is not None and self.should_stop())

    def close(self) -> None:
        """Close the connection; RabbitMQ requeues every delivery not acked yet. Idempotent.

        A broker that does not answer the close within ``timeout`` seconds (enforced in the
        main thread) has its connection dropped instead.
        """
        connection, self._connection, self._channel = self._connection, None, None
        if connection is None:
            return
        try:
            with time_limit(self.endpoint.timeout, "closing the RabbitMQ connection"):
                _close(connection)
        except TimeLimitExceeded:
            _abort(connection)

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        connection = _connect(self.endpoint)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            channel.queue_declare(self.source, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            _close(connection)
            if exc.reply_code == 404:
                raise AmqpError(
                    f"RabbitMQ queue {self.source!r} not found on {self.endpoint.display()}"
                ) from None
            raise AmqpError(f"RabbitMQ queue {self.source!r}: {exc.reply_text}") from None
        except (pika.exceptions.AMQPError, *_CONNECTION_ERRORS) as exc:
            _close(connection)
            raise BrokerUnavailable(f"RabbitMQ at {self.endpoint.display()}: {_reason(exc)}") from None
        self._connection, self._channel = connection, channel
        logger.info("consuming %r from %s into %s (prefetch %d)", self.source, self.endpoint.display(),
                    self.into, self.prefetch)
        return channel

    def handle(self, channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> str:
        """Store one delivery in qengine, then ack it; return ``added`` or ``malformed``.

        A delivery whose ``message_id`` is the alias of a pending message is not added again
        (a redelivery after a crash) but still counts as ``added``.

        Raises :class:`StorageError` (the delivery was nacked back to RabbitMQ) when the
        qengine backend fails.
        """
        outcome = "added"
        try:
            try:
                data = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
                raise InvalidMessage(f"body is not UTF-8 JSON: {error_text(exc)[:200]}") from None
            message = QueueMessage(data=data, alias=_alias(properties.message_id))
            self.manager.add_message(self.into, message, on_duplicate="ignore")
        except InvalidMessage as exc:
            self._keep_malformed(method, properties, body, exc)
            outcome = "malformed"
        except QueueEngineError as exc:
            channel.basic_nack(method.delivery_tag, requeue=True)
            raise StorageError(f"could not add to qengine queue {self.into!r}: {exc}") from exc
        except (RecursionError, ValueError, TypeError) as exc:  # JSON qengine cannot re-encode (nested too deep)
            self._keep_malformed(method, properties, body, InvalidMessage(f"unusable JSON: {error_text(exc)[:200]}"))
            outcome = "malformed"
        channel.basic_ack(method.delivery_tag)
        if outcome == "added":
            self.added += 1
        elif outcome == "malformed":
            self.malformed += 1
        return outcome

    def _keep_malformed(self, method: Any, properties: pika.BasicProperties, body: bytes, error: Exception) -> None:
        try:
            text: str | None = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        kept = QueueMessage(
            data={
                "amqp_body": text,
                "amqp_body_base64": base64.b64encode(body).decode("ascii"),
                "amqp": delivery_info(method, properties),
            }
        )
        reason = f"{error_text(error)} (RabbitMQ queue {self.source!r})"
        uuid = self.manager.add_failed(self.into, kept, [reason])
        logger.error("malformed message from %r kept in the failed store of %s as %s: %s",
                     self.source, self.into, uuid, error)

    def run(
        self,
        *,
        max_messages: int | None = None,
        burst: bool = False,
        idle: float = 1.0,
        on_message: Callable[[str], None] | None = None,
    ) -> int:
        """Consume until stopped; return the deliveries handled.

        ``burst``: return once no delivery came for ``idle`` seconds, and raise
        :class:`BrokerUnavailable` / :class:`AmqpError` instead of waiting for the broker.
        Otherwise a lost or refused connection is retried forever (1 s doubling to 30 s);
        a missing Rabbit queue raises :class:`AmqpError` when it is seen on the first try.
        ``max_messages``: return after that many deliveries.
        """
        if not (isinstance(idle, (int, float)) and math.isfinite(idle) and idle > 0):
            raise ConfigurationError(f"invalid idle {idle!r}: a number of seconds > 0")
        handled = 0
        failures = 0
        while not self.stopping and (max_messages is None or handled < max_messages):
            try:
                channel = self._open()
                for method, properties, body in channel.consume(self.source, auto_ack=False, inactivity_timeout=idle):
                    failures = 0
                    if method is None:
                        if burst or self.stopping:
                            self._cancel()
                            return handled
                        continue
                    outcome = self.handle(channel, method, properties, body)
                    handled += 1
                    if on_message is not None:
                        on_message(outcome)
                    if self.stopping or (max_messages is not None and handled >= max_messages):
                        break
                self._cancel()
            except BaseException as exc:
                self.close()  # unacked deliveries go back to RabbitMQ now, not when this process ends
                if not isinstance(exc, (QueueEngineError, pika.exceptions.AMQPError, *_CONNECTION_ERRORS)):
                    raise
                # A mistake seen on the first try (a Rabbit queue that does not exist) is reported
                # at once; a failure later on is waited out.
                first_try = handled == 0 and failures == 0
                if burst or (first_try and isinstance(exc, AmqpError) and not isinstance(exc, BrokerUnavailable)):
                    if isinstance(exc, QueueEngineError):  # AmqpError, or the qengine backend failed
                        raise
                    raise BrokerUnavailable(f"RabbitMQ at {self.endpoint.display()}: {_reason(exc)}") from None
                failures += 1
                wait = min(30.0, 2.0 ** (failures - 1))
                logger.warning("consumer of %r: %s; retrying in %gs", self.source, _reason(exc), wait)
                self._sleep(wait)
        return handled

    def _cancel(self) -> None:
        """Stop the consumer; prefetched deliveries not handled go back to RabbitMQ."""
        channel = self._channel
        if channel is None or not channel.is_open:
            return
        try:
            with time_limit(self.endpoint.timeout, "cancelling the RabbitMQ consumer"):
                channel.cancel()
        except TimeLimitExceeded:
            connection, self._connection, self._channel = self._connection, None, None
            _abort(connection)
        except (pika.exceptions.AMQPError, *_CONNECTION_ERRORS):
            self.close()

    def _sleep(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < until:
            time.sleep(min(0.1, until - time.monotonic()))


def decode_kept_body(data: Mapping[str, Any]) -> bytes:
    """The raw body of a malformed delivery kept in the failed store (see :class:`AmqpConsumer`)."""
    try:
        return base64.b64decode(str(data["amqp_body_base64"]), validate=True)
    except (KeyError, binascii.Error) as exc:
        raise InvalidMessage(f"not a kept AMQP delivery: {error_text(exc)}") from None


# -- daemon -------------------------------------------------------------------------------

class AmqpConsumerDaemon(Daemon):
    """A daemon moving RabbitMQ queue :attr:`source` into qengine queue :attr:`into`.

    Subclass it in ``daemons/`` and set both attributes. Each iteration handles at most
    :attr:`batch` deliveries (or returns after :attr:`idle` seconds without one), so stop
    requests and status are looked at regularly; the connection stays open between
    iterations. A broker that is down makes an iteration fail, and the daemon framework
    retries with its backoff. ``[amqp]`` gives the connection and the prefetch.
    """

    #: RabbitMQ queue to consume (the seed's ``rabbitMQ.endpointName``).
    source: str = ""
    #: qengine queue the messages are added to.
    into: str = ""
    #: Deliveries handled per iteration at most.
    batch: int = 500
    #: Seconds without a delivery after which an iteration returns.
    idle: float = 1.0
    sleep_time = 0.0

    def __init__(self) -> None:
        self.manager: QueueManager | None = None
        self.consumer: AmqpConsumer | None = None

    def setup(self) -> None:
        from .factory import QueueFactory

        if not self.source or not self.into:
            raise ConfigurationError(f"{type(self).__name__} must set both source and into")
        self.queues = (self.into,)
        endpoint, prefetch = consumer_settings(self.config)
        self.manager = QueueFactory.get_queue_manager(self.config)
        self.consumer = AmqpConsumer(self.manager, self.source, self.into, endpoint=endpoint, prefetch=prefetch)
        self.consumer.should_stop = lambda: self.stopping

    def execute_start(self) -> int:
        if self.consumer is None:
            self.setup()
        assert self.consumer is not None
        return self.consumer.run(max_messages=self.batch, burst=True, idle=self.idle)

    def execute_stop(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.manager is not None:
            self.manager.close()
        self.consumer = self.manager = None

    def status(self) -> dict[str, Any]:
        consumer = self.consumer
        if consumer is None:
            return {"source": self.source, "into": self.into}
        return {"source": self.source, "into": self.into, "added": consumer.added, "malformed": consumer.malformed,
                "broker": consumer.endpoint.display()}

    def longest_job(self) -> float | None:
        return self.idle + 30.0
