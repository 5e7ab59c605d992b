"""Engines, transactions and schema versions.

``open_database(setting)`` accepts a file path (SQLite) or a SQLAlchemy URL.
SQLite connections get WAL, a busy timeout and foreign keys; transactions are
begun by asynchy itself so that writers can take ``BEGIN IMMEDIATE`` (a
deferred transaction that later writes can fail with SQLITE_BUSY however long
the timeout).

Schema versions are alembic revisions (``migrations/`` in the repository,
``asynchy/migrations`` in the wheel).  Opening a database that is already at
``SCHEMA_HEAD`` costs one query and never imports alembic; an empty database is
built from the models and stamped; an older one is upgraded by alembic; a
newer one, or a database of another tool, is refused.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from asynchy import views
from asynchy.errors import ConfigError, DatabaseError, SchemaError
from asynchy.files import sqlite_uri
from asynchy.models import SCHEMA_HEAD, add_postgresql_options, metadata

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 60_000  # the default of the db_timeout setting
_busy_timeout_ms = BUSY_TIMEOUT_MS


def set_busy_timeout(seconds: float) -> None:
    """How long a statement waits for a database another process holds locked (setting db_timeout).

    Set once per process by the command line before it opens a database."""
    global _busy_timeout_ms
    _busy_timeout_ms = max(1, int(seconds * 1000))


VERSION_TABLE = "alembic_version"


def is_url(setting: str) -> bool:
    return "://" in setting


def _sqlite_file_engine(path: Path, *, read_only: bool = False) -> Engine:
    """An engine on the SQLite file, opened by URI (a plain ``sqlite:///`` URL cuts a name at '?')."""
    uri = sqlite_uri(path, read_only=read_only)
    timeout = _busy_timeout_ms / 1000
    return create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False),
        poolclass=QueuePool,
    )


