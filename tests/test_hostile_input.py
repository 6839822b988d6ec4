"""Hostile input, property-based, below the CLI: config values and library calls either work
or raise a documented QueueEngineError; nothing else escapes and nothing partial is written."""

from __future__ import annotations

import math
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_engine import ConfigurationError, InvalidMessage, InvalidQueueName, QueueFactory, QueueMessage
from queue_engine.config import _keys, load_config

ROOT = Path(__file__).resolve().parent.parent
anything = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=60)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | anything,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(anything, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(_keys())), value=anything)
def test_any_config_value_loads_or_is_a_configuration_error(tmp_path_factory: object, key: str, value: str) -> None:
    if any(c in value for c in "\n\r\x00"):  # cannot be written on one ini line
        return
    path = Path(str(tmp_path_factory.mktemp("cfg"))) / "c.ini"  # type: ignore[attr-defined]
    path.write_text(f"[queue]\n{key} = {value}\n", encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigurationError as exc:
        assert str(path) in str(exc) or "setting" in str(exc), exc  # names the file


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=json_like, alias=st.one_of(st.none(), anything), queue=st.one_of(anything, st.just("jobs")))
def test_any_message_is_stored_exactly_or_refused_with_nothing_written(
    tmp_path: Path, data: object, alias: str | None, queue: str
) -> None:
    manager = QueueFactory.get_queue_manager(queue_type="file", cache_root=tmp_path / "q", fsync="never")
    try:
        try:
            message = QueueMessage(data=data, alias=alias)
            uid = manager.add_message(queue, message)
        except (InvalidMessage, InvalidQueueName):
            names = manager.list_queues()
            assert all(manager.queue_status(n).messages_to_process == 0 for n in names)
            return
        [found] = manager.find_messages(queue, uuid=uid)
        assert found.data == data and found.alias == alias
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(data))
    finally:
        manager.close()
        for path in (tmp_path / "q" / "queues").glob("*"):
            manager2 = QueueFactory.get_queue_manager(queue_type="file", cache_root=tmp_path / "q", fsync="never")
            manager2.destroy_queue(path.name)
            manager2.close()


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def test_nothing_unpickles_or_evaluates_stored_data() -> None:
    """Stored data is JSON only: no pickle, marshal, eval or exec anywhere in the library."""
    pattern = re.compile(r"\b(pickle|marshal|shelve)\b|\beval\(|\bexec\(")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "queue_engine").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []
