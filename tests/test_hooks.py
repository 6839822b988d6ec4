"""REST hooks against a real local HTTP server, on the file backend.

The server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, port 0, in a thread) behaves by
path: ``/flaky/<key>`` answers 500 twice then 200; ``/slow`` answers after the client gave
up; ``/gone`` 410; ``/busy/<key>`` 429 with ``Retry-After`` then 200; ``/signed`` checks the
HMAC signature the way docs/HOOKS.md tells receivers to. "Always down" is a closed port.
``retryDelay = 0`` keeps retries immediate, so ``burst`` runs every attempt in one go.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from ports import free_port

from queue_engine import QueueFactory, QueueManager
from queue_engine.audit import get_audit_log
from queue_engine.cli import cli
from queue_engine.errors import ConfigurationError, InvalidMessage
from queue_engine.hooks import (
    HOOKS_META_KEY,
    HookWorker,
    _retry_after,
    add_listener,
    hook_settings,
    listener_id,
    listeners,
    redact_url,
    remove_listener,
    send,
)
from queue_engine.runner import WorkerRunner

HANG_GUARD = 120.0  # seconds; only so a broken build cannot hang the suite
SECRET = "s3cr3t-hmac-KEY-9f2"
TOKEN = "tok-AUTH-7731"
QUERY_SECRET = "qv-SECRET-4410"
PASSWORD = "pw-URL-5521"
Q = "orders"


# -- the HTTP server ----------------------------------------------------------------------
class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.release_slow = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r["path"] for r in self.requests]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.requests.append({"path": path, "headers": dict(self.headers), "body": body})
            count = self.server.counts[path] = self.server.counts.get(path, 0) + 1
        if path.startswith("/flaky/"):
            self.answer(500, b"boom") if count <= 2 else self.answer(200, b"ok")
        elif path == "/slow":
            self.server.release_slow.wait(HANG_GUARD)
            self.answer(200, b"late")
        elif path == "/gone":
            self.answer(410, b"gone")
        elif path.startswith("/busy/"):
            wait = path.rsplit("-", 1)[-1]
            self.answer(429, b"slow down", {"Retry-After": wait}) if count == 1 else self.answer(200, b"ok")
        elif path == "/signed":
            self.answer(*verify(self.headers.get("X-QEngine-Timestamp"), self.headers.get("X-QEngine-Signature"), body))
        else:
            self.answer(200, b"ok")

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (slow path)
            pass


def verify(timestamp: str | None, signature: str | None, body: bytes) -> tuple[int, bytes]:
    """The receiver check of docs/HOOKS.md, written independently of queue_engine.hooks.sign."""
    if not timestamp or not signature:
        return 401, b"unsigned"
    if abs(time.time() - int(timestamp)) > 300:
        return 401, b"stale"
    expected = "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return 401, b"bad signature"
    return 200, b"verified"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release_slow.set()
    srv.shutdown()
    srv.server_close()
    thread.join(HANG_GUARD)


@pytest.fixture
def down_url() -> str:
    """A URL on a port nothing listens on (below the ephemeral range: no self-connect)."""
    return f"http://127.0.0.1:{free_port()}/down"


# -- config and managers ------------------------------------------------------------------
MakeConfig = Callable[..., Path]


@pytest.fixture
def make_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MakeConfig:
    monkeypatch.delenv("QENGINE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    def make(resthooks: str = "retries = 3\nbackoff = fixed\nretryDelay = 0\ntimeout = 5\n") -> Path:
        path = tmp_path / "qengine.ini"
        path.write_text(
            f"[queue]\nqueueType = file\ncacheRoot = {tmp_path / 'data'}\nfsync = never\n\n[resthooks]\n{resthooks}"
        )
        return path

    return make


@pytest.fixture
def config(make_config: MakeConfig) -> Path:
    return make_config()


@pytest.fixture
def mgr(config: Path) -> Iterator[QueueManager]:
    manager = QueueFactory.get_queue_manager(config)
    yield manager
    manager.close()


def work(manager: QueueManager, queue: str = Q) -> int:
    """Run the queue's worker until no message is ready; close its HTTP client."""
    runner = WorkerRunner(manager, [queue], burst=True)
    worker = runner.handlers[queue].worker
    assert isinstance(worker, HookWorker)
    try:
        return runner.run()
    finally:
        worker.close()


