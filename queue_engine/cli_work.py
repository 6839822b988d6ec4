"""``qengine`` commands for workers and what they leave behind: work, failed, requeue, forget,
purge, audit.

Registered lazily in :data:`queue_engine.cli.LAZY_COMMANDS`; they follow the contract of
:mod:`queue_engine.cli` (input checked while parsing, one ``Error:`` line and a non-zero exit
for bad input, ``--json`` for machines).

Date ranges (``requeue``, ``purge``, ``audit --since/--until``) take ISO 8601. Without an
offset a time is local time. A bare date means the start of that day for a lower bound and
the end of that day (23:59:59.999999) for an upper bound, so ``requeue Q 2024-07-01
2024-07-01`` covers the whole of July 1st. Both bounds are inclusive.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time
from typing import Any

import click

from .audit import AuditRecord, get_audit_log
from .cli import (
    USAGE_EXIT,
    AppContext,
    CliError,
    QueueName,
    Seconds,
    WholeNumber,
    echo_json,
    engine_errors,
    format_value,
    json_option,
    pass_app,
    storable_time,
)
from .errors import MessageNotFound, QueueNotFound
from .manager import QueueManager
from .status import FailedMessage

__all__ = ["audit", "failed", "forget", "purge", "requeue", "work", "DateBound", "OptionalQueueName"]

#: uuids moved per backend call; the progress bar advances once per batch.
BATCH_SIZE = 100
#: A requeue or purge of more messages than this shows a progress bar on stderr. (click draws
#: the bar only on a terminal; elsewhere it prints the label once.)
PROGRESS_MIN = 100
#: Characters of the last error shown in one human line.
ERROR_WIDTH = 80


# -- parameter types ----------------------------------------------------------------------
class OptionalQueueName(QueueName):
    """A queue name, or ``''`` (the seed's blank placeholder) meaning "every queue" (None)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or value == "":
            return None
        return super().convert(value, param, ctx)


class DateBound(click.ParamType):
    """An ISO 8601 date or date-time bound, timezone-aware; ``''`` means no bound (None).

    A bare date is the start of the day (``end=False``) or its last microsecond (``end=True``).
    """

    name = "iso-datetime"

    def __init__(self, *, end: bool) -> None:
        self.end = end

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, datetime):
            return value
        text = str(value).strip()
        if not text:
            return None
        try:
            day = date.fromisoformat(text)
        except ValueError:
            pass
        else:
            if self.end:
                return storable_time(lambda: datetime.combine(day, time.max).astimezone(), value, param)
            return storable_time(lambda: datetime.combine(day, time()).astimezone(), value, param)
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            name = _param_name(param)
            raise CliError(
                f"invalid {name} {value!r}: expected an ISO 8601 date or date-time such as 2024-07-01 "
                "or '2024-07-01 14:30:00' (no offset means local time)",
                USAGE_EXIT,
            ) from None
        return storable_time(lambda: parsed.astimezone() if parsed.tzinfo is None else parsed, value, param)


def _param_name(param: click.Parameter | None) -> str:
    """How the user wrote it: ``--since`` for an option, ``FROM`` for an argument."""
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    if param is not None:
        return (param.metavar or param.name or "value").strip("[].").upper()
    return "value"


def _check_range(since: datetime | None, until: datetime | None, *, from_name: str, to_name: str) -> None:
    """The seed's rule: an upper bound needs a lower one; and the range must not be empty."""
    if until is not None and since is None:
        raise CliError(
            f"{to_name} needs {from_name}: give {from_name} too (e.g. 1970-01-01 for 'from the beginning')", USAGE_EXIT
        )
    if since is not None and until is not None and since > until:
        raise CliError(
            f"empty range: {from_name} {since.isoformat()} is after {to_name} {until.isoformat()}", USAGE_EXIT
        )


# -- shared helpers -----------------------------------------------------------------------
def _clip(text: str | None, width: int = ERROR_WIDTH) -> str | None:
    if text is None:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    one = lines[-1] if lines else ""  # a traceback's last line names the exception
    return one if len(one) <= width else one[: width - 3] + "..."


