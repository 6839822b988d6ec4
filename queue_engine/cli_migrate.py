"""``qengine migrate``: move queues to the backend of another config (see :mod:`queue_engine.migrate`)."""

from __future__ import annotations

import click

from .cli import AppContext, QueueName, echo_json, engine_errors, json_option, pass_app
from .errors import ConfigurationError
from .factory import QueueFactory
from .migrate import MigrationResult, describe_storage, migrate_queue, same_storage

__all__ = ["migrate"]


@click.command()
@click.option(
    "--to-config",
    "to_config",
    required=True,
    type=click.Path(dir_okay=False),
    help="Config file of the destination backend.",
)
@click.argument("queues", nargs=-1, type=QueueName(), metavar="[QUEUE...]")
@click.option("--dry-run", "dry_run", is_flag=True, help="Show what would move; change nothing.")
@json_option
@pass_app
def migrate(app: AppContext, to_config: str, queues: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Move QUEUEs (every queue when none is named) to the backend of --to-config.

    Pending (ready, deferred, disabled), in-flight and failed messages keep their uuids,
    aliases and order; custom attributes and the last processed message are copied. The
    destination is verified before anything is removed from the source. An interrupted run
    can be run again: nothing is lost or duplicated. Stop consumers on both sides first.
    """
    source = app.manager
    with engine_errors():
        destination = QueueFactory.get_queue_manager(to_config)
    try:
        with engine_errors():
            if same_storage(source, destination):
                raise ConfigurationError(
                    f"--to-config {to_config!r} points at the same storage as the configured backend "
                    f"({describe_storage(source.config)}): nothing to migrate"
                )
            names = list(queues) or source.list_queues()
            results = []
            for name in names:
                result = migrate_queue(source, destination, name, dry_run=dry_run)
                results.append(result)
                if not as_json:
                    click.echo(_line(result, dry_run, describe_storage(destination.config)))
        if as_json:
            echo_json([r.to_dict() for r in results])
    finally:
        destination.close()


def _line(result: MigrationResult, dry_run: bool, where: str) -> str:
    counts = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in result.counts.items() if n)
    if dry_run:
        return f"{result.queue}: would move {result.exported} messages ({counts or 'empty'}) to {where}"
    line = (
        f"{result.queue}: exported {result.exported}, imported {result.imported}, "
        f"{'verified' if result.verified else 'NOT verified'}, removed {result.removed}"
    )
    if result.left_in_flight:
        line += f"; {len(result.left_in_flight)} still reserved in the source, left there (run again later)"
    return line
