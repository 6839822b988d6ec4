"""``qengine queues`` (the queue catalogue) and the contingency part of ``qengine requeue --pending``.

Registered lazily in :data:`queue_engine.cli.LAZY_COMMANDS`; the contract of
:mod:`queue_engine.cli` applies. The catalogue itself is edited with ``qengine create QUEUE
--description TEXT [--manual/--no-manual] [--class NAME]``.
"""

from __future__ import annotations

from datetime import datetime, timezone

import click

from .catalog import QueueSummary, catalog
from .cli import AppContext, echo_json, format_value, json_option, pass_app
from .contingency import Spool, SpooledMessage

__all__ = ["queues", "requeue_pending", "summary_line"]

_HEADER = ("QUEUE", "READY", "DEFERRED", "IN_FLIGHT", "DISABLED", "FAILED", "SPOOLED", "MANUAL", "CLASS", "DESCRIPTION")


def summary_line(summary: QueueSummary) -> str:
    """One tab-separated line in the order of the header of ``qengine queues``."""
    row = summary.to_dict()
    columns = [
        row["queue"], row["ready"], row["deferred"], row["in_flight"], row["disabled"], row["failed"], row["spooled"],
        "yes" if row["manual"] else "no", row["class"], row["description"],
    ]
    return "\t".join(format_value(column) for column in columns)


@click.command()
@json_option
@pass_app
def queues(app: AppContext, as_json: bool) -> None:
    """List every queue with its catalogue entry (description, manual insertion, class), its
    counts (ready, deferred, in flight, disabled), its failures and its spooled messages.

    Text output: a header, then one tab-separated line per queue; a queue with failures is
    also named on stderr. ``--json``: a list of objects with the same fields.
    """
    summaries = catalog(app.manager)
    if as_json:
        echo_json([s.to_dict() for s in summaries])
        return
    click.echo("\t".join(_HEADER))
    for summary in summaries:
        click.echo(summary_line(summary))
    failing = [s for s in summaries if s.failed]
    if failing:  # a failure must be impossible to miss
        names = ", ".join(f"{s.queue} ({s.failed})" for s in failing)
        click.echo(click.style(f"FAILED: {names} - see: qengine failed", fg="red", bold=True), err=True)


def _spooled_line(item: SpooledMessage) -> str:
    columns = [
        item.queue, item.message.uuid, item.message.alias,
        datetime.fromtimestamp(item.spooled_at, tz=timezone.utc), item.reason,
    ]
    return "\t".join(format_value(column) for column in columns)


def _plural(n: int) -> str:
    return f"{n} message{'' if n == 1 else 's'}"


def requeue_pending(
    app: AppContext, queue: str | None, since: datetime | None, until: datetime | None, dry_run: bool
) -> None:
    """``qengine requeue --pending``: move spooled messages (of ``queue``, spooled within
    [since, until]) into their queues; print how many. Those that still cannot be added stay
    spooled and are named on stderr (exit 1)."""
    manager = app.manager
    spool = Spool.from_config(manager.config)
    if dry_run:
        selection = spool.pending(queue, since, until)
        for item in selection:
            click.echo(_spooled_line(item))
        click.echo(f"would requeue {_plural(len(selection))} from the spool")
        return
    result = spool.requeue(manager, queue, since, until)
    for item, error in result.stayed:
        click.echo(f"warning: {item.queue} {item.message.uuid} stays spooled: {error}", err=True)
    click.echo(f"requeued {_plural(len(result.moved))} from the spool")
    if result.stayed:
        raise click.exceptions.Exit(1)
