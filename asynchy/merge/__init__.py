"""``asynchy merge``: combine inventories (sharded walks, older asynchy databases, the older tools' files).

Every input is inspected before anything is written; an input that is not
SQLite, is damaged, has an unknown schema, or is newer than this asynchy stops
the merge with the target untouched.  The merge itself is one transaction on
the target: after a failure half-way (disk full, ``kill -9``) the target is as
it was.  The rules (docs/merge.md) only take maxima and unions with a fixed
order of preference, so merging the same inputs again, or in another order,
gives the same database.

File rows are moved by the database, not by Python: inputs are ATTACHed (at
most 10 at a time) and copied with ``INSERT ... SELECT``; only EPNs found in
more than one place go through a staging table where the newest walk wins.
The older tools' rows (and every row, when the target is PostgreSQL) are
streamed in batches.

The package: ``inspect`` (what each input is), ``rules`` (the pure per-EPN decision), ``read``
(candidates of each input kind and of the target), ``sql`` (the target's SQL, either dialect),
``history`` (walks, transfers, walk errors) and, here, the orchestration.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import DBAPIError

from asynchy.db import Database, open_database
from asynchy.errors import ConfigError, DatabaseError, SchemaError, UsageError
from asynchy.files import sqlite_uri
from asynchy.merge import scratch
from asynchy.merge.fixity import copy_fixity
from asynchy.merge.history import HISTORY, Loaded, copy_rest_of_history, copy_walks, history_rows
from asynchy.merge.inspect import Source, inspect, inspect_all, open_ro
from asynchy.merge.read import (
    BATCH,
    aware,
    candidates_of,
    collect,
    legacy_zone,
    machine_zone,
    target_candidates,
)
from asynchy.merge.rules import EpnCandidate, Plan, decide, left_to_owner, plan
from asynchy.merge.sql import (
    Sql,
    apply_files,
    check_references,
    copy_attached,
    expected_rows,
    file_columns,
    legacy_rows_into,
    plan_tables,
    rows_in,
    stream_attached,
    temp_tables,
    upsert_epns,
)
from asynchy.merge.summary import MergeProgress, MergeSummary
from asynchy.models import epns_table, walks_table, workers_table
from asynchy.names import encode_name
from asynchy.processes import pid_alive
from asynchy.quickcheck import QuickChecks
from asynchy.render import plural

__all__ = [
    "MergeProgress",
    "MergeSummary",
    "Source",
    "decide",
    "inspect",
    "machine_zone",
    "merge",
    "record_ignore_file",
]

log = logging.getLogger(__name__)


MAX_ATTACHED = 10


def _busy(db: Database) -> None:
    """Refuse to merge into a database a sync or walk is writing to right now."""
    host = socket.gethostname()
    with db.read() as conn:
        running = conn.execute(
            select(workers_table.c.host, workers_table.c.pid).where(
                workers_table.c.status == "running"
            )
        ).all()
        walking = conn.execute(
            select(walks_table.c.host, walks_table.c.pid).where(walks_table.c.status == "running")
        ).all()
    live = [(h, p) for h, p in [*running, *walking] if h != host or pid_alive(p)]
    if live:
        h, p = live[0]
        raise UsageError(
            f"a walk or sync ({h}:{p}) is using the target database: merge when it has finished"
        )


def merge(
    target: str,
    inputs: Sequence[Path],
    *,
    legacy_timezone: str | None = None,
    progress: MergeProgress | None = None,
    checks: QuickChecks | None = None,
) -> MergeSummary:
    """Merge the inputs into the target (see the module docstring and docs/merge.md);
    ``checks``: the inputs' integrity checks, started early (asynchy.quickcheck)."""
    if not inputs:
        raise UsageError("give at least one database to merge")
    zone = legacy_zone(legacy_timezone)
    sources = inspect_all([Path(p).expanduser().resolve() for p in inputs], checks)  # no write yet
    for source in sources:
        if source.orphans:
            log.warning(
                "%s: %d file rows have no EPN row (edited with foreign keys off?) and are left out",
                source.name,
                source.orphans,
            )
    summary = MergeSummary(inputs=[(s.name, s.label()) for s in sources])
    if any(s.kind == "legacy" for s in sources):
        summary.legacy_timezone = zone.key
    target_path = None if "://" in target else Path(target).expanduser().resolve()
    if target_path is not None and any(s.path == target_path for s in sources):
        raise UsageError(f"{target_path} is both an input and the target")
    new = target_path if target_path is not None and not target_path.exists() else None
    built = scratch.create(new) if new is not None else None  # see asynchy.merge.scratch
    try:
        db = open_database(str(built) if built is not None else target)
    except BaseException:
        if built is not None:
            scratch.remove(built)
        raise
    if built is not None and new is not None:
        db.display = str(new)  # messages name the file the user asked for
        db.engine.dispose()  # the merge's connection must be the scratch file's only one
    try:
        _busy(db)
        try:
            if db.is_sqlite:
                _merge_sqlite(db, sources, zone, summary, progress, fast=built is not None)
            else:
                _merge_streamed(db, sources, zone, summary, progress)
        except (sqlite3.Error, DBAPIError) as exc:
            orig = getattr(exc, "orig", None) or exc
            reason = str(orig).strip().splitlines()[0]
            raise DatabaseError(
                f"merging into {db.display} failed ({reason}); the target is unchanged"
            ) from None
        db.close()
        if built is not None and new is not None:
            scratch.put_in_place(built, new)
    except BaseException:
        db.close()
        if built is not None:
            scratch.remove(built)
        raise
    return summary


