"""``asynchy sql``: one read-only query, any SQL the database understands (docs/reporting.md,
docs/security.md).

"Anything that writes is refused" holds in layers, so that no one layer has to be perfect:

1. **One statement.**  The text is read as the database reads it (strings, quoted names, dollar
   quotes, comments) and a ``;`` outside them, but for one at the end, is refused; PostgreSQL
   prepares the statement (``prepare=True``), which it refuses for more than one command too.
   So no query can end the read-only transaction it runs in (``SELECT 1; COMMIT; DELETE ...``).
2. **A query.**  The statement starts with SELECT, WITH, VALUES, TABLE, EXPLAIN or SHOW (SQLite:
   PRAGMA too); COPY, DO, SET, CALL, COMMIT ... are refused before anything runs.
3. **No function that acts on the server**: on PostgreSQL, ``set_config``,
   ``pg_terminate_backend``, large objects, ``dblink``, server files, ``query_to_xml`` (which
   runs a query given as text) and the like (``_SERVER_FUNCTIONS``).
4. **The database refuses to write.**  SQLite: a read-only file handle, ``query_only`` and an
   authorizer that allows reading only (``READ_ONLY_AUTHORIZER``); PostgreSQL: a ``READ ONLY``
   transaction with ``standard_conforming_strings`` on (so the server reads strings as layer 1
   does), run as the predefined role ``pg_read_all_data`` when the login may take it (no
   superuser power then), always rolled back.

docs/security.md recommends a login role that can only read, for people who use ``sql``.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
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
    "permission denied",
)
QUERY_WORDS = {"SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN"}
EXTRA_WORDS = {"sqlite": {"PRAGMA"}, "postgresql": {"SHOW"}}
# PostgreSQL functions that change the server or reach outside the query: settings, other
# sessions, the server's files, large objects, other databases, queries given as text.
_SERVER_FUNCTIONS = re.compile(
    r"^(set_config|pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile|"
    r"pg_promote|pg_switch_wal|pg_create_restore_point|pg_(start|stop)_backup|pg_backup_(start|stop)|"
    r"pg_log_backend_memory_contexts|pg_(try_)?advisory_.*|pg_notify|lo_.*|loread|lowrite|"
    r"dblink.*|pg_read_file|pg_read_binary_file|pg_ls_.*|pg_stat_file|pg_file_.*|pg_logdir_ls|"
    r"pg_import_system_collations|pg_.*replication_(slot|origin).*|pg_logical_emit_message|"
    r"pg_wal_replay_.*|pg_copy_.*_slot|query_to_xml.*|cursor_to_xml.*|nextval|setval|"
    r"txid_current|pg_current_xact_id)$"
)


def run(
    setting: str, sql: str, params: dict[str, str] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of one statement; anything that would write is refused.

    ``params`` fill ``:name`` placeholders; a value that reads as a whole number is passed as one."""
    if not sql.strip():
        raise UsageError('give a query, e.g. asynchy sql "SELECT epn, status FROM epns LIMIT 5"')
    unused = [k for k in params or {} if not re.search(rf"(?<![:\w]):{re.escape(k)}\b", sql)]
    if unused:
        raise UsageError(f"-p {unused[0]}: the query has no :{unused[0]} placeholder")
    open_database(setting, create=False).close()  # an older schema is brought up to date first
    absent = _no_sidecars(setting)
    db = open_read_only(setting, authorizer=READ_ONLY_AUTHORIZER)
    try:
        statement = check(sql, db.dialect)
        with db.read(faults_only=True) as conn:
            values = {k: _value(v) for k, v in (params or {}).items()}
            if db.dialect == "postgresql":
                return _run_postgresql(conn, statement, values)
            result = (
                conn.execute(text(statement), values) if values else conn.exec_driver_sql(statement)
            )
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


