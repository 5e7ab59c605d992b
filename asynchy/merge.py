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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from asynchy.db import Database, known_revisions, open_database, sqlite_uri
from asynchy.errors import ConfigError, DatabaseError, SchemaError, UsageError
from asynchy.models import (
    SCHEMA_HEAD,
    epns_table,
    sqlite_time_text,
    transfers_table,
    walk_errors_table,
    walks_table,
    workers_table,
)
from asynchy.names import encode_name
from asynchy.processes import pid_alive

log = logging.getLogger(__name__)

Kind = Literal["asynchy", "legacy", "ignore-yml"]
BATCH = 50_000
MAX_ATTACHED = 10
# Preference between EPN states when no input completed the EPN (the first wins).
STATUS_ORDER = ("skipped", "quarantined", "failed", "changed", "running", "pending")


@dataclass
class Source:
    """One input, inspected."""

    path: Path
    kind: Kind
    revision: str | None = None
    tables: dict[str, set[str]] = field(default_factory=dict)
    epns_listed: list[str] = field(default_factory=list)  # ignore.yml
    orphans: int = 0  # file rows without an EPN row (an asynchy input edited with foreign keys off)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def has_files(self) -> bool:
        return "files" in self.tables

    def label(self) -> str:
        if self.kind == "asynchy":
            return f"asynchy database (revision {self.revision})"
        if self.kind == "ignore-yml":
            return "HPC ASSyncy ignore.yml"
        parts = []
        if "files" in self.tables:
            parts.append("as-walker files")
        if "epns" in self.tables:
            parts.append("MeRC asynchy epns")
        return " + ".join(parts)


@dataclass
class MergeSummary:
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (path, kind)
    epns: int = 0
    epns_added: int = 0
    files_added: int = 0
    files_updated: int = 0
    files_removed: int = 0
    completed: int = 0
    changed: int = 0
    conflicts: int = 0
    transfers_added: int = 0
    legacy_timezone: str | None = None  # the zone naive legacy times were read in (if any were)

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": [{"path": p, "kind": k} for p, k in self.inputs],
            "legacy_timezone": self.legacy_timezone,
            "epns": self.epns,
            "epns_added": self.epns_added,
            "files_added": self.files_added,
            "files_updated": self.files_updated,
            "files_removed": self.files_removed,
            "epns_completed": self.completed,
            "epns_changed": self.changed,
            "conflicts_resolved": self.conflicts,
            "transfers_added": self.transfers_added,
        }


