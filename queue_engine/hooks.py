"""REST hooks: POST a JSON payload to every listener registered on a queue, with retries.

Listeners live in the queue's engine metadata under the key ``"hooks"`` (a list of
``{url, headers, secret, timeout}``), never in :meth:`~queue_engine.manager.QueueManager.queue_status`.
:func:`send` creates one delivery per listener, each a message of the queue itself whose data
names the listener by a stable id and carries the payload (never the secret or the headers)::

    {"hook": "<listener id>", "payload": <the JSON payload>}

:class:`HookWorker` delivers them: it is the worker of any queue that has listeners and no
per-type worker (see :func:`queue_engine.loader.load_worker`), so ``qengine work QUEUE`` or a
daemon sends them, with the retry, failed-store and audit machinery of every worker.

Config ``[resthooks]`` (all optional):

* ``active``: 1 (default) queued, deliveries wait for a worker; 0 direct, :func:`send`
  delivers before it returns (attempts back to back, as every direct-mode message).
* ``retries``: attempts per delivery (default 5).
* ``backoff`` (fixed | linear | exponential), ``retryDelay``, ``retryIncrement``,
  ``backoffFactor``, ``maxDelay``, ``jitter``: the wait between attempts, as for workers.
* ``timeout``: seconds per HTTP request (default 10); a listener's own timeout wins.
* ``onSuccess`` / ``onFailure``: dotted callables taking ``(message, details)`` /
  ``(message, error)``.

``[worker.QUEUE]`` keys still override these per queue, as for any worker.

A secret signs each request: ``X-QEngine-Timestamp: <unix seconds>`` and
``X-QEngine-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``.
Secrets and header values never appear in logs, audit records, errors or listings.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from .config import Config, parse_bool, parse_int, parse_seconds
from .errors import ConfigurationError, InvalidMessage, QueueEngineError, QueueNotFound, Unrecoverable
from .manager import QueueManager
from .message import QueueMessage, encode_data, validate_queue_name
from .retry import BACKOFF_KEYS, Backoff, ExponentialBackoff, backoff_from_config
from .worker import FailureCallback, SuccessCallback, Worker, error_text, resolve_callable, resolve_settings

__all__ = [
    "HOOKS_META_KEY",
    "RESTHOOKS_KEYS",
    "Delivery",
    "DeliveryFailed",
    "DeliveryRejected",
    "HookSettings",
    "HookWorker",
    "Listener",
    "add_listener",
    "hook_settings",
    "listener_id",
    "listeners",
    "redact_url",
    "remove_listener",
    "send",
    "sign",
]

logger = logging.getLogger("qengine.hooks")

#: Top-level queue-meta key holding the listeners.
HOOKS_META_KEY = "hooks"
#: Keys accepted in ``[resthooks]``, as written in config.ini (case-insensitive).
RESTHOOKS_KEYS = ("active", "retries", "timeout", "onSuccess", "onFailure", *BACKOFF_KEYS)
DEFAULT_RETRIES = 5
DEFAULT_TIMEOUT = 10.0
DEFAULT_BACKOFF: Backoff = ExponentialBackoff(base=2.0, factor=2.0, max_delay=600.0)
#: A Retry-After longer than this is capped: a listener cannot park a delivery for days.
MAX_RETRY_AFTER = 3600.0
#: Characters of a response body kept in the audit trail.
RESPONSE_EXCERPT = 200
#: Statuses retried besides 5xx (and connection errors and timeouts).
RETRY_STATUSES = frozenset({408, 429})
#: Headers the engine sets itself; a listener may not override them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "x-qengine-timestamp", "x-qengine-signature"}
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SENSITIVE_HEADER = re.compile(r"auth|cookie|token|key|secret|pass|signature", re.IGNORECASE)
_MAX_URL = 2048
_MAX_TIMEOUT = 300.0


# -- listeners ----------------------------------------------------------------------------
def listener_id(url: str) -> str:
    """The stable id of the listener at ``url``: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def redact_url(url: str) -> str:
    """``url`` without credentials and with every query value replaced by ``***``: safe to log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port is not None else host
        query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:  # a bad port: show nothing that could be a secret
        return "<invalid url>"


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise InvalidMessage(f"invalid listener URL {url!r}: a string is required")
    text = url.strip()
    shown = redact_url(text)
    if not text or len(text) > _MAX_URL or any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise InvalidMessage(
            f"invalid listener URL {shown!r}: 1-{_MAX_URL} characters without spaces or control characters"
        )
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidMessage(f"invalid listener URL {shown!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        scheme = parts.scheme or "none"
        raise InvalidMessage(f"invalid listener URL {shown!r}: scheme {scheme!r} is not http or https")
    if not parts.hostname:
        raise InvalidMessage(f"invalid listener URL {shown!r}: no host")
    return text


def _check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidMessage(f"invalid header name {name!r}: letters, digits and !#$%&'*+-.^_`|~ only")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidMessage(f"header {name!r} is set by qengine and cannot be given")
        if not isinstance(value, str) or any(ch in value for ch in "\r\n\x00"):
            # the value may be a credential: never echo it
            raise InvalidMessage(f"invalid value for header {name!r}: text without CR, LF or NUL")
        if name.lower() in (n.lower() for n in out):
            raise InvalidMessage(f"header {name!r} is given twice")
        out[name] = value
    return out


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
        math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT
    ):
        raise InvalidMessage(f"invalid listener timeout {timeout!r}: seconds > 0 and <= {_MAX_TIMEOUT:g}")
    return float(timeout)


@dataclass(frozen=True)
class Listener:
    """One registered receiver of a queue's hooks. ``secret`` and header values are private."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    secret: str | None = field(default=None, repr=False)
    #: Seconds per request; None: ``[resthooks] timeout``.
    timeout: float | None = None

    @property
    def id(self) -> str:
        return listener_id(self.url)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def to_meta(self) -> dict[str, Any]:
        """The stored form (in the queue's engine metadata)."""
        return {"url": self.url, "headers": dict(self.headers), "secret": self.secret, "timeout": self.timeout}

    @classmethod
    def from_meta(cls, item: Mapping[str, Any]) -> Listener:
        return cls(
            url=str(item["url"]),
            headers=dict(item.get("headers") or {}),
            secret=item.get("secret") or None,
            timeout=item.get("timeout"),
        )

    def to_dict(self) -> dict[str, Any]:
        """A view safe to print: redacted URL, sensitive header values masked, ``secret: set``."""
        return {
            "id": self.id,
            "url": self.display_url,
            "headers": {k: ("***" if _SENSITIVE_HEADER.search(k) else v) for k, v in self.headers.items()},
            "secret": "set" if self.secret else None,
            "timeout": self.timeout,
        }


