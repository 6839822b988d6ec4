"""Hostile input, property-based: every CLI call succeeds or fails with one line, never a traceback.

Each example runs ``qengine add`` with generated queue names, aliases, data text and dates
against a real file-backend queue, then checks: exit 0 and the message stored exactly, or a
non-zero exit with one ``Error:`` line (or click's usage message) and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_engine import QueueFactory
from queue_engine.cli import cli

text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=80)
names = st.one_of(text, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
data_text = st.one_of(text, json_values.map(lambda v: json.dumps(v, allow_nan=True)))
dates = st.one_of(st.none(), text, st.datetimes().map(lambda d: d.isoformat()))


def _config(tmp: Path) -> Path:
    config = tmp / "hostile.ini"
    if not config.exists():
        config.write_text(f"[queue]\nqueueType = file\ncacheRoot = {tmp / 'data'}\nfsync = never\n")
    return config


def _count(config: Path, queue: str) -> int:
    manager = QueueFactory.get_queue_manager(config)
    try:
        return len(manager.find_messages(queue)) if manager.queue_exists(queue) else 0
    except Exception:  # an invalid name: nothing can have been written under it
        return 0
    finally:
        manager.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(queue=names, alias=st.one_of(st.none(), text), data=data_text, defer=dates)
def test_add_never_shows_a_traceback_and_writes_nothing_on_error(
    tmp_path: Path, queue: str, alias: str | None, data: str, defer: str | None
) -> None:
    config = _config(tmp_path)
    if "\x00" in queue or "\x00" in data or (alias and "\x00" in alias) or (defer and "\x00" in defer):
        return  # the OS cannot pass NUL in argv; CliRunner would, a real shell never does
    args = ["--config", str(config), "add", queue, "--data", data]
    if alias is not None:
        args += ["--alias", alias, "--on-duplicate", "ignore"]
    if defer is not None:
        args += ["--defer-until", defer]
    before = _count(config, queue)
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert _count(config, queue) in (before, before + 1)  # +0 when an alias was ignored
    else:
        assert _count(config, queue) == before
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert error_lines, result.stderr