def audit_rows(manager: QueueManager, queue: str = Q, uuid: str | None = None) -> list[tuple[Any, ...]]:
    """(uuid, attempt, outcome, error, extra without duration) per record; checks duration_ms."""
    rows = []
    for rec in get_audit_log(manager).query(queue, uuid=uuid):
        extra = dict(rec.extra)
        duration = extra.pop("duration_ms")
        assert isinstance(duration, (int, float)) and duration >= 0
        rows.append((rec.uuid, rec.attempt, rec.outcome, rec.error, extra))
    return rows


def extra(url: str, status: int | None, response: str) -> dict[str, Any]:
    return {"listener": url, "status": status, "response": response}


# -- registering listeners ----------------------------------------------------------------
def test_listeners_are_kept_in_queue_meta(mgr: QueueManager) -> None:
    first, new = add_listener(mgr, Q, "http://a.example/hook", headers={"X-Tenant": "7"}, timeout=2)
    assert new and first.id == listener_id("http://a.example/hook") and len(first.id) == 16
    _, new = add_listener(mgr, Q, "https://b.example/hook", secret=SECRET)
    assert new
    updated, new = add_listener(mgr, Q, "http://a.example/hook", timeout=3)
    assert not new and updated.timeout == 3
    assert [(x.url, x.timeout, x.secret) for x in listeners(mgr, Q)] == [
        ("http://a.example/hook", 3.0, None),
        ("https://b.example/hook", None, SECRET),
    ]
    assert mgr.queue_meta(Q)[HOOKS_META_KEY][1] == {
        "url": "https://b.example/hook", "headers": {}, "secret": SECRET, "timeout": None,
    }
    assert remove_listener(mgr, Q, "http://a.example/hook")
    assert remove_listener(mgr, Q, listener_id("https://b.example/hook"))  # by id
    assert not remove_listener(mgr, Q, "https://b.example/hook")
    assert listeners(mgr, Q) == [] and HOOKS_META_KEY not in mgr.queue_meta(Q)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com/x", "scheme 'ftp' is not http or https"),
        ("example.com/hook", "scheme 'none' is not http or https"),
        ("file:///etc/passwd", "scheme 'file' is not http or https"),
        ("http:///nohost", "no host"),
        ("http://exa mple.com/", "without spaces"),
        ("http://example.com:99999/", "Port out of range"),
        ("", "1-2048 characters"),
    ],
)
def test_bad_url_is_refused(mgr: QueueManager, url: str, fragment: str) -> None:
    with pytest.raises(InvalidMessage, match="invalid listener URL") as info:
        add_listener(mgr, Q, url)
    assert fragment in str(info.value)
    assert listeners(mgr, Q) == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"headers": {"Bad Name": "x"}}, "invalid header name 'Bad Name'"),
        ({"headers": {"X-A": f"{TOKEN}\r\nX-Injected: 1"}}, "invalid value for header 'X-A'"),
        ({"headers": {"X-QEngine-Signature": "forged"}}, "is set by qengine"),
        ({"secret": ""}, "invalid listener secret"),
        ({"timeout": 0}, "invalid listener timeout 0"),
    ],
)
def test_bad_listener_settings_are_refused(mgr: QueueManager, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        add_listener(mgr, Q, "http://example.com/hook", **kwargs)
    assert fragment in str(info.value) and TOKEN not in str(info.value)


def test_redact_url() -> None:
    url = f"https://user:{PASSWORD}@example.com:8443/in/hook?token={QUERY_SECRET}&x=1"
    assert redact_url(url) == "https://example.com:8443/in/hook?token=***&x=***"
    assert redact_url("http://[::1]:80/h") == "http://[::1]:80/h"


# -- [resthooks] ----------------------------------------------------------------------------
def test_hook_settings(make_config: MakeConfig) -> None:
    from queue_engine.config import load_config
    from queue_engine.retry import LinearBackoff

    cfg = load_config(make_config("active = 0\nretries = 4\nbackoff = linear\nretryDelay = 2\ntimeout = 1.5\n"
                                  "onSuccess = json:dumps\n"))
    settings = hook_settings(cfg)
    assert (settings.active, settings.retries, settings.timeout) == (False, 4, 1.5)
    assert isinstance(settings.backoff, LinearBackoff) and settings.backoff.initial == 2.0
    assert settings.on_success is json.dumps and settings.on_failure is None


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ("active = maybe\n", "[resthooks] active = 'maybe': use 1 (queued) or 0 (direct)"),
        ("retries = 0\n", "[resthooks] retries = '0' must be >= 1"),
        ("retries = x\n", "[resthooks] retries = 'x' is not a whole number"),
        ("timeout = -1\n", "[resthooks] timeout = '-1' must be > 0"),
        ("backoff = random\n", "[resthooks] backoff = 'random' is not a backoff"),
        ("onFailure = no.such.module:f\n", "[resthooks] onFailure = 'no.such.module:f': cannot import"),
        ("colour = red\n", "[resthooks] unknown key colour; valid: active, retries"),
    ],
)
def test_bad_hook_settings(make_config: MakeConfig, section: str, fragment: str) -> None:
    from queue_engine.config import load_config

    path = make_config(section)
    with pytest.raises(ConfigurationError) as info:
        hook_settings(load_config(path))
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_retry_after_parsing() -> None:
    assert _retry_after("1") == 1.0
    assert _retry_after("999999") == 3600.0  # capped
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = _retry_after(format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True))
    assert later is not None and 60 < later <= 120
    assert _retry_after(format_datetime(datetime.now(timezone.utc) - timedelta(days=1), usegmt=True)) == 0.0


