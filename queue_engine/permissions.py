"""Modes of the engine's data files and folders, and who may own them.

Private by default: files 0600, folders 0700. ``[queue] fileMode`` (e.g. ``0660``) shares
them with the owner's group, for an application and its workers running as different users
of one group; folders get the matching search bits (0660 -> 0770). Modes are applied
exactly, whatever the process umask.

A data folder that is a symlink is always refused. One owned by another user is refused
unless ``fileMode`` gives the group write access and the folder belongs to one of our groups.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import StorageError

__all__ = ["Modes", "PRIVATE", "check_data_dir", "dir_mode_for"]


def dir_mode_for(file_mode: int) -> int:
    """The folder mode that goes with ``file_mode``: search (x) wherever read (r) is given."""
    return file_mode | ((file_mode & 0o444) >> 2)


class Modes:
    """File and folder modes of one configuration, applied exactly (umask does not apply)."""

    __slots__ = ("file", "dir")

    def __init__(self, file_mode: int = 0o600) -> None:
        self.file = file_mode
        self.dir = dir_mode_for(file_mode)

    @property
    def shared(self) -> bool:
        """Whether the group may write (so group members may own data folders)."""
        return bool(self.file & 0o020)

    def open(self, path: Path | str, flags: int) -> int:
        """``os.open`` creating with this file mode, exactly."""
        fd = os.open(path, flags, self.file)
        if self.file & 0o077:  # umask may have cleared group/other bits
            try:
                os.fchmod(fd, self.file)
            except OSError:  # not ours (an existing file of a group member): leave it
                pass
        return fd

    def mkdir(self, path: Path, *, parents: bool = False) -> None:
        """Create ``path`` (and, with ``parents``, every missing ancestor) with this folder
        mode, exactly; an existing folder is left as it is."""
        missing = [path]
        if parents:  # pathlib would give missing ancestors the default mode: create each here
            while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
                missing.append(missing[-1].parent)
        for folder in reversed(missing):
            try:
                folder.mkdir(mode=self.dir)
            except FileExistsError:
                continue
            if self.dir & 0o077:  # umask may have cleared group/other bits
                os.chmod(folder, self.dir)


PRIVATE = Modes(0o600)


def check_data_dir(path: Path, what: str, modes: Modes = PRIVATE) -> None:
    """Refuse a data folder that is a symlink, or that belongs to someone it should not.

    A symlink could send writes somewhere the operator did not choose; a folder owned by
    someone else could be read or swapped under us. Raises :class:`StorageError`.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # created by us a moment later, with our modes
    except OSError as exc:
        raise StorageError(f"cannot inspect {what} {str(path)!r}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise StorageError(
            f"{what} {str(path)!r} is a symlink (to {os.readlink(path)!r}): refused; configure the real folder"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(f"{what} {str(path)!r} is not a folder")
    if st.st_uid == os.geteuid():
        return
    if modes.shared and st.st_gid in {os.getegid(), *os.getgroups()}:
        return  # a group member's folder, and fileMode shares data with the group
    raise StorageError(
        f"{what} {str(path)!r} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): refused"
        + ("" if modes.shared else "; set fileMode (e.g. 0660) to share queues with a group")
    )