def _write_epns(
    conn: Connection,
    db: Database,
    p: Plan,
    candidates: dict[str, list[EpnCandidate]],
    loaded: Loaded,
    summary: MergeSummary,
) -> None:
    """Walks, workers and transfers of the inputs, then every merged EPN row (file rows need them first)."""
    walk_ids: dict[tuple[int, int], int] = {}
    copy_walks(conn, loaded, walk_ids)
    upsert_epns(conn, db, p, candidates, walk_ids)
    copy_rest_of_history(conn, loaded, walk_ids, summary)


def _count(p: Plan, summary: MergeSummary, candidates: dict[str, list[EpnCandidate]]) -> None:
    summary.epns = len(p.decisions)
    summary.epns_added = len(p.new_epns)
    for epn, values in p.decisions.items():
        if left_to_owner(candidates[epn]):
            continue  # its row is not written
        before = next((c for c in candidates[epn] if c.src == 0), None)
        if values["status"] == "complete" and (before is None or before.status != "complete"):
            summary.completed += 1
        if values["status"] == "changed" and (before is None or before.status != "changed"):
            summary.changed += 1


def _merge_sqlite(
    db: Database,
    sources: list[Source],
    zone: tzinfo,
    summary: MergeSummary,
    progress: MergeProgress | None,
    *,
    fast: bool = False,
) -> None:
    """SQLite target: inputs ATTACHed (10 at most at a time) and copied by SQLite itself;
    ``fast``: the target is a new scratch file, written without journal or fsync."""
    with db.engine.connect() as conn:
        # Only the raw connection is used until the write transaction: ATTACH must happen outside one.
        con: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
        sql = Sql(con, postgres=False)
        attached: dict[int, str] = {}
        try:
            temp_tables(sql)
            candidates: dict[str, list[EpnCandidate]] = {}
            collect(candidates, target_candidates(conn))
            conn.rollback()  # ATTACH must happen outside a transaction
            loaded, single = _attach_inputs(con, sql, sources, candidates, attached, zone, progress)
            _read_other_inputs(con, sql, sources, candidates, zone, progress)
            p, summary.conflicts = plan(candidates)
            _count(p, summary, candidates)
            plan_tables(sql, p)
            # Foreign keys are checked once at the end instead of on each of millions of copied file
            # rows (a third of the copy's time); check_references fails the transaction if one broke.
            con.execute("PRAGMA foreign_keys = OFF")
            if fast:
                scratch.fast(con)
            with conn.execution_options(asynchy_begin="IMMEDIATE").begin():
                _write_epns(conn, db, p, candidates, loaded, summary)
                if single:
                    for i, name in attached.items():
                        copy_attached(sql, name, i, sources[i - 1], p, summary, progress)
                sql.run(
                    "INSERT INTO m_stage (epn, path, size, modified, kind, rnk) SELECT f.epn, f.path, f.size, "
                    "f.modified, f.kind, k.rnk FROM main.files f JOIN m_rank k ON k.src = 0 AND k.epn = f.epn"
                )
                apply_files(sql, p, summary)
                copy_fixity(sql, sources)
                check_references(sql)
            if fast:
                scratch.finish(con)
        finally:
            with contextlib.suppress(sqlite3.Error):
                con.execute("PRAGMA foreign_keys = ON")
            for name in attached.values():
                with contextlib.suppress(sqlite3.Error):
                    con.execute("DETACH DATABASE " + name)
            for table in ("m_excl", "m_rank", "m_keep", "m_rows", "m_stage"):
                with contextlib.suppress(sqlite3.Error):
                    con.execute("DROP TABLE IF EXISTS temp." + table)