# -- delivering (queued mode) ---------------------------------------------------------------
def test_one_delivery_per_listener_each_retried_on_its_own(
    mgr: QueueManager, server: Server, down_url: str
) -> None:
    flaky, gone = f"{server.base}/flaky/a", f"{server.base}/gone"
    for url in (flaky, gone, down_url):
        add_listener(mgr, Q, url)
    deliveries = send(mgr, Q, {"order": 42, "name": "Zoë"})
    assert [(d.listener, d.delivered) for d in deliveries] == [(flaky, None), (gone, None), (down_url, None)]
    pending = mgr.find_messages(Q)
    assert [m.data for m in pending] == [
        {"hook": listener_id(url), "payload": {"order": 42, "name": "Zoë"}} for url in (flaky, gone, down_url)
    ]
    assert server.requests == []  # queued: nothing sent before a worker runs

    assert work(mgr) == 3 + 1 + 3
    u_flaky, u_gone, u_down = (d.uuid for d in deliveries)
    assert audit_rows(mgr, uuid=u_flaky) == [
        (u_flaky, 1, "retry", f"DeliveryFailed: POST {flaky} answered 500: boom", extra(flaky, 500, "boom")),
        (u_flaky, 2, "retry", f"DeliveryFailed: POST {flaky} answered 500: boom", extra(flaky, 500, "boom")),
        (u_flaky, 3, "success", None, extra(flaky, 200, "ok")),
    ]
    assert audit_rows(mgr, uuid=u_gone) == [
        (u_gone, 1, "failed", f"DeliveryRejected: POST {gone} answered 410: gone", extra(gone, 410, "gone")),
    ]
    down_rows = audit_rows(mgr, uuid=u_down)
    assert [(r[1], r[2], r[4]) for r in down_rows] == [
        (1, "retry", extra(down_url, None, "")), (2, "retry", extra(down_url, None, "")),
        (3, "failed", extra(down_url, None, "")),
    ]
    for row in down_rows:
        assert row[3].startswith(f"DeliveryFailed: POST {down_url}: ConnectError: ")

    failed = {str(fm.message.uuid): fm for fm in mgr.failed_messages(Q)}
    assert sorted(failed) == sorted([u_gone, u_down])
    assert failed[u_gone].errors == [f"DeliveryRejected: POST {gone} answered 410: gone"]
    assert failed[u_gone].message.attempts == 1
    assert [e.split(": ConnectError")[0] for e in failed[u_down].errors] == [f"DeliveryFailed: POST {down_url}"] * 3
    assert failed[u_down].message.attempts == 3
    assert mgr.find_messages(Q) == []
    assert server.paths().count("/flaky/a") == 3 and server.paths().count("/gone") == 1
    body = json.loads(server.requests[0]["body"])
    assert body == {"order": 42, "name": "Zoë"}
    assert server.requests[0]["headers"]["Content-Type"] == "application/json"


def test_timeout_is_retried_then_failed(mgr: QueueManager, server: Server) -> None:
    slow = f"{server.base}/slow"
    add_listener(mgr, Q, slow, timeout=0.3)
    [delivery] = send(mgr, Q, [1, 2])
    work(mgr)
    error = f"DeliveryFailed: POST {slow}: no answer within 0.3s"
    assert audit_rows(mgr) == [
        (delivery.uuid, 1, "retry", error, extra(slow, None, "")),
        (delivery.uuid, 2, "retry", error, extra(slow, None, "")),
        (delivery.uuid, 3, "failed", error, extra(slow, None, "")),
    ]
    assert [fm.errors for fm in mgr.failed_messages(Q)] == [[error] * 3]


