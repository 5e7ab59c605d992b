"""``asynchy sql``: one read-only query, any SQL the database understands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from asynchy.db import is_url, open_database, open_read_only
from asynchy.errors import UsageError
from asynchy.render import stored_time

WRITE_HINTS = (
    "readonly",
    "read-only",
    "read only",
    "query_only",
    "attempt to write",
    "not authorized",
)


def run(
    setting: str, sql: str, params: dict[str, str] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of one statement; anything that would write is refused.

    ``params`` fill ``:name`` placeholders; a value that reads as a whole number is passed as one."""
    if not sql.strip():
        raise UsageError('give a query, e.g. asynchy sql "SELECT epn, status FROM epns LIMIT 5"')
    open_database(setting, create=False).close()  # an older schema is brought up to date first
    absent = _no_sidecars(setting)
    db = open_read_only(setting)
    try:
        with db.read(faults_only=True) as conn:
            values = {k: _value(v) for k, v in (params or {}).items()}
            result = conn.execute(text(sql), values) if values else conn.exec_driver_sql(sql)
            if not result.returns_rows:
                raise UsageError(
                    "that statement returns no rows; asynchy sql is for queries (SELECT, WITH)"
                )
            return list(result.keys()), [tuple(stored_time(v) for v in r) for r in result]
    except DBAPIError as exc:
        message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        if any(h in message.lower() for h in WRITE_HINTS):
            raise UsageError(
                f"asynchy sql only reads; the database refused to write ({message})"
            ) from None
        raise UsageError(f"the database refused the query: {message}") from None
    finally:
        db.close()
        if absent:  # a read-only connection cannot remove the -wal and -shm files it made; a
            open_database(setting, create=False).close()  # writable one does when it closes


def _no_sidecars(setting: str) -> bool:
    """True when the database is a SQLite file whose -wal and -shm files are not there now."""
    if is_url(setting):
        return False
    path = Path(setting).expanduser().resolve()
    return not any(path.with_name(path.name + end).exists() for end in ("-wal", "-shm"))


def _value(text_value: str) -> Any:
    try:
        return int(text_value)
    except ValueError:
        try:
            return float(text_value)
        except ValueError:
            return text_value
