"""asynchy audit (docs/fixity.md): the local copies read again and compared with the checksums
recorded when they were copied.  No network: it works after the facility has deleted its copy.

EPNs are taken oldest-audited first (never-audited first of all); a budget (bytes or time)
stops the run between files, and the next audit of that EPN goes on after the last file
checked.  Files are read in ``threads`` threads, in chunks of a few thousand (memory stays flat
for an EPN of a million files); only this thread writes to the database.  A file that differs
or is gone is marked in ``checksums.damage`` and its EPN becomes ``damaged``; ``asynchy sync``
repairs it from the source when the source still has it (asynchy.repair).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, func, insert, select, update

from asynchy import dbclock, destfs
from asynchy.db import Database
from asynchy.destinations import dest_folder, dest_root, stored_folder
from asynchy.fixity import current
from asynchy.models import audits_table, checksums_table, epns_table, files_table
from asynchy.names import decode_name, encode_name
from asynchy.render import plural
from asynchy.sums import damage_words

log = logging.getLogger(__name__)

CHUNK = 500  # files per step: the budget is looked at between steps
GROUP_BYTES, GROUP_FILES = 64 << 20, 64  # one task of the reading threads
Row = tuple[str, bytes, str, str, int]  # stored path, path bytes, algo, recorded hex, size
BLOCK = 1 << 20
c, f, e, a = checksums_table.c, files_table.c, epns_table.c, audits_table.c


@dataclass(frozen=True, slots=True)
class AuditOptions:
    epns: tuple[str, ...] | None = None  # these EPNs only (else all, oldest-audited first)
    max_bytes: int | None = None  # stop after reading this much
    budget: float | None = None  # seconds: stop after this long
    threads: int = 2
    dest: Path | None = None  # to find a copy whose dest_path was not recorded, and its root
    destinations: Any = None
    layout: str | None = None


@dataclass
class EpnAudit:
    epn: str
    files: int = 0
    bytes: int = 0
    mismatched: list[builtins.bytes] = field(default_factory=list)
    missing: list[builtins.bytes] = field(default_factory=list)
    unexpected: int | None = None
    result: str = "ok"  # ok, damaged, stopped

    @property
    def damaged(self) -> int:
        return len(self.mismatched) + len(self.missing)


@dataclass
class AuditSummary:
    audits: list[EpnAudit] = field(default_factory=list)
    elapsed: float = 0.0
    stopped: str | None = None  # why the run ended before every selected EPN was read

    @property
    def files(self) -> int:
        return sum(x.files for x in self.audits)

    @property
    def bytes(self) -> int:
        return sum(x.bytes for x in self.audits)

    @property
    def damaged(self) -> list[EpnAudit]:
        return [x for x in self.audits if x.damaged]


class AuditProgress(Protocol):
    def advance(self, nbytes: int) -> None: ...


# ------------------------------------------------------------------ reading one file
def digest(fd_dir: int, rel: bytes, algo: str) -> tuple[str | None, int]:
    """(hex, bytes read) of ``rel`` below the open folder, every component entered without
    following symlinks; (None, 0) when it is missing or not a regular file."""
    fd = _opened(fd_dir, rel, folder=False)
    if fd is None:
        return None, 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, 0
        if st.st_size > BLOCK:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        h = transfer_hasher(algo)
        total = 0
        buffer = _buffer()
        view = memoryview(buffer)
        while n := os.readv(fd, [buffer]):  # into this thread's buffer: no new bytes per block
            h.update(view[:n])
            total += n
        return h.hexdigest(), total
    finally:
        os.close(fd)


_local = threading.local()


def _buffer() -> bytearray:
    """This thread's read buffer (one per reading thread, reused for every file)."""
    buffer: bytearray | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = bytearray(BLOCK)
    return buffer


def transfer_hasher(algo: str) -> Any:
    """A hash object of the transfer checksum ``algo`` (xxh128 or md5), as rsync's %C."""
    if algo == "xxh128":
        import xxhash

        return xxhash.xxh3_128()
    return hashlib.md5(usedforsecurity=False)


