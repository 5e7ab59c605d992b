"""``asynchy walk``: list the source's EPN folders into the inventory.

The walk streams events from a ``Tree`` (local or SFTP) and writes each EPN
in one transaction: after Ctrl+C or ``kill -9`` an EPN is either fully
recorded or absent, and the next walk skips the EPNs already walked.  Rows are
buffered per EPN and spilled to a temporary table when an EPN is very large,
so memory stays flat however big the tree.

Only this module writes walk results; it knows nothing of paramiko or click.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    insert,
    select,
    update,
)

from asynchy.db import Database
from asynchy.errors import ConnectionLost, Interrupted, RemoteError, UsageError
from asynchy.failures import backoff
from asynchy.models import (
    epns_table,
    files_table,
    walk_errors_table,
    walks_table,
)
from asynchy.names import (
    decode_name,
    encode_name,
    epn_regex,
    likely_fix,
    parse_epn,
    reserved_epn,
    unexpected_names,
)
from asynchy.processes import pid_alive
from asynchy.remote.base import Entry, EpnDone, Files, Issue, Tree
from asynchy.render import plural
from asynchy.walkrows import Writer, error_rows, now

log = logging.getLogger(__name__)

SPILL_ROWS = 20_000  # rows of one EPN kept in memory before they go to the staging table
MAX_ERRORS_SHOWN = 20


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def epn_done(self, files: int, nbytes: int) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Shard:
    """``K/N``: this host walks the EPNs whose CRC-32 of the name is K-1 modulo N."""

    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            k_text, n_text = text.split("/")
            k, n = int(k_text), int(n_text)
        except ValueError:
            raise UsageError(f"--shard {text!r} must look like K/N, e.g. 1/3") from None
        if not 1 <= k <= n:
            raise UsageError(f"--shard {text!r}: K must be from 1 to N")
        return cls(k, n)

    def owns(self, epn: bytes) -> bool:
        return zlib.crc32(epn) % self.n == self.k - 1

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


@dataclass(frozen=True, slots=True)
class WalkOptions:
    # Only these EPNs (stored-name form); None: every EPN under src_prefix.
    epns: tuple[str, ...] | None = None
    refresh: bool = False
    shard: Shard | None = None
    workers: int = 32
    retries: int = 5  # reconnects in a row without progress before giving up
    backoff: float = 1.0  # seconds before the first reconnect; doubles, at most 30 s
    # asynchy watch: also walk again EPNs whose newest file is newer than this, or whose folder
    # changed after their last walk (they may still be growing).
    recent: datetime | None = None
    # What an EPN folder name looks like (setting epn_pattern; None: any name).  Folders under
    # src_prefix that do not match are named once with the likely fix, or left out when strict.
    epn_pattern: str | None = None
    strict_names: bool = False
    src_prefix: str = ""  # for the fix's wording


@dataclass(frozen=True, slots=True)
class ErrorRow:
    epn: str | None
    path: str
    kind: str
    message: str


@dataclass
class WalkSummary:
    walk_id: int
    source: str
    status: str = "running"
    epns_total: int = 0
    epns_walked: int = 0
    epns_skipped: int = 0
    epns_changed: int = 0
    epns_incomplete: int = 0
    epns_gone: int = 0
    files: int = 0
    bytes: int = 0
    error_count: int = 0
    errors: list[ErrorRow] = field(default_factory=list)
    reconnects: int = 0
    elapsed: float = 0.0
    unexpected: list[str] = field(default_factory=list)  # folders that do not look like EPNs
    left_out: bool = False  # ... and were not recorded (strict_names)
    name_hint: str = ""  # the likely fix

    def as_dict(self) -> dict[str, Any]:
        return {
            "walk_id": self.walk_id,
            "source": self.source,
            "status": self.status,
            "epns_total": self.epns_total,
            "epns_walked": self.epns_walked,
            "epns_skipped": self.epns_skipped,
            "epns_changed": self.epns_changed,
            "epns_incomplete": self.epns_incomplete,
            "epns_gone": self.epns_gone,
            "files": self.files,
            "bytes": self.bytes,
            "errors": self.error_count,
            "error_details": [_row_dict(e) for e in self.errors],
            "reconnects": self.reconnects,
            "elapsed_seconds": round(self.elapsed, 3),
            "unexpected_names": {
                "count": len(self.unexpected),
                "names": self.unexpected[:20],
                "left_out": self.left_out,
                "hint": self.name_hint or None,
            },
        }


def _row_dict(e: ErrorRow) -> dict[str, Any]:
    return {"epn": e.epn, "path": e.path, "kind": e.kind, "message": e.message}


def _start_walk(db: Database, source: str, opts: WalkOptions) -> int:
    host = socket.gethostname()
    with db.write() as conn:
        stale = conn.execute(
            select(walks_table.c.id, walks_table.c.pid).where(
                walks_table.c.status == "running", walks_table.c.host == host
            )
        ).all()
        for walk_id, pid in stale:
            if not pid_alive(pid):
                conn.execute(
                    update(walks_table)
                    .where(walks_table.c.id == walk_id)
                    .values(
                        status="interrupted",
                        message="the walking process died (found by a later walk)",
                    )
                )
        options = {
            "epns": list(opts.epns) if opts.epns is not None else None,
            "refresh": opts.refresh,
            "shard": str(opts.shard) if opts.shard else None,
            "workers": opts.workers,
        }
        result = conn.execute(
            insert(walks_table)
            .values(
                started_at=now(),
                status="running",
                source=source,
                host=host,
                pid=os.getpid(),
                options=options,
            )
            .returning(walks_table.c.id)
        )
        return int(result.scalar_one())


def _end_walk(db: Database, summary: WalkSummary, message: str | None = None) -> None:
    with db.write() as conn:
        conn.execute(
            update(walks_table)
            .where(walks_table.c.id == summary.walk_id)
            .values(
                status=summary.status,
                finished_at=now(),
                epns_total=summary.epns_total,
                epns_skipped=summary.epns_skipped,
                reconnects=summary.reconnects,
                message=message,
            )
        )


def _analyze(db: Database) -> None:
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE epns")
        conn.commit()


def _record_top_issues(db: Database, walk_id: int, issues: list[Issue]) -> None:
    if not issues:
        return
    with db.write() as conn:
        conn.execute(insert(walk_errors_table), error_rows(walk_id, None, issues, now()))
        conn.execute(
            update(walks_table)
            .where(walks_table.c.id == walk_id)
            .values(errors=walks_table.c.errors + len(issues))
        )


def walk(
    db: Database,
    tree: Tree,
    opts: WalkOptions,
    *,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> WalkSummary:
    """Walk the tree into the database; see the module docstring for the guarantees."""
    started = time.monotonic()
    if opts.epns is not None:
        try:
            _refuse_unknown(db, tree, opts.epns)
        except BaseException:
            tree.close()
            raise
    summary = WalkSummary(walk_id=_start_walk(db, tree.source, opts), source=tree.source)
    writer: Writer | None = None
    try:
        todo = _select_epns(db, tree, opts, summary)
        if progress is not None:
            progress.start(len(todo))
        writer = Writer(db, summary.walk_id)
        _run(tree, todo, opts, writer, summary, progress, sleep)
        _name_warning(db, opts, summary)
        summary.status = "partial" if summary.error_count else "complete"
        summary.elapsed = time.monotonic() - started
        _end_walk(db, summary)
        if summary.epns_walked >= 1000 and not db.is_sqlite:
            _analyze(
                db
            )  # fresh statistics, so that sync's claims use the queue index from the start
        return summary
    except (KeyboardInterrupt, Interrupted):
        summary.status = "interrupted"
        summary.elapsed = time.monotonic() - started
        _end_walk(db, summary, "interrupted by the user")
        raise Interrupted(
            f"walk interrupted after {plural(summary.epns_walked, 'EPN')}; run `asynchy walk` "
            "again to continue"
        ) from None
    except BaseException as exc:
        summary.status = "failed"
        summary.elapsed = time.monotonic() - started
        _end_walk(db, summary, str(exc) or type(exc).__name__)
        raise
    finally:
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
        tree.close()


def _refuse_unknown(db: Database, tree: Tree, named: Sequence[str]) -> None:
    """``--epn`` of a name neither the inventory nor the server has (a typo): refused, nothing written."""
    import difflib

    wanted = list(dict.fromkeys(parse_epn(n) for n in named))
    with db.read() as conn:
        known = set(
            conn.execute(
                select(epns_table.c.epn).where(
                    epns_table.c.epn.in_([encode_name(w) for w in wanted])
                )
            ).scalars()
        )
    unknown = [w for w in wanted if encode_name(w) not in known]
    if not unknown:
        return  # walked before: walking it again records whatever the server has now
    top, issues = tree.list_epns()
    on_server = {t.name for t in top if t.is_dir}
    if issues or not on_server:  # the listing itself is in doubt (unreadable, odd names): walk it
        return
    for raw in unknown:
        if raw not in on_server:
            name = encode_name(raw)
            close = difflib.get_close_matches(name, sorted(encode_name(x) for x in on_server), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"EPN {name!r} is not on {tree.source}{hint}: check the name")


def _select_epns(db: Database, tree: Tree, opts: WalkOptions, summary: WalkSummary) -> list[bytes]:
    listed: list[bytes]
    folder_mtime: dict[bytes, int] = {}
    if opts.epns is not None:
        listed = list(dict.fromkeys(parse_epn(e) for e in opts.epns))
    else:
        top, issues = tree.list_epns()
        issues = list(issues) + [
            Issue(t.name, "reserved-name", why)
            for t in top
            if t.is_dir and (why := reserved_epn(t.name)) is not None
        ]
        top = [t for t in top if reserved_epn(t.name) is None]
        listed = [t.name for t in top if t.is_dir]
        regex = epn_regex(opts.epn_pattern)
        summary.unexpected = unexpected_names([encode_name(n) for n in listed], regex)
        if summary.unexpected and opts.strict_names:
            odd = {decode_name(n) for n in summary.unexpected}
            listed = [n for n in listed if n not in odd]
            summary.left_out = True
        folder_mtime = {t.name: t.mtime for t in top if t.is_dir}
        _record_top_issues(db, summary.walk_id, issues)
        summary.error_count += len(issues)
        summary.errors.extend(
            ErrorRow(None, encode_name(i.path), i.kind, i.message) for i in issues
        )
    if opts.shard is not None:
        listed = [e for e in listed if opts.shard.owns(e)]
    listed.sort()
    e = epns_table.c
    with db.read() as conn:
        rows = conn.execute(select(e.epn, e.walk_complete, e.walked_at, e.modified)).all()
    complete = {r.epn for r in rows if r.walk_complete}
    if opts.recent is not None:  # growing EPNs are looked at again: keep them out of "complete"
        recent = opts.recent
        for r in rows:
            moved = folder_mtime.get(decode_name(r.epn))
            if (r.modified is not None and r.modified > recent) or (
                moved is not None and r.walked_at is not None and moved >= r.walked_at.timestamp()
            ):
                complete.discard(r.epn)
    if opts.epns is None:
        seen = {encode_name(e) for e in listed}
        known = (decode_name(r.epn) for r in rows)
        summary.epns_gone = sum(
            1
            for raw in known
            if (opts.shard is None or opts.shard.owns(raw)) and encode_name(raw) not in seen
        )
    todo = listed if opts.refresh else [e for e in listed if encode_name(e) not in complete]
    summary.epns_total = len(listed)
    summary.epns_skipped = len(listed) - len(todo)
    return todo


def _name_warning(db: Database, opts: WalkOptions, summary: WalkSummary) -> None:
    """Once per walk: the folders under src_prefix that do not look like EPNs, and the likely fix
    (a walked one that holds EPN-like folders: src_prefix is one level too high)."""
    regex = epn_regex(opts.epn_pattern)
    if not summary.unexpected or regex is None:
        return
    inside: dict[str, list[str]] = {}
    f = files_table.c
    with db.read() as conn:
        for name in summary.unexpected[:20]:
            paths = conn.execute(select(f.path).where(f.epn == name).limit(500)).scalars()
            inside[name] = sorted({p.split("/", 1)[0] for p in paths if "/" in p})
    total = summary.epns_total + (len(summary.unexpected) if summary.left_out else 0)
    summary.name_hint = likely_fix(opts.src_prefix, summary.unexpected, total, regex, inside)
    from asynchy.texts import names_warning

    log.warning("%s", names_warning(summary.as_dict()["unexpected_names"], opts.epn_pattern or ""))


def _run(
    tree: Tree,
    todo: Sequence[bytes],
    opts: WalkOptions,
    writer: Writer,
    summary: WalkSummary,
    progress: Progress | None,
    sleep: Callable[[float], None],
) -> None:
    remaining = list(todo)
    failures = 0
    while remaining:
        buffers: dict[bytes, list[Entry]] = {}
        spilled: set[bytes] = set()
        done: set[bytes] = set()
        try:
            for ev in tree.walk(remaining):
                if isinstance(ev, Files):
                    buf = buffers.setdefault(ev.epn, [])
                    buf.extend(ev.entries)
                    if len(buf) >= SPILL_ROWS:
                        writer.spill(encode_name(ev.epn), buf)
                        spilled.add(ev.epn)
                        buffers[ev.epn] = []
                elif isinstance(ev, EpnDone):
                    _finish(
                        writer, ev, buffers.pop(ev.epn, []), ev.epn in spilled, summary, progress
                    )
                    spilled.discard(ev.epn)
                    done.add(ev.epn)
                    failures = 0
            remaining = [e for e in remaining if e not in done]
            if (
                remaining
            ):  # a well-behaved tree reports every EPN; never loop forever on one that does not
                raise RemoteError(
                    f"the source did not report {plural(len(remaining), 'EPN')} "
                    f"(first: {remaining[0]!r})"
                )
        except ConnectionLost as exc:
            for epn in spilled:
                writer.drop_staged(encode_name(epn))
            remaining = [e for e in remaining if e not in done]
            failures += 1
            if failures > opts.retries:
                raise RemoteError(
                    f"{exc}; gave up after {plural(opts.retries, 'reconnect')} without progress"
                ) from None
            delay = backoff(failures - 1, opts.backoff, 30.0)
            log.warning(
                "%s; reconnecting in %g s (%s to go)", exc, delay, plural(len(remaining), "EPN")
            )
            summary.reconnects += 1
            sleep(delay)


def _finish(
    writer: Writer,
    ev: EpnDone,
    entries: list[Entry],
    spilled: bool,
    summary: WalkSummary,
    progress: Progress | None,
) -> None:
    epn = encode_name(ev.epn)
    files, nbytes, changed = writer.finish(epn, entries, spilled, ev.issues)
    summary.epns_walked += 1
    summary.files += files
    summary.bytes += nbytes
    summary.epns_changed += int(changed)
    if ev.issues:
        summary.epns_incomplete += 1
        summary.error_count += len(ev.issues)
        for issue in ev.issues:
            if len(summary.errors) < MAX_ERRORS_SHOWN:
                summary.errors.append(
                    ErrorRow(epn, encode_name(issue.path), issue.kind, issue.message)
                )
            log.info(
                "EPN %s: %s: %s (%s)",
                epn,
                encode_name(issue.path) or ".",
                issue.message,
                issue.kind,
            )
    if progress is not None:
        progress.epn_done(files, nbytes)