def listeners(manager: QueueManager, queue: str) -> list[Listener]:
    """The listeners of ``queue`` in registration order; [] for a queue that has none or does not exist."""
    try:
        meta = manager.queue_meta(queue)
    except QueueNotFound:
        return []
    return [Listener.from_meta(item) for item in meta.get(HOOKS_META_KEY) or []]


def add_listener(
    manager: QueueManager,
    queue: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    secret: str | None = None,
    timeout: float | None = None,
) -> tuple[Listener, bool]:
    """Register ``url`` on ``queue`` (created if missing); return the listener and whether it is new.

    A listener with the same URL is replaced by the new settings. Raises
    :class:`InvalidMessage` for a URL that is not http(s), a bad header, secret or timeout;
    no message quotes a secret or a header value.
    """
    validate_queue_name(queue)
    checked = _check_url(url)
    if secret is not None and (not isinstance(secret, str) or not secret or "\x00" in secret):
        raise InvalidMessage("invalid listener secret: non-empty text without NUL")
    listener = Listener(checked, _check_headers(headers), secret, _check_timeout(timeout))
    if not manager.queue_exists(queue):
        manager.create_queue(queue)
    current = listeners(manager, queue)
    new = all(item.url != listener.url for item in current)
    kept = [item if item.url != listener.url else listener for item in current]
    if new:
        kept.append(listener)
    # Read-modify-write: two processes adding listeners to one queue at the same moment may
    # lose one of them; registration is an administrative act, not a hot path.
    manager.update_queue_meta(queue, {HOOKS_META_KEY: [item.to_meta() for item in kept]})
    action = "added" if new else "updated"
    logger.info("%s listener %s %s on queue %s", action, listener.id, listener.display_url, queue)
    return listener, new


def remove_listener(manager: QueueManager, queue: str, url_or_id: str) -> bool:
    """Unregister the listener of ``queue`` with this URL (or id); False if there was none.

    Deliveries already queued for it fail with "listener removed" when their turn comes.
    """
    current = listeners(manager, queue)
    kept = [item for item in current if url_or_id not in (item.url, item.id)]
    if len(kept) == len(current):
        return False
    manager.update_queue_meta(queue, {HOOKS_META_KEY: [item.to_meta() for item in kept] or None})
    return True


# -- settings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class HookSettings:
    """``[resthooks]``, checked."""

    active: bool = True
    retries: int = DEFAULT_RETRIES
    backoff: Backoff = DEFAULT_BACKOFF
    timeout: float = DEFAULT_TIMEOUT
    on_success: SuccessCallback | None = None
    on_failure: FailureCallback | None = None




