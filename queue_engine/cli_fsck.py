"""``qengine fsck``: check (and repair) the files of file-backend queues."""

from __future__ import annotations

import click

from .cli import AppContext, CliError, QueueName, echo_json, json_option, pass_app

__all__ = ["fsck"]


@click.command()
@click.argument("queue", required=False, type=QueueName())
@click.option("--repair", is_flag=True, help="Repair what is damaged (damaged bytes are kept in quarantine/).")
@json_option
@pass_app
def fsck(app: AppContext, queue: str | None, repair: bool, as_json: bool) -> None:
    """Check QUEUE's files (every queue when omitted); exit 1 if a problem remains.

    Without --repair nothing is written, so it is safe on queues in use.
    """
    from .backends.file import FileQueueManager

    manager = app.manager
    if not isinstance(manager, FileQueueManager):
        raise CliError(f"fsck checks file-backend queues; the configured backend is {manager.queue_type!r}")
    reports = [manager.fsck(name, repair=repair) for name in ([queue] if queue else manager.list_queues())]
    if as_json:
        echo_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            state = "ok" if r.ok else f"{len(r.problems)} problem(s)"
            click.echo(
                f"{r.queue}: {state}; {r.segments} segment(s), {r.records} record(s)"
                + (" (repaired)" if r.repaired else "")
            )
            for line in r.problems:
                click.echo(f"  problem: {line}")
            for line in r.notes:
                click.echo(f"  note: {line}")
    if any(not r.ok for r in reports):
        raise SystemExit(1)
