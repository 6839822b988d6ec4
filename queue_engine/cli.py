"""The ``qengine`` command line: parse arguments, call the library, format the output.

No queue logic lives here. Every command follows the same contract:

* Input is validated completely (queue names, ``--data``, dates, numbers) while click parses
  the arguments, before the queue manager is built, so bad input never writes anything.
* A :class:`~queue_engine.errors.QueueEngineError` becomes one line ``Error: <message>`` on
  stderr and the process exits with the error's ``exit_code``. Bad option values exit with 2,
  like click's own usage errors. Only bugs print a traceback.
* Human output prints times as ISO 8601 in local time and ``-`` for a missing value;
  ``--json`` prints the library's ``to_dict()`` views, indented, non-ASCII kept.

Commands defined in other modules are registered in :data:`LAZY_COMMANDS` and imported only
when used; they reuse :data:`pass_app`, :func:`json_option`, the parameter types and the
output helpers below.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import click

from . import __version__
from .errors import InvalidMessage, MessageNotFound, QueueEngineError, QueueNotFound, StorageError
from .factory import QueueFactory
from .manager import QueueManager
from .message import QueueMessage, encode_data, storable_epoch, validate_queue_name
from .status import MessageRef, QueueStatus

__all__ = [
    "LAZY_COMMANDS",
    "AppContext",
    "CliError",
    "IsoDateTime",
    "JsonData",
    "KeyValue",
    "QueueName",
    "Seconds",
    "WholeNumber",
    "cli",
    "echo_fields",
    "echo_json",
    "engine_errors",
    "format_value",
    "json_option",
    "main",
    "message_fields",
    "pass_app",
    "status_fields",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status for bad input, the same click uses for usage errors.
USAGE_EXIT = 2

#: Commands that live in other modules, imported on first use: name -> ``"module:attribute"``.
LAZY_COMMANDS: dict[str, str] = {
    **{name: f"queue_engine.cli_work:{name}" for name in ("work", "failed", "requeue", "forget", "purge", "audit")},
    "daemon": "queue_engine.cli_daemon:daemon",
    "migrate": "queue_engine.cli_migrate:migrate",
    "fsck": "queue_engine.cli_fsck:fsck",
    "hooks": "queue_engine.cli_hooks:hooks",
    "subscribe": "queue_engine.cli_pubsub:subscribe",
    "unsubscribe": "queue_engine.cli_pubsub:unsubscribe",
    "publish": "queue_engine.cli_pubsub:publish",
    "topics": "queue_engine.cli_pubsub:topics",
    "queues": "queue_engine.cli_catalog:queues",
    "amqp": "queue_engine.cli_amqp:amqp",
}


# -- errors -------------------------------------------------------------------------------
class CliError(click.ClickException):
    """A user error, shown as the single line ``Error: <message>``; exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(_one_line(message))
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it ClassVar; per error here


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or text


def _to_cli_error(exc: QueueEngineError) -> CliError:
    return CliError(str(exc), exc.exit_code)


@contextmanager
def engine_errors() -> Iterator[None]:
    """Turn a QueueEngineError raised inside the block into a :class:`CliError`."""
    try:
        yield
    except QueueEngineError as exc:
        raise _to_cli_error(exc) from exc
    except OSError as exc:  # a file the library does not wrap (permissions, a full disk): one line too
        if isinstance(exc, BrokenPipeError):
            raise
        where = f": {exc.filename!r}" if exc.filename else ""
        raise CliError(f"{exc.strerror or exc}{where}", StorageError.exit_code) from exc


class QEngineGroup(click.Group):
    """A group that converts library errors (also from nested groups) and loads lazy commands."""

    def invoke(self, ctx: click.Context) -> Any:
        with engine_errors():
            return super().invoke(ctx)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            module_name, _, attribute = LAZY_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):  # pragma: no cover - a registration bug
                raise TypeError(f"{LAZY_COMMANDS[cmd_name]} is not a click command")
        return command