def _run_postgresql(
    conn: Connection, statement: str, values: dict[str, Any]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The statement prepared by the server (one command only), in the read-only transaction,
    as pg_read_all_data when the login may take that role."""
    conn.exec_driver_sql("SET LOCAL standard_conforming_strings = on")
    may = conn.exec_driver_sql(
        "SELECT to_regrole('pg_read_all_data') IS NOT NULL "
        "AND pg_has_role('pg_read_all_data', 'MEMBER')"
    ).scalar()
    if may:
        conn.exec_driver_sql("SET LOCAL ROLE pg_read_all_data")
    query, bound = statement, None
    if values:  # :name placeholders, as SQLAlchemy's text() reads them, in the driver's style
        compiled = text(statement).bindparams(**values).compile(dialect=conn.dialect)
        query, bound = str(compiled), compiled.params
    cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(query, bound, prepare=True)  # psycopg: one command, prepared by the server
    except Exception as exc:
        raise DBAPIError(query, bound, exc) from None
    if cursor.description is None:
        raise UsageError(
            "that statement returns no rows; asynchy sql is for queries (SELECT, WITH)"
        )
    columns = [d.name for d in cursor.description]
    return columns, [tuple(r) for r in cursor.fetchall()]


# ------------------------------------------------------------------ reading the SQL text
def check(sql: str, dialect: str) -> str:
    """The one statement of ``sql`` (a trailing ``;`` dropped); UsageError for more than one,
    for one that is not a query, or for a server function (docs/security.md)."""
    statements, functions = _scan(sql, nested_comments=dialect == "postgresql")
    if len(statements) > 1:
        raise UsageError(
            f"asynchy sql runs one statement; this text holds {len(statements)} (separated by "
            "';' outside quotes and comments): run them one at a time"
        )
    if not statements:
        raise UsageError("the query is only comments; give a statement, e.g. SELECT ...")
    statement = statements[0]
    word = _first_word(statement)
    allowed = QUERY_WORDS | EXTRA_WORDS.get(dialect, set())
    if word not in allowed:
        raise UsageError(
            f"asynchy sql only reads: a statement starting with {word or 'that'} is refused; "
            f"give a query ({', '.join(sorted(allowed))})"
        )
    if dialect == "postgresql":
        denied = sorted(f for f in functions if _SERVER_FUNCTIONS.match(f))
        if denied:
            raise UsageError(
                f"asynchy sql only reads: {denied[0]}() acts on the server and is refused"
            )
    return statement


def _first_word(statement: str) -> str:
    m = re.match(r"[\s(]*([A-Za-z]+)", _without_comments(statement))
    return m.group(1).upper() if m else ""


def _without_comments(statement: str) -> str:
    out = re.sub(r"/\*.*?\*/", " ", statement, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", " ", out)


def _scan(sql: str, *, nested_comments: bool) -> tuple[list[str], set[str]]:
    """Split on ``;`` as the database's lexer would (single-quoted strings with ``''``, E'...'
    strings with backslash escapes, double-quoted names, $tag$ dollar quotes, -- and /* */
    comments); also the names called as functions outside strings and comments.  UsageError for
    an unterminated string, name or comment."""
    statements: list[str] = []
    functions: set[str] = set()
    start = i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _word(sql[i - 2]))
            i = _end_quote(sql, i, "'", backslash=escapes)
        elif c == '"':
            i = _end_quote(sql, i, '"', backslash=False)
        elif c == "$" and (m := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])):
            if i > 0 and _word(sql[i - 1]):  # part of a name (a$b$), not a quote
                i += 1
                continue
            close = sql.find(m.group(0), i + len(m.group(0)))
            if close < 0:
                raise UsageError("the query has an unterminated $-quoted string")
            i = close + len(m.group(0))
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _end_comment(sql, i, nested_comments)
        elif c == ";":
            if sql[start:i].strip() and _without_comments(sql[start:i]).strip():
                statements.append(sql[start:i].strip())
            i += 1
            start = i
        elif _word(c) and not c.isdigit() and (i == 0 or not _word(sql[i - 1])):
            m = re.match(r"[A-Za-z_][A-Za-z0-9_$]*", sql[i:])
            assert m is not None
            word = m.group(0)
            i += len(word)
            if re.match(r"\s*\(", sql[i:]):
                functions.add(word.lower())
        else:
            i += 1
    if sql[start:].strip() and _without_comments(sql[start:]).strip():
        statements.append(sql[start:].strip())
    return statements, functions


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _end_quote(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    j = i + 1
    while j < len(sql):
        if backslash and sql[j] == "\\":
            j += 2
            continue
        if sql[j] == quote:
            if sql.startswith(quote * 2, j):
                j += 2
                continue
            return j + 1
        j += 1
    what = "string" if quote == "'" else "quoted name"
    raise UsageError(f"the query has an unterminated {what} (a {quote} without its partner)")


def _end_comment(sql: str, i: int, nested: bool) -> int:
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j) and (nested or depth == 0):
            depth += 1
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise UsageError("the query has an unterminated /* comment")


# ------------------------------------------------------------------ SQLite's authorizer
_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
    sqlite3.SQLITE_TRANSACTION,
}
# fts3_tokenizer returns (and, given a second argument, takes) a raw C pointer: an address leak
# and a way to make SQLite call into arbitrary memory; load_extension loads code.
_DENIED_FUNCTIONS = {"fts3_tokenizer", "load_extension"}
_READ_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "function_list",
    "collation_list",
    "compile_options",
    "page_count",
    "page_size",
    "freelist_count",
    "user_version",
    "schema_version",
    "data_version",
    "journal_mode",
    "encoding",
}
_PRAGMAS_WITH_AN_ARGUMENT = {
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
}


def READ_ONLY_AUTHORIZER(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
) -> int:
    """SQLite authorizer of ``asynchy sql``: reading only; no ATTACH (it creates files), no
    setting changed (a PRAGMA with a value), no function that hands out or takes a pointer."""
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS:
        reads = arg2 is None or (arg1 or "").lower() in _PRAGMAS_WITH_AN_ARGUMENT
        return sqlite3.SQLITE_OK if reads else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_DENY


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
