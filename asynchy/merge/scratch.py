"""A merge into a SQLite file that does not exist yet is built beside it, as a scratch file, and
put in place only when it is whole.

The scratch file is private to this merge, so its writes need no journal and no fsync until the
end (``fast``): a failure, a full disk or ``kill -9`` leaves at most a scratch file, never a
half-written target.  When the merge has committed, the file is switched to WAL (what every
asynchy database uses), flushed to disk and linked under the target's name, which fails, rather
than overwrite, if another program created the target meanwhile.  The next merge into the same
target removes the scratch files of merges of this host that died.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sqlite3
from pathlib import Path

from asynchy.errors import ConfigError, UsageError
from asynchy.processes import pid_alive

log = logging.getLogger(__name__)

_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _prefix(target: Path) -> str:
    return f".{target.name}.merging."


def create(target: Path) -> Path:
    """A new, empty scratch file for ``target`` (mode 0600, as a new inventory gets)."""
    _clear_stale(target)
    scratch = target.with_name(f"{_prefix(target)}{socket.gethostname()}.{os.getpid()}")
    try:
        os.close(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise ConfigError(
            f"db {target} cannot be created: {exc.strerror}; make its folder writable or fix db"
        ) from None
    return scratch


def fast(con: sqlite3.Connection) -> None:
    """No journal and no fsync on the scratch file (``con`` must be its only connection; if the
    mode cannot change, the merge goes on as it would on any target)."""
    con.execute("PRAGMA main.journal_mode = OFF")
    con.execute("PRAGMA main.synchronous = OFF")


def finish(con: sqlite3.Connection) -> None:
    """Back to WAL and synchronous writes once the merge has committed (``con`` the only connection)."""
    con.execute("PRAGMA main.journal_mode = WAL")


def put_in_place(scratch: Path, target: Path) -> None:
    """Flush the finished scratch file and give it the target's name (never over an existing file)."""
    fd = os.open(scratch, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(scratch, target)
    except OSError as exc:
        no_links = exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP)
        if isinstance(exc, FileExistsError) or (no_links and target.exists()):
            remove(scratch)
            raise UsageError(
                f"{target} was created by another program while the merge ran; it was left "
                "alone and nothing was merged: run the merge again"
            ) from None
        if not no_links:
            raise
        os.replace(scratch, target)  # a file system without hard links, after one last look
    else:
        scratch.unlink()
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove(scratch: Path) -> None:
    for suffix in _SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            Path(str(scratch) + suffix).unlink()


def _clear_stale(target: Path) -> None:
    """Scratch files left by merges of this host that died (``kill -9``, power loss); one with
    this process's pid is a dead merge's too (pids are reused)."""
    mine = f"{_prefix(target)}{socket.gethostname()}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            tail = entry.name[len(mine) :]
            if not (entry.name.startswith(mine) and tail.isdigit()):
                continue
            if int(tail) == os.getpid() or not pid_alive(int(tail)):
                remove(Path(entry.path))
                log.info("removed %s, left by a merge that did not finish", entry.path)