# -- the context object -------------------------------------------------------------------
class AppContext:
    """Per-invocation state: the config path and the queue manager, built on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._manager: QueueManager | None = None

    @property
    def manager(self) -> QueueManager:
        """The queue manager for the configuration; raises ConfigurationError for a bad one."""
        if self._manager is None:
            with engine_errors():
                self._manager = QueueFactory.get_queue_manager(self.config_path)
        return self._manager

    def close(self) -> None:
        """Close the manager if one was built. Idempotent."""
        manager, self._manager = self._manager, None
        if manager is not None:
            with engine_errors():
                manager.close()


pass_app = click.make_pass_decorator(AppContext)


# -- parameter types: each raises a one-line CliError (exit 2) naming the value ------------
def _option_name(param: click.Parameter | None) -> str:
    if param is None:
        return "value"
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    return (param.human_readable_name or "value").upper()


class QueueName(click.ParamType):
    """A queue name checked with :func:`~queue_engine.message.validate_queue_name`."""

    name = "queue"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        with engine_errors():
            return validate_queue_name(value)


class IsoDateTime(click.ParamType):
    """An ISO 8601 date or date-time, returned timezone-aware; a naive value is local time."""

    name = "iso-datetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            parsed = value
        else:
            text = str(value).strip()
            if text[-1:] in ("Z", "z"):  # fromisoformat accepts "Z" only from Python 3.11
                text = text[:-1] + "+00:00"
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise CliError(
                    f"invalid {_option_name(param)} {value!r}: expected an ISO 8601 date-time "
                    "such as 2024-05-01T14:30:00+02:00 (no offset means local time)",
                    USAGE_EXIT,
                ) from None
        return storable_time(lambda: parsed.astimezone() if parsed.tzinfo is None else parsed, value, param)


def storable_time(build: Callable[[], datetime], value: Any, param: click.Parameter | str | None) -> datetime:
    """``build()``, a time given as option ``param`` = ``value``, if a queue can store it (UTC
    years 1 to 9999), else a :class:`CliError` naming the option and the value."""
    name = param if isinstance(param, str) else _option_name(param)
    try:
        when = build()
        storable_epoch(when, name)
    except (ValueError, OverflowError, InvalidMessage):
        raise CliError(
            f"invalid {name} {value!r}: out of the range a queue stores (years 1 to 9999 UTC)", USAGE_EXIT
        ) from None
    return when


class Seconds(click.ParamType):
    """A finite number of seconds >= 0."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise CliError(f"invalid {_option_name(param)} {value!r}: a number of seconds >= 0", USAGE_EXIT)
        return seconds


class WholeNumber(click.ParamType):
    """An integer in ``[minimum, maximum]``."""

    name = "integer"

    def __init__(self, minimum: int = 0, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value), 10)
        except ValueError:
            number = None
        if number is None or number < self.minimum or (self.maximum is not None and number > self.maximum):
            upper = "" if self.maximum is None else f" and <= {self.maximum}"
            raise CliError(
                f"invalid {_option_name(param)} {value!r}: a whole number >= {self.minimum}{upper}", USAGE_EXIT
            )
        return number


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_text(text: str) -> Any:
    """Strict JSON (no NaN/Infinity); raises ValueError (json.JSONDecodeError when positional)."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class JsonData(click.ParamType):
    """Message data: inline JSON text, ``@path`` to read a file, or ``-`` to read stdin.

    The result is a :class:`JsonValue` so that "no option" (None) and JSON ``null`` differ.
    """

    name = "json|@file|-"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> JsonValue:
        if isinstance(value, JsonValue):
            return value
        option = _option_name(param)
        text = str(value)
        if text == "-":
            source = "stdin"
            text = self._decode(_read_stdin(), option, source)
        elif text.startswith("@"):
            path = text[1:]
            source = f"file {path!r}"
            try:
                with open(path, "rb") as fh:
                    raw = fh.read()
            except OSError as exc:
                raise CliError(f"{option}: cannot read file {path!r}: {exc.strerror or exc}", USAGE_EXIT) from None
            text = self._decode(raw, option, source)
        else:
            source = f"inline value {_clip(text)}"
        try:
            data = parse_json_text(text)
        except json.JSONDecodeError as exc:
            raise CliError(
                f"{option} is not valid JSON: {exc.msg} (line {exc.lineno} col {exc.colno}) in {source}", USAGE_EXIT
            ) from None
        except ValueError as exc:
            raise CliError(f"{option} is not valid JSON: {exc} in {source}", USAGE_EXIT) from None
        with engine_errors():
            encode_data(data)  # the limits the engine enforces (depth, Unicode), checked now
        return JsonValue(data)

    @staticmethod
    def _decode(raw: bytes, option: str, source: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"{option}: {source} is not valid UTF-8 (byte {exc.start})", USAGE_EXIT) from None


def _read_stdin() -> bytes:
    stream = sys.stdin
    if stream is None:  # started without a stdin (e.g. by a service manager)
        return b""
    buffer = getattr(stream, "buffer", None)
    return buffer.read() if buffer is not None else stream.read().encode("utf-8")


def _stdin_is_tty() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


class JsonValue:
    """A parsed JSON value (possibly None), as returned by :class:`JsonData`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class KeyValue(click.ParamType):
    """``KEY=VALUE``; VALUE is parsed as JSON when it is valid JSON, else kept as a string."""

    name = "key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        key, sep, raw = str(value).partition("=")
        if not sep or not key.strip():
            raise CliError(f"invalid {_option_name(param)} {value!r}: expected KEY=VALUE", USAGE_EXIT)
        try:
            parsed: Any = parse_json_text(raw)
        except ValueError:
            parsed = raw
        with engine_errors():
            encode_data(parsed)
        return key.strip(), parsed