def failed_line(queue: str, failed_message: FailedMessage) -> str:
    """One tab-separated line: queue, uuid, alias, failed_at, attempts, last error (shortened)."""
    message = failed_message.message
    last_error = failed_message.errors[-1] if failed_message.errors else None
    columns: list[Any] = [
        queue, message.uuid, message.alias, failed_message.failed_at, f"attempts={message.attempts}", _clip(last_error)
    ]
    return "\t".join(format_value(column) for column in columns)


def _queues(manager: QueueManager, queue: str | None) -> list[str]:
    return manager.list_queues() if queue is None else [queue]


def _select(
    manager: QueueManager, queue: str | None, since: datetime | None, until: datetime | None, limit: int | None = None
) -> list[tuple[str, FailedMessage]]:
    """Failed messages of ``queue`` (every queue when None) in [since, until], queue by queue."""
    out: list[tuple[str, FailedMessage]] = []
    for name in _queues(manager, queue):
        remaining = None if limit is None else limit - len(out)
        if remaining == 0:
            break
        try:
            found = manager.failed_messages(name, since=since, until=until, limit=remaining)
        except QueueNotFound:
            if queue is not None:
                raise
            continue  # destroyed since list_queues(): nothing to do there
        out.extend((name, fm) for fm in found)
    return out


def _batches(selection: Sequence[tuple[str, FailedMessage]]) -> Iterator[tuple[str, list[str]]]:
    """(queue, uuids) chunks of at most BATCH_SIZE, queue by queue."""
    by_queue: dict[str, list[str]] = {}
    for queue, fm in selection:
        if fm.message.uuid:
            by_queue.setdefault(queue, []).append(fm.message.uuid)
    for queue, uuids in by_queue.items():
        for start in range(0, len(uuids), BATCH_SIZE):
            yield queue, uuids[start:start + BATCH_SIZE]


def _progress(total: int, label: str) -> Any:
    """A progress bar on stderr for big jobs, else a no-op with the same interface."""
    if total > PROGRESS_MIN:
        return click.progressbar(length=total, label=label, file=sys.stderr)
    return _NoProgress()


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n_steps: int) -> None:
        return None


def _stdin_is_tty() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _plural(n: int) -> str:
    return f"{n} message{'' if n == 1 else 's'}"


# -- work ---------------------------------------------------------------------------------
LOG_LEVELS = ("debug", "info", "warning", "error")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


@contextmanager
def _stderr_logging(level: str) -> Iterator[None]:
    """Log qengine's records at ``level`` and above to stderr for the duration of a command."""
    target = logging.getLogger("qengine")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    old_level = target.level
    target.addHandler(handler)
    target.setLevel(level.upper())
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)


@click.command()
@click.argument("queues", nargs=-1, required=True, type=QueueName(), metavar="QUEUE [QUEUE...]")
@click.option("--burst", is_flag=True, help="Stop when no queue has a ready message.")
@click.option("--max-jobs", "max_jobs", type=WholeNumber(1), default=None, help="Stop after this many attempts.")
@click.option("--max-time", "max_time", type=Seconds(), default=None, help="Stop after this many seconds.")
@click.option("--sleep", type=Seconds(), default=1.0, show_default=True,
              help="Seconds to wait when nothing is ready (without --burst).")
@click.option("--log-level", "log_level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info",
              show_default=True, help="Least severe log record written to stderr.")
@pass_app
def work(
    app: AppContext, queues: tuple[str, ...], burst: bool, max_jobs: int | None, max_time: float | None,
    sleep: float, log_level: str,
) -> None:
    """Run the workers of QUEUE... until stopped (SIGINT/SIGTERM finish the current message).

    Each queue's worker class is found in the folders of ``[queue] workersPath`` (queue ANPR:
    anpr.py, class AnprWorker); a queue without one runs function jobs. Failed attempts are
    logged to stderr. Prints "handled N attempt(s)" when it stops (every delivery of a
    message counts, retries included).
    """
    from .runner import WorkerRunner  # imported on use: the runner loads worker code

    names = list(dict.fromkeys(queues))  # the same queue twice would only be polled twice
    manager = app.manager
    with _stderr_logging(log_level), engine_errors():
        runner = WorkerRunner(
            manager, names, config=manager.config, burst=burst, max_jobs=max_jobs, max_time=max_time, sleep=sleep
        )
        handled = runner.run()
    click.echo(f"handled {handled} attempt{'' if handled == 1 else 's'}")