# ------------------------------------------------------------------ the run
def audit(
    db: Database,
    opts: AuditOptions,
    *,
    progress: AuditProgress | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> AuditSummary:
    started = time.monotonic()
    summary = AuditSummary()

    def spent() -> str | None:
        read = summary.bytes + sum(x.bytes for x in reading)
        if stop():
            return "interrupted"
        if opts.max_bytes is not None and read >= opts.max_bytes:
            return f"--max-bytes reached ({plural(read, 'byte')} read)"
        if opts.budget is not None and time.monotonic() - started >= opts.budget:
            return "--budget reached"
        return None

    reading: list[EpnAudit] = []  # the EPN being read (its bytes count towards the budget)
    with ThreadPoolExecutor(max(1, opts.threads), thread_name_prefix="asynchy-audit") as pool:
        for epn, dest_path in _selected(db, opts):
            if (why := spent()) is not None:
                summary.stopped = why
                break
            reading[:] = [EpnAudit(epn)]
            one = _audit_epn(db, opts, reading[0], dest_path, pool, spent, progress)
            reading.clear()
            summary.audits.append(one)
            if one.result == "stopped":
                summary.stopped = spent()
                break
    summary.elapsed = time.monotonic() - started
    return summary


def slice_bytes(db: Database, every: float, period: float) -> int:
    """The bytes one watch cycle reads so that every recorded file is read within ``period``."""
    with db.read() as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(c.size), 0))
            .select_from(checksums_table)
            .join(epns_table, e.epn == c.epn)
            .where(e.status.in_(("complete", "damaged")))
        ).scalar_one()
    if not total:
        return 0
    return max(1, -(-int(total) * int(every) // int(period)))


def _selected(db: Database, opts: AuditOptions) -> list[tuple[str, str | None]]:
    """Complete (or damaged) EPNs with recorded checksums, the least recently audited first."""
    query = (
        select(e.epn, e.dest_path)
        .join(checksums_table, c.epn == e.epn)
        .where(e.status.in_(("complete", "damaged")))
        .group_by(e.epn, e.dest_path)
        .order_by(func.min(func.coalesce(c.audited_at, _EPOCH)), e.epn)
    )
    if opts.epns:
        query = query.where(e.epn.in_(opts.epns))
    with db.read() as conn:
        return [(epn, dest_path) for epn, dest_path in conn.execute(query)]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def folder_of(opts: AuditOptions, epn: str, dest_path: str | None) -> tuple[bytes, bytes]:
    """(the EPN's copy, the trusted folder it is below)."""
    if dest_path:
        folder = stored_folder(dest_path, epn)
    elif opts.dest is not None:
        folder = dest_folder(epn, opts.dest, opts.destinations, opts.layout)
    else:
        raise FileNotFoundError(f"EPN {epn} has no recorded destination and dest is not set")
    root = os.path.dirname(folder)
    if opts.dest is not None:
        configured = os.fsencode(dest_root(epn, opts.dest, opts.destinations, opts.layout))
        if folder.startswith(configured.rstrip(b"/") + b"/"):
            root = configured
    return folder, root


def _audit_epn(
    db: Database,
    opts: AuditOptions,
    one: EpnAudit,
    dest_path: str | None,
    pool: ThreadPoolExecutor,
    spent: Callable[[], str | None],
    progress: AuditProgress | None,
) -> EpnAudit:
    epn = one.epn
    begun = datetime.now(UTC)
    resume = _resume_after(db, epn)
    last: str | None = None
    try:
        folder, root = folder_of(opts, epn, dest_path)
        fd = destfs.open_below(root, folder, create=False)
    except (OSError, ValueError) as exc:
        log.warning(
            "EPN %s: its copy cannot be opened (%s): every file counts as missing", epn, exc
        )
        fd = None
    try:
        for chunk in _files(db, epn, resume):
            if spent() is not None:
                one.result = "stopped"
                break
            results = _digests(pool, fd, chunk)
            _checked(db, epn, chunk, results, one, progress)
            last = chunk[-1][0]
        if one.result != "stopped" and fd is not None:
            one.unexpected = _unexpected(db, epn, fd)
    finally:
        if fd is not None:
            os.close(fd)
    if one.damaged:
        one.result = "damaged"
    _record(db, one, begun, last if one.result == "stopped" else None)
    return one


def _digests(
    pool: ThreadPoolExecutor, fd: int | None, chunk: list[Row]
) -> list[tuple[str | None, int]]:
    """The chunk's files read in the pool, a group of neighbours per task (each group opens its
    folders once; groups of about GROUP_BYTES keep the threads evenly busy)."""
    if fd is None:
        return [(None, 0) for _ in chunk]
    groups: list[list[tuple[int, Row]]] = [[]]
    weight = 0
    for i, row in enumerate(chunk):
        if groups[-1] and (weight >= GROUP_BYTES or len(groups[-1]) >= GROUP_FILES):
            groups.append([])
            weight = 0
        groups[-1].append((i, row))
        weight += row[4]
    results: list[tuple[str | None, int]] = [(None, 0)] * len(chunk)
    for done in pool.map(lambda group: _digest_group(fd, group), groups):
        for i, result in done:
            results[i] = result
    return results


def _digest_group(
    fd: int, group: list[tuple[int, Row]]
) -> list[tuple[int, tuple[str | None, int]]]:
    folders: dict[bytes, int | None] = {b"": fd}
    try:
        out = []
        for i, (_stored, raw, algo, _want, _size) in group:
            parent, _, name = raw.rpartition(b"/")
            if parent not in folders:
                folders[parent] = _opened(fd, parent, folder=True)
            at = folders[parent]
            out.append((i, digest(at, name, algo) if at is not None else (None, 0)))
        return out
    finally:
        for opened in folders.values():
            if opened is not None and opened != fd:
                os.close(opened)


def _opened(fd: int, rel: bytes, *, folder: bool) -> int | None:
    """``rel`` below the EPN's copy (destfs.open_inside); None when it is not there as a plain
    path: missing, a symlink, not a folder, or going up with ``..`` (never read outside the copy)."""
    try:
        return destfs.open_inside(fd, rel, folder=folder)
    except ValueError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise


def _resume_after(db: Database, epn: str) -> str | None:
    """Where the EPN's last audit stopped, if a budget stopped it."""
    query = select(a.result, a.resume_after).where(a.epn == epn).order_by(a.id.desc()).limit(1)
    with db.read() as conn:
        row = conn.execute(query).first()
    return row.resume_after if row is not None and row.result == "stopped" else None


def _files(db: Database, epn: str, after: str | None) -> Iterator[list[Row]]:
    """(stored path, path bytes, algo, hex) of the EPN's files with a current value, by path, in
    chunks (keyset: never the whole list at once)."""
    while True:
        query = (
            select(f.path, c.algo, c.value, f.size)
            .join(checksums_table, current())
            .where(f.epn == epn, f.kind == "file")
            .order_by(f.path)
            .limit(CHUNK)
        )
        if after is not None:
            query = query.where(f.path > after)
        with db.read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        yield [(p, decode_name(p), algo, value, int(size)) for p, algo, value, size in rows]
        after = rows[-1][0]


def _checked(
    db: Database,
    epn: str,
    chunk: list[Row],
    results: list[tuple[str | None, int]],
    one: EpnAudit,
    progress: AuditProgress | None,
) -> None:
    ok: list[dict[str, str]] = []
    bad: list[dict[str, str]] = []
    for (stored, raw, _algo, want, _size), (got, nbytes) in zip(chunk, results, strict=True):
        one.files += 1
        one.bytes += nbytes
        if got is None:
            one.missing.append(raw)
            bad.append({"b_path": stored, "b_damage": "missing"})
        elif got != want:
            one.mismatched.append(raw)
            bad.append({"b_path": stored, "b_damage": "mismatch"})
        else:
            ok.append({"b_path": stored})
        if progress is not None:
            progress.advance(nbytes)
    where = and_(c.epn == epn, c.path == bindparam("b_path"))
    with db.write() as conn:
        if ok:
            conn.execute(
                update(checksums_table)
                .where(where)
                .values(audited_at=dbclock.now(db), damage=None),
                ok,
            )
        if bad:
            conn.execute(
                update(checksums_table).where(where).values(damage=bindparam("b_damage")), bad
            )


def _unexpected(db: Database, epn: str, fd: int) -> int:
    """Regular files in the copy that the inventory does not list (counted, not damage)."""
    count = 0
    batch: list[str] = []

    def flush() -> int:
        if not batch:
            return 0
        with db.read() as conn:
            known = set(
                conn.execute(select(f.path).where(f.epn == epn, f.path.in_(batch))).scalars()
            )
        n = sum(1 for p in batch if p not in known)
        batch.clear()
        return n

    for top, _dirs, names, _top_fd in os.fwalk(b".", dir_fd=fd):
        for name in names:
            rel = os.path.normpath(os.path.join(top, name))
            if stat.S_ISREG(os.lstat(name, dir_fd=_top_fd).st_mode):
                batch.append(encode_name(rel))
                if len(batch) >= 500:
                    count += flush()
    return count + flush()


def _record(db: Database, one: EpnAudit, begun: datetime, resume_after: str | None) -> None:
    shown = [os.fsdecode(p) for p in (one.mismatched + one.missing)[:3]]
    message = None
    if one.damaged:
        message = (
            f"{damage_words(len(one.mismatched), len(one.missing))}: "
            + ", ".join(repr(s) for s in shown)
            + (" ..." if one.damaged > 3 else "")
        )
    with db.write() as conn:
        conn.execute(
            insert(audits_table).values(
                epn=one.epn,
                started_at=begun,
                finished_at=datetime.now(UTC),
                host=socket.gethostname(),
                files=one.files,
                bytes=one.bytes,
                mismatched=len(one.mismatched),
                missing=len(one.missing),
                unexpected=one.unexpected,
                result=one.result,
                resume_after=resume_after,
                message=message,
            )
        )
        if one.damaged:
            conn.execute(
                update(epns_table)
                .where(e.epn == one.epn, e.status.in_(("complete", "damaged")))
                .values(
                    status="damaged", last_error=f"audit: {message}", last_error_class="damaged"
                )
            )
        elif one.result == "ok":
            still = select(func.count()).where(c.epn == one.epn, c.damage.is_not(None))
            if conn.execute(still).scalar() == 0:
                conn.execute(
                    update(epns_table)
                    .where(e.epn == one.epn, e.status == "damaged")
                    .values(status="complete", last_error=None, last_error_class=None)
                )
