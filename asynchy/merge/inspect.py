"""Inspecting merge inputs before anything is written: what each is (asynchy database of any
revision, the older tools' databases, an HPC ASSyncy ignore.yml) and whether it is sound."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from asynchy.db import known_revisions
from asynchy.errors import SchemaError, UsageError
from asynchy.files import sqlite_uri
from asynchy.models import SCHEMA_HEAD
from asynchy.quickcheck import QuickChecks

Kind = Literal["asynchy", "legacy", "ignore-yml"]


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


LEGACY_FILES = {"epn", "path", "size", "modified"}


LEGACY_EPNS = {"epn", "size", "modified", "complete", "bytestransferred"}


def open_ro(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(sqlite_uri(path, read_only=True), uri=True, timeout=30)
    con.execute("PRAGMA query_only = ON")
    return con


def inspect_all(paths: Sequence[Path], checks: QuickChecks | None = None) -> list[Source]:
    """Every input inspected; the first bad one, in order, raises.  The integrity checks run in
    threads (SQLite releases the GIL), started by the command before the merge loaded, or now."""
    checks = checks if checks is not None else QuickChecks(paths)
    return [inspect(p, checks) for p in paths]


def inspect(path: Path, checks: QuickChecks | None = None) -> Source:
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
        early = checks.result(path) if checks is not None else None
        con = open_ro(path)
        try:
            check = early.quick_check if early else con.execute("PRAGMA quick_check").fetchall()
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
                    orphans = (
                        early.orphans
                        if early is not None and early.orphans is not None
                        else con.execute(
                            "SELECT count(*) FROM files WHERE epn NOT IN (SELECT epn FROM epns)"
                        ).fetchone()[0]
                    )
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