def _attach_inputs(
    con: sqlite3.Connection,
    sql: Sql,
    sources: list[Source],
    candidates: dict[str, list[EpnCandidate]],
    attached: dict[int, str],
    zone: tzinfo,
    progress: MergeProgress | None,
) -> tuple[Loaded, bool]:
    """ATTACH the asynchy inputs, 10 at most at a time, and read their candidates and history;
    with more than 10, their rows wait in m_rows (temporary) until the transaction.  Returns the
    history and whether all of them are still attached (one batch)."""
    loaded: Loaded = []
    direct = [i for i, s in enumerate(sources, 1) if s.kind == "asynchy"]
    single = len(direct) <= MAX_ATTACHED
    for start in range(0, len(direct), MAX_ATTACHED):
        for i in direct[start : start + MAX_ATTACHED]:
            name = f"m_src{i}"
            con.execute(
                "ATTACH DATABASE ? AS " + name,
                (sqlite_uri(sources[i - 1].path, read_only=True),),
            )
            attached[i] = name
            source = sources[i - 1]
            collect(candidates, candidates_of(con, name, source, i, zone, None))
            loaded.append((i, {t: history_rows(con, name, source, t) for t in HISTORY}))
        if not single:
            for i, name in list(attached.items()):
                stream_attached(sql, name, i, sources[i - 1], progress)
                con.execute("DETACH DATABASE " + name)
                del attached[i]
    return loaded, single


def _read_other_inputs(
    con: sqlite3.Connection,
    sql: Sql,
    sources: list[Source],
    candidates: dict[str, list[EpnCandidate]],
    zone: tzinfo,
    progress: MergeProgress | None,
) -> None:
    """The older tools' databases (their file rows into m_rows) and ignore.yml files."""
    for i, source in enumerate(sources, 1):
        if source.kind == "legacy":
            legacy = open_ro(source.path)
            try:
                aggregates = None
                if "files" in source.tables:
                    if progress is not None:
                        progress.start(source.name, rows_in(legacy, "files"))
                    aggregates = legacy_rows_into(sql, legacy, i, zone, progress)
                collect(candidates, candidates_of(legacy, "main", source, i, zone, aggregates))
            finally:
                legacy.close()
                if progress is not None and "files" in source.tables:
                    progress.done()
        elif source.kind == "ignore-yml":
            collect(candidates, candidates_of(con, "main", source, i, zone, None))


