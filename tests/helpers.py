"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import subprocess
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sshd import ensure_test_user, processes

T = TypeVar("T")

FIXED_MTIME = 1_600_000_000  # 2020-09-13 12:26:40 UTC


def as_unprivileged(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a forked child as the test account when we are root.

    Root ignores file permissions; the sshd fixture logs in an unprivileged
    account, and this gives a local lister the same view of the tree.
    """
    if os.geteuid() != 0:
        return fn(*args)
    account = ensure_test_user()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            payload = pickle.dumps((True, fn(*args)))
        except BaseException as exc:
            payload = pickle.dumps(
                (False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            )
        with os.fdopen(w, "wb") as fh:
            fh.write(payload)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)
    if not ok:
        raise AssertionError(f"child failed: {value}")
    return value  # type: ignore[no-any-return]


def write_file(path: Path, data: bytes = b"", mtime: int = FIXED_MTIME) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def symlink(path: Path, target: str | bytes, mtime: int = FIXED_MTIME) -> None:
    os.symlink(target, path)
    os.utime(path, (mtime, mtime), follow_symlinks=False)


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[None]:
    """A folder nobody can write into, not even root (chattr +i); chmod 555 for other users."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        os.chmod(path, 0o555)
        try:
            yield
        finally:
            os.chmod(path, 0o755)


def processes_matching(text: str) -> list[int]:
    """PIDs whose command line contains text (to prove no rsync outlived its asynchy)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def works_in(pid: int, cmd: bytes, dest: Path) -> bool:
    """Whether a process works for a copy into dest: dest is in its command line, or its working
    folder is dest or below (asynchy's rsync runs in the EPN's folder and names its own temporary
    folders through descriptors, /proc/self/fd/N: no path of dest is in its command line)."""
    if str(dest).encode() in cmd:
        return True
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd".encode())
    except OSError:
        return False
    return cwd == os.fsencode(dest) or cwd.startswith(os.fsencode(dest) + b"/")


def rsync_processes(dest: Path) -> dict[int, bytes]:
    """rsync processes copying into dest, one per rsync run: pid -> command line.

    The receiving rsync forks a child with the same command line once the file list is in; that
    child is left out while its parent lives (an orphan is still an rsync left running).
    """
    found = {
        pid: (ppid, cmd)
        for pid, (ppid, cmd) in processes().items()
        if b"rsync" in cmd and pid != os.getpid() and works_in(pid, cmd, dest)
    }
    return {pid: cmd for pid, (ppid, cmd) in found.items() if found.get(ppid, (0, b""))[1] != cmd}


def rows(db_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql, params).fetchall()


def inventory(db_path: Path) -> dict[str, Any]:
    """The recorded content of a database, for comparing two walks."""
    return {
        "epns": rows(
            db_path,
            "SELECT epn, size, file_count, modified, walk_complete, status FROM epns ORDER BY epn",
        ),
        "files": rows(
            db_path, "SELECT epn, path, size, modified, kind FROM files ORDER BY epn, path"
        ),
    }


def stderr_on_a_terminal(argv: list[str], env: dict[str, str], columns: int) -> tuple[int, str]:
    """Run argv with stderr on a pseudo-terminal of that width (so progress bars draw); (exit code, what it drew)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def move_clock(setting: str, seconds: float, *, owner: str | None = None) -> None:
    """As if ``seconds`` had passed on the database's clock for the claims and heartbeats of one
    worker (``owner``) or of all: lease_until and heartbeat_at move back by that much.  Tests of
    leases use it instead of sleeping out a lease."""
    from datetime import timedelta

    from sqlalchemy import select, update

    from asynchy.db import open_database
    from asynchy.models import epns_table, workers_table

    back = timedelta(seconds=seconds)
    e, w = epns_table.c, workers_table.c
    db = open_database(setting, migrate=False)
    try:
        with db.write() as conn:
            claims = select(e.epn, e.lease_until).where(e.lease_until.is_not(None))
            beats = select(w.worker_id, w.heartbeat_at).where(w.heartbeat_at.is_not(None))
            if owner is not None:
                claims, beats = (
                    claims.where(e.claim_owner == owner),
                    beats.where(w.worker_id == owner),
                )
            for epn, until in conn.execute(claims).all():
                conn.execute(
                    update(epns_table).where(e.epn == epn).values(lease_until=until - back)
                )
            for worker_id, beat in conn.execute(beats).all():
                conn.execute(
                    update(workers_table)
                    .where(w.worker_id == worker_id)
                    .values(heartbeat_at=beat - back)
                )
    finally:
        db.close()
