"""Fixity information through a merge (docs/fixity.md): the inputs' checksums, the newest value
per file winning (order-independent: the greatest of recorded_at, value, audited_at), and their
audits, each once.  Rows of EPNs the target does not hold are left out."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from asynchy.merge.inspect import Source, open_ro
from asynchy.merge.read import BATCH, aware
from asynchy.merge.sql import Sql

CHECKSUMS = (
    "epn",
    "path",
    "algo",
    "value",
    "size",
    "modified",
    "obtained",
    "recorded_at",
    "audited_at",
    "damage",
)
AUDITS = (
    "epn",
    "started_at",
    "finished_at",
    "host",
    "files",
    "bytes",
    "mismatched",
    "missing",
    "unexpected",
    "result",
    "resume_after",
    "message",
)
TIMES = {"modified", "recorded_at", "audited_at", "started_at", "finished_at"}

_NEWER = (
    "excluded.recorded_at > checksums.recorded_at OR (excluded.recorded_at = checksums.recorded_at "
    "AND (excluded.value > checksums.value OR (excluded.value = checksums.value AND "
    "coalesce(excluded.audited_at, excluded.recorded_at) > "
    "coalesce(checksums.audited_at, checksums.recorded_at))))"
)
UPSERT = (
    f"INSERT INTO checksums ({', '.join(CHECKSUMS)}) VALUES ({', '.join('?' * len(CHECKSUMS))}) "
    "ON CONFLICT (epn, path) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in CHECKSUMS[2:])
    + f" WHERE {_NEWER}"
)


def copy_fixity(sql: Sql, sources: list[Source]) -> None:
    for source in sources:
        if source.kind != "asynchy" or not ({"checksums", "audits"} & set(source.tables)):
            continue
        con = open_ro(source.path)
        try:
            if "checksums" in source.tables:
                sql.many(UPSERT, _rows(con, "checksums", CHECKSUMS, sql.postgres))
            if "audits" in source.tables:
                _copy_audits(sql, con)
        finally:
            con.close()
    for table in ("checksums", "audits"):
        sql.run(f"DELETE FROM {table} WHERE epn NOT IN (SELECT epn FROM epns)")


def _rows(
    con: sqlite3.Connection, table: str, cols: tuple[str, ...], postgres: bool
) -> Iterator[tuple[Any, ...]]:
    cur = con.execute(f"SELECT {', '.join(cols)} FROM {table}")
    times = [i for i, c in enumerate(cols) if c in TIMES]
    while chunk := cur.fetchmany(BATCH):
        for row in chunk:
            if postgres:  # text times in the SQLite input; timestamptz in the target
                values = list(row)
                for i in times:
                    values[i] = aware(values[i])
                yield tuple(values)
            else:
                yield tuple(row)


def _copy_audits(sql: Sql, con: sqlite3.Connection) -> None:
    """The input's audits not in the target yet (one audit: its EPN, start and host)."""
    known = {
        (epn, aware(started), host)
        for epn, started, host in sql.run("SELECT epn, started_at, host FROM audits").fetchall()
    }
    fresh = [
        row
        for row in _rows(con, "audits", AUDITS, sql.postgres)
        if (row[0], aware(row[1]), row[3]) not in known
    ]
    fresh.sort(key=lambda r: (str(r[1]), r[0], r[3]))  # the same ids whatever the inputs' order
    sql.many(
        f"INSERT INTO audits ({', '.join(AUDITS)}) VALUES ({', '.join('?' * len(AUDITS))})", fresh
    )