# -- failed -------------------------------------------------------------------------------
@click.command()
@click.argument("queue", required=False, default=None, type=OptionalQueueName())
@click.option("--limit", type=WholeNumber(0), default=None, help="At most this many messages.")
@json_option
@pass_app
def failed(app: AppContext, queue: str | None, limit: int | None, as_json: bool) -> None:
    """List the failed messages of QUEUE (of every queue when omitted or '').

    Text output: one tab-separated line per message (queue, uuid, alias, failed_at, attempts,
    last error) and a count. ``--json``: a list of the messages with ``failed_at`` and
    ``errors`` (every failed attempt's error, oldest first).
    """
    selection = _select(app.manager, queue, None, None, limit)
    if as_json:
        echo_json([{**fm.to_dict(), "queue": name} for name, fm in selection])
        return
    for name, fm in selection:
        click.echo(failed_line(name, fm))
    count = f"{_plural(len(selection))} failed"
    click.echo(click.style(count, fg="red", bold=True) if selection else count)


# -- requeue ------------------------------------------------------------------------------
@click.command()
@click.argument("queue", required=False, default=None, type=OptionalQueueName())
@click.argument("since", metavar="[FROM]", required=False, default=None, type=DateBound(end=False))
@click.argument("until", metavar="[TO]", required=False, default=None, type=DateBound(end=True))
@click.option("--dry-run", "dry_run", is_flag=True, help="List what would be requeued; change nothing.")
@click.option("--pending", is_flag=True,
              help="Requeue the contingency spool's messages (spooled within [FROM, TO]) instead of failed ones.")
@pass_app
def requeue(
    app: AppContext, queue: str | None, since: datetime | None, until: datetime | None, dry_run: bool, pending: bool
) -> None:
    """Put failed messages back in their queue, at their original place, with attempts reset.

    \b
    Every argument is optional; '' leaves one blank so a later one can be given:
      qengine requeue                                  every failed message of every queue
      qengine requeue ANPR                             every failed message of ANPR
      qengine requeue ANPR 2024-07-01                  those that failed from July 1st on
      qengine requeue ANPR '2024-07-01 08:00' '2024-07-01 12:00'
      qengine requeue '' 2024-07-01 2024-07-01         every queue, failed during July 1st
    TO needs FROM. A bare date as FROM is 00:00 of that day, as TO the end of that day.
    Requeued messages leave the failed store: a second run finds nothing.
    --pending: add the messages the contingency spool kept (backend down, brokerActive =
    false), same arguments, FROM/TO on the time they were spooled; they are marked processed.
    """
    _check_range(since, until, from_name="FROM", to_name="TO")
    if pending:
        from .cli_catalog import requeue_pending

        requeue_pending(app, queue, since, until, dry_run)
        return
    manager = app.manager
    selection = _select(manager, queue, since, until)
    if dry_run:
        for name, fm in selection:
            click.echo(failed_line(name, fm))
        click.echo(f"would requeue {_plural(len(selection))}")
        return
    moved = 0
    stayed: list[tuple[str, str]] = []
    with _progress(len(selection), f"requeueing {_plural(len(selection))}") as bar:
        for name, uuids in _batches(selection):
            try:
                done = set(manager.requeue_failed(name, uuids=uuids))
            except QueueNotFound:
                if queue is not None:
                    raise
                done = set()  # destroyed meanwhile
            moved += len(done)
            stayed.extend((name, uid) for uid in uuids if uid not in done)
            bar.update(len(uuids))
    for name, uid in stayed:
        click.echo(
            f"warning: {name} {uid} was not requeued (its alias is held by a pending message, "
            "or another process requeued or dropped it)",
            err=True,
        )
    click.echo(f"requeued {_plural(moved)}")