def _merge_streamed(
    db: Database,
    sources: list[Source],
    zone: tzinfo,
    summary: MergeSummary,
    progress: MergeProgress | None,
) -> None:
    """PostgreSQL target: every input is read here and streamed in batches, all in one transaction."""
    with db.engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        raw = conn.connection.driver_connection
        sql = Sql(raw, postgres=True)
        temp_tables(sql)
        candidates: dict[str, list[EpnCandidate]] = {}
        collect(candidates, target_candidates(conn))
        loaded: Loaded = []
        for i, source in enumerate(sources, 1):
            if source.kind == "ignore-yml":
                collect(
                    candidates,
                    candidates_of(sqlite3.connect(":memory:"), "main", source, i, zone, None),
                )
                continue
            src_con = open_ro(source.path)
            try:
                total = expected_rows(src_con, "main", source) if "files" in source.tables else 0
                if progress is not None:
                    progress.start(source.name, total)
                aggregates = None
                if source.kind == "asynchy":
                    cols = file_columns(source)

                    def rows(
                        c: sqlite3.Connection = src_con, s: int = i, q: str = cols
                    ) -> Iterator[tuple[Any, ...]]:
                        cur = c.execute(f"SELECT {q} FROM files")
                        while chunk := cur.fetchmany(BATCH):
                            if progress is not None:
                                progress.advance(len(chunk))
                            for epn, path, size, modified, kind in chunk:
                                yield (s, epn, path, size, aware(modified), kind)

                    sql.many(
                        "INSERT INTO m_rows (src, epn, path, size, modified, kind) VALUES (?, ?, ?, ?, ?, ?)",
                        rows(),
                    )
                    loaded.append(
                        (
                            i,
                            {t: history_rows(src_con, "main", source, t) for t in HISTORY},
                        )
                    )
                elif "files" in source.tables:
                    aggregates = legacy_rows_into(sql, src_con, i, zone, progress)
                collect(candidates, candidates_of(src_con, "main", source, i, zone, aggregates))
            finally:
                src_con.close()
                if progress is not None:
                    progress.done()
        p, summary.conflicts = plan(candidates)
        _count(p, summary, candidates)
        plan_tables(sql, p)
        sql.run(
            "INSERT INTO m_rows (src, epn, path, size, modified, kind) SELECT 0, f.epn, f.path, f.size, "
            "f.modified, f.kind FROM files f JOIN m_rank k ON k.src = 0 AND k.epn = f.epn"
        )
        _write_epns(conn, db, p, candidates, loaded, summary)
        apply_files(sql, p, summary)
        copy_fixity(sql, sources)


def record_ignore_file(db: Database, path: Path) -> int:
    """HPC ASSyncy's ``ignore`` file: its previouslySynched EPNs count as copied (before each run).

    The same rule as ``asynchy merge ignore.yml``: such an EPN becomes ``complete`` (a new row when
    the inventory does not know it yet); nothing is downgraded, a running claim is left alone, and
    reading the file again changes nothing unless the file changed.  Returns the EPNs newly marked.
    """
    if not path.is_file():
        raise ConfigError(
            f"ignore_file {path} (HPC ASSyncy's 'ignore') does not exist: fix the path or remove the key"
        )
    try:
        listed = inspect(path).epns_listed
    except (UsageError, SchemaError) as exc:
        raise ConfigError(f"ignore_file: {exc}") from None
    names = sorted({encode_name(epn.encode()) for epn in listed})
    if not names:
        return 0
    e = epns_table.c
    marked = 0
    now = datetime.now(UTC).replace(microsecond=0)
    with db.write() as conn:
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            known = set(conn.execute(select(e.epn).where(e.epn.in_(chunk))).scalars())
            new = [n for n in chunk if n not in known]
            if new:
                conn.execute(
                    insert(epns_table),
                    [{"epn": n, "status": "complete", "first_seen_at": now} for n in new],
                )
            result = conn.execute(
                update(epns_table)
                .where(e.epn.in_(chunk), e.status.in_(("pending", "failed")))
                .values(status="complete", completed_at=now, failures=0, not_before=None)
            )
            marked += len(new) + int(result.rowcount)
    if marked:
        log.info("ignore_file %s: %s recorded as already copied", path, plural(marked, "EPN"))
    return marked
