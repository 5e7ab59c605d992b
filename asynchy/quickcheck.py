"""The integrity checks of SQLite files a merge reads, started at once in threads (SQLite
releases the GIL while it reads), so that they run while the rest of asynchy loads: the command
starts them before it imports the merge, and the merge's input checks take their results.

This module loads nothing heavy (sqlite3 and threads only)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asynchy.files import sqlite_uri


@dataclass(frozen=True, slots=True)
class Checked:
    quick_check: list[tuple[Any, ...]]  # PRAGMA quick_check's rows: [("ok",)] when sound
    orphans: int | None  # file rows without an EPN row, for a file with both tables


def _check(path: Path) -> Checked:
    con = sqlite3.connect(sqlite_uri(path, read_only=True), uri=True, timeout=30)
    try:
        con.execute("PRAGMA query_only = ON")
        rows = con.execute("PRAGMA quick_check").fetchall()
        tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        orphans = None
        if rows == [("ok",)] and {"epns", "files", "alembic_version"} <= tables:
            orphans = con.execute(
                "SELECT count(*) FROM files WHERE epn NOT IN (SELECT epn FROM epns)"
            ).fetchone()[0]
        return Checked(rows, orphans)
    finally:
        con.close()


class QuickChecks:
    """Started on creation; ``result(path)`` waits for one file's (None: it was not checked)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        wanted = [p for p in (Path(x).expanduser().resolve() for x in paths) if _sqlite(p)]
        self._futures: dict[Path, Future[Checked]] = {}
        if wanted:
            pool = ThreadPoolExecutor(max_workers=min(len(wanted), os.cpu_count() or 1))
            self._futures = {p: pool.submit(_check, p) for p in wanted}
            pool.shutdown(wait=False)

    def result(self, path: Path) -> Checked | None:
        """The checks of ``path`` (their sqlite3 error, if one stopped them, is raised)."""
        future = self._futures.get(path)
        return future.result() if future is not None else None


def _sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
