"""What the benchmarks share: a fresh SQLite file, and asynchy's command line against a test sshd."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def fresh(path: Path) -> Path:
    """path with no database at it (nor its -wal and -shm files)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


def asynchy_argv(db: Path, sshd: Any, port: int, known_hosts: Path, *more: str) -> list[str]:
    """`python -m asynchy -q` with db and the connection to sshd (a tests/sshd.py Sshd), then more."""
    return [
        sys.executable,
        "-m",
        "asynchy",
        "-q",
        "--db",
        str(db),
        "--host",
        sshd.host,
        "--port",
        str(port),
        "--user",
        sshd.user,
        "--keypath",
        str(sshd.client_key),
        "--known-hosts",
        str(known_hosts),
        *more,
    ]


def describe(checkout: str) -> str:
    """A checkout named by its commit (for --before: an older asynchy timed in the same run)."""
    import subprocess

    done = subprocess.run(
        ["git", "-C", checkout, "log", "-1", "--format=%h (%cs)"], capture_output=True, text=True
    )
    return done.stdout.strip() or checkout
