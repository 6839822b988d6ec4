"""``qengine amqp``: the RabbitMQ bridge (consume into a queue, outbox status).

Outboxes need no command of their own: ``qengine work QUEUE`` (or a daemon) publishes a queue
that has a ``[amqp.QUEUE]`` section. See :mod:`queue_engine.amqp`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from .cli import USAGE_EXIT, AppContext, CliError, QueueName, Seconds, WholeNumber, echo_json, json_option, pass_app
from .errors import ConfigurationError, QueueNotFound

__all__ = ["amqp"]


@click.group()
def amqp() -> None:
    """RabbitMQ bridge: consume a RabbitMQ queue into a qengine queue; outbox status."""


@contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGTERM / SIGINT only ask ``stop()``: the current delivery is stored and acked first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@amqp.command()
@click.argument("rabbit_queue", metavar="RABBITQUEUE")
@click.option("--into", "into", required=True, type=QueueName(), help="qengine queue the messages are added to.")
@click.option("--uri", default=None, help="amqp://user:password@host:port/vhost (default: [amqp] in config.ini).")
@click.option("--prefetch", type=WholeNumber(1, 65535), default=None, help="Unacked deliveries held at most.")
@click.option("--burst", is_flag=True, help="Return once the RabbitMQ queue stays empty for --idle seconds.")
@click.option("--idle", type=Seconds(), default=1.0, show_default=True, help="Seconds of silence that end --burst.")
@click.option("--max-messages", type=WholeNumber(1), default=None, help="Return after this many deliveries.")
@json_option
@pass_app
def consume(
    app: AppContext,
    rabbit_queue: str,
    into: str,
    uri: str | None,
    prefetch: int | None,
    burst: bool,
    idle: float,
    max_messages: int | None,
    as_json: bool,
) -> None:
    """Move the messages of RabbitMQ queue RABBITQUEUE into qengine queue --into.

    Each delivery is acked only after it was added; a body that is not UTF-8 JSON goes to the
    failed store of --into with its raw bytes kept. Without --burst it runs until SIGTERM or
    Ctrl-C, reconnecting when RabbitMQ goes away.
    """
    from .amqp import AmqpConsumer, consumer_settings
    from .config import load_config

    if not rabbit_queue or len(rabbit_queue.encode("utf-8")) > 255:
        raise CliError(f"invalid RABBITQUEUE {rabbit_queue!r}: 1-255 bytes", USAGE_EXIT)
    if idle < 0.05:  # it is also the poll period of the stop flag: 0 would spin a CPU
        raise CliError(f"invalid value for --idle: {idle:g} (at least 0.05 seconds)", USAGE_EXIT)
    try:
        endpoint, default_prefetch = consumer_settings(load_config(app.config_path), uri=uri)
    except ConfigurationError as exc:
        raise CliError(str(exc), USAGE_EXIT if uri is not None and "--uri" in str(exc) else exc.exit_code) from None
    consumer = AmqpConsumer(
        app.manager, rabbit_queue, into, endpoint=endpoint, prefetch=prefetch or default_prefetch
    )
    try:
        with _stop_on_signals(consumer.stop):
            handled = consumer.run(burst=burst, idle=idle, max_messages=max_messages)
    finally:
        consumer.close()
    summary = {"source": rabbit_queue, "into": into, "handled": handled, "added": consumer.added,
               "malformed": consumer.malformed}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"{handled} message(s) from {rabbit_queue}: {consumer.added} added to {into}, "
                   f"{consumer.malformed} malformed kept in its failed store")


def outbox_rows(app: AppContext) -> list[dict[str, Any]]:
    """One row per configured outbox: settings, waiting messages and the publisher state."""
    from .amqp import outbox_queues, outbox_settings, publisher_state
    from .config import load_config

    config = load_config(app.config_path)
    rows = []
    for queue in outbox_queues(config):
        settings = outbox_settings(config, queue)
        assert settings is not None
        try:
            waiting: int | None = app.manager.queue_status(queue).messages_to_process
        except QueueNotFound:
            waiting = 0
        rows.append({
            "queue": queue,
            "target": settings.target(),
            "enabled": settings.enabled,
            "waiting": waiting,
            "publisher": publisher_state(app.manager, queue),
        })
    return rows


@amqp.command()
@json_option
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Every AMQP outbox: where it publishes, messages waiting, publishing errors (exit 1 if any)."""
    rows = outbox_rows(app)
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo("no AMQP outbox configured (add an [amqp.QUEUE] section to config.ini)")
    failing = False
    for row in rows:
        state = row["publisher"] or {}
        if not as_json:
            label = "enabled" if row["enabled"] else "DISABLED"
            click.echo(f"{row['queue']}: {label}, {row['waiting']} waiting -> {row['target']}")
        if state.get("state") == "failing":
            failing = True
            if not as_json:
                banner = f"RABBITMQ PUBLISHING FAILING since {state.get('since')}: {state.get('error')}"
                click.echo(click.style(f"  {banner}", fg="red", bold=True))
    if failing:
        raise SystemExit(1)