# -- forget / purge -----------------------------------------------------------------------
@click.command()
@click.argument("queue", type=QueueName())
@click.argument("uuids", nargs=-1, required=True, metavar="UUID [UUID...]")
@pass_app
def forget(app: AppContext, queue: str, uuids: tuple[str, ...]) -> None:
    """Drop the failed messages UUID... of QUEUE for good.

    Every UUID must be in the failed store; otherwise nothing is dropped (exit 3).
    """
    wanted = list(dict.fromkeys(uuids))
    empty = [uid for uid in wanted if not uid.strip()]
    if empty:
        raise CliError("UUID must not be empty", USAGE_EXIT)
    manager = app.manager
    known = {fm.message.uuid for fm in manager.failed_messages(queue)}
    missing = [uid for uid in wanted if uid not in known]
    if missing:
        raise CliError(f"not in the failed store of queue {queue!r}: {', '.join(missing)}", MessageNotFound.exit_code)
    count = manager.forget_failed(queue, uuids=wanted)
    click.echo(f"forgot {_plural(count)}")


@click.command()
@click.argument("queue", required=False, default=None, type=OptionalQueueName())
@click.argument("since", metavar="[FROM]", required=False, default=None, type=DateBound(end=False))
@click.argument("until", metavar="[TO]", required=False, default=None, type=DateBound(end=True))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def purge(app: AppContext, queue: str | None, since: datetime | None, until: datetime | None, yes: bool) -> None:
    """Drop failed messages for good: of QUEUE (every queue when omitted or ''), failed within
    [FROM, TO]. The arguments follow the rules of ``requeue``.

    Asks for confirmation unless --yes; without a terminal, --yes is required.
    """
    _check_range(since, until, from_name="FROM", to_name="TO")
    where = "every queue" if queue is None else f"queue {queue!r}"
    if not yes and not _stdin_is_tty():
        raise CliError(f"refusing to purge failed messages of {where} without confirmation: pass --yes", USAGE_EXIT)
    manager = app.manager
    selection = _select(manager, queue, since, until)
    if selection and not yes:
        click.confirm(f"Drop {len(selection)} failed message(s) of {where} for good?", abort=True)
    dropped = 0
    with _progress(len(selection), f"purging {_plural(len(selection))}") as bar:
        # By uuid, so a message that fails while the prompt waits is not dropped unseen.
        for name, uuids in _batches(selection):
            try:
                dropped += manager.forget_failed(name, uuids=uuids)
            except QueueNotFound:
                if queue is not None:
                    raise
            bar.update(len(uuids))
    click.echo(f"purged {_plural(dropped)}")


# -- audit --------------------------------------------------------------------------------
def audit_line(rec: AuditRecord) -> str:
    """One tab-separated line: start, uuid, alias, attempt, outcome, duration, host:pid, error."""
    columns: list[Any] = [
        rec.started, rec.uuid, rec.alias, f"attempt={rec.attempt}", rec.outcome,
        f"{rec.duration * 1000:.1f}ms", f"{rec.host}:{rec.pid}", _clip(rec.error),
    ]
    return "\t".join(format_value(column) for column in columns)


@click.command()
@click.argument("queue", type=QueueName())
@click.option("--uuid", default=None, help="Only attempts at this message.")
@click.option("--alias", default=None, help="Only attempts at messages with this alias.")
@click.option("--since", type=DateBound(end=False), default=None,
              help="Attempts started at or after this ISO 8601 time (a bare date: its start).")
@click.option("--until", type=DateBound(end=True), default=None,
              help="Attempts started at or before this ISO 8601 time (a bare date: its end).")
@click.option("--limit", type=WholeNumber(0), default=None, help="At most this many records (the oldest first).")
@json_option
@pass_app
def audit(
    app: AppContext, queue: str, uuid: str | None, alias: str | None, since: datetime | None,
    until: datetime | None, limit: int | None, as_json: bool,
) -> None:
    """Print the audit trail of QUEUE: one record per attempt, oldest first.

    Text output: one tab-separated line per attempt: start time, uuid, alias, attempt,
    outcome (success / retry / failed), duration, host:pid, error.
    """
    if since is not None and until is not None and since > until:
        raise CliError(f"empty range: --since {since.isoformat()} is after --until {until.isoformat()}", USAGE_EXIT)
    log = get_audit_log(app.manager)
    records = log.query(queue, uuid=uuid, alias=alias, since=since, until=until, limit=limit)
    if as_json:
        echo_json([rec.to_dict() for rec in records])
    else:
        for rec in records:
            click.echo(audit_line(rec))
