"""Shared fixtures: a real sshd on loopback, served folders, a clean environment."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sshd import Sshd
from trees import unlock


@pytest.fixture(autouse=True)
def _no_user_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test may read or write the real ~/.as.yaml, ~/.ssh or ASYNCHY_* settings."""
    for name in list(os.environ):
        if name.startswith("ASYNCHY_"):
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture(scope="session")
def served_base() -> Iterator[Path]:
    """A folder the sshd's (unprivileged) account can read; pytest's tmp_path is private to root."""
    base = Path(tempfile.mkdtemp(prefix="asynchy-tests-"))
    os.chmod(base, 0o755)
    yield base
    unlock(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def served(served_base: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir=served_base))
    os.chmod(path, 0o755)
    yield path
    unlock(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(served_base: Path) -> Iterator[Sshd]:
    server = Sshd(served_base / "sshd").start()
    yield server
    server.stop()


@pytest.fixture
def write_config(tmp_path: Path) -> Any:
    """Write a YAML config file and return its path."""
    import yaml

    def write(values: dict[str, Any], name: str = "as.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(values))
        return path

    return write


@pytest.fixture
def cli() -> Any:
    """Run the asynchy CLI in-process: cli(*args) -> click Result."""
    from asynchy.cli import cli as asynchy_cli

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(
            asynchy_cli, list(args), input=input, env=env, catch_exceptions=False
        )

    return run


PG_ADMIN_URL = os.environ.get("ASYNCHY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the PostgreSQL server the tests use; fails (never skips) when it is down."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc}); start it "
            "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set ASYNCHY_TEST_PG"
        )
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A throwaway PostgreSQL database for one test, as a SQLAlchemy URL."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"asynchy_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(pg_server).set(drivername="postgresql+psycopg", database=name)
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
