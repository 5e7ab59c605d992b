"""The database layer: new, current, older and newer schemas; SQLite settings; the wheel ships migrations."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from asynchy.db import alembic_config, known_revisions, open_database, schema_status
from asynchy.errors import ConfigError, SchemaError
from asynchy.models import SCHEMA_HEAD, metadata

ROOT = Path(__file__).resolve().parent.parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_schema_head_constant_is_the_only_alembic_head() -> None:
    """SCHEMA_HEAD lets an up-to-date database open without loading alembic; it must be the real head."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [SCHEMA_HEAD]
    assert SCHEMA_HEAD in known_revisions()


def test_new_sqlite_database_is_created_at_head_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = open_database(str(path))
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000
    db.close()
    assert sqlite3.connect(path).execute("SELECT version_num FROM alembic_version").fetchall() == [
        (SCHEMA_HEAD,)
    ]
    tables = {
        r[0]
        for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {"epns", "files", "walks", "walk_errors", "alembic_version"} <= tables


def _schema_diff(url: str) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    return list(diff)


def _migrate_with_alembic(url: str) -> None:
    from alembic import command

    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    engine.dispose()


def test_migrations_build_exactly_the_models_on_sqlite(tmp_path: Path) -> None:
    """The alembic scripts and the models agree (a new database is built from the models)."""
    by_alembic = tmp_path / "alembic.db"
    _migrate_with_alembic(f"sqlite:///{by_alembic}")
    assert _schema_diff(f"sqlite:///{by_alembic}") == []
    by_models = tmp_path / "models.db"
    open_database(str(by_models)).close()

    def ddl(path: Path) -> list[tuple[str, str]]:
        con = sqlite3.connect(path)
        got = con.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
        return [(n, "".join(s.replace('"', "").split())) for n, s in got]

    assert ddl(by_alembic) == ddl(by_models)


def test_migrations_build_exactly_the_models_on_postgresql(pg_url: str) -> None:
    _migrate_with_alembic(pg_url)
    assert _schema_diff(pg_url) == []
    db = open_database(pg_url)  # already at head: opens without changes
    with db.read() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == SCHEMA_HEAD
    db.close()


def test_new_postgresql_database_is_created_from_models(pg_url: str) -> None:
    db = open_database(pg_url)
    db.close()
    assert _schema_diff(pg_url) == []


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "future.db"
    open_database(str(path)).close()
    with sqlite3.connect(path) as con:
        con.execute("UPDATE alembic_version SET version_num = '9999'")
    before = digest(path)
    with pytest.raises(SchemaError, match="schema revision 9999, newer than this asynchy"):
        open_database(str(path))
    result = cli("--db", str(path), "walk", "--src-prefix", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "newer than this asynchy" in result.stderr
    result = cli("--db", str(path), "db", "current")
    assert result.exit_code == 2
    assert "9999 (newer than this asynchy" in result.stdout
    assert digest(path) == before


def test_not_a_sqlite_file_is_refused(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n")
    result = cli("--db", str(path), "walk", "--src-prefix", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {path} is not a SQLite database; give another db path\n"
    assert path.read_text() == "these are my notes, not a database\n"


def test_database_of_another_tool_is_refused(tmp_path: Path, cli: Any) -> None:
    """An as-walker files.db (the original default name) is never 'migrated' into asynchy's schema."""
    path = tmp_path / "files.db"
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE files(epn text, path text unique, size bigint, modified datetime)"
        )
        con.execute("INSERT INTO files VALUES ('1a', '/data/1a/x', 1, '2020-01-01 00:00:00')")
    before = digest(path)
    result = cli("--db", str(path), "walk", "--src-prefix", str(tmp_path))
    assert result.exit_code == 2
    assert "is not an asynchy database (it has tables files)" in result.stderr
    assert "asynchy merge" in result.stderr
    assert digest(path) == before


def test_db_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; create it or fix db"):
        open_database(str(tmp_path / "no" / "such" / "files.db"))


def test_db_upgrade_and_current_commands(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "inv.db"
    result = cli("--db", str(path), "db", "current")
    assert result.exit_code == 1
    assert "does not exist" in result.stderr
    result = cli("--db", str(path), "db", "upgrade")
    assert result.exit_code == 0
    assert result.stdout == f"{path}: schema upgraded from empty to revision {SCHEMA_HEAD}\n"
    result = cli("--db", str(path), "db", "upgrade")
    assert result.stdout == f"{path}: schema is current (revision {SCHEMA_HEAD})\n"
    result = cli("--db", str(path), "db", "current")
    assert result.exit_code == 0
    assert result.stdout == f"{SCHEMA_HEAD} (head)\n"
    assert schema_status(str(path)).state == "current"


def test_opening_a_current_database_does_not_import_alembic(tmp_path: Path) -> None:
    """Start-up cost: an up-to-date database is opened with one query, no migration machinery."""
    path = tmp_path / "inv.db"
    open_database(str(path)).close()
    code = (
        "import sys; from asynchy.db import open_database; open_database(sys.argv[1]).close(); "
        "print('alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_wheel_ships_migrations_and_runs_db_upgrade(tmp_path: Path) -> None:
    """Build the wheel, install it apart from the repository, and run the migrations from the installed
    copy.  (.ci/run also installs the wheel into a fresh venv with its pinned dependencies.)"""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("asynchy-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "asynchy/migrations/env.py" in names
    assert any(
        n.startswith("asynchy/migrations/versions/") and n.endswith("_inventory.py") for n in names
    )
    assert not any("__pycache__" in n for n in names)
    # Installed on its own (no network: its dependencies come from this environment, venv or not),
    # and run from there with the repository out of sight.
    target = tmp_path / "installed"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run(
        [sys.executable, "-m", "asynchy", "--db", str(work / "new.db"), "db", "upgrade"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    )
    assert f"revision {SCHEMA_HEAD}" in out.stdout
    # The migration scripts themselves run from inside the installed package.
    code = (
        "import sys; from sqlalchemy import create_engine; from alembic import command; "
        "from asynchy.db import alembic_config, migrations_dir; "
        "e = create_engine('sqlite:///' + sys.argv[1]); c = e.connect(); "
        "command.upgrade(alembic_config(c), 'head'); c.commit(); print(migrations_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(work / "by-alembic.db")],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == str(target / "asynchy" / "migrations")
    assert sqlite3.connect(work / "by-alembic.db").execute(
        "SELECT version_num FROM alembic_version"
    ).fetchall() == [(SCHEMA_HEAD,)]


def test_older_database_is_backed_up_and_upgraded_keeping_every_row(
    tmp_path: Path, cli: Any
) -> None:
    """A database at revision 0001 with data: opened by a newer asynchy, it is copied, then upgraded in place."""
    from alembic import command

    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA foreign_keys = ON")
        con.execute(
            "INSERT INTO walks (id, started_at, status, source, host, pid, options) "
            "VALUES (1, '2024-01-01 00:00:00', 'complete', 'local:/x', 'h', 1, '{}')"
        )
        con.execute(
            "INSERT INTO epns (epn, size, file_count, walk_id, walk_complete, first_seen_at) "
            "VALUES ('1a', 3, 1, 1, 1, '2024-01-01 00:00:00')"
        )
        con.execute(
            "INSERT INTO files (epn, path, size, modified) VALUES ('1a', 'x', 3, '2024-01-01 00:00:00')"
        )
    engine.dispose()
    result = cli("--db", str(path), "db", "current")
    assert result.stdout.startswith("0001 (run `asynchy db upgrade`")
    result = cli("--db", str(path), "db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{path}: schema upgraded from 0001 to revision {SCHEMA_HEAD}\n"
    assert "backed up" in result.stderr
    backups = list(tmp_path.glob("old.db.bak-0001-*"))
    assert len(backups) == 1
    assert sqlite3.connect(backups[0]).execute(
        "SELECT version_num FROM alembic_version"
    ).fetchall() == [("0001",)]
    con = sqlite3.connect(path)
    assert con.execute("SELECT epn, size, status, attempts, claim_token FROM epns").fetchall() == [
        ("1a", 3, "pending", 0, 0)
    ]
    assert con.execute("SELECT epn, path FROM files").fetchall() == [("1a", "x")]
    assert _schema_diff(f"sqlite:///{path}") == []
