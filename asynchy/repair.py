"""Damaged copies repaired from the source (docs/fixity.md): run by ``asynchy sync`` before its
batch, for each EPN an audit found ``damaged``.

Only the damaged files are touched, and only when the source still has each of them with the
checksum recorded when it was first copied: one checksum pass at the source over just those
files decides.  If the source no longer has one, or has other content, nothing is copied and
the summary says so in one line (exit 3); the copy stays as it is.  After the copy each file is
read again and must give the recorded value.  Runs in the main thread (it writes the database).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from sqlalchemy import and_, bindparam, select, update

from asynchy import dbclock, destfs
from asynchy.audit import AuditOptions, digest, folder_of
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.failures import classify_exit
from asynchy.fixity import current
from asynchy.models import checksums_table, epns_table, files_table
from asynchy.names import decode_name
from asynchy.render import plural
from asynchy.rsync import RsyncOptions, describe_exit, rsync_argv
from asynchy.rsyncrun import ITEMIZE_WIDTH, Sums, run_rsync
from asynchy.sums import components, read_spool
from asynchy.sync_types import SyncOptions, SyncSummary

log = logging.getLogger("asynchy.repair")
c, f, e = checksums_table.c, files_table.c, epns_table.c


def repair_damaged(
    db: Database,
    target: SshTarget | None,
    opts: SyncOptions,
    ropts: RsyncOptions,
    summary: SyncSummary,
) -> None:
    """Each damaged EPN (of ``opts.epns``, if given): repaired, or said why not."""
    query = select(e.epn, e.dest_path).where(e.status == "damaged").order_by(e.epn)
    if opts.epns:
        query = query.where(e.epn.in_(opts.epns))
    with db.read() as conn:
        damaged = list(conn.execute(query))
    where = AuditOptions(dest=opts.dest, destinations=opts.destinations, layout=opts.layout)
    own = replace(ropts, control_dir=None, bwlimit=None, dry_run=False)
    for epn, dest_path in damaged:
        try:
            folder, root = folder_of(where, epn, dest_path)
            fd = destfs.open_below(root, folder, create=True)
        except (OSError, ValueError) as exc:
            summary.failed[epn] = ("damaged", f"cannot repair: its copy cannot be opened ({exc})")
            continue
        try:
            said = _repair(db, target, opts, own, epn, fd)
        finally:
            os.close(fd)
        if said is None:
            summary.repaired.append(epn)
            log.info("EPN %s repaired from the source", epn)
        else:
            summary.failed[epn] = ("damaged", said)
            log.warning("EPN %s: %s", epn, said)


def _damaged_files(db: Database, epn: str) -> dict[str, list[tuple[bytes, str]]]:
    """algo -> [(path bytes, recorded hex)] of the EPN's damaged files."""
    query = (
        select(f.path, c.algo, c.value)
        .join(checksums_table, current())
        .where(f.epn == epn, c.damage.is_not(None))
        .order_by(f.path)
    )
    out: dict[str, list[tuple[bytes, str]]] = defaultdict(list)
    with db.read() as conn:
        for path, algo, value in conn.execute(query):
            out[algo].append((decode_name(path), value))
    return out


def _repair(
    db: Database,
    target: SshTarget | None,
    opts: SyncOptions,
    ropts: RsyncOptions,
    epn: str,
    fd: int,
) -> str | None:
    """None when every damaged file of the EPN is repaired; else why not (one line)."""
    raw = decode_name(epn)
    cwd = f"/proc/self/fd/{fd}".encode()
    groups = _damaged_files(db, epn)
    for files in groups.values():
        for path, _ in files:
            try:
                components(path)
            except ValueError as exc:
                return f"cannot repair: {exc}"
    for algo, files in groups.items():
        pinned = replace(ropts, checksum_algo=algo)
        stdin = b"".join(raw + b"/./" + path + b"\0" for path, _ in files)
        source, why = _source_values(target, opts.src_prefix, pinned, stdin, cwd)
        if why is not None:
            return why
        gone = [p for p, _ in files if p not in source]
        other = [p for p, want in files if p in source and source[p] != want]
        if gone:
            return (
                f"cannot repair: the source no longer has {plural(len(gone), 'damaged file')} "
                f"(e.g. {os.fsdecode(gone[0])!r}); the copy is left as it is"
            )
        if other:
            return (
                f"cannot repair: the source has other content now for "
                f"{plural(len(other), 'damaged file')} (e.g. {os.fsdecode(other[0])!r}); "
                "the copy is left as it is"
            )
        argv = tuple(
            rsync_argv(target=target, prefix=opts.src_prefix, opts=replace(pinned, repair=True))
        )
        run = run_rsync(argv, stdin, cwd=cwd, stall_timeout=opts.stall_timeout, cancel=None)
        if run.exit_code != 0:
            return (
                "repair: "
                + describe_exit(run.exit_code)
                + f" ({classify_exit(run.exit_code, run.stderr)})"
            )
        wrong = [p for p, want in files if digest(fd, p, algo)[0] != want]
        if wrong:
            return (
                f"repair: {plural(len(wrong), 'file')} still differ from the recorded checksum "
                f"after the copy (e.g. {os.fsdecode(wrong[0])!r})"
            )
    _mark_repaired(db, epn)
    return None


def _source_values(
    target: SshTarget | None, prefix: str, ropts: RsyncOptions, stdin: bytes, cwd: bytes
) -> tuple[dict[bytes, str], str | None]:
    argv = tuple(rsync_argv(target=target, prefix=prefix, opts=ropts, check="sums"))
    with tempfile.TemporaryDirectory(prefix="asynchy-repair-") as folder:
        spool = Path(folder) / "sums"
        with open(spool, "wb") as fh:
            run = run_rsync(
                argv,
                stdin,
                cwd=cwd,
                stall_timeout=None,
                cancel=None,
                sums=Sums(fh, b"S", ITEMIZE_WIDTH),
            )
        if run.exit_code not in (0, 23, 24):  # 23/24: some named files are gone (said below)
            return {}, "cannot repair now: the source pass failed: " + describe_exit(run.exit_code)
        return {path: value for path, value, _how in read_spool(spool)}, None


def _mark_repaired(db: Database, epn: str) -> None:
    with db.write() as conn:
        conn.execute(
            update(checksums_table)
            .where(and_(c.epn == bindparam("b_epn"), c.damage.is_not(None)))
            .values(damage=None, audited_at=dbclock.now(db)),
            {"b_epn": epn},
        )
        conn.execute(
            update(epns_table)
            .where(e.epn == epn, e.status == "damaged")
            .values(status="complete", last_error=None, last_error_class=None)
        )