def test_retry_after_is_honoured(mgr: QueueManager, server: Server) -> None:
    busy = f"{server.base}/busy/a-1"
    add_listener(mgr, Q, busy)
    [delivery] = send(mgr, Q, {"n": 1})
    runner = WorkerRunner(mgr, [Q], sleep=0.05, max_time=HANG_GUARD)
    runner.handlers[Q].worker.on_success = lambda message, result: runner.stop()  # type: ignore[method-assign]
    try:
        runner.run()
    finally:
        runner.handlers[Q].worker.close()  # type: ignore[attr-defined]
    records = get_audit_log(mgr).query(Q)
    assert [(r.outcome, r.extra["status"]) for r in records] == [("retry", 429), ("success", 200)]
    assert records[0].error == f"DeliveryFailed: POST {busy} answered 429: slow down"
    # retryDelay is 0, so only Retry-After: 1 can explain the wait (a lower bound: never flaky)
    assert records[1].started_at - (records[0].started_at + records[0].duration) >= 0.9
    assert delivery.uuid == records[1].uuid


def test_long_retry_after_keeps_the_delivery_waiting(mgr: QueueManager, server: Server) -> None:
    add_listener(mgr, Q, f"{server.base}/busy/b-120")
    send(mgr, Q, {"n": 1})
    assert work(mgr) == 1  # 429, then nothing is ready for 120 s
    [pending] = mgr.find_messages(Q)
    assert pending.attempts == 1 and mgr.queue_status(Q).ready == 0


def test_listener_removed_before_delivery(mgr: QueueManager, server: Server) -> None:
    url = f"{server.base}/ok"
    add_listener(mgr, Q, url)
    add_listener(mgr, Q, f"{server.base}/other")  # the queue keeps a listener: HookWorker serves it
    [first, _] = send(mgr, Q, "x")
    remove_listener(mgr, Q, url)
    work(mgr)
    error = f"DeliveryRejected: listener removed: queue {Q!r} has no listener {listener_id(url)}"
    assert audit_rows(mgr, uuid=first.uuid) == [
        (first.uuid, 1, "failed", error, {"listener": listener_id(url), "status": None, "response": ""}),
    ]
    assert server.paths() == ["/other"]


def test_signature(mgr: QueueManager, server: Server) -> None:
    signed = f"{server.base}/signed"
    add_listener(mgr, Q, signed, secret=SECRET)
    add_listener(mgr, Q, f"{server.base}/signed?unsigned=1")
    send(mgr, Q, {"amount": "12.50", "text": "ñandú"})
    work(mgr)
    assert [(r.extra["status"], r.extra["response"]) for r in get_audit_log(mgr).query(Q)] == [
        (200, "verified"), (401, "unsigned"),
    ]
    request = server.requests[0]
    assert request["body"] == '{"amount":"12.50","text":"ñandú"}'.encode()
    assert request["headers"]["X-QEngine-Signature"].startswith("sha256=")


def test_requeue_sends_a_failed_delivery_again(mgr: QueueManager, make_config: MakeConfig, server: Server) -> None:
    mgr.close()
    manager = QueueFactory.get_queue_manager(make_config("retries = 2\nbackoff = fixed\nretryDelay = 0\n"))
    try:
        url = f"{server.base}/flaky/r"
        add_listener(manager, Q, url)
        [delivery] = send(manager, Q, {"n": 1})
        work(manager)
        assert [fm.message.uuid for fm in manager.failed_messages(Q)] == [delivery.uuid]
        assert manager.requeue_failed(Q) == [delivery.uuid]
        work(manager)
        assert manager.failed_messages(Q) == []
        assert [(r[1], r[2], r[4]["status"]) for r in audit_rows(manager)] == [
            (1, "retry", 500), (2, "failed", 500), (1, "success", 200),
        ]
    finally:
        manager.close()


def test_callbacks(make_config: MakeConfig, server: Server) -> None:
    CALLS.clear()
    manager = QueueFactory.get_queue_manager(make_config(
        "retries = 1\nretryDelay = 0\nonSuccess = test_hooks:record_success\nonFailure = test_hooks:record_failure\n"
    ))
    try:
        add_listener(manager, Q, f"{server.base}/ok")
        add_listener(manager, Q, f"{server.base}/gone")
        send(manager, Q, 1)
        work(manager)
    finally:
        manager.close()
    assert CALLS == [("success", 200), ("failure", "DeliveryRejected")]