def hook_settings(config: Config | None) -> HookSettings:
    """The ``[resthooks]`` settings of ``config``; defaults where a key is absent.

    Raises :class:`ConfigurationError` naming the file, the key and the value.
    """
    source = str(config.source) if config is not None and config.source is not None else "configuration"
    prefix = f"{source}: [resthooks]"
    if config is None or not config.parser.has_section("resthooks"):
        return HookSettings()
    canonical = {k.lower(): k for k in RESTHOOKS_KEYS}
    section: dict[str, str] = {}
    for key, raw in config.parser.items("resthooks"):
        known = canonical.get(key.lower())
        if known is None:
            raise ConfigurationError(f"{prefix} unknown key {key}; valid: {', '.join(RESTHOOKS_KEYS)}")
        section[known] = raw
    active = True
    if "active" in section:
        active = parse_bool(f"{prefix} active", section["active"], hint=": use 1 (queued) or 0 (direct)")
    retries = DEFAULT_RETRIES
    if "retries" in section:
        retries = parse_int(f"{prefix} retries", section["retries"], minimum=1)
    timeout = DEFAULT_TIMEOUT
    if "timeout" in section:
        timeout = parse_seconds(f"{prefix} timeout", section["timeout"], maximum=_MAX_TIMEOUT)
    backoff = backoff_from_config(section, prefix) or DEFAULT_BACKOFF
    on_success = resolve_callable(section["onSuccess"], f"{prefix} onSuccess") if "onSuccess" in section else None
    on_failure = resolve_callable(section["onFailure"], f"{prefix} onFailure") if "onFailure" in section else None
    return HookSettings(active, retries, backoff, timeout, on_success, on_failure)


# -- signing ------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-QEngine-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``b"<timestamp>." + body``."""
    digest = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


# -- delivery -----------------------------------------------------------------------------
class DeliveryFailed(QueueEngineError):
    """An HTTP delivery attempt failed and may be retried (connection error, timeout, 408, 429, 5xx).

    ``details`` is the attempt's audit extra; ``retry_after`` the seconds the listener asked
    to wait (the runner waits at least that long), or None.
    """

    def __init__(self, text: str, details: dict[str, Any], retry_after: float | None = None) -> None:
        super().__init__(text)
        self.details = details
        self.retry_after = retry_after


class DeliveryRejected(DeliveryFailed, Unrecoverable):
    """The listener refused the delivery (a 4xx other than 408/429), or it was removed: no retry."""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(0.0, (when - datetime.now(timezone.utc)).total_seconds()), MAX_RETRY_AFTER)


def _scrub(text: str, listener: Listener) -> str:
    """``text`` with the listener's secret, header values and full URL masked."""
    for private in [listener.secret, *listener.headers.values()]:
        if private and len(private) >= 4:  # masking "a" would mangle every message
            text = text.replace(private, "***")
    return text.replace(listener.url, listener.display_url)


@dataclass(frozen=True)
class Delivery:
    """One delivery created by :func:`send`. ``delivered``: None while queued; in direct mode
    whether the listener accepted it (False: it is in the failed store)."""

    uuid: str
    listener: str
    listener_id: str
    delivered: bool | None = None