# -- output helpers -----------------------------------------------------------------------
def json_option(function: F) -> F:
    """The shared ``--json`` flag; the command receives it as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(function)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON, keeping non-ASCII characters."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def format_value(value: Any) -> str:
    """One value for human output: ``-`` for None, local ISO 8601 for times, JSON otherwise."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().isoformat(timespec="milliseconds")
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def echo_fields(fields: Sequence[tuple[str, Any]]) -> None:
    """Print ``key: value`` lines."""
    for key, value in fields:
        click.echo(f"{key}: {format_value(value)}")


def _ref(ref: MessageRef | None) -> str:
    if ref is None:
        return "-"
    return f"{format_value(ref.uuid)} alias={format_value(ref.alias)} at={format_value(ref.timestamp)}"


def status_fields(status: QueueStatus) -> list[tuple[str, Any]]:
    """The human view of a queue status, in display order."""
    fields: list[tuple[str, Any]] = [
        ("queue", status.queue),
        ("failed", status.failed),
        ("messages_to_process", status.messages_to_process),
        ("ready", status.ready),
        ("deferred", status.deferred),
        ("in_flight", status.in_flight),
        ("disabled", status.disabled),
        ("last_message_inserted", _ref(status.last_message_inserted)),
        ("last_message_processed", _ref(status.last_message_processed)),
        ("last_queue_modify_time", status.last_queue_modify_time),
    ]
    fields += [(f"attribute.{key}", value) for key, value in sorted(status.custom_attributes.items())]
    return fields


def message_fields(message: QueueMessage) -> list[tuple[str, Any]]:
    """The human view of one message, in display order."""
    return [
        ("uuid", message.uuid),
        ("queue", message.queue),
        ("alias", message.alias),
        ("data", json.dumps(message.data, ensure_ascii=False)),
        ("retries", message.retries),
        ("attempts", message.attempts),
        ("execution_mode", str(message.execution_mode)),
        ("deferred_until", message.deferred_until),
        ("disabled", message.disabled),
        ("username", message.username),
        ("inserted_at", message.inserted_at),
    ]


def message_line(message: QueueMessage) -> str:
    """One tab-separated line: uuid, alias, inserted_at, mode, flags."""
    mode = str(message.execution_mode)
    if message.deferred_until is not None:
        mode += f"@{format_value(message.deferred_until)}"
    flags = [flag for flag, on in (("disabled", message.disabled), (f"attempts={message.attempts}", message.attempts))
             if on]
    columns = [message.uuid, message.alias, message.inserted_at, mode, ",".join(flags) or None]
    return "\t".join(format_value(column) for column in columns)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .backends.file import COMPILED

    click.echo(f"qengine {__version__} (file backend: {'compiled' if COMPILED else 'pure Python'})")
    ctx.exit()


# -- the commands -------------------------------------------------------------------------
@click.group(name="qengine", cls=QEngineGroup)
@click.option(
    "--config", "config_path", metavar="PATH", default=None,
    help="Config file (default: $QENGINE_CONFIG, ./config.ini, user and system config dirs).",
)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show the version, and whether the compiled build is installed, and exit.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """qengine: a crash-safe queue engine."""
    app = AppContext(config_path)
    ctx.obj = app
    ctx.call_on_close(app.close)


queue_argument = click.argument("queue", type=QueueName())


@cli.command()
@queue_argument
@click.option("--attr", "attrs", multiple=True, type=KeyValue(),
              help="Custom attribute KEY=VALUE (VALUE as JSON when valid, else text). Repeatable.")