CALLS: list[tuple[str, Any]] = []


def record_success(message: Any, details: dict[str, Any]) -> None:
    CALLS.append(("success", details["status"]))


def record_failure(message: Any, error: BaseException) -> None:
    CALLS.append(("failure", type(error).__name__))


# -- direct mode --------------------------------------------------------------------------
def test_direct_mode_delivers_before_send_returns(make_config: MakeConfig, server: Server) -> None:
    manager = QueueFactory.get_queue_manager(make_config("active = 0\nretries = 3\nretryDelay = 0\n"))
    try:
        flaky, gone = f"{server.base}/flaky/d", f"{server.base}/gone"
        add_listener(manager, Q, flaky)
        add_listener(manager, Q, gone)
        deliveries = send(manager, Q, {"direct": True})
        assert [(d.listener, d.delivered) for d in deliveries] == [(flaky, True), (gone, False)]
        assert server.paths() == ["/flaky/d"] * 3 + ["/gone"]
        assert manager.find_messages(Q) == []  # nothing was queued
        u_ok, u_gone = (d.uuid for d in deliveries)
        assert audit_rows(manager) == [
            (u_ok, 1, "retry", f"DeliveryFailed: POST {flaky} answered 500: boom", extra(flaky, 500, "boom")),
            (u_ok, 2, "retry", f"DeliveryFailed: POST {flaky} answered 500: boom", extra(flaky, 500, "boom")),
            (u_ok, 3, "success", None, extra(flaky, 200, "ok")),
            (u_gone, 1, "failed", f"DeliveryRejected: POST {gone} answered 410: gone", extra(gone, 410, "gone")),
        ]
        [failed] = manager.failed_messages(Q)
        assert failed.message.uuid == u_gone and failed.errors == [f"DeliveryRejected: POST {gone} answered 410: gone"]
    finally:
        manager.close()


def test_send_without_listeners_and_bad_payload(mgr: QueueManager) -> None:
    mgr.create_queue(Q)
    assert send(mgr, Q, {"a": 1}) == []
    add_listener(mgr, Q, "http://example.com/")
    with pytest.raises(InvalidMessage):
        send(mgr, Q, {"a": float("nan")})
    assert mgr.find_messages(Q) == []


