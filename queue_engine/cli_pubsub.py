"""``qengine`` commands for topics: subscribe, unsubscribe, publish, topics.

Registered lazily in :data:`queue_engine.cli.LAZY_COMMANDS`; they follow the contract of
:mod:`queue_engine.cli`. The logic is in :mod:`queue_engine.pubsub`.
"""

from __future__ import annotations

from typing import Any

import click

from . import pubsub
from .cli import (
    USAGE_EXIT,
    AppContext,
    CliError,
    JsonData,
    JsonValue,
    QueueName,
    WholeNumber,
    echo_json,
    engine_errors,
    json_option,
    pass_app,
)
from .message import QueueMessage

__all__ = ["publish", "subscribe", "topics", "unsubscribe", "TopicName"]


class TopicName(click.ParamType):
    """A topic name checked with :func:`~queue_engine.pubsub.validate_topic_name`."""

    name = "topic"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        with engine_errors():
            return pubsub.validate_topic_name(value)


topic_argument = click.argument("topic", type=TopicName())
queue_argument = click.argument("queue", type=QueueName())


@click.command()
@topic_argument
@queue_argument
@pass_app
def subscribe(app: AppContext, topic: str, queue: str) -> None:
    """Subscribe QUEUE (created if needed) to TOPIC; prints "subscribed" or "already subscribed"."""
    click.echo("subscribed" if pubsub.subscribe(app.manager, topic, queue) else "already subscribed")


@click.command()
@topic_argument
@queue_argument
@pass_app
def unsubscribe(app: AppContext, topic: str, queue: str) -> None:
    """Unsubscribe QUEUE from TOPIC; prints "unsubscribed" or "not subscribed"."""
    click.echo("unsubscribed" if pubsub.unsubscribe(app.manager, topic, queue) else "not subscribed")


@click.command()
@click.argument("topic", type=TopicName(), required=False)
@click.option("--data", "data", type=JsonData(), default=None,
              help="Payload: JSON text, @FILE to read a file, - to read stdin.")
@click.option("--alias", default=None, help="Alias of every copy (unique among each queue's pending messages).")
@click.option("--retries", type=WholeNumber(0, 1_000_000), default=0, show_default=True,
              help="Maximum attempts of each copy (0: the worker's default).")
@click.option("--recover", "recover_only", is_flag=True,
              help="Only finish publishes interrupted by a crash (no TOPIC), and print them.")
@json_option
@pass_app
def publish(
    app: AppContext, topic: str | None, data: JsonValue | None, alias: str | None, retries: int,
    recover_only: bool, as_json: bool,
) -> None:
    """Put one copy of the payload into every queue subscribed to TOPIC, all or none.

    Prints one line per copy: queue, tab, uuid. A topic without subscribers prints nothing,
    notes it on stderr and exits 0.
    """
    if recover_only:
        if topic is not None or data is not None:
            raise CliError("--recover takes no TOPIC and no --data", USAGE_EXIT)
        done = pubsub.recover(app.manager)
        if as_json:
            echo_json([item.to_dict() for item in done])
        else:
            for item in done:
                click.echo(f"{item.outcome}\t{item.topic}\t{','.join(sorted(item.targets))}")
            click.echo(f"{len(done)} interrupted publish(es) finished", err=True)
        return
    if topic is None:
        raise CliError("missing argument TOPIC (or use --recover)", USAGE_EXIT)
    if data is None:
        raise CliError("missing option --data: the payload to publish (JSON, @FILE or -)", USAGE_EXIT)
    with engine_errors():  # alias and retries checked before the manager exists
        QueueMessage(data=data.value, alias=alias, retries=retries)
    copies = pubsub.publish(app.manager, topic, data.value, alias=alias, retries=retries)
    if as_json:
        echo_json({"topic": topic, "messages": copies})
    else:
        for queue, uid in copies.items():
            click.echo(f"{queue}\t{uid}")
    if not copies:
        click.echo(f"topic {topic!r} has no subscribers: nothing published", err=True)


@click.command()
@json_option
@pass_app
def topics(app: AppContext, as_json: bool) -> None:
    """List every topic with its subscribed queues (one line each: topic, tab, queues)."""
    listing = pubsub.topics(app.manager)
    if as_json:
        echo_json(listing)
    else:
        for topic, queues in listing.items():
            click.echo(f"{topic}\t{' '.join(queues)}")
