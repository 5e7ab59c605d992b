"""Folders under the destination, entered without following symlinks (docs/security.md).

Project groups can write into their folders under ``dest`` (HPC's layout and ``--chmod=Dg+s,ug+w``
are meant for that), so anyone in a group could plant a symlink where asynchy will create or
enter a folder (``dest/40001a -> /elsewhere``).  Every folder below the configured root (``dest``,
or a destination mapped to an absolute folder: the administrator's, trusted as they are) is
therefore opened one component at a time, relative to the one before, with ``O_NOFOLLOW |
O_DIRECTORY``: a symlink or a file there is an ``UnsafeFolder`` naming the path (a setup problem,
nothing charged), never followed, never written through.  The folder rsync runs in is then
handed over as an open file descriptor (``/proc/self/fd/N``), so that a swap of a component after
the check changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat

from asynchy.sums import components

_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFolder(OSError):
    """A component of a folder asynchy creates or enters under dest is a symlink or not a folder."""


ENTERED = (
    "asynchy will not follow it or write through it (someone who can write into that folder may "
    "have put it there); remove it, or fix dest or destinations"
)
OWN = "asynchy keeps its temporary files there and will not follow it; remove it"


def _open_child(
    parent: int, name: bytes, path: bytes, *, create: bool, mode: int, why: str = ENTERED
) -> int:
    """The folder ``name`` in the open folder ``parent`` (created when missing and ``create``)."""
    for _ in range(3):  # another transfer may create (or remove) the same folder meanwhile
        try:
            return os.open(name, _OPEN, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.lstat(name, dir_fd=parent)
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
            raise UnsafeFolder(f"{os.fsdecode(path)} is {what}: {why}") from None
    return os.open(name, _OPEN, dir_fd=parent)


def open_below(root: bytes, path: bytes, *, create: bool, mode: int = 0o777) -> int:
    """An open file descriptor of ``path``, a folder at or below ``root``, reached one component
    at a time without following symlinks (``root`` itself is trusted: it may be a symlink).
    Missing folders are created (``mode``, less the umask) when ``create``; FileNotFoundError
    otherwise.  The caller closes it."""
    root = root.rstrip(b"/") or b"/"
    if path != root and not path.startswith(root + b"/"):
        raise ValueError(f"{path!r} is not below {root!r}")
    parts = [name for name in path[len(root) :].split(b"/") if name and name != b"."]
    if b".." in parts:
        raise UnsafeFolder(f"{os.fsdecode(path)} goes up with '..': fix destinations")
    if create:  # the configured folder itself (an absolute destination may not exist yet)
        os.makedirs(root, mode, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = root
    try:
        for name in parts:
            walked = walked + b"/" + name
            child = _open_child(fd, name, walked, create=create, mode=mode)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_inside(fd: int, rel: bytes, *, folder: bool) -> int:
    """``rel``, a plain path inside the open folder ``fd``, opened one component at a time without
    following symlinks: a folder (``folder``), or a file to read.  A new descriptor (the caller
    closes it); OSError when a component is missing, a symlink or not a folder; ValueError for a
    path with an empty, ``.`` or ``..`` component (never outside ``fd``)."""
    *parents, last = components(rel)
    at = fd
    try:
        for name in parents:
            child = os.open(name, _OPEN, dir_fd=at)
            if at != fd:
                os.close(at)
            at = child
        flags = _OPEN if folder else os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(last, flags, dir_fd=at)
    finally:
        if at != fd:
            os.close(at)


def check_below(root: bytes, path: bytes) -> None:
    """UnsafeFolder if a component of ``path`` below ``root`` is a symlink or not a folder; a
    missing component is fine (nothing has been put there)."""
    with contextlib.suppress(FileNotFoundError):
        os.close(open_below(root, path, create=False))


def private_folder(parent: int, name: bytes, path: bytes) -> int:
    """asynchy's own folder ``name`` in ``parent`` (mode 0700), opened; an UnsafeFolder when
    something else is there."""
    return _open_child(parent, name, path, create=True, mode=0o700, why=OWN)


def remove(parent: int, name: bytes) -> None:
    """Remove ``name`` from the open folder ``parent``: a folder with everything in it (never
    through a symlink), or a symlink or file itself."""
    try:
        st = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(os.fsdecode(name), dir_fd=parent, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)


def names(parent: int) -> list[bytes]:
    """The entries of an open folder."""
    with os.scandir(parent) as entries:
        return [os.fsencode(e.name) for e in entries]