# -- secrets ------------------------------------------------------------------------------
def test_secrets_stay_private(
    mgr: QueueManager, config: Path, server: Server, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    private = (SECRET, TOKEN, QUERY_SECRET, PASSWORD)
    host = server.base.removeprefix("http://")
    ok_url = f"http://user:{PASSWORD}@{host}/flaky/s?token={QUERY_SECRET}"
    gone_url = f"http://{host}/gone?token={QUERY_SECRET}"
    caplog.set_level(logging.DEBUG, logger="qengine")
    for url in (ok_url, gone_url):
        add_listener(mgr, Q, url, secret=SECRET, headers={"Authorization": f"Bearer {TOKEN}", "X-Tenant": "t1"})
    send(mgr, Q, {"n": 1})
    stored = json.dumps([m.data for m in mgr.find_messages(Q)])
    work(mgr)
    # the receiver got them (credentials in a URL become Basic auth, which httpx prefers)
    by_path = {r["path"]: r["headers"] for r in server.requests}
    assert by_path["/gone"]["Authorization"] == f"Bearer {TOKEN}"
    assert by_path["/flaky/s"]["Authorization"].startswith("Basic ")
    failed = json.dumps([fm.to_dict() for fm in mgr.failed_messages(Q)])
    audit = "".join(p.read_text() for p in (tmp_path / "data").rglob("*.jsonl"))
    status = json.dumps(mgr.queue_status(Q).to_dict())
    run = _cli(config)
    listing = run("hooks", "list").stdout + run("hooks", "list", "--json").stdout
    for text in (stored, failed, audit, status, listing, caplog.text):
        for secret in private:
            assert secret not in text
    assert "secret: set" in listing and "Authorization:***" in listing and "X-Tenant:t1" in listing
    assert f"http://{host}/flaky/s?token=***" in audit


# -- the command line -----------------------------------------------------------------------
def _cli(config: Path) -> Callable[..., Result]:
    kwargs: dict[str, Any] = {}
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        kwargs["mix_stderr"] = False
    runner = CliRunner(**kwargs)

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--config", str(config), *args], input=input, catch_exceptions=False)

    return invoke


def test_cli_add_list_remove_send(config: Path, server: Server, mgr: QueueManager, tmp_path: Path) -> None:
    run = _cli(config)
    url = f"{server.base}/ok"
    result = run("hooks", "add", Q, url, "--header", "X-Tenant: t1", "--secret", SECRET, "--timeout", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"added listener {listener_id(url)} {url} on {Q}\n"
    assert run("hooks", "add", Q, url).stdout.startswith("updated listener")
    run("hooks", "add", Q, url, "--header", "X-Tenant:t1", "--secret", SECRET, "--timeout", "2")
    listing = run("hooks", "list", Q)
    line = f"{Q}\t{listener_id(url)}\t{url}\ttimeout=2.0\theaders=X-Tenant:t1\tsecret: set"
    assert listing.stdout == f"{line}\n1 listener\n"
    assert json.loads(run("hooks", "list", "--json").stdout) == [
        {"queue": Q, "id": listener_id(url), "url": url, "headers": {"X-Tenant": "t1"}, "secret": "set", "timeout": 2.0}
    ]
    payload = tmp_path / "payload.json"
    payload.write_text('{"from": "file"}')
    sent = run("hooks", "send", Q, "--data", f"@{payload}")
    assert sent.exit_code == 0 and sent.stdout.endswith(f"\t{url}\tqueued\n")
    assert run("hooks", "send", Q, "--data", "-", input='{"from": "stdin"}').exit_code == 0
    assert [m.data["payload"] for m in mgr.find_messages(Q)] == [{"from": "file"}, {"from": "stdin"}]
    assert run("hooks", "remove", Q, url).stdout == f"removed 1 listener from {Q}\n"
    assert run("hooks", "list", Q).stdout == "0 listeners\n"


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["hooks", "add", Q, "ftp://example.com/x"], 2, "invalid listener URL 'ftp://example.com/x': scheme 'ftp'"),
        (["hooks", "add", Q, "http://example.com/", "--header", "nocolon"], 2, "expected NAME:VALUE"),
        (["hooks", "add", Q, "http://example.com/", "--timeout", "0"], 2, "invalid --timeout 0"),
        (["hooks", "add", "bad name", "http://example.com/"], 2, "invalid queue name"),
        (["hooks", "remove", "missing", "http://example.com/"], 3, "queue 'missing' does not exist"),
        (["hooks", "send", "missing", "--data", "{}"], 3, "does not exist"),
        (["hooks", "send", Q, "--data", "{nope"], 2, "--data is not valid JSON"),
        (["hooks", "list", "missing"], 3, "queue 'missing' does not exist"),
    ],
)
def test_cli_bad_input(config: Path, args: list[str], code: int, fragment: str) -> None:
    result = _cli(config)(*args)
    assert result.exit_code == code, result.output
    assert fragment in result.stderr and result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_cli_send_direct_mode_reports_failures(make_config: MakeConfig, server: Server) -> None:
    run = _cli(make_config("active = 0\nretries = 1\n"))
    run("hooks", "add", Q, f"{server.base}/ok")
    run("hooks", "add", Q, f"{server.base}/gone")
    result = run("hooks", "send", Q, "--data", '{"a": 1}')
    assert result.exit_code == 1
    assert [line.split("\t")[1:] for line in result.stdout.splitlines()] == [
        [f"{server.base}/ok", "delivered"], [f"{server.base}/gone", "FAILED"],
    ]
    assert result.stderr == f"Error: 1 of 2 deliveries failed for good: see qengine failed {Q}\n"
    assert run("hooks", "send", "empty-queue", "--data", "1").exit_code == 3


def test_qengine_work_process_delivers_a_hook(config: Path, server: Server, mgr: QueueManager) -> None:
    add_listener(mgr, Q, f"{server.base}/signed", secret=SECRET)
    [delivery] = send(mgr, Q, {"via": "subprocess"})
    proc = subprocess.run(
        [sys.executable, "-m", "queue_engine", "--config", str(config), "work", Q, "--burst"],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "handled 1 attempt\n"
    assert SECRET not in proc.stderr
    assert [(r.uuid, r.outcome, r.extra["status"], r.extra["response"]) for r in get_audit_log(mgr).query(Q)] == [
        (delivery.uuid, "success", 200, "verified"),
    ]
    assert json.loads(server.requests[0]["body"]) == {"via": "subprocess"}