@dataclass
class Database:
    """An open inventory database.  Not shared across processes: open one per process."""

    engine: Engine
    display: str  # a path, or the URL with its password hidden: safe for messages and logs
    path: Path | None  # the SQLite file, None for a server database

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` on SQLite, committed on success."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(asynchy_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise as_database_error(exc, self.display) from None

    @contextlib.contextmanager
    def read(self, *, faults_only: bool = False) -> Iterator[Connection]:
        """A read transaction (deferred on SQLite; rolled back at the end).

        ``faults_only``: only faults of the database itself become DatabaseError; an error about
        the statement is raised as it is (``asynchy sql`` reports a user's bad SQL itself)."""
        try:
            with self.engine.connect() as conn, conn.begin() as txn:
                yield conn
                txn.rollback()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            fault = database_fault(exc, self.display)
            if fault is not None:
                raise fault from None
            if faults_only:
                raise
            raise as_database_error(exc, self.display) from None

    def close(self) -> None:
        self.engine.dispose()


def as_database_error(
    exc: BaseException, display: str | None = None, doing: str | None = None
) -> DatabaseError:
    """A SQLAlchemy or sqlite3 error as one line that names the file and the likely fix: the
    one wording of every database error (``doing``: what asynchy was doing, e.g. "open")."""
    if isinstance(exc, DatabaseError):
        return exc
    fault = database_fault(exc, display)
    if fault is not None:
        return fault
    name = display or "the database"
    if type(exc) is sqlite3.DatabaseError:  # not one of its kinds: the file itself
        return SchemaError(f"{name} is not a usable SQLite database: {_first_line(exc)}")
    if doing is not None:
        return DatabaseError(f"cannot {doing} database {name}: {_first_line(exc)}")
    return DatabaseError(f"database {name}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).splitlines() or [type(orig).__name__])[0]


def database_fault(exc: BaseException, display: str | None = None) -> DatabaseError | None:
    """The DatabaseError for a fault of the database itself (damaged, full, locked, read-only, I/O),
    or None when exc is about the statement (the caller's business, e.g. a user's bad SQL)."""
    low = _first_line(exc).lower()
    name = display or "the database"
    if "malformed" in low or "not a database" in low or "file is encrypted" in low:
        return DatabaseError(
            f"{name}: database disk image is malformed: restore it from a backup or "
            f"`sqlite3 {name} .recover`"
        )
    if "disk is full" in low or "no space left" in low:
        return DatabaseError(f"the disk holding {name} is full: free space there, then run again")
    if "database is locked" in low or "database table is locked" in low or "busy" in low:
        return DatabaseError(
            f"{name} was locked for {_busy_timeout_ms / 1000:g} s by another process (an asynchy, "
            "or a sqlite3 shell in a transaction): let it finish, then run again (or raise db_timeout)"
        )
    if "attempt to write a readonly database" in low or "unable to open database" in low:
        return DatabaseError(
            f"{name} cannot be written or opened: make it (and its folder) writable for this user"
        )
    if "disk i/o error" in low:
        return DatabaseError(f"{name}: disk I/O error: check the disk and its mount")
    return None


def _sqlite_engine(path: Path) -> Engine:
    engine = _sqlite_file_engine(path)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see the begin hook)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {_busy_timeout_ms}")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("asynchy_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _ensure_wal(db: Database) -> None:
    """Switch an asynchy SQLite file to WAL (persistent; done only once we know the file is ours)."""
    if not db.is_sqlite:
        return
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA journal_mode = WAL")
        cur.close()
    finally:
        raw.close()


def make_engine(setting: str) -> tuple[Engine, str, Path | None]:
    """Engine for a db setting; raises ConfigError for a setting that cannot work."""
    if is_url(setting):
        try:
            url = make_url(setting)
        except ArgumentError:
            raise ConfigError(f"db {setting!r} is not a valid database URL") from None
        shown = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite":
            if not url.database:
                raise ConfigError("db: in-memory SQLite cannot hold an inventory; give a file path")
            path = Path(url.database).expanduser().resolve()
            return _check_sqlite_path(path, shown)
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            hint = " (install asynchy[postgres])" if url.get_backend_name() == "postgresql" else ""
            raise ConfigError(f"db {shown}: no driver for this URL{hint}: {exc}") from None
        if engine.dialect.name == "postgresql":
            add_postgresql_options()

            @event.listens_for(engine, "connect")
            def _on_pg_connect(dbapi_conn: Any, _record: Any) -> None:
                # Like SQLite's synchronous=NORMAL: a database crash may forget the last moments' commits
                # (a claim, or an EPN marked complete, is then simply done again), never invent one.
                with dbapi_conn.cursor() as cur:
                    cur.execute("SET synchronous_commit TO off")
                dbapi_conn.commit()

        return engine, shown, None
    path = Path(setting).expanduser().resolve()
    return _check_sqlite_path(path, str(path))


def _check_sqlite_path(path: Path, shown: str) -> tuple[Engine, str, Path]:
    if path.is_dir():
        raise ConfigError(f"db {shown} is a folder; give a file path such as {path / 'files.db'}")
    if not path.parent.is_dir():
        raise ConfigError(f"db {shown}: folder {path.parent} does not exist; create it or fix db")
    if (
        not path.exists()
    ):  # a new inventory is private to its owner (SQLite gives -wal/-shm the same)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(f"db {shown} cannot be created: {exc.strerror}; fix db") from None
    return _sqlite_engine(path), shown, path


def _require_sqlite(path: Path, shown: str) -> None:
    """SchemaError unless the file is a SQLite database (or empty: asynchy makes it one)."""
    if not _sqlite_magic_ok(path):
        raise SchemaError(f"{shown} is not a SQLite database; give another db path")


def _sqlite_magic_ok(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise DatabaseError(f"cannot read database {path}: {exc.strerror}") from None
    return head == b"" or head == b"SQLite format 3\x00"


def read_revision(conn: Connection) -> tuple[str | None, list[str]]:
    """(current revision or None, names of the tables present)."""
    tables = inspect(conn).get_table_names()
    if VERSION_TABLE not in tables:
        return None, tables
    revs = [row[0] for row in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]  # noqa: S608 - a constant
    if len(revs) > 1:
        raise SchemaError(
            f"database has several schema revisions ({', '.join(revs)}); it was not made by asynchy"
        )
    return (revs[0] if revs else None), tables


def open_database(setting: str, *, migrate: bool = True, create: bool = True) -> Database:
    """Open the inventory; bring an empty or older schema to head unless ``migrate`` is False.

    ``create=False`` (the reporting commands) refuses a SQLite file that does not exist yet.
    """
    if not create and not is_url(setting):
        given = Path(setting).expanduser().resolve()
        if not given.exists():
            raise ConfigError(
                f"database {given} does not exist: fix db, or run `asynchy walk` first"
            )
        if (
            given.is_file() and given.stat().st_size == 0
        ):  # never written by asynchy: leave it alone
            raise SchemaError(
                f"{given} is an empty file, not an asynchy database: fix db, or run `asynchy walk` first"
            )
    engine, shown, path = make_engine(setting)
    db = Database(engine=engine, display=shown, path=path)
    if path is not None:
        try:
            _require_sqlite(path, shown)
        except BaseException:
            engine.dispose()
            raise
    try:
        with engine.connect() as conn:
            rev, _tables = read_revision(conn)
            conn.rollback()
        if rev != SCHEMA_HEAD:
            if migrate:
                upgrade(db)
            else:
                check_revision(db, rev)
        _ensure_wal(db)
    except (SQLAlchemyError, sqlite3.Error) as exc:  # a corrupt, locked or unreadable file
        engine.dispose()
        raise as_database_error(exc, shown) from None
    except BaseException:
        engine.dispose()
        raise
    return db


Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]


def open_read_only(setting: str, *, authorizer: Authorizer | None = None) -> Database:
    """A connection that cannot write: SQLite opened with mode=ro and query_only (and
    ``authorizer``, which asynchy.sqlquery gives); PostgreSQL read-only transactions.  The schema
    must be current (nothing can be upgraded through it)."""
    if is_url(setting):
        engine, shown, _ = make_engine(setting)
        if engine.dialect.name == "sqlite":
            engine.dispose()
            return open_read_only(str(make_url(setting).database), authorizer=authorizer)

        @event.listens_for(engine, "begin")
        def _read_only(conn: Connection) -> None:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")

        db = Database(engine=engine, display=shown, path=None)
    else:
        path = Path(setting).expanduser().resolve()
        if not path.exists():
            raise ConfigError(
                f"database {path} does not exist: fix db, or run `asynchy walk` first"
            )
        _require_sqlite(path, str(path))
        engine = _sqlite_file_engine(path, read_only=True)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            dbapi_conn.execute(f"PRAGMA busy_timeout = {_busy_timeout_ms}")
            dbapi_conn.execute("PRAGMA query_only = ON")
            if authorizer is not None:
                dbapi_conn.set_authorizer(authorizer)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

        db = Database(engine=engine, display=str(path), path=path)
    try:
        with engine.connect() as conn:
            rev, _ = read_revision(conn)
            conn.rollback()
    except OperationalError as exc:
        engine.dispose()
        raise as_database_error(exc, db.display, "open") from None
    if rev != SCHEMA_HEAD:
        engine.dispose()
        check_revision(db, rev)
    return db


def migrations_dir() -> Path:
    """Where the alembic scripts are: inside the installed package, else the repository root."""
    packaged = resources.files("asynchy") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parent.parent / "migrations"
    if repo.is_dir():
        return repo
    raise DatabaseError(
        "asynchy's migration scripts are missing from this installation; reinstall asynchy"
    )


def alembic_config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


@functools.cache
def known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def check_revision(db: Database, rev: str | None, tables: list[str] | None = None) -> None:
    """Raise SchemaError unless ``rev`` is head; explains what to do in every case."""
    if rev == SCHEMA_HEAD:
        return
    if rev is None:
        raise SchemaError(f"{db.display} has no asynchy schema yet: run `asynchy db upgrade`")
    if rev not in known_revisions():
        raise SchemaError(
            f"{db.display} has schema revision {rev}, newer than this asynchy "
            f"(which knows up to {SCHEMA_HEAD}): upgrade asynchy to use this database"
        )
    raise SchemaError(
        f"{db.display} has schema revision {rev}: run `asynchy db upgrade` to bring it to {SCHEMA_HEAD}"
    )


@dataclass(frozen=True)
class UpgradeResult:
    before: str | None
    after: str


def backup_sqlite(db: Database, rev: str) -> Path:
    """A consistent copy of the SQLite file (the backup API, safe with WAL) before it is upgraded."""
    assert db.path is not None
    import datetime as _dt

    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d%H%M%S")
    target = db.path.with_name(f"{db.path.name}.bak-{rev}-{stamp}")
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    src = sqlite3.connect(db.path)
    dst = sqlite3.connect(target)  # into the private file made above: mode 0600, as the database
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


def upgrade(db: Database) -> UpgradeResult:
    """Bring the schema to head, serialised against other processes doing the same.

    A new database is built from the models; an older one is first copied
    beside itself (SQLite: ``<file>.bak-<revision>-<time>``), then upgraded by
    the alembic scripts, with SQLite's foreign keys off so that rebuilding a
    table never cascades.
    """
    with db.engine.connect() as conn:
        rev, _ = read_revision(conn)
        conn.rollback()
    if rev is not None and rev != SCHEMA_HEAD:
        if rev not in known_revisions():
            check_revision(db, rev)
        if db.is_sqlite:
            log.warning(
                "backed up %s to %s before upgrading its schema", db.display, backup_sqlite(db, rev)
            )
    with db.engine.connect() as conn:
        if db.is_sqlite:  # must happen outside a transaction to take effect
            conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        try:
            return _upgrade_locked(db, conn)
        finally:
            if db.is_sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]


def _upgrade_locked(db: Database, conn: Connection) -> UpgradeResult:
    conn = conn.execution_options(asynchy_begin="IMMEDIATE")
    with conn.begin():
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('asynchy-schema'))"))
        rev, tables = read_revision(conn)
        if rev == SCHEMA_HEAD:
            return UpgradeResult(rev, rev)
        if rev is None:
            foreign = [t for t in tables if t != VERSION_TABLE and not t.startswith("sqlite_")]
            if foreign:
                raise SchemaError(
                    f"{db.display} is not an asynchy database (it has tables {', '.join(sorted(foreign))}); "
                    "give another db, or import it with `asynchy merge`"
                )
            # A new database: build it from the models and record head (no alembic needed).
            metadata.create_all(conn)
            for statement in views.create_sql(db.dialect):
                conn.exec_driver_sql(statement)
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
                    f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
                )
            )
            conn.execute(
                text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:v)"),  # noqa: S608 - a constant
                {"v": SCHEMA_HEAD},
            )
            log.info("created the asynchy schema (revision %s) in %s", SCHEMA_HEAD, db.display)
            return UpgradeResult(None, SCHEMA_HEAD)
        if rev not in known_revisions():
            check_revision(db, rev)
        from alembic import command

        log.info("upgrading %s from schema revision %s to %s", db.display, rev, SCHEMA_HEAD)
        command.upgrade(alembic_config(conn), "head")
        if db.is_sqlite:
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise SchemaError(
                    f"upgrading {db.display} broke {len(broken)} foreign keys; restore the backup"
                )
        return UpgradeResult(rev, SCHEMA_HEAD)


def current(db: Database) -> str | None:
    with db.engine.connect() as conn:
        rev, tables = read_revision(conn)
        conn.rollback()
    if rev is None:
        foreign = [t for t in tables if not t.startswith("sqlite_")]
        if foreign:
            raise SchemaError(
                f"{db.display} is not an asynchy database (it has tables {', '.join(sorted(foreign))})"
            )
    return rev


def _open_raw(setting: str) -> Database:
    engine, shown, path = make_engine(setting)
    db = Database(engine=engine, display=shown, path=path)
    if path is not None:
        try:
            _require_sqlite(path, shown)
        except BaseException:
            engine.dispose()
            raise
    return db


def upgrade_database(setting: str) -> tuple[Database, UpgradeResult]:
    """``asynchy db upgrade``: create or upgrade the schema, report before/after."""
    db = _open_raw(setting)
    try:
        result = upgrade(db)
        _ensure_wal(db)
        return db, result
    except (OperationalError, sqlite3.DatabaseError) as exc:
        db.close()
        raise as_database_error(exc, db.display, "upgrade") from None
    except BaseException:
        db.close()
        raise


@dataclass(frozen=True)
class SchemaStatus:
    display: str
    revision: str | None
    head: str

    @property
    def state(self) -> str:
        if self.revision == self.head:
            return "current"
        if self.revision is None:
            return "empty"
        return "older" if self.revision in known_revisions() else "newer"


def schema_status(setting: str) -> SchemaStatus:
    """``asynchy db current``: the revision, without changing anything."""
    if not is_url(setting) and not Path(setting).expanduser().exists():
        raise DatabaseError(f"database {Path(setting).expanduser()} does not exist")
    db = _open_raw(setting)
    try:
        return SchemaStatus(db.display, current(db), SCHEMA_HEAD)
    except (OperationalError, sqlite3.DatabaseError) as exc:
        raise as_database_error(exc, db.display, "open") from None
    finally:
        db.close()
