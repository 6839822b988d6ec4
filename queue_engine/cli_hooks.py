"""``qengine hooks``: register REST hook listeners on a queue and send payloads to them.

Registered lazily in :data:`queue_engine.cli.LAZY_COMMANDS`; follows the contract of
:mod:`queue_engine.cli`. The logic lives in :mod:`queue_engine.hooks`; secrets are never
printed (``secret: set``).
"""

from __future__ import annotations

from typing import Any

import click

from .cli import (
    USAGE_EXIT,
    AppContext,
    CliError,
    JsonData,
    JsonValue,
    QueueName,
    Seconds,
    echo_json,
    engine_errors,
    format_value,
    json_option,
    pass_app,
)
from .cli_work import OptionalQueueName
from .errors import QueueNotFound

__all__ = ["hooks", "Header"]


class Header(click.ParamType):
    """``NAME:VALUE``; surrounding spaces of each part are dropped. The value is never echoed."""

    name = "name:value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, sep, raw = str(value).partition(":")
        if not sep or not name.strip():
            raise CliError(f"invalid --header {name.strip()!r}...: expected NAME:VALUE", USAGE_EXIT)
        return name.strip(), raw.strip()


@click.group(name="hooks")
def hooks() -> None:
    """REST hooks: POST each payload sent to a queue to every listener registered on it.

    Deliveries are messages of the queue: run ``qengine work QUEUE`` (or a daemon) to send
    them, unless ``[resthooks] active = 0`` (direct mode: ``hooks send`` delivers at once).
    """


@hooks.command("add")
@click.argument("queue", type=QueueName())
@click.argument("url")
@click.option("--header", "headers", type=Header(), multiple=True, help="NAME:VALUE sent with every request.")
@click.option("--secret", default=None, help="Sign every request with HMAC-SHA256 (see docs/HOOKS.md).")
@click.option("--timeout", type=Seconds(), default=None, help="Seconds per request (default: [resthooks] timeout).")
@pass_app
def add(
    app: AppContext, queue: str, url: str, headers: tuple[tuple[str, str], ...], secret: str | None,
    timeout: float | None,
) -> None:
    """Register the listener URL (http or https) on QUEUE; an existing URL gets the new settings."""
    from .hooks import add_listener

    names = [name.lower() for name, _ in headers]
    if len(set(names)) != len(names):
        raise CliError("--header: a header name is given twice", USAGE_EXIT)
    if timeout is not None and timeout == 0:
        raise CliError("invalid --timeout 0: seconds > 0", USAGE_EXIT)
    with engine_errors():
        listener, new = add_listener(app.manager, queue, url, headers=dict(headers), secret=secret, timeout=timeout)
    click.echo(f"{'added' if new else 'updated'} listener {listener.id} {listener.display_url} on {queue}")


@hooks.command("list")
@click.argument("queue", required=False, default=None, type=OptionalQueueName())
@json_option
@pass_app
def list_(app: AppContext, queue: str | None, as_json: bool) -> None:
    """List the listeners of QUEUE (of every queue when omitted).

    Text: one tab-separated line per listener: queue, id, URL (credentials and query values
    masked), timeout, headers (sensitive values masked), ``secret: set`` or ``secret: -``.
    """
    from .hooks import listeners

    manager = app.manager
    if queue is not None and not manager.queue_exists(queue):
        raise QueueNotFound(f"queue {queue!r} does not exist")
    rows = [
        {"queue": name, **item.to_dict()}
        for name in (manager.list_queues() if queue is None else [queue])
        for item in listeners(manager, name)
    ]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        headers = ",".join(f"{k}:{v}" for k, v in row["headers"].items()) or None
        columns = [row["queue"], row["id"], row["url"], f"timeout={format_value(row['timeout'])}",
                   f"headers={format_value(headers)}", f"secret: {format_value(row['secret'])}"]
        click.echo("\t".join(columns))
    click.echo(f"{len(rows)} listener{'' if len(rows) == 1 else 's'}")


@hooks.command("remove")
@click.argument("queue", type=QueueName())
@click.argument("url", metavar="URL|ID")
@pass_app
def remove(app: AppContext, queue: str, url: str) -> None:
    """Unregister a listener of QUEUE by URL or by the id ``hooks list`` shows.

    Deliveries already queued for it fail with "listener removed".
    """
    from .hooks import remove_listener

    manager = app.manager
    if not manager.queue_exists(queue):
        raise QueueNotFound(f"queue {queue!r} does not exist")
    if not remove_listener(manager, queue, url):
        raise CliError(f"queue {queue!r} has no listener with that URL or id", QueueNotFound.exit_code)
    click.echo(f"removed 1 listener from {queue}")


@hooks.command("send")
@click.argument("queue", type=QueueName())
@click.option("--data", "data", type=JsonData(), required=True, help="JSON payload, @file or - for stdin.")
@json_option
@pass_app
def send_(app: AppContext, queue: str, data: JsonValue, as_json: bool) -> None:
    """Send a JSON payload to every listener of QUEUE: one delivery each, retried on its own.

    Queued mode prints the deliveries' uuids; direct mode (``[resthooks] active = 0``) sends
    them now and exits 1 when one failed for good (it is in ``qengine failed QUEUE``).
    """
    from .hooks import send

    manager = app.manager
    if not manager.queue_exists(queue):
        raise QueueNotFound(f"queue {queue!r} does not exist: add a listener first (qengine hooks add)")
    deliveries = send(manager, queue, data.value)
    if not deliveries:
        raise CliError(f"queue {queue!r} has no listeners: nothing sent (qengine hooks add)", 1)
    if as_json:
        echo_json([{"uuid": d.uuid, "listener": d.listener, "id": d.listener_id, "delivered": d.delivered}
                   for d in deliveries])
    else:
        for d in deliveries:
            state = {None: "queued", True: "delivered", False: "FAILED"}[d.delivered]
            click.echo(f"{d.uuid}\t{d.listener}\t{state}")
    failed = [d for d in deliveries if d.delivered is False]
    if failed:
        raise CliError(
            f"{len(failed)} of {len(deliveries)} deliveries failed for good: see qengine failed {queue}", 1
        )