@click.option("--description", default=None, help="Catalogue: a short text for people (see qengine queues).")
@click.option("--manual/--no-manual", "manual", default=None,
              help="Catalogue: whether a person may add messages (qengine add). Default: allowed.")
@click.option("--class", "class_name", default=None, metavar="NAME", help="Catalogue: the related entity class.")
@pass_app
def create(
    app: AppContext, queue: str, attrs: tuple[tuple[str, Any], ...], description: str | None, manual: bool | None,
    class_name: str | None,
) -> None:
    """Create QUEUE; prints "created", or "exists" when it already existed.

    --description, --manual/--no-manual and --class set its catalogue entry, also for an
    existing queue (options not given keep their value).
    """
    catalogued = description is not None or manual is not None or class_name is not None
    if catalogued:  # refuse bad catalogue text before the queue is created
        from .catalog import check_entry

        check_entry(description=description, class_name=class_name)
    created = app.manager.create_queue(queue, **dict(attrs))
    if catalogued:
        from .catalog import set_entry

        set_entry(app.manager, queue, description=description, manual=manual, class_name=class_name)
    click.echo("created" if created else "exists")


@cli.command()
@queue_argument
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def destroy(app: AppContext, queue: str, yes: bool) -> None:
    """Delete QUEUE and every message in it; prints "destroyed", or "absent"."""
    if not yes:
        if not _stdin_is_tty():
            raise CliError(f"refusing to destroy queue {queue!r} without confirmation: pass --yes", USAGE_EXIT)
        click.confirm(f"Destroy queue {queue!r} and every message in it?", abort=True)
    click.echo("destroyed" if app.manager.destroy_queue(queue) else "absent")


@cli.command()
@queue_argument
@click.option("--alias", default=None, help="Alias, unique among the queue's pending messages.")
@click.option("--data", "data", type=JsonData(), default=None,
              help="Message data: JSON text, @FILE to read a file, - to read stdin (default: null).")
@click.option("--retries", type=WholeNumber(0, 1_000_000), default=0, show_default=True,
              help="Maximum attempts (0: the worker's default).")
@click.option("--defer-until", "defer_until", type=IsoDateTime(), default=None,
              help="Not eligible before this ISO 8601 time (no offset: local time).")
@click.option("--delay", type=Seconds(), default=None, help="Not eligible for this many seconds.")
@click.option("--disabled", is_flag=True, help="Store the message disabled.")
@click.option("--username", default=None, help="Owner recorded with the message (default: current user).")
@click.option("--on-duplicate", "on_duplicate", type=click.Choice(["error", "ignore", "replace"]),
              default="error", show_default=True, help="What to do when the alias is taken.")
@pass_app
def add(
    app: AppContext, queue: str, alias: str | None, data: JsonValue | None, retries: int,
    defer_until: datetime | None, delay: float | None, disabled: bool, username: str | None, on_duplicate: str,
) -> None:
    """Add a message to QUEUE (created if needed); prints its uuid.

    This is a manual insertion: refused when the queue's catalogue says --no-manual; with
    ``[queue] manualMode = direct`` the queue's worker processes it at once.
    """
    if defer_until is not None and delay is not None:
        raise CliError("use either --defer-until or --delay, not both", USAGE_EXIT)
    if delay is not None:
        seconds = delay
        defer_until = storable_time(lambda: datetime.now(timezone.utc) + timedelta(seconds=seconds), delay, "--delay")
    with engine_errors():  # builds and validates the message before the manager exists
        message = QueueMessage(
            data=None if data is None else data.value, alias=alias, retries=retries,
            deferred_until=defer_until, disabled=disabled, username=username,
        )
    from .catalog import add_manual

    click.echo(add_manual(app.manager, queue, message, on_duplicate=on_duplicate))  # type: ignore[arg-type]


@cli.command()
@queue_argument
@json_option
@pass_app
def get(app: AppContext, queue: str, as_json: bool) -> None:
    """Remove the first eligible message from QUEUE and print it as JSON.

    Prints ``null`` when there is none (exit 0), so ``qengine get Q | jq`` always works;
    exit 3 if QUEUE does not exist. ``--json`` is accepted for symmetry with the other read
    commands.
    """
    message = app.manager.get_message(queue)
    if message is None and not app.manager.queue_exists(queue):
        raise _to_cli_error(QueueNotFound(f"queue {queue!r} does not exist"))
    echo_json(None if message is None else message.to_dict())
    if message is None:
        click.echo(f"queue {queue!r} has no eligible message", err=True)