class MergeProgress(Protocol):
    """Called as inputs are read (a bar per input on a terminal)."""

    def start(self, name: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def done(self) -> None: ...


# ------------------------------------------------------------------ inspecting inputs
LEGACY_FILES = {"epn", "path", "size", "modified"}
LEGACY_EPNS = {"epn", "size", "modified", "complete", "bytestransferred"}


def _open_ro(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(sqlite_uri(path, read_only=True), uri=True, timeout=30)
    con.execute("PRAGMA query_only = ON")
    return con


def inspect_all(paths: Sequence[Path]) -> list[Source]:
    """Every input inspected (checks in parallel: SQLite releases the GIL); the first bad one, in order, raises."""
    if len(paths) < 2:
        return [inspect(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(inspect, paths))


def inspect(path: Path) -> Source:
    """What an input is, or a UsageError/SchemaError naming it and what is wrong."""
    if not path.exists():
        raise UsageError(f"merge input {path} does not exist")
    if path.is_dir():
        raise UsageError(f"merge input {path} is a folder, not a database")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UsageError(f"merge input {path} cannot be read: {exc.strerror}") from None
    if head != b"SQLite format 3\x00":
        return _inspect_yaml(path, head)
    try:
        con = _open_ro(path)
        try:
            check = con.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise SchemaError(
                    f"merge input {path} is damaged ({check[0][0]}): repair or leave it out"
                )
            tables = {
                name: {row[1].lower() for row in con.execute(f'PRAGMA table_info("{name}")')}
                for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            revision = None
            orphans = 0
            if "alembic_version" in tables:
                revs = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
                revision = revs[0] if len(revs) == 1 else None
                if {
                    "epns",
                    "files",
                } <= tables.keys():  # the merge copies without re-checking each row
                    orphans = con.execute(
                        "SELECT count(*) FROM files WHERE epn NOT IN (SELECT epn FROM epns)"
                    ).fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise SchemaError(
            f"merge input {path} is damaged ({exc}): repair it or leave it out"
        ) from None
    tables = {k: v for k, v in tables.items() if not k.startswith("sqlite_")}
    if "alembic_version" in tables:
        if revision is None:
            raise SchemaError(
                f"merge input {path} has no single schema revision: it is not an asynchy database"
            )
        if revision != SCHEMA_HEAD and revision not in known_revisions():
            raise SchemaError(
                f"merge input {path} has schema revision {revision}, newer than this asynchy "
                f"(which knows up to {SCHEMA_HEAD}): upgrade asynchy to merge it"
            )
        if not {"epns", "files", "walks"} <= set(tables):
            raise SchemaError(
                f"merge input {path} claims revision {revision} but lacks asynchy's tables"
            )
        return Source(path, "asynchy", revision, tables, orphans=orphans)
    legacy = {}
    if tables.get("files", set()) >= LEGACY_FILES:
        legacy["files"] = tables["files"]
    if tables.get("epns", set()) >= LEGACY_EPNS:
        legacy["epns"] = tables["epns"]
    if not legacy:
        found = ", ".join(sorted(tables)) or "none"
        raise SchemaError(
            f"merge input {path} has an unknown schema (tables: {found}): expected an asynchy database, an "
            "as-walker files table or a MeRC asynchy epns table"
        )
    return Source(path, "legacy", None, legacy)


def _inspect_yaml(path: Path, head: bytes) -> Source:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("previouslySynched"), list):
        what = (
            "an empty file"
            if not head
            else "neither SQLite nor an HPC ASSyncy ignore.yml (previouslySynched: [...])"
        )
        raise SchemaError(f"merge input {path} is {what}")
    epns = [str(x).strip() for x in data["previouslySynched"] if str(x).strip()]
    return Source(path, "ignore-yml", epns_listed=epns)


# ------------------------------------------------------------------ EPN-level state
MIN_TIME = datetime.min.replace(tzinfo=UTC)


@dataclass
class EpnCandidate:
    """One place's view of an EPN: an input, or the target before the merge."""

    epn: str
    src: int  # 0: the target; 1..n: the inputs (used to find rows, never to decide)
    size: int = 0
    file_count: int = 0
    modified: datetime | None = None
    walked_at: datetime | None = None
    walk_complete: bool = False
    walk_error_count: int = 0
    walk_id: int | None = None
    status: str = "pending"
    completed_at: datetime | None = None
    bytes_transferred: int = 0
    attempts: int = 0
    failures: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    last_error_class: str | None = None
    changed_at: datetime | None = None
    first_seen_at: datetime | None = None
    dest_path: str | None = None
    skip_reason: str | None = None
    has_files: bool = False


def walk_rank(c: EpnCandidate) -> tuple[Any, ...]:
    """Newest walk first; equal walks ordered by their content, never by the order of the inputs."""
    return (
        c.walked_at or MIN_TIME,
        c.has_files,
        c.walk_complete,
        c.file_count,
        c.size,
        c.modified or MIN_TIME,
    )


def fingerprint(c: EpnCandidate) -> tuple[Any, ...]:
    return (c.size, c.file_count, c.modified or MIN_TIME)


def differs(done: EpnCandidate, walk: EpnCandidate) -> bool:
    """Did ``walk`` see other content than the place that completed the EPN knew of?

    An ignore.yml entry knows nothing of the content (never differs); a MeRC asynchy row knows
    its size; a walked EPN knows its size, file count and newest file.
    """
    if done.walked_at is None and not done.has_files:
        return bool(done.size) and done.size != walk.size
    return fingerprint(done) != fingerprint(walk)


def decide(cands: list[EpnCandidate]) -> dict[str, Any]:
    """The merged transfer state of one EPN (docs/merge.md); the inventory columns come from the files."""
    walked = [c for c in cands if c.walked_at is not None or c.has_files]
    winner = max(walked or cands, key=walk_rank)
    values: dict[str, Any] = {
        "walked_at": winner.walked_at,
        "walk_complete": winner.walk_complete,
        "walk_error_count": winner.walk_error_count,
        "first_seen_at": min((c.first_seen_at for c in cands if c.first_seen_at), default=None),
        "attempts": max(c.attempts for c in cands),
        "bytes_transferred": max(c.bytes_transferred for c in cands),
        "changed_at": max((c.changed_at for c in cands if c.changed_at), default=None),
    }
    if not winner.has_files:  # no file rows anywhere: the EPN-only inputs' numbers stand
        best = max(cands, key=lambda c: (c.size, c.modified or MIN_TIME))
        values.update(size=best.size, modified=best.modified)
    complete = [c for c in cands if c.status == "complete"]
    if complete:
        done = max(complete, key=lambda c: (c.completed_at or MIN_TIME, walk_rank(c)))
        seen_since = [
            c
            for c in walked
            if c.walked_at is not None
            and c.walked_at > (done.completed_at or MIN_TIME)
            and differs(done, c)
        ]
        values.update(
            status="changed" if seen_since else "complete",
            completed_at=done.completed_at,
            dest_path=done.dest_path,
            failures=0,
            last_exit_code=done.last_exit_code,
            last_error=None,
            last_error_class=None,
            skip_reason=None,
        )
        if seen_since:
            newest = max(c.walked_at for c in seen_since if c.walked_at)
            values["changed_at"] = max(values["changed_at"] or MIN_TIME, newest)
        return values

    def preference(c: EpnCandidate) -> tuple[Any, ...]:
        order = STATUS_ORDER.index(c.status) if c.status in STATUS_ORDER else len(STATUS_ORDER)
        return (order, -c.failures, c.last_error or "", c.skip_reason or "")

    best = min(cands, key=preference)
    values.update(
        status="pending" if best.status == "running" else best.status,
        completed_at=max((c.completed_at for c in cands if c.completed_at), default=None),
        dest_path=best.dest_path,
        failures=best.failures,
        last_exit_code=best.last_exit_code,
        last_error=best.last_error,
        last_error_class=best.last_error_class,
        skip_reason=best.skip_reason,
    )
    return values


# ------------------------------------------------------------------ reading the inputs
def _aware(value: Any) -> datetime | None:
    """A stored time (text or datetime, UTC) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "")).replace(tzinfo=UTC)


def _local(value: Any, zone: tzinfo) -> datetime | None:
    """A naive local time written by an older tool -> UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(str(value).strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC).replace(microsecond=0)


ASYNCHY_EPN_COLUMNS = (
    "epn",
    "size",
    "file_count",
    "modified",
    "walked_at",
    "walk_id",
    "walk_complete",
    "walk_error_count",
    "status",
    "changed_at",
    "first_seen_at",
    "attempts",
    "failures",
    "last_exit_code",
    "last_error",
    "last_error_class",
    "bytes_transferred",
    "completed_at",
    "dest_path",
    "skip_reason",
)
TIME_COLUMNS = {"modified", "walked_at", "changed_at", "first_seen_at", "completed_at"}


def asynchy_candidates(
    con: sqlite3.Connection, schema: str, columns: set[str], src: int
) -> Iterator[EpnCandidate]:
    """EPN rows of an asynchy database of any revision (columns it lacks take their defaults)."""
    present = [c for c in ASYNCHY_EPN_COLUMNS if c in columns]
    with_files = {r[0] for r in con.execute(_HOLDING.format(schema=schema + "."))}
    for row in con.execute(f"SELECT {', '.join(present)} FROM {schema}.epns"):
        data = dict(zip(present, row, strict=True))
        for key in TIME_COLUMNS & data.keys():
            data[key] = _aware(data[key])
        data["walk_complete"] = bool(data.get("walk_complete"))
        status = data.get("status") or "pending"
        if status == "running":  # a claim in another database means nothing here
            status = "pending"
        data["status"] = status
        yield EpnCandidate(
            src=src,
            has_files=data["epn"] in with_files,
            **{k: v for k, v in data.items() if v is not None or k in ("modified",)},
        )


def legacy_candidates(
    con: sqlite3.Connection, source: Source, src: int, zone: tzinfo
) -> Iterator[EpnCandidate]:
    """MeRC asynchy epns rows (EPN-only; complete = 1 is a completed EPN with its transferred bytes)."""
    if "epns" not in source.tables:
        return
    for epn, size, modified, complete, moved in con.execute(
        'SELECT epn, size, modified, complete, "bytesTransferred" FROM epns'
    ):
        if epn is None:
            continue
        yield EpnCandidate(
            epn=encode_name(str(epn).encode()),
            src=src,
            size=int(size or 0),
            modified=_local(modified, zone),
            status="complete" if complete else "pending",
            bytes_transferred=int(moved or 0),
        )


def legacy_file_rows(
    con: sqlite3.Connection, zone: tzinfo
) -> Iterator[tuple[str, str, int, datetime]]:
    """as-walker files rows -> (epn, path inside the EPN, size, UTC mtime); the EPN folder is found in the path."""
    for epn, path, size, modified in con.execute(
        "SELECT epn, path, size, modified FROM files ORDER BY epn, path"
    ):
        if epn is None or path is None:
            continue
        epn_text = str(epn)
        marker = "/" + epn_text + "/"
        at = str(path).find(marker)
        if at < 0:
            log.warning("as-walker row %r is not inside EPN %r: left out", path, epn_text)
            continue
        rel = str(path)[at + len(marker) :]
        when = _local(modified, zone)
        yield (
            encode_name(epn_text.encode()),
            encode_name(rel.encode()),
            int(size or 0),
            when or MIN_TIME,
        )


# ------------------------------------------------------------------ talking SQL to either target
class _Sql:
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


TIME = "TEXT"  # SQLite stores UTC text; PostgreSQL gets timestamptz (see _temp_tables)


def _temp_tables(sql: _Sql) -> None:
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


def _resolve_overlaps(sql: _Sql, summary: MergeSummary) -> None:
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


def _refresh_aggregates(sql: _Sql, epns: list[str]) -> None:
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


# ------------------------------------------------------------------ history: walks, walk errors, workers, transfers
HISTORY = {
    "workers": (
        "worker_id",
        "host",
        "pid",
        "command",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "status",
        "lease_seconds",
    ),
    "transfers": (
        "epn",
        "attempt",
        "started_at",
        "finished_at",
        "worker_id",
        "host",
        "pid",
        "claim_token",
        "argv",
        "dest",
        "exit_code",
        "classification",
        "outcome",
        "reason",
        "bytes_transferred",
        "files_transferred",
        "stdout_tail",
        "stderr_tail",
    ),
    "walks": (
        "id",
        "started_at",
        "finished_at",
        "status",
        "source",
        "host",
        "pid",
        "options",
        "epns_total",
        "epns_walked",
        "epns_skipped",
        "epns_changed",
        "files",
        "bytes",
        "errors",
        "reconnects",
        "message",
    ),
    "walk_errors": ("walk_id", "epn", "path", "kind", "message", "at"),
}


def _history_rows(
    con: sqlite3.Connection, schema: str, source: Source, table: str
) -> list[dict[str, Any]]:
    if table not in source.tables:
        return []
    cols = [c for c in HISTORY[table] if c in source.tables[table]]
    return [
        dict(zip(cols, row, strict=True))
        for row in con.execute(f"SELECT {', '.join(cols)} FROM {schema}.{table}")
    ]


Loaded = list[
    tuple[int, dict[str, list[dict[str, Any]]]]
]  # (input number, its history rows by table)


def _sort_key(*values: Any) -> tuple[Any, ...]:
    return tuple((v is None, "" if v is None else v) for v in values)


def _copy_walks(conn: Connection, loaded: Loaded, walk_ids: dict[tuple[int, int], int]) -> None:
    """The inputs' walks, each once, under new ids.

    History rows are written in an order that depends only on their content, so the ids they
    get do not depend on the order of the inputs.
    """
    w = walks_table.c
    known_walks: dict[tuple[Any, ...], int] = {
        (r.source, r.host, r.pid, _aware(r.started_at)): r.id
        for r in conn.execute(select(w.id, w.source, w.host, w.pid, w.started_at))
    }
    walks = [(src, walk) for src, rows in loaded for walk in rows["walks"]]
    walks.sort(
        key=lambda sw: _sort_key(
            _aware(sw[1]["started_at"]), sw[1]["source"], sw[1]["host"], sw[1]["pid"]
        )
    )
    for src, walk in walks:
        walk_key: tuple[Any, ...] = (
            walk["source"],
            walk["host"],
            walk["pid"],
            _aware(walk["started_at"]),
        )
        new_id = known_walks.get(walk_key)
        if new_id is None:
            values = {c: v for c, v in walk.items() if c != "id"}
            values["started_at"], values["finished_at"] = (
                _aware(walk["started_at"]),
                _aware(walk.get("finished_at")),
            )
            if isinstance(values.get("options"), str):
                values["options"] = json.loads(values["options"] or "{}")
            new_id = conn.execute(insert(walks_table).values(**values).returning(w.id)).scalar_one()
            known_walks[walk_key] = new_id
        walk_ids[(src, walk["id"])] = new_id


def _copy_rest_of_history(
    conn: Connection, loaded: Loaded, walk_ids: dict[tuple[int, int], int], summary: MergeSummary
) -> None:
    """Walk errors, workers and transfers (after the EPN rows they refer to)."""
    t, k, we = transfers_table.c, workers_table.c, walk_errors_table.c
    known_errors = {
        tuple(r) for r in conn.execute(select(we.walk_id, we.epn, we.path, we.kind, we.message))
    }
    errors = []
    for src, rows in loaded:
        for err in rows["walk_errors"]:
            new_walk = walk_ids.get((src, err["walk_id"]))
            error_key: tuple[Any, ...] = (
                new_walk,
                err["epn"],
                err["path"],
                err["kind"],
                err["message"],
            )
            if new_walk is not None and error_key not in known_errors:
                known_errors.add(error_key)
                errors.append({**err, "walk_id": new_walk, "at": _aware(err["at"])})
    if errors:
        errors.sort(
            key=lambda r: _sort_key(r["walk_id"], r["epn"], r["path"], r["kind"], r["message"])
        )
        conn.execute(insert(walk_errors_table), errors)

    known_workers = {r[0] for r in conn.execute(select(k.worker_id))}
    workers = {}
    for _src, rows in loaded:
        for worker in rows["workers"]:
            if worker["worker_id"] not in known_workers:
                times = {
                    c: _aware(worker.get(c)) for c in ("started_at", "heartbeat_at", "finished_at")
                }
                status = "finished" if worker["status"] == "running" else worker["status"]
                workers[worker["worker_id"]] = (
                    {c: worker.get(c) for c in HISTORY["workers"]} | times | {"status": status}
                )
    if workers:
        conn.execute(insert(workers_table), [workers[key] for key in sorted(workers)])

    known_transfers: set[tuple[Any, ...]] = {
        (r.epn, _aware(r.started_at), r.worker_id, r.attempt, r.claim_token)
        for r in conn.execute(select(t.epn, t.started_at, t.worker_id, t.attempt, t.claim_token))
    }
    transfers: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _src, rows in loaded:
        for tr in rows["transfers"]:
            key = (
                tr["epn"],
                _aware(tr["started_at"]),
                tr["worker_id"],
                tr["attempt"],
                tr["claim_token"],
            )
            if key not in known_transfers and key not in transfers:
                argv = json.loads(tr["argv"]) if isinstance(tr["argv"], str) else tr["argv"]
                transfers[key] = {c: tr.get(c) for c in HISTORY["transfers"]} | {
                    "argv": argv,
                    "started_at": key[1],
                    "finished_at": _aware(tr["finished_at"]),
                }
    if transfers:
        conn.execute(
            insert(transfers_table),
            [transfers[key] for key in sorted(transfers, key=lambda k: _sort_key(*k))],
        )
        summary.transfers_added += len(transfers)


# ------------------------------------------------------------------ the merge
@dataclass
class _Plan:
    decisions: dict[str, dict[str, Any]]
    winners: dict[str, EpnCandidate]
    excl: list[tuple[int, str]]  # (src, epn): copy this source's rows as they are
    ranks: list[tuple[int, str, int]]  # (src, epn, rank): overlapping EPNs
    keep: list[tuple[str, int]]  # (epn, lowest rank that survives)
    touched: list[str]  # EPNs whose aggregates must be recomputed from files
    new_epns: set[str]


def plan(candidates: dict[str, list[EpnCandidate]]) -> tuple[_Plan, int]:
    """Per EPN: its merged state, and where its file rows come from.

    A holder's rows count only if no newer *complete* walk exists (a complete walk that did not see
    a file means the file is gone).  One valid holder other than the target: its rows are copied as
    they are.  Several places: the rows meet in the staging table, newest walk first.
    """
    decisions, winners = {}, {}
    excl: list[tuple[int, str]] = []
    ranks: list[tuple[int, str, int]] = []
    keep: list[tuple[str, int]] = []
    touched: list[str] = []
    conflicts = 0
    new_epns = set()
    for epn, cands in candidates.items():
        decisions[epn] = decide(cands)
        walked = [c for c in cands if c.walked_at is not None or c.has_files]
        winner = max(walked or cands, key=walk_rank)
        winners[epn] = winner
        if not any(c.src == 0 for c in cands):
            new_epns.add(epn)
        holders = [c for c in cands if c.has_files]
        if not holders:
            continue
        keys = sorted({walk_rank(c) for c in walked})
        rank = {id(c): keys.index(walk_rank(c)) for c in walked}
        min_rank = max((rank[id(c)] for c in walked if c.walk_complete), default=0)
        live = [c for c in holders if rank[id(c)] >= min_rank]
        if len(holders) == 1 and live:
            holder = holders[0]
            if holder.src != 0:
                excl.append((holder.src, epn))
            if holder is not winner:
                touched.append(epn)  # the newest walk is not the one with the files: count them
            continue
        for c in holders:
            ranks.append((c.src, epn, rank[id(c)]))
        keep.append((epn, min_rank))
        touched.append(epn)
        if len({fingerprint(c) for c in holders}) > 1:
            conflicts += 1
    return _Plan(decisions, winners, excl, ranks, keep, touched, new_epns), conflicts


EPN_COLUMNS = tuple(c.name for c in epns_table.columns)


def _upsert_epns(
    conn: Connection,
    db: Database,
    p: _Plan,
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
        existing = next((c for c in candidates[epn] if c.src == 0), None)
        if existing is not None and existing.status == "running":
            continue  # a live claim in the target is its owner's business
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


def _legacy_zone(name: str | None) -> ZoneInfo:
    """The zone the older tools' naive local times are read in: by name, with its daylight saving.

    Default: this machine's zone - ``TZ``, else the zone ``/etc/localtime`` links to - never a
    fixed offset (December's +11 would shift every July time of Melbourne by an hour)."""
    if name:
        try:
            return ZoneInfo(name)
        except Exception:
            raise UsageError(
                f"--legacy-timezone {name!r} is not a time zone (e.g. Australia/Melbourne)"
            ) from None
    return machine_zone()


def machine_zone() -> ZoneInfo:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except Exception:
            raise UsageError(
                f"TZ={tz!r} is not a time zone name: set TZ to e.g. Australia/Melbourne, or pass "
                "--legacy-timezone"
            ) from None
    try:
        target = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in target:
            return ZoneInfo(target.split(marker, 1)[1])
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")


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
) -> MergeSummary:
    """Merge the inputs into the target (see the module docstring and docs/merge.md)."""
    if not inputs:
        raise UsageError("give at least one database to merge")
    zone = _legacy_zone(legacy_timezone)
    sources = inspect_all([Path(p).expanduser().resolve() for p in inputs])  # before any write
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
    created = target_path is not None and not target_path.exists()
    db = open_database(target)
    try:
        _busy(db)
        try:
            if db.is_sqlite:
                _merge_sqlite(db, sources, zone, summary, progress)
            else:
                _merge_streamed(db, sources, zone, summary, progress)
        except (sqlite3.Error, DBAPIError) as exc:
            orig = getattr(exc, "orig", None) or exc
            reason = str(orig).strip().splitlines()[0]
            raise DatabaseError(
                f"merging into {db.display} failed ({reason}); the target is unchanged"
            ) from None
    except BaseException:
        db.close()
        if created and target_path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(str(target_path) + suffix).unlink(missing_ok=True)
        raise
    db.close()
    return summary


def _candidates_of(
    con: sqlite3.Connection,
    schema: str,
    source: Source,
    src: int,
    zone: tzinfo,
    legacy_aggregates: dict[str, tuple[int, int, datetime | None]] | None,
) -> Iterator[EpnCandidate]:
    if source.kind == "asynchy":
        yield from asynchy_candidates(con, schema, source.tables["epns"], src)
    elif source.kind == "ignore-yml":
        for epn in source.epns_listed:
            yield EpnCandidate(epn=encode_name(epn.encode()), src=src, status="complete")
    else:
        merc = {c.epn: c for c in legacy_candidates(con, source, src, zone)}
        for epn, (count, size, newest) in (legacy_aggregates or {}).items():
            c = merc.pop(epn, None) or EpnCandidate(epn=epn, src=src)
            c.size, c.file_count, c.modified, c.has_files, c.walk_complete = (
                size,
                count,
                newest,
                True,
                True,
            )
            yield c
        yield from merc.values()


def _collect(candidates: dict[str, list[EpnCandidate]], found: Iterable[EpnCandidate]) -> None:
    for c in found:
        candidates.setdefault(c.epn, []).append(c)


def _legacy_rows_into(
    sql: _Sql, con: sqlite3.Connection, src: int, zone: tzinfo, progress: MergeProgress | None
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


def _write_epns(
    conn: Connection,
    db: Database,
    p: _Plan,
    candidates: dict[str, list[EpnCandidate]],
    loaded: Loaded,
    summary: MergeSummary,
) -> None:
    """Walks, workers and transfers of the inputs, then every merged EPN row (file rows need them first)."""
    walk_ids: dict[tuple[int, int], int] = {}
    _copy_walks(conn, loaded, walk_ids)
    _upsert_epns(conn, db, p, candidates, walk_ids)
    _copy_rest_of_history(conn, loaded, walk_ids, summary)


def _apply_files(sql: _Sql, p: _Plan, summary: MergeSummary) -> None:
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


def _plan_tables(sql: _Sql, p: _Plan) -> None:
    sql.many("INSERT INTO m_excl (src, epn) VALUES (?, ?)", p.excl)
    sql.many("INSERT INTO m_rank (src, epn, rnk) VALUES (?, ?, ?)", p.ranks)
    sql.many("INSERT INTO m_keep (epn, min_rank) VALUES (?, ?)", p.keep)


def _count(p: _Plan, summary: MergeSummary, candidates: dict[str, list[EpnCandidate]]) -> None:
    summary.epns = len(p.decisions)
    summary.epns_added = len(p.new_epns)
    for epn, values in p.decisions.items():
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
) -> None:
    """SQLite target: inputs ATTACHed (10 at most at a time) and copied by SQLite itself."""
    with db.engine.connect() as conn:
        # Only the raw connection is used until the write transaction: ATTACH must happen outside one.
        con: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
        sql = _Sql(con, postgres=False)
        attached: dict[int, str] = {}
        try:
            _temp_tables(sql)
            candidates: dict[str, list[EpnCandidate]] = {}
            target_cols = {r[1] for r in con.execute("PRAGMA main.table_info(epns)")}
            _collect(candidates, asynchy_candidates(con, "main", target_cols, 0))
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
                    _collect(candidates, _candidates_of(con, name, source, i, zone, None))
                    loaded.append((i, {t: _history_rows(con, name, source, t) for t in HISTORY}))
                if (
                    not single
                ):  # more than 10 inputs: rows wait in m_rows (temporary) until the transaction
                    for i, name in list(attached.items()):
                        _stream_attached(sql, name, i, sources[i - 1], progress)
                        con.execute("DETACH DATABASE " + name)
                        del attached[i]
            for i, source in enumerate(sources, 1):
                if source.kind == "legacy":
                    legacy = _open_ro(source.path)
                    try:
                        aggregates = None
                        if "files" in source.tables:
                            if progress is not None:
                                progress.start(source.name, _rows_in(legacy, "files"))
                            aggregates = _legacy_rows_into(sql, legacy, i, zone, progress)
                        _collect(
                            candidates, _candidates_of(legacy, "main", source, i, zone, aggregates)
                        )
                    finally:
                        legacy.close()
                        if progress is not None and "files" in source.tables:
                            progress.done()
                elif source.kind == "ignore-yml":
                    _collect(candidates, _candidates_of(con, "main", source, i, zone, None))
            p, summary.conflicts = plan(candidates)
            _count(p, summary, candidates)
            _plan_tables(sql, p)
            # Foreign keys are checked once at the end instead of on each of millions of copied file
            # rows (a third of the copy's time); _check_references fails the transaction if one broke.
            con.execute("PRAGMA foreign_keys = OFF")
            with conn.execution_options(asynchy_begin="IMMEDIATE").begin():
                _write_epns(conn, db, p, candidates, loaded, summary)
                if single:
                    for i, name in attached.items():
                        _copy_attached(sql, name, i, sources[i - 1], p, summary, progress)
                sql.run(
                    "INSERT INTO m_stage (epn, path, size, modified, kind, rnk) SELECT f.epn, f.path, f.size, "
                    "f.modified, f.kind, k.rnk FROM main.files f JOIN m_rank k ON k.src = 0 AND k.epn = f.epn"
                )
                _apply_files(sql, p, summary)
                _check_references(sql)
        finally:
            with contextlib.suppress(sqlite3.Error):
                con.execute("PRAGMA foreign_keys = ON")
            for name in attached.values():
                with contextlib.suppress(sqlite3.Error):
                    con.execute("DETACH DATABASE " + name)
            for table in ("m_excl", "m_rank", "m_keep", "m_rows", "m_stage"):
                with contextlib.suppress(sqlite3.Error):
                    con.execute("DROP TABLE IF EXISTS temp." + table)


def _check_references(sql: _Sql) -> None:
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


def _rows_in(con: sqlite3.Connection, table: str, schema: str = "main") -> int:
    return int(con.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0])


# EPNs of an input that hold file rows: one index probe per EPN instead of a scan of every file row.
_HOLDING = "SELECT e.epn FROM {schema}epns e WHERE EXISTS (SELECT 1 FROM {schema}files f WHERE f.epn = e.epn)"


def _expected_rows(con: sqlite3.Connection, schema: str, source: Source) -> int:
    """File rows an asynchy input should hold, for the progress bar (its aggregates; no scan)."""
    if "file_count" not in source.tables.get("epns", set()):
        return _rows_in(con, "files", schema)
    return int(con.execute(f"SELECT coalesce(sum(file_count), 0) FROM {schema}.epns").fetchone()[0])


def _file_columns(source: Source) -> str:
    return "epn, path, size, modified, " + (
        "kind" if "kind" in source.tables["files"] else "'file'"
    )


def _copy_attached(
    sql: _Sql,
    name: str,
    src: int,
    source: Source,
    p: _Plan,
    summary: MergeSummary,
    progress: MergeProgress | None,
) -> None:
    """One attached asynchy input: its exclusive EPNs straight into files, its overlapping ones into m_stage."""
    cols = _file_columns(source)
    mine = [epn for s, epn in p.excl if s == src]
    total = _expected_rows(sql.conn, name, source)
    if progress is not None:
        progress.start(source.name, total)
    holding = sql.scalar(f"SELECT count(*) FROM ({_HOLDING.format(schema=name + '.')}) h")
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


def _stream_attached(
    sql: _Sql, name: str, src: int, source: Source, progress: MergeProgress | None
) -> None:
    """More than 10 inputs: an attached input's rows are kept in m_rows until the final transaction."""
    total = _rows_in(sql.conn, "files", name)
    if progress is not None:
        progress.start(source.name, total)
    sql.run(
        f"INSERT INTO m_rows (src, epn, path, size, modified, kind) SELECT {src}, {_file_columns(source)} "
        f"FROM {name}.files"
    )
    if progress is not None:
        progress.advance(total)
        progress.done()


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
        sql = _Sql(raw, postgres=True)
        _temp_tables(sql)
        candidates: dict[str, list[EpnCandidate]] = {}
        e = epns_table.c
        for row in conn.execute(select(*[getattr(e, c) for c in ASYNCHY_EPN_COLUMNS])).mappings():
            data = dict(row)
            data["status"] = data["status"] or "pending"
            _collect(candidates, [EpnCandidate(src=0, **data)])
        with_files = {r[0] for r in conn.execute(text(_HOLDING.format(schema="")))}
        for c in (x for cands in candidates.values() for x in cands):
            c.has_files = c.epn in with_files
        loaded: Loaded = []
        for i, source in enumerate(sources, 1):
            if source.kind == "ignore-yml":
                _collect(
                    candidates,
                    _candidates_of(sqlite3.connect(":memory:"), "main", source, i, zone, None),
                )
                continue
            src_con = _open_ro(source.path)
            try:
                total = _expected_rows(src_con, "main", source) if "files" in source.tables else 0
                if progress is not None:
                    progress.start(source.name, total)
                aggregates = None
                if source.kind == "asynchy":
                    cols = _file_columns(source)

                    def rows(
                        c: sqlite3.Connection = src_con, s: int = i, q: str = cols
                    ) -> Iterator[tuple[Any, ...]]:
                        cur = c.execute(f"SELECT {q} FROM files")
                        while chunk := cur.fetchmany(BATCH):
                            if progress is not None:
                                progress.advance(len(chunk))
                            for epn, path, size, modified, kind in chunk:
                                yield (s, epn, path, size, _aware(modified), kind)

                    sql.many(
                        "INSERT INTO m_rows (src, epn, path, size, modified, kind) VALUES (?, ?, ?, ?, ?, ?)",
                        rows(),
                    )
                    loaded.append(
                        (
                            i,
                            {t: _history_rows(src_con, "main", source, t) for t in HISTORY},
                        )
                    )
                elif "files" in source.tables:
                    aggregates = _legacy_rows_into(sql, src_con, i, zone, progress)
                _collect(candidates, _candidates_of(src_con, "main", source, i, zone, aggregates))
            finally:
                src_con.close()
                if progress is not None:
                    progress.done()
        p, summary.conflicts = plan(candidates)
        _count(p, summary, candidates)
        _plan_tables(sql, p)
        sql.run(
            "INSERT INTO m_rows (src, epn, path, size, modified, kind) SELECT 0, f.epn, f.path, f.size, "
            "f.modified, f.kind FROM files f JOIN m_rank k ON k.src = 0 AND k.epn = f.epn"
        )
        _write_epns(conn, db, p, candidates, loaded, summary)
        _apply_files(sql, p, summary)


__all__ = ["MergeProgress", "MergeSummary", "Source", "decide", "inspect", "merge"]


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
        log.info("ignore_file %s: %d EPNs recorded as already copied", path, marked)
    return marked
