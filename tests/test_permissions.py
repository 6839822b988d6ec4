"""fileMode: private by default, shared with the group on request, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from queue_engine import ConfigurationError, QueueFactory, QueueMessage, StorageError, load_config
from queue_engine.audit import AuditRecord, get_audit_log
from queue_engine.contingency import Spool


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)  # the most restrictive usual umask: modes must still be exact
    yield
    os.umask(old)


def modes_under(path: Path) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {"files": set(), "dirs": set()}
    for p in [path, *path.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(p).st_mode)
        found["dirs" if p.is_dir() else "files"].add(mode)
    return found


def test_default_is_private(tmp_path: Path, strict_umask: None) -> None:
    with QueueFactory.get_queue_manager(queue_type="file", cache_root=tmp_path / "q") as m:
        m.add_message("jobs", QueueMessage(data=1))
    assert modes_under(tmp_path / "q") == {"files": {0o600}, "dirs": {0o700}}


def test_file_mode_shares_every_data_file_with_the_group(tmp_path: Path, strict_umask: None) -> None:
    root = tmp_path / "q"
    config = load_config(queue_type="file", cache_root=root, file_mode=0o660, fsync="never")
    with QueueFactory.get_queue_manager(config) as m:
        m.add_message("jobs", QueueMessage(data=1))
        get_audit_log(m).record(
            AuditRecord(
                queue="jobs",
                uuid="u",
                alias=None,
                attempt=1,
                outcome="success",
                started_at=1.0,
                duration=0.1,
                host="h",
                pid=1,
                worker="W",
                error=None,
            )
        )
        Spool.from_config(config).put("jobs", QueueMessage(data=2), "test")
    assert modes_under(root) == {"files": {0o660}, "dirs": {0o770}}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
@pytest.mark.parametrize(("file_mode", "accepted"), [(0o600, False), (0o660, True)])
def test_a_group_members_folder_is_accepted_only_when_shared(tmp_path: Path, file_mode: int, accepted: bool) -> None:
    root = tmp_path / "theirs"
    root.mkdir()
    os.chown(root, 65534, os.getegid())  # another user, our group
    build = lambda: QueueFactory.get_queue_manager(queue_type="file", cache_root=root, file_mode=file_mode)  # noqa: E731
    if accepted:
        build().close()
    else:
        with pytest.raises(StorageError, match="set fileMode"):
            build()


@pytest.mark.parametrize("raw", ["abc", "0700", "0400", "0777", "9"])
def test_bad_file_modes_are_refused(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "c.ini"
    path.write_text(f"[queue]\nfileMode = {raw}\n")
    with pytest.raises(ConfigurationError, match="fileMode"):
        load_config(path)


@pytest.mark.parametrize(("raw", "mode"), [("0660", 0o660), ("660", 0o660), ("0o640", 0o640), ("0600", 0o600)])
def test_good_file_modes(tmp_path: Path, raw: str, mode: int) -> None:
    path = tmp_path / "c.ini"
    path.write_text(f"[queue]\nfileMode = {raw}\n")
    assert load_config(path).file_mode == mode
