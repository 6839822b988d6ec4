"""``qengine daemon ...``: run daemons as services and control them.

Registered lazily in :data:`queue_engine.cli.LAZY_COMMANDS`; follows the contract of
:mod:`queue_engine.cli` (one ``Error:`` line and a non-zero exit for bad input, ``--json``
for machines). The work is done by :mod:`queue_engine.service`.

``status NAME`` exits as an LSB init script's status does: 0 running, 1 dead (a stale
pidfile), 3 stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .cli import (
    AppContext,
    CliError,
    Seconds,
    WholeNumber,
    echo_fields,
    echo_json,
    engine_errors,
    json_option,
    pass_app,
)
from .config import Config, load_config
from .daemon import validate_daemon_name

__all__ = ["daemon"]

STATUS_EXIT = {"running": 0, "dead": 1, "stopped": 3}


class DaemonName(click.ParamType):
    """A daemon name (the rule of queue names)."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        with engine_errors():
            return validate_daemon_name(value)


name_argument = click.argument("name", type=DaemonName())
processes_option = click.option(
    "--processes", type=WholeNumber(1, 256), default=None,
    help="Worker processes under one supervisor (default: [daemon.NAME] processes, else 1).",
)


def _config(app: AppContext) -> Config:
    with engine_errors():
        return load_config(app.config_path)


@click.group()
def daemon() -> None:
    """Run daemons as services: start, stop, status, logs, install.

    Daemon NAME is daemons/NAME.py (class NameDaemon) in a folder of [daemon] daemonsPath,
    or else the worker of queue NAME (any case), hosted in a worker daemon.
    """


@daemon.command()
@name_argument
@processes_option
@click.option("--timeout", type=Seconds(), default=10.0, show_default=True,
              help="Seconds to wait for the daemon to report running.")
@pass_app
def start(app: AppContext, name: str, processes: int | None, timeout: float) -> None:
    """Start daemon NAME in the background; returns once it runs (or fails, with the reason)."""
    from .service import start_daemon

    config = _config(app)
    with engine_errors():
        status = start_daemon(name, config, processes=processes, timeout=timeout)
    click.echo(f"started {name} (pid {status.pid}); log: {status.paths.logfile}")


@daemon.command()
@name_argument
@processes_option
@click.option("--detach", is_flag=True, hidden=True, help="Become a background process (used by start).")
@click.option("--token", default=None, hidden=True, help="Marks this start in the state file and log.")
@pass_app
def run(app: AppContext, name: str, processes: int | None, detach: bool, token: str | None) -> None:
    """Run daemon NAME in the foreground (for systemd Type=simple and supervisord).

    Logs go to stderr and to the daemon's log file. SIGTERM/SIGINT stop it gracefully (a
    second one at once), SIGHUP reloads the config, SIGUSR1 logs its status.
    """
    from .service import run_daemon

    config = _config(app)
    with engine_errors():
        code = run_daemon(name, config, detach=detach, processes=processes, token=token)
    sys.exit(code)


@daemon.command()
@name_argument
@click.option("--timeout", type=Seconds(), default=None,
              help="Seconds to wait for a graceful stop (default: [daemon] stopTimeout, else the longest "
                   "worker time limit + 30, else 300).")
@click.option("--force", is_flag=True, help="SIGKILL the daemon if it is still running after the timeout.")
@pass_app
def stop(app: AppContext, name: str, timeout: float | None, force: bool) -> None:
    """Stop daemon NAME: SIGTERM, then wait until it exited (the current message finishes)."""
    from .service import stop_daemon

    config = _config(app)
    with engine_errors():
        click.echo(f"{name}: {stop_daemon(name, config, timeout=timeout, force=force)}")


@daemon.command()
@name_argument
@processes_option
@click.option("--timeout", type=Seconds(), default=None, help="Seconds to wait for the stop (as for stop).")
@click.option("--force", is_flag=True, help="SIGKILL the daemon if it does not stop in time.")
@pass_app
def restart(app: AppContext, name: str, processes: int | None, timeout: float | None, force: bool) -> None:
    """Stop daemon NAME (if running), then start it."""
    from .service import start_daemon, stop_daemon

    config = _config(app)
    with engine_errors():
        click.echo(f"{name}: {stop_daemon(name, config, timeout=timeout, force=force)}")
        status = start_daemon(name, config, processes=processes)
    click.echo(f"started {name} (pid {status.pid}); log: {status.paths.logfile}")


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


@daemon.command()
@click.argument("name", required=False, default=None, type=DaemonName())
@json_option
@click.pass_context
def status(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Status of daemon NAME (of every known daemon when omitted).

    running / stopped / dead (stale pidfile), ONLINE / OFFLINE (heartbeat younger than
    [daemon] heartbeatTimeout), pid, uptime, last heartbeat, messages processed, last error.
    """
    from .service import daemon_status, list_daemons

    app = ctx.find_object(AppContext)
    assert app is not None
    config = _config(app)
    with engine_errors():
        names = [name] if name is not None else list_daemons(config)
        found = [daemon_status(n, config) for n in names]
    if as_json:
        echo_json(found[0].to_dict() if name is not None else [s.to_dict() for s in found])
    elif name is not None:
        view = found[0].to_dict()
        echo_fields([(k, view[k]) for k in (
            "name", "state", "status", "pid", "started_at", "uptime", "heartbeat", "heartbeat_age",
            "messages_processed", "iterations", "last_error", "last_error_at", "queues", "processes",
            "pidfile", "logfile",
        )])
    else:
        for s in found:
            click.echo(
                f"{s.name}\t{s.state}\t{s.online}\tpid={s.pid or '-'}\tuptime={_age(s.uptime)}\t"
                f"heartbeat={_age(s.heartbeat_age)} ago\tmessages={s.messages_processed or 0}\t"
                f"last_error={s.last_error or '-'}"
            )
    if name is not None:
        ctx.exit(STATUS_EXIT[found[0].state])


@daemon.command(name="list")
@json_option
@pass_app
def list_command(app: AppContext, as_json: bool) -> None:
    """Known daemons: files in daemonsPath, [daemon.NAME] sections, and daemons with a pid or state file."""
    from .service import daemon_status, list_daemons

    config = _config(app)
    with engine_errors():
        found = [daemon_status(n, config) for n in list_daemons(config)]
    if as_json:
        echo_json([{"name": s.name, "state": s.state, "status": s.online, "pid": s.pid} for s in found])
        return
    for s in found:
        click.echo(f"{s.name}\t{s.state}\t{s.online}")


@daemon.command()
@name_argument
@click.option("-n", "--lines", type=WholeNumber(0, 1_000_000), default=50, show_default=True, help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as they are written (Ctrl-C ends).")
@pass_app
def logs(app: AppContext, name: str, lines: int, follow: bool) -> None:
    """Print the end of daemon NAME's log."""
    from .service import follow_log, tail_log

    config = _config(app)
    with engine_errors():
        if not follow:
            for line in tail_log(name, config, lines):
                click.echo(line)
            return
        try:
            for line in follow_log(name, config, lines=lines):
                click.echo(line)
        except KeyboardInterrupt:
            pass


@daemon.command()
@name_argument
@click.option("--systemd", "kind", flag_value="systemd", help="A systemd unit (Type=simple).")
@click.option("--supervisor", "kind", flag_value="supervisor", help="A supervisord [program:...] block.")
@click.option("--write", is_flag=True, help="Install the file where the system expects it instead of printing it.")
@click.option("--user", is_flag=True, help="systemd: a user unit (~/.config/systemd/user), no root needed.")
@processes_option
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None, hidden=True,
              help="Folder to write to instead of the system's (tests).")
@pass_app
def install(
    app: AppContext, name: str, kind: str | None, write: bool, user: bool, processes: int | None, dest: Path | None,
) -> None:
    """Print (or with --write install) a service definition running `qengine daemon run NAME`.

    The stop timeout (TimeoutStopSec / stopwaitsecs) is [daemon] stopTimeout, else the
    longest time limit of the hosted workers + 30 s, else 300 s.
    """
    from .service import install_path, render_unit, write_unit

    if kind is None:
        raise CliError("choose --systemd or --supervisor", 2)
    if user and kind != "systemd":
        raise CliError("--user applies to --systemd only", 2)
    config = _config(app)
    with engine_errors():
        file_name, text = render_unit(name, config, kind=kind, user=user, processes=processes)
        if not write:
            click.echo(text, nl=False)
            return
        path = write_unit(dest if dest is not None else install_path(kind, user=user), file_name, text)
    click.echo(f"wrote {path}")
    unit = file_name.removesuffix(".service")
    if kind == "systemd":
        flag = " --user" if user else ""
        click.echo(f"next: systemctl{flag} daemon-reload && systemctl{flag} enable --now {unit}")
        if user:
            click.echo("      (loginctl enable-linger $USER keeps user services running after logout)")
    else:
        click.echo(f"next: supervisorctl reread && supervisorctl update   (then: supervisorctl status qengine-{name})")