@cli.command()
@queue_argument
@json_option
@pass_app
def status(app: AppContext, queue: str, as_json: bool) -> None:
    """Print the status record of QUEUE (exit 3 if it does not exist)."""
    result = app.manager.queue_status(queue)
    publisher = app.manager.queue_meta(queue).get("amqp")  # an AMQP outbox's publisher state
    if as_json:
        echo_json(result.to_dict() | ({"amqp_publisher": publisher} if isinstance(publisher, dict) else {}))
        return
    echo_fields(status_fields(result))
    if result.failed:  # a failure must be impossible to miss
        banner = f"FAILED: {result.failed} message(s) - see: qengine failed {queue}"
        click.echo(click.style(banner, fg="red", bold=True), err=True)
    if isinstance(publisher, dict) and publisher.get("state") in ("failing", "disabled"):
        kept = f"{result.messages_to_process} message(s) kept in {queue}"
        if publisher["state"] == "failing":
            banner = f"RABBITMQ PUBLISHING FAILING since {publisher.get('since')}: {publisher.get('error')} - {kept}"
        else:
            banner = f"RABBITMQ PUBLISHING DISABLED ([amqp.{queue}] enabled = false) - {kept}"
        click.echo(click.style(banner, fg="red", bold=True), err=True)


@cli.command(name="list")
@json_option
@pass_app
def list_queues(app: AppContext, as_json: bool) -> None:
    """Print the names of every queue."""
    names = app.manager.list_queues()
    if as_json:
        echo_json(names)
    else:
        for name in names:
            click.echo(name)


@cli.command()
@queue_argument
@click.option("--uuid", default=None, help="Only the message with this uuid.")
@click.option("--alias", default=None, help="Only the message with this alias.")
@click.option("--username", default=None, help="Only messages of this user.")
@click.option("--disabled/--enabled", "disabled", default=None, help="Only disabled / only enabled messages.")
@click.option("--mode", type=click.Choice(["immediate", "deferred"]), default=None, help="Only this execution mode.")
@click.option("--from", "inserted_from", type=IsoDateTime(), default=None, help="Inserted at or after this time.")
@click.option("--to", "inserted_to", type=IsoDateTime(), default=None, help="Inserted at or before this time.")
@click.option("--limit", type=WholeNumber(0), default=None, help="At most this many messages.")
@json_option
@pass_app
def find(
    app: AppContext, queue: str, uuid: str | None, alias: str | None, username: str | None,
    disabled: bool | None, mode: str | None, inserted_from: datetime | None, inserted_to: datetime | None,
    limit: int | None, as_json: bool,
) -> None:
    """List QUEUE's pending messages matching every given filter, in queue order.

    Text output: one tab-separated line per message: uuid, alias, inserted_at, mode, flags.
    """
    if inserted_from is not None and inserted_to is not None and inserted_from > inserted_to:
        raise CliError(
            f"--from {inserted_from.isoformat()} is after --to {inserted_to.isoformat()}: nothing could match",
            USAGE_EXIT,
        )
    messages = app.manager.find_messages(
        queue, uuid=uuid, alias=alias, username=username, disabled=disabled, execution_mode=mode,
        inserted_from=inserted_from, inserted_to=inserted_to, limit=limit,
    )
    if as_json:
        echo_json([message.to_dict() for message in messages])
    else:
        for message in messages:
            click.echo(message_line(message))


@cli.command()
@queue_argument
@click.argument("key", metavar="UUID_OR_ALIAS")
@json_option
@pass_app
def show(app: AppContext, queue: str, key: str, as_json: bool) -> None:
    """Print one pending message of QUEUE in full, found by uuid, else by alias (exit 3 if none)."""
    if not key:
        raise CliError("UUID_OR_ALIAS must not be empty", USAGE_EXIT)
    manager = app.manager
    found = manager.find_messages(queue, uuid=key, limit=1) or manager.find_messages(queue, alias=key, limit=1)
    if not found:
        raise _to_cli_error(MessageNotFound(f"no pending message with uuid or alias {key!r} in queue {queue!r}"))
    if as_json:
        echo_json(found[0].to_dict())
    else:
        echo_fields(message_fields(found[0]))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``qengine`` console script and of ``python -m queue_engine``."""
    cli.main(args=None if argv is None else list(argv), prog_name="qengine")

