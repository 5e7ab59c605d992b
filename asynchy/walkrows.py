"""The rows of one walk (asynchy.inventory): one write connection that turns each finished EPN
into its ``files`` and ``epns`` rows in one transaction, and counts it in its ``walks`` row.

A new EPN's files are inserted as they are.  An EPN walked before (or too large for memory) goes
through a per-connection staging table, and ``merge`` in named steps: stage, count what is new,
changed or gone, upsert, delete what is gone (only after a complete listing), sum up again.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    MetaData,
    Table,
    Text,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from asynchy.db import Database
from asynchy.models import (
    UTCDateTime,
    epns_table,
    files_table,
    sqlite_time_text,
    walk_errors_table,
    walks_table,
)
from asynchy.names import encode_name
from asynchy.remote.base import Entry, Issue


def error_rows(
    walk_id: int, epn: str | None, issues: list[Issue], now: datetime
) -> list[dict[str, Any]]:
    """The walk_errors rows of what kept part of an EPN (or of the top folder: ``epn`` None)
    from being listed."""
    return [
        {
            "walk_id": walk_id,
            "epn": epn,
            "path": encode_name(i.path),
            "kind": i.kind,
            "message": i.message,
            "at": now,
        }
        for i in issues
    ]


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# A per-connection staging table for EPNs that are re-walked or too large for memory.
_stage_meta = MetaData()
stage_table = Table(
    "asynchy_walk_stage",
    _stage_meta,
    Column("epn", Text, primary_key=True),
    Column("path", Text, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("modified", UTCDateTime, nullable=False),
    Column("kind", Text, nullable=False),
    prefixes=["TEMPORARY"],
)


class Writer:
    """Owns the one write connection of a walk and turns finished EPNs into rows."""

    def __init__(self, db: Database, walk_id: int) -> None:
        self.db = db
        self.walk_id = walk_id
        self.conn: Connection = db.engine.connect().execution_options(asynchy_begin="IMMEDIATE")
        self._time_cache: dict[int, Any] = {}
        with self.conn.begin():
            stage_table.create(self.conn, checkfirst=True)

    def close(self) -> None:
        try:
            with self.conn.begin():
                stage_table.drop(self.conn, checkfirst=True)
        finally:
            self.conn.close()

    def _time(self, epoch: int) -> Any:
        value = self._time_cache.get(epoch)
        if value is None:
            if self.db.is_sqlite:
                value = sqlite_time_text(epoch)
            else:
                value = datetime.fromtimestamp(epoch, UTC)
            if len(self._time_cache) > 100_000:
                self._time_cache.clear()
            self._time_cache[epoch] = value
        return value

    def _rows(self, epn: str, entries: Iterable[Entry]) -> list[tuple[str, str, int, Any, str]]:
        t = self._time
        rows: list[tuple[str, str, int, Any, str]] = [
            (epn, encode_name(e.path), e.size, t(e.mtime), e.kind) for e in entries
        ]
        rows.sort(key=lambda r: r[1])
        return rows

    def _bulk(self, table: Table, rows: list[tuple[str, str, int, Any, str]]) -> None:
        if not rows:
            return
        if self.db.is_sqlite:
            sql = (
                f"INSERT INTO {table.name} (epn, path, size, modified, kind) VALUES (?, ?, ?, ?, ?)"  # noqa: S608
            )
            self.conn.exec_driver_sql(sql, rows)
        else:
            keys = ("epn", "path", "size", "modified", "kind")
            self.conn.execute(insert(table), [dict(zip(keys, r, strict=True)) for r in rows])

    def spill(self, epn: str, entries: list[Entry]) -> None:
        """Move buffered rows of a large EPN to the staging table (not yet visible in files)."""
        with self.conn.begin():
            self._bulk(stage_table, self._rows(epn, entries))

    def drop_staged(self, epn: str) -> None:
        with self.conn.begin():
            self.conn.execute(stage_table.delete().where(stage_table.c.epn == epn))

    def _known(self, epn: str) -> Any:
        """The EPN's row as recorded (walked_at, status), or None."""
        query = select(epns_table.c.walked_at, epns_table.c.status).where(epns_table.c.epn == epn)
        return self.conn.execute(query).first()

    def finish(
        self, epn: str, entries: list[Entry], spilled: bool, issues: list[Issue]
    ) -> tuple[int, int, bool]:
        """Record one EPN atomically; returns (files, bytes, changed)."""
        complete = not issues
        at = now()
        conn = self.conn
        with conn.begin():
            known = self._known(epn)
            done = None
            if known is None and not spilled:
                done = self._finish_new(epn, entries, complete, issues, at)
                if done is None:
                    known = self._known(epn)
            if done is None:
                done = self._finish_merge(epn, entries, complete, issues, at, known)
            files, nbytes, changed = done
            if issues:
                conn.execute(insert(walk_errors_table), error_rows(self.walk_id, epn, issues, at))
            conn.execute(
                update(walks_table)
                .where(walks_table.c.id == self.walk_id)
                .values(
                    epns_walked=walks_table.c.epns_walked + 1,
                    epns_changed=walks_table.c.epns_changed + int(changed),
                    files=walks_table.c.files + files,
                    bytes=walks_table.c.bytes + nbytes,
                    errors=walks_table.c.errors + len(issues),
                )
            )
        return files, nbytes, changed

    def _finish_new(
        self, epn: str, entries: list[Entry], complete: bool, issues: list[Issue], now: datetime
    ) -> tuple[int, int, bool] | None:
        """Insert a new EPN and its files; None if another walker created the EPN meanwhile."""
        nbytes = sum(e.size for e in entries)
        newest = max((e.mtime for e in entries), default=None)
        row = (
            self._dialect()
            .insert(epns_table)
            .values(
                epn=epn,
                size=nbytes,
                file_count=len(entries),
                modified=datetime.fromtimestamp(newest, UTC) if newest is not None else None,
                walked_at=now,
                walk_id=self.walk_id,
                walk_complete=complete,
                walk_error_count=len(issues),
                status="pending",
                first_seen_at=now,
            )
        )
        if self.conn.execute(row.on_conflict_do_nothing(index_elements=["epn"])).rowcount == 0:
            return None  # PostgreSQL, several walkers: it exists now, so merge into it instead
        self._bulk(files_table, self._rows(epn, entries))
        return len(entries), nbytes, False

    def _dialect(self) -> Any:
        """The dialect module whose insert() has ON CONFLICT; imported only when needed (start-up time)."""
        return importlib.import_module(f"sqlalchemy.dialects.{self.db.dialect}")

    def _finish_merge(
        self,
        epn: str,
        entries: list[Entry],
        complete: bool,
        issues: list[Issue],
        now: datetime,
        known: Any,
    ) -> tuple[int, int, bool]:
        """Bring a walked-before (or spilled) EPN's rows to what was listed now."""
        self._bulk(stage_table, self._rows(epn, entries))
        if known is None:
            row = (
                self._dialect().insert(epns_table).values(epn=epn, walked_at=now, first_seen_at=now)
            )
            self.conn.execute(row.on_conflict_do_nothing(index_elements=["epn"]))
        added_or_changed, gone = self._differences(epn, complete)
        self._upsert_staged(epn)
        if complete and gone:  # only a complete listing says a file is gone
            self.conn.execute(files_table.delete().where(f.epn == epn, ~_STAGED_SAME))
        self.conn.execute(stage_table.delete().where(s.epn == epn))
        was_walked = known is not None and known.walked_at is not None
        changed = was_walked and (added_or_changed + gone) > 0
        files, nbytes = self._sum_up(epn, complete, issues, now, changed, known)
        return files, nbytes, changed

    def _differences(self, epn: str, complete: bool) -> tuple[int, int]:
        """(files new or changed, files gone) between the staged listing and the recorded one."""
        differs = or_(f.size != s.size, f.modified != s.modified, f.kind != s.kind)
        match = and_(f.epn == s.epn, f.path == s.path)
        added_or_changed = self.conn.execute(
            select(func.count())
            .select_from(stage_table.outerjoin(files_table, match))
            .where(s.epn == epn, or_(f.path.is_(None), differs))
        ).scalar_one()
        gone = 0
        if complete:
            gone = self.conn.execute(
                select(func.count()).where(f.epn == epn, ~_STAGED_SAME)
            ).scalar_one()
        return int(added_or_changed), int(gone)

    def _upsert_staged(self, epn: str) -> None:
        """The staged rows into files: new ones inserted, changed ones updated."""
        ins = (
            self._dialect()
            .insert(files_table)
            .from_select(
                ["epn", "path", "size", "modified", "kind"],
                select(s.epn, s.path, s.size, s.modified, s.kind).where(s.epn == epn),
            )
        )
        excluded = ins.excluded
        self.conn.execute(
            ins.on_conflict_do_update(
                index_elements=[f.epn, f.path],
                set_={"size": excluded.size, "modified": excluded.modified, "kind": excluded.kind},
                where=or_(
                    f.size != excluded.size,
                    f.modified != excluded.modified,
                    f.kind != excluded.kind,
                ),
            )
        )

    def _sum_up(
        self,
        epn: str,
        complete: bool,
        issues: list[Issue],
        now: datetime,
        changed: bool,
        known: Any,
    ) -> tuple[int, int]:
        """The EPN's row from its files as recorded now; ``changed`` marks a complete EPN."""
        files, nbytes, newest = self.conn.execute(
            select(func.count(), func.coalesce(func.sum(f.size), 0), func.max(f.modified)).where(
                f.epn == epn
            )
        ).one()
        values: dict[str, Any] = {
            "size": nbytes,
            "file_count": files,
            "modified": newest,
            "walked_at": now,
            "walk_id": self.walk_id,
            "walk_complete": complete,
            "walk_error_count": len(issues),
        }
        if changed:
            values["changed_at"] = now
            if known.status == "complete":
                values["status"] = "changed"
        self.conn.execute(update(epns_table).where(epns_table.c.epn == epn).values(**values))
        return int(files), int(nbytes)


f, s = files_table.c, stage_table.c
_STAGED_SAME = exists().where(s.epn == f.epn, s.path == f.path)