class HookWorker(Worker):
    """Delivers the hook messages of a queue: one POST per attempt, one HTTP client per worker.

    Its defaults come from ``[resthooks]``; ``[worker.QUEUE]`` may override them like for
    any worker. A delivery whose listener was removed fails at once ("listener removed").
    """

    def __init__(self, manager: QueueManager, config: Config | None = None) -> None:
        self.manager = manager
        self.hook = hook_settings(config if config is not None else manager.config)
        self.retries = self.hook.retries
        self.backoff = self.hook.backoff
        self._client: httpx.Client | None = None
        #: uuids delivered by this worker, for direct mode's report; bounded by its callers.
        self.delivered: set[str] = set()

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            client = httpx.Client(follow_redirects=False, headers={"User-Agent": "qengine-hooks"})
            weakref.finalize(self, client.close)  # a runner never closes its workers explicitly
            self._client = client
        return self._client

    def close(self) -> None:
        """Close the HTTP connections. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _listener(self, message: QueueMessage) -> tuple[Listener, Any]:
        data = message.data
        if not (isinstance(data, dict) and isinstance(data.get("hook"), str) and "payload" in data):
            raise DeliveryRejected(
                f"message {message.uuid} of queue {self.queue!r} is not a hook delivery "
                "(data must be {'hook': '<listener id>', 'payload': ...})",
                {"listener": None, "status": None, "duration_ms": 0, "response": ""},
            )
        wanted = data["hook"]
        for listener in listeners(self.manager, self.queue):
            if listener.id == wanted:
                return listener, data["payload"]
        raise DeliveryRejected(
            f"listener removed: queue {self.queue!r} has no listener {wanted}",
            {"listener": wanted, "status": None, "duration_ms": 0, "response": ""},
        )

    def process(self, message: QueueMessage) -> dict[str, Any]:
        """POST the payload to the listener; return the audit details, or raise DeliveryFailed/Rejected."""
        listener, payload = self._listener(message)
        body = encode_data(payload).encode("utf-8")
        headers = {**listener.headers, "Content-Type": "application/json"}
        if listener.secret:
            stamp = int(time.time())
            headers["X-QEngine-Timestamp"] = str(stamp)
            headers["X-QEngine-Signature"] = sign(listener.secret, stamp, body)
        timeout = listener.timeout if listener.timeout is not None else self.hook.timeout
        where = f"POST {listener.display_url}"
        t0 = time.monotonic()
        try:
            response = self.client.post(listener.url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            details = self._details(listener, None, t0, "")
            raise DeliveryFailed(f"{where}: no answer within {timeout:g}s", details) from None
        except httpx.TransportError as exc:
            details = self._details(listener, None, t0, "")
            raise DeliveryFailed(_scrub(f"{where}: {error_text(exc)}", listener), details) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # cannot succeed on a retry
            details = self._details(listener, None, t0, "")
            raise DeliveryRejected(_scrub(f"{where}: {error_text(exc)}", listener), details) from None
        excerpt = _scrub(response.text[:RESPONSE_EXCERPT], listener)
        details = self._details(listener, response.status_code, t0, excerpt)
        status = response.status_code
        if 200 <= status < 300:
            return details
        text = f"{where} answered {status}" + (f": {excerpt[:80]}" if excerpt else "")
        if status in RETRY_STATUSES or status >= 500:
            raise DeliveryFailed(text, details, _retry_after(response.headers.get("Retry-After")))
        raise DeliveryRejected(text, details)

    @staticmethod
    def _details(listener: Listener, status: int | None, t0: float, response: str) -> dict[str, Any]:
        return {
            "listener": listener.display_url,
            "status": status,
            "duration_ms": round((time.monotonic() - t0) * 1000, 1),
            "response": response,
        }

    def audit_extra(self, message: QueueMessage, outcome: str, result_or_error: Any) -> dict[str, Any]:
        """The audit ``extra`` of an attempt: listener, status, duration_ms, response."""
        if isinstance(result_or_error, DeliveryFailed):
            return dict(result_or_error.details)
        if isinstance(result_or_error, dict):
            return dict(result_or_error)
        return {}

    def on_success(self, message: QueueMessage, result: Any) -> None:
        if message.uuid:
            self.delivered.add(message.uuid)
        if self.hook.on_success is not None:
            self._call("onSuccess", self.hook.on_success, message, result)

    def on_failure(self, message: QueueMessage, error: BaseException) -> None:
        if self.hook.on_failure is not None:
            self._call("onFailure", self.hook.on_failure, message, error)

    @staticmethod
    def _call(name: str, callback: Callable[..., Any], message: QueueMessage, arg: Any) -> None:
        try:
            callback(message, arg)
        except Exception:
            logger.exception("[resthooks] %s failed for message %s", name, message.uuid)


def send(manager: QueueManager, queue: str, payload: Any, *, config: Config | None = None) -> list[Delivery]:
    """Create one delivery of ``payload`` per listener of ``queue``; return them in listener order.

    Queued mode (``[resthooks] active = 1``): the deliveries are added to the queue in one
    atomic step and a worker sends them. Direct mode (``active = 0``): each is delivered here
    before this returns; one that fails for good goes to the failed store (``delivered`` is
    False) and nothing is raised. A queue without listeners gives []. Raises
    :class:`InvalidMessage` when ``payload`` is not JSON.
    """
    validate_queue_name(queue)
    encode_data(payload)
    config = config if config is not None else manager.config
    settings = hook_settings(config)
    targets = listeners(manager, queue)
    if not targets:
        logger.warning("queue %s has no listeners: nothing sent", queue)
        return []
    messages = [QueueMessage(data={"hook": item.id, "payload": payload}) for item in targets]
    if settings.active:
        uuids = manager.add_messages(queue, messages)
        return [Delivery(u, item.display_url, item.id) for u, item in zip(uuids, targets, strict=True)]
    from .runner import run_direct

    worker = HookWorker(manager, config)
    worker.queue = queue
    try:
        worker_settings = resolve_settings(worker, config, queue)
        out = []
        for message, item in zip(messages, targets, strict=True):
            uuid = run_direct(manager, worker, worker_settings, message)
            out.append(Delivery(uuid, item.display_url, item.id, uuid in worker.delivered))
        return out
    finally:
        worker.close()

