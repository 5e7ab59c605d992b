"""Fixity in the database (docs/fixity.md): the source-side checksums a copy proved, recorded
per regular file in ``checksums``; which files of an EPN have one; the rows of a manifest.

Only the main process calls ``record`` (it reads the spool file a pool worker wrote and streams
it into the database in chunks: memory stays flat for an EPN of a million files).  A value
counts for a file while the file's row in ``files`` has the size and time it was taken at.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, literal, select

from asynchy import dbclock
from asynchy.db import Database
from asynchy.filters import Filters
from asynchy.models import checksums_table, files_table
from asynchy.names import decode_name, encode_name
from asynchy.processes import pid_alive
from asynchy.sums import manifest_line, read_spool

log = logging.getLogger(__name__)

SPOOL_PREFIX = "asynchy-sums-"
CHUNK = 2000

c, f = checksums_table.c, files_table.c


def current() -> Any:
    """The join condition: a checksum that still counts for its file row."""
    return and_(c.epn == f.epn, c.path == f.path, c.size == f.size, c.modified == f.modified)


def record(db: Database, epn: str, spool: str, algo: str) -> int:
    """The values of one spool file, for the EPN's regular files in the inventory (the last
    value per file wins); returns how many lines were recorded."""
    # the dialect's insert() has ON CONFLICT; imported only when needed (start-up time)
    insert = importlib.import_module(f"sqlalchemy.dialects.{db.dialect}").insert
    rows = select(
        f.epn,
        f.path,
        literal(algo).label("algo"),
        bindparam("b_value").label("value"),
        f.size,
        f.modified,
        bindparam("b_obtained").label("obtained"),
        dbclock.now(db).label("recorded_at"),
    ).where(f.epn == epn, f.path == bindparam("b_path"), f.kind == "file")
    statement = insert(checksums_table).from_select(
        ["epn", "path", "algo", "value", "size", "modified", "obtained", "recorded_at"], rows
    )
    columns = ("algo", "value", "size", "modified", "obtained", "recorded_at")
    statement = statement.on_conflict_do_update(
        index_elements=["epn", "path"],
        set_={name: getattr(statement.excluded, name) for name in columns},
    )
    count = 0
    with db.write() as conn:
        for chunk in _chunks(read_spool(spool)):
            conn.execute(statement, chunk)  # row by row, in order: a later line for a file wins
            count += len(chunk)
    return count


def _chunks(lines: Iterator[tuple[bytes, str, str]]) -> Iterator[list[dict[str, str]]]:
    chunk: list[dict[str, str]] = []
    for path, value, obtained in lines:
        chunk.append({"b_path": encode_name(path), "b_value": value, "b_obtained": obtained})
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def has_value(algo: str) -> Any:
    """A column for a select over ``files``: whether the file's current value of ``algo`` is on
    record (an EXISTS, so the files stay one row each)."""
    return select(c.epn).where(current(), c.algo == algo).exists().label("has_value")


def manifest(db: Database, epn: str) -> Iterator[tuple[str, bytes, str]]:
    """(algo, path bytes, hex) of every regular file of the EPN with a current value, by path."""
    query = (
        select(c.algo, f.path, c.value)
        .join(checksums_table, current())
        .where(f.epn == epn, f.kind == "file")
        .order_by(f.path)
    )
    with db.read() as conn:
        for algo, path, value in conn.execute(query):
            yield algo, decode_name(path), value


def manifest_text(db: Database, epn: str, rules: Filters | None = None) -> bytes:
    """The EPN's manifest (coreutils format, one algorithm); an error while a regular file that
    the include/exclude ``rules`` copy has no value on record."""
    gaps = missing(db, epn, rules)
    if gaps:
        from asynchy.errors import AsynchyError

        raise AsynchyError(
            f"EPN {epn} has {gaps:,} regular files without a checksum on record (not copied yet, "
            "copied before fixity, or with fixity: false); `asynchy sync` records them when it "
            "copies the EPN (see v_fixity_gaps)"
        )
    lines = []
    algos = set()
    for algo, path, value in manifest(db, epn):
        algos.add(algo)
        lines.append(manifest_line(value, path, algo))
    if len(algos) > 1:
        from asynchy.errors import AsynchyError

        raise AsynchyError(
            f"EPN {epn} has checksums of {' and '.join(sorted(algos))}: one manifest holds one "
            "algorithm; copy the EPN again with one checksum_algo"
        )
    return b"".join(lines)


def missing(db: Database, epn: str, rules: Filters | None = None) -> int:
    """Regular files of the EPN without a current value (those the include/exclude ``rules``
    leave out are never copied, and not counted)."""
    query = (
        select(f.path)
        .outerjoin(checksums_table, current())
        .where(f.epn == epn, f.kind == "file", c.epn.is_(None))
    )
    with db.read() as conn:
        paths = conn.execute(query).scalars()
        if not rules:
            return sum(1 for _ in paths)
        return sum(1 for p in paths if not rules.excludes(decode_name(p)))


# ------------------------------------------------------------------ for status and show
def overview(conn: Connection, epn: str | None = None) -> dict[str, Any]:
    """Fixity at a glance, for the whole inventory or one EPN: regular files of complete (and
    damaged) EPNs with and without a current value, damaged EPNs, the last audit."""
    from asynchy.models import audits_table, epns_table

    e, a = epns_table.c, audits_table.c
    copied = (
        select(c.epn.label("has"))
        .select_from(files_table)
        .join(epns_table, e.epn == f.epn)
        .outerjoin(checksums_table, current())
        .where(f.kind == "file", e.status.in_(("complete", "damaged")))
    )
    damaged = select(func.count()).select_from(epns_table).where(e.status == "damaged")
    last = select(a.epn, a.finished_at, a.result, a.files, a.bytes).order_by(a.id.desc()).limit(1)
    audited = select(func.coalesce(func.sum(a.bytes), 0))
    if epn is not None:
        copied = copied.where(f.epn == epn)
        damaged = damaged.where(e.epn == epn)
        last = last.where(a.epn == epn)
        audited = audited.where(a.epn == epn)
    counted = copied.subquery()
    with_value, total = conn.execute(
        select(func.count(counted.c.has), func.count()).select_from(counted)
    ).one()
    row = conn.execute(last).first()
    return {
        "files_with_checksum": int(with_value),
        "files_without_checksum": int(total) - int(with_value),
        "damaged_epns": int(conn.execute(damaged).scalar() or 0),
        "audited_bytes": int(conn.execute(audited).scalar() or 0),
        "last_audit": None
        if row is None
        else {
            "epn": row.epn,
            "finished_at": row.finished_at,
            "result": row.result,
            "files": row.files,
            "bytes": row.bytes,
        },
    }


# ------------------------------------------------------------------ the run's spool folder
def spool_folder() -> str:
    """A private folder for this run's spool files (removed by ``drop_folder``); the folders of
    runs that died (``kill -9``) are removed first."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(SPOOL_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            pid = int(name[len(SPOOL_PREFIX) :].split("-", 1)[0])
            if os.stat(path).st_uid != os.geteuid() or pid_alive(pid):
                continue
        except (ValueError, OSError):
            continue
        shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-")


def drop_folder(folder: str | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def discard(spool: str | None) -> None:
    if spool is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool)
