"""The merge's SQL on the target: staging tables, file rows moved by the database, the
differences between SQLite and PostgreSQL kept behind ``Sql``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

from sqlalchemy import Connection

from asynchy.db import Database
from asynchy.errors import SchemaError
from asynchy.merge.inspect import Source
from asynchy.merge.read import BATCH, HOLDING, legacy_file_rows
from asynchy.merge.rules import EpnCandidate, Plan, left_to_owner
from asynchy.merge.summary import MergeProgress, MergeSummary
from asynchy.models import epns_table, sqlite_time_text


class Sql:
    """One small interface over the target's raw connection: ``?`` placeholders on both databases."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(self._q(sql), tuple(params))
        return cur

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        cur = self.conn.cursor()
        n = 0
        batch: list[Sequence[Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH:
                cur.executemany(self._q(sql), batch)
                n += len(batch)
                batch = []
        if batch:
            cur.executemany(self._q(sql), batch)
            n += len(batch)
        return n

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.run(sql, params).fetchone()
        return row[0] if row else None


def temp_tables(sql: Sql) -> None:
    t = "timestamptz" if sql.postgres else "TEXT"
    extra = " ON COMMIT DROP" if sql.postgres else ""
    tmp = "TEMPORARY"
    for statement in (
        f"CREATE {tmp} TABLE m_excl (src INTEGER NOT NULL, epn TEXT NOT NULL){extra}",
        f"CREATE {tmp} TABLE m_rank (src INTEGER NOT NULL, epn TEXT NOT NULL, rnk INTEGER NOT NULL){extra}",
        f"CREATE {tmp} TABLE m_keep (epn TEXT PRIMARY KEY, min_rank INTEGER NOT NULL){extra}",
        f"CREATE {tmp} TABLE m_rows (src INTEGER NOT NULL, epn TEXT NOT NULL, path TEXT NOT NULL, size BIGINT NOT NULL, "
        f"modified {t} NOT NULL, kind TEXT NOT NULL){extra}",
        f"CREATE {tmp} TABLE m_stage (epn TEXT NOT NULL, path TEXT NOT NULL, size BIGINT NOT NULL, modified {t} NOT NULL, "
        f"kind TEXT NOT NULL, rnk INTEGER NOT NULL){extra}",
    ):
        sql.run(statement)


def _resolve_overlaps(sql: Sql, summary: MergeSummary) -> None:
    """EPNs found in several places: per file the newest walk wins; files a newer complete walk did not see go."""
    if not sql.scalar("SELECT count(*) FROM m_keep"):
        return
    sql.run(
        "CREATE TEMPORARY TABLE m_win AS SELECT epn, path, size, modified, kind FROM ("
        " SELECT s.*, row_number() OVER (PARTITION BY s.epn, s.path"
        " ORDER BY s.rnk DESC, s.modified DESC, s.size DESC, s.kind DESC) AS rn FROM m_stage s) w"
        " WHERE w.rn = 1 AND w.rnk >= (SELECT k.min_rank FROM m_keep k WHERE k.epn = w.epn)"
    )
    sql.run("CREATE INDEX m_win_key ON m_win (epn, path)")
    removed = sql.run(
        "DELETE FROM files WHERE epn IN (SELECT epn FROM m_keep) AND NOT EXISTS "
        "(SELECT 1 FROM m_win w WHERE w.epn = files.epn AND w.path = files.path)"
    ).rowcount
    before = sql.scalar("SELECT count(*) FROM files WHERE epn IN (SELECT epn FROM m_keep)")
    changed = sql.run(
        "INSERT INTO files (epn, path, size, modified, kind) SELECT epn, path, size, modified, kind FROM m_win WHERE true "
        "ON CONFLICT (epn, path) DO UPDATE SET size = excluded.size, modified = excluded.modified, kind = excluded.kind "
        "WHERE files.size <> excluded.size OR files.modified <> excluded.modified OR files.kind <> excluded.kind"
    ).rowcount
    after = sql.scalar("SELECT count(*) FROM files WHERE epn IN (SELECT epn FROM m_keep)")
    summary.files_removed += max(0, removed)
    summary.files_added += after - before
    summary.files_updated += max(0, changed - (after - before))
    sql.run("DROP TABLE m_win")


def _refresh_aggregates(sql: Sql, epns: list[str]) -> None:
    """epns.size, file_count and modified from the merged file rows."""
    if not epns:
        return
    sql.run("CREATE TEMPORARY TABLE m_touched (epn TEXT PRIMARY KEY)")
    sql.many("INSERT INTO m_touched (epn) VALUES (?)", ((e,) for e in epns))
    sql.run(
        "UPDATE epns SET size = a.s, file_count = a.n, modified = a.m FROM "
        "(SELECT f.epn, sum(f.size) AS s, count(*) AS n, max(f.modified) AS m FROM files f "
        " WHERE f.epn IN (SELECT epn FROM m_touched) GROUP BY f.epn) a WHERE epns.epn = a.epn"
    )
    sql.run(
        "UPDATE epns SET size = 0, file_count = 0, modified = NULL WHERE epn IN (SELECT epn FROM m_touched) "
        "AND NOT EXISTS (SELECT 1 FROM files f WHERE f.epn = epns.epn)"
    )
    sql.run("DROP TABLE m_touched")


EPN_COLUMNS = tuple(c.name for c in epns_table.columns)


def upsert_epns(
    conn: Connection,
    db: Database,
    p: Plan,
    candidates: dict[str, list[EpnCandidate]],
    walk_ids: dict[tuple[int, int], int],
) -> None:
    """Write every merged EPN row (aggregates of copied EPNs come with them; others are recomputed)."""
    now = datetime.now(UTC).replace(microsecond=0)
    rows = []
    for epn, values in p.decisions.items():
        winner = p.winners[epn]
        row: dict[str, Any] = dict.fromkeys(EPN_COLUMNS)
        row.update(
            epn=epn,
            size=winner.size,
            file_count=winner.file_count,
            modified=winner.modified,
            claim_token=0,
            walk_id=walk_ids.get((winner.src, winner.walk_id))
            if winner.src and winner.walk_id
            else None,
        )
        row.update(values)
        if winner.src == 0:
            row["walk_id"] = winner.walk_id
        row["first_seen_at"] = row.get("first_seen_at") or now
        for key in (
            "size",
            "file_count",
            "attempts",
            "failures",
            "bytes_transferred",
            "walk_error_count",
        ):
            row[key] = row.get(key) or 0
        row["walk_complete"] = bool(row.get("walk_complete"))
        if left_to_owner(candidates[epn]):
            continue
        rows.append(row)
    dialect: Any = __import__(f"sqlalchemy.dialects.{db.dialect}", fromlist=["insert"])
    for start in range(0, len(rows), 5000):
        chunk = rows[start : start + 5000]
        stmt = dialect.insert(epns_table)
        keep = {"epn", "claim_owner", "claim_token", "claimed_at", "lease_until", "claimed_from"}
        stmt = stmt.on_conflict_do_update(
            index_elements=["epn"],
            set_={c: getattr(stmt.excluded, c) for c in EPN_COLUMNS if c not in keep},
        )
        conn.execute(stmt, chunk)


def legacy_rows_into(
    sql: Sql, con: sqlite3.Connection, src: int, zone: tzinfo, progress: MergeProgress | None
) -> dict[str, tuple[int, int, datetime | None]]:
    """Convert as-walker rows into m_rows (src); returns per EPN (files, bytes, newest)."""
    aggregates: dict[str, list[Any]] = {}
    convert = (lambda t: t) if sql.postgres else (lambda t: sqlite_time_text(int(t.timestamp())))

    def rows() -> Iterator[tuple[Any, ...]]:
        for epn, rel, size, when in legacy_file_rows(con, zone):
            agg = aggregates.setdefault(epn, [0, 0, None])
            agg[0] += 1
            agg[1] += size
            agg[2] = when if agg[2] is None or when > agg[2] else agg[2]
            if progress is not None and agg[0] % 10_000 == 0:
                progress.advance(10_000)
            # as-walker recorded every non-folder (symlinks too) as a file: the kind is not known
            # until sync lists the EPN again (it never was walked by asynchy)
            yield (src, epn, rel, size, convert(when), "unverified")

    sql.many(
        "INSERT INTO m_rows (src, epn, path, size, modified, kind) VALUES (?, ?, ?, ?, ?, ?)",
        rows(),
    )
    return {epn: (a[0], a[1], a[2]) for epn, a in aggregates.items()}


def apply_files(sql: Sql, p: Plan, summary: MergeSummary) -> None:
    """File rows waiting in m_rows: exclusive EPNs as they are, overlapping ones through m_stage."""
    added = sql.run(
        "INSERT INTO files (epn, path, size, modified, kind) SELECT r.epn, r.path, r.size, r.modified, r.kind "
        "FROM m_rows r JOIN m_excl x ON x.src = r.src AND x.epn = r.epn WHERE true "
        "ON CONFLICT (epn, path) DO NOTHING"
    ).rowcount
    sql.run(
        "INSERT INTO m_stage (epn, path, size, modified, kind, rnk) SELECT r.epn, r.path, r.size, r.modified, "
        "r.kind, k.rnk FROM m_rows r JOIN m_rank k ON k.src = r.src AND k.epn = r.epn"
    )
    summary.files_added += max(0, added)
    _resolve_overlaps(sql, summary)
    _refresh_aggregates(sql, sorted(set(p.touched)))


def plan_tables(sql: Sql, p: Plan) -> None:
    sql.many("INSERT INTO m_excl (src, epn) VALUES (?, ?)", p.excl)
    sql.many("INSERT INTO m_rank (src, epn, rnk) VALUES (?, ?, ?)", p.ranks)
    sql.many("INSERT INTO m_keep (epn, min_rank) VALUES (?, ?)", p.keep)


def check_references(sql: Sql) -> None:
    """The references a merge can create, checked before commit (SQLite, foreign keys off for speed).

    File rows are copied only for EPNs in m_excl (one holder) or m_keep (several), and only from
    inputs without orphan file rows, so checking those EPNs covers every copied file row."""
    broken = sum(
        len(sql.run(f"PRAGMA main.foreign_key_check({table})").fetchall())
        for table in ("epns", "walk_errors", "transfers")
    )
    broken += sql.scalar(
        "SELECT count(*) FROM (SELECT epn FROM m_excl UNION SELECT epn FROM m_keep) x "
        "WHERE NOT EXISTS (SELECT 1 FROM main.epns e WHERE e.epn = x.epn)"
    )
    if broken:
        raise SchemaError(f"the merge would break {broken} references; nothing was changed")


def rows_in(con: sqlite3.Connection, table: str, schema: str = "main") -> int:
    return int(con.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0])


def expected_rows(con: sqlite3.Connection, schema: str, source: Source) -> int:
    """File rows an asynchy input should hold, for the progress bar (its aggregates; no scan)."""
    if "file_count" not in source.tables.get("epns", set()):
        return rows_in(con, "files", schema)
    return int(con.execute(f"SELECT coalesce(sum(file_count), 0) FROM {schema}.epns").fetchone()[0])


def file_columns(source: Source) -> str:
    return "epn, path, size, modified, " + (
        "kind" if "kind" in source.tables["files"] else "'file'"
    )


def copy_attached(
    sql: Sql,
    name: str,
    src: int,
    source: Source,
    p: Plan,
    summary: MergeSummary,
    progress: MergeProgress | None,
) -> None:
    """One attached asynchy input: its exclusive EPNs straight into files, its overlapping ones into m_stage."""
    cols = file_columns(source)
    mine = [epn for s, epn in p.excl if s == src]
    total = expected_rows(sql.conn, name, source)
    if progress is not None:
        progress.start(source.name, total)
    holding = sql.scalar(f"SELECT count(*) FROM ({HOLDING.format(schema=name + '.')}) h")
    if (
        mine and len(mine) == holding and not source.orphans
    ):  # the common case (shards): every file row of this input, as it is
        added = sql.run(
            f"INSERT INTO files (epn, path, size, modified, kind) SELECT {cols} FROM {name}.files "
            "WHERE true ON CONFLICT (epn, path) DO NOTHING"
        ).rowcount
    elif mine:
        added = sql.run(
            f"INSERT INTO files (epn, path, size, modified, kind) SELECT {cols} FROM {name}.files f "
            f"WHERE f.epn IN (SELECT epn FROM m_excl WHERE src = {src}) "
            "ON CONFLICT (epn, path) DO NOTHING"
        ).rowcount
    else:
        added = 0
    summary.files_added += max(0, added)
    if any(s == src for s, _epn, _rank in p.ranks):
        sql.run(
            f"INSERT INTO m_stage (epn, path, size, modified, kind, rnk) SELECT f.epn, f.path, f.size, f.modified, "
            f"{'f.kind' if 'kind' in source.tables['files'] else chr(39) + 'file' + chr(39)}, k.rnk "
            f"FROM {name}.files f JOIN m_rank k ON k.src = {src} AND k.epn = f.epn"
        )
    if progress is not None:
        progress.advance(total)
        progress.done()


def stream_attached(
    sql: Sql, name: str, src: int, source: Source, progress: MergeProgress | None
) -> None:
    """More than 10 inputs: an attached input's rows are kept in m_rows until the final transaction."""
    total = rows_in(sql.conn, "files", name)
    if progress is not None:
        progress.start(source.name, total)
    sql.run(
        f"INSERT INTO m_rows (src, epn, path, size, modified, kind) SELECT {src}, {file_columns(source)} "
        f"FROM {name}.files"
    )
    if progress is not None:
        progress.advance(total)
        progress.done()
