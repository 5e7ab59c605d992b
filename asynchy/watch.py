"""``asynchy watch``: continuous repatriation, one cycle every ``every`` seconds.

A cycle: a walk of the new EPNs and of the ones that may still be growing
(newest file younger than ``recent``, or folder changed since their last
walk); an alert about unmapped EPNs (when ``alert_to`` is configured); one
sync batch of the EPNs that have *settled* (newest file older than
``settle``), so that an experiment still being written is not copied half-way.
A later change makes a copied EPN ``changed`` and it is copied again.

One watch per database: a lock (a file beside a SQLite database, an advisory
lock on PostgreSQL) that the operating system or the server drops when the
process dies, so a crash never leaves a stale lock behind.  SIGTERM or Ctrl+C
ends the cycle cleanly (the walk records what it finished, running transfers
give their claims back) and the watch exits with code 130.

A cycle that fails (the server cannot be reached, the SMTP server refuses)
is logged and the next one runs as planned; mistakes in the configuration stop
the watch in its first cycle, and a changed host key always stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from asynchy import dbclock, inventory, texts
from asynchy.alert import AlertOptions, AlertSummary, alert, check_templates, epns_on_server
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.eligibility import Conditions, claimable, settled
from asynchy.errors import (
    AsynchyError,
    Busy,
    DatabaseError,
    ExitCode,
    HostKeyChanged,
    Interrupted,
    RemoteError,
)
from asynchy.models import epns_table
from asynchy.portal import Portal
from asynchy.remote.base import Tree
from asynchy.signals import StopSignals
from asynchy.sync import SyncOptions, SyncSummary, sync

log = logging.getLogger(__name__)

PG_LOCK_KEY = 0x61737977  # "asyw": pg_try_advisory_lock key, per database


@dataclass(frozen=True, slots=True)
class WatchOptions:
    sync: SyncOptions  # its settle is the watch's
    every: float = 3600.0
    recent: float = 7 * 86400.0
    once: bool = False
    walk_workers: int = 32
    alert: AlertOptions | None = None
    portal: Mapping[str, Any] | None = None
    destinations: Mapping[str, str] | None = None
    epn_pattern: str | None = None  # the walk's (docs/walk.md)
    strict_names: bool = False
    history_days: float = 90.0  # asynchy.retention
    audit_every: float | None = None  # seconds: every copied file read again within it (fixity)


@dataclass
class CycleSummary:
    number: int
    started: datetime
    walked: int = 0
    new: int = 0
    changed: int = 0
    walk_errors: int = 0
    alerted: int = 0
    complete: int = 0
    failed: int = 0
    bytes: int = 0
    waiting: int = 0  # EPNs in the queue that have not settled yet
    elapsed: float = 0.0
    interrupted: bool = False
    problems: list[str] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)  # of the problems (metrics.WATCH_CLASSES)
    walk_id: int | None = None  # this cycle's walk row ...
    quiet_walk: bool = False  # ... found nothing new, changed or wrong
    worker_id: str | None = None  # this cycle's sync row ...
    idle_sync: bool = False  # ... took no EPN
    next_at: datetime | None = None
    not_taken: dict[str, int] = field(default_factory=dict)  # reason -> EPNs (docs/sync.md)
    audited_bytes: int | None = None  # the audit slice (None: no audit this cycle)
    damaged: list[str] = field(default_factory=list)  # EPNs the audit slice found damaged

    @property
    def ok(self) -> bool:
        return not (
            self.problems or self.failed or self.walk_errors or self.interrupted or self.damaged
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "cycle": self.number,
            "started": self.started,
            "walked": self.walked,
            "new": self.new,
            "changed": self.changed,
            "walk_errors": self.walk_errors,
            "alerted": self.alerted,
            "complete": self.complete,
            "failed": self.failed,
            "bytes": self.bytes,
            "waiting_to_settle": self.waiting,
            "elapsed_seconds": round(self.elapsed, 3),
            "interrupted": self.interrupted,
            "problems": self.problems,
            "not_taken": self.not_taken,
            "audited_bytes": self.audited_bytes,
            "damaged": self.damaged,
            "next_cycle": self.next_at,
        }


# ------------------------------------------------------------------ one watch per database
@contextlib.contextmanager
def instance_lock(db: Database) -> Iterator[None]:
    """Hold the database's watch lock, or raise Busy naming who holds it."""
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if db.path is None:
        with _pg_lock(db, me):
            yield
        return
    path = Path(str(db.path) + ".watch-lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise Busy(f"cannot create the watch lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(Path(path).read_text(encoding="utf-8", errors="replace"))
            raise Busy(
                f"another asynchy watch ({holder}) is using {db.display}: stop it first, or leave this one out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + "\n").encode())
        yield
    finally:
        os.close(fd)  # drops the lock; the file stays (removing it would race with a new holder)


def _describe(content: str) -> str:
    try:
        data = json.loads(content)
        return f"pid {data['pid']} on {data['host']}, since {data['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def _pg_lock(db: Database, me: Mapping[str, Any]) -> Iterator[None]:
    name = f"asynchy watch pid {me['pid']} on {me['host']}, since {me['since']}"
    with db.engine.connect() as conn:
        conn.execute(text("SELECT set_config('application_name', :name, false)"), {"name": name})
        got = conn.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": PG_LOCK_KEY}
        ).scalar_one()
        conn.commit()
        if not got:
            holder = conn.execute(
                text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :key "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"key": PG_LOCK_KEY},
            ).scalar()
            conn.commit()
            described = str(holder).removeprefix("asynchy watch ") if holder else "holder unknown"
            raise Busy(
                f"another asynchy watch ({described}) is using {db.display}: stop it first, or leave this one out"
            )
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
                conn.commit()


# ------------------------------------------------------------------ the loop
def unsettled(db: Database, cutoff: datetime, max_attempts: int) -> int:
    """EPNs sync would take but for --settle."""
    with db.read() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(epns_table)
                .where(
                    claimable(Conditions(dbclock.now(db), max_attempts)),
                    ~settled(cutoff),
                )
            ).scalar_one()
        )


def watch(
    db: Database,
    open_tree: Callable[[], Tree],
    target: SshTarget | None,
    opts: WatchOptions,
    *,
    on_cycle: Callable[[CycleSummary], None] | None = None,
) -> CycleSummary:
    """Run cycles until stopped (or one with ``once``); returns the last cycle's summary."""
    if opts.alert is not None:  # a broken template or SMTP setting stops us now, not at 3 am
        check_templates(opts.alert.templates, opts.alert.template_names)
        opts.alert.smtp.check()
    portal = Portal(opts.portal) if opts.portal else None
    number = 0
    counts = _Counts()
    quiet: tuple[int | None, str | None] = (None, None)  # the last quiet cycle's walk, sync rows
    with instance_lock(db), StopSignals():
        log.info(
            "watch started: every %s, settle %s, database %s",
            _span(opts.every),
            _span(opts.sync.settle or 0),
            db.display,
        )
        while True:
            number += 1
            started = time.monotonic()
            cycle = CycleSummary(number, datetime.now(UTC))
            try:
                _cycle(db, open_tree, target, opts, portal, cycle, first=number == 1)
            except KeyboardInterrupt:
                cycle.interrupted = True
            except Exception as exc:  # locked, full, damaged: say so, try again next cycle
                problem = _database_problem(exc)
                if problem is None:
                    raise
                cycle.problems.append(f"database: {problem}")
                cycle.classes.add("database")
                log.error("cycle %d: %s", number, problem)  # noqa: TRY400 - one line
            cycle.elapsed = time.monotonic() - started
            counts.add(cycle)
            _write_metrics(db, opts, counts)
            quiet = _keep_history(db, opts, cycle, quiet)
            if not (opts.once or cycle.interrupted):
                wait = max(0.0, opts.every - cycle.elapsed)
                cycle.next_at = datetime.now(UTC) + timedelta(seconds=wait)
            try:  # a stop from here on, even while the cycle line is written, ends after the cycle
                log.info("%s", texts.cycle_line(cycle))
                if on_cycle is not None:
                    on_cycle(cycle)
                if cycle.interrupted:
                    raise Interrupted(f"watch stopped during cycle {number}")
                if opts.once:
                    return cycle
                time.sleep(max(0.0, opts.every - (time.monotonic() - started)))
            except KeyboardInterrupt:
                raise Interrupted(f"watch stopped after cycle {number}") from None


@dataclass
class _Counts:
    """The watch's own counters, for the metrics file (they start again with the watch)."""

    cycles: int = 0
    last_ok: bool = True
    failed: dict[str, int] = field(default_factory=dict)

    def add(self, cycle: CycleSummary) -> None:
        self.cycles += 1
        if cycle.failed:
            cycle.classes.add("data")
        if cycle.walk_errors:
            cycle.classes.add("walk")
        self.last_ok = not cycle.classes and not cycle.problems
        for kind in cycle.classes:
            self.failed[kind] = self.failed.get(kind, 0) + 1


def _keep_history(
    db: Database, opts: WatchOptions, cycle: CycleSummary, before: tuple[int | None, str | None]
) -> tuple[int | None, str | None]:
    """Quiet cycles fold into one row, old unreferenced walks go (asynchy.retention); returns
    this cycle's quiet rows, for the next cycle to fold."""
    from asynchy import retention

    walk_id = cycle.walk_id if cycle.quiet_walk else None
    worker_id = cycle.worker_id if cycle.idle_sync else None
    try:
        if walk_id is not None and before[0] is not None:
            retention.forget_quiet_walk(db, before[0])
        if worker_id is not None and before[1] is not None:
            retention.forget_idle_worker(db, before[1])
        retention.prune_walks(db, opts.history_days)
    except AsynchyError as exc:  # the history can wait for the next cycle
        log.warning("keeping the history bounded failed: %s", exc)
    return walk_id, worker_id


def _write_metrics(db: Database, opts: WatchOptions, counts: _Counts) -> None:
    """The metrics file, every cycle, whatever the cycle met (docs/operations.md)."""
    if opts.sync.metrics_file is None:
        return
    from asynchy import metrics

    watch = metrics.WatchCounts(counts.cycles, counts.last_ok, dict(counts.failed))
    try:
        metrics.write(db, opts.sync.metrics_file, watch=watch)
    except AsynchyError as exc:
        log.error("%s", exc)  # noqa: TRY400 - one line; the watch goes on


def _problem_class(exc: AsynchyError) -> str:
    """The class a cycle's problem counts under in the metrics (docs/operations.md)."""
    if isinstance(exc, DatabaseError):
        return "database"
    if isinstance(exc, RemoteError) and exc.exit_code == ExitCode.ERROR:
        return "link"
    return "setup"


def _database_problem(exc: Exception) -> DatabaseError | None:
    """The database error behind exc (asynchy's own, or SQLAlchemy's/sqlite3's), or None."""
    if isinstance(exc, DatabaseError) and exc.exit_code == ExitCode.ERROR:
        return exc
    if type(exc).__module__.startswith(("sqlalchemy", "sqlite3", "psycopg")):
        from asynchy.db import as_database_error

        return as_database_error(exc)
    return None


def _fatal(exc: AsynchyError, first: bool) -> bool:
    """Stop the watch?  A changed host key always; a configuration mistake in the first cycle."""
    return isinstance(exc, HostKeyChanged) or (first and exc.exit_code == ExitCode.USAGE)


def _cycle(
    db: Database,
    open_tree: Callable[[], Tree],
    target: SshTarget | None,
    opts: WatchOptions,
    portal: Portal | None,
    cycle: CycleSummary,
    *,
    first: bool,
) -> None:
    """One cycle: walk, alert, one sync batch of settled EPNs, an audit slice (operations.md)."""
    synced = _copy_steps(db, open_tree, target, opts, portal, cycle, first=first)
    if synced is not None and synced.interrupted:
        raise KeyboardInterrupt
    if opts.audit_every is not None:  # no network needed: also when the source cannot be listed
        _audit_step(db, opts, cycle)


def _copy_steps(
    db: Database,
    open_tree: Callable[[], Tree],
    target: SshTarget | None,
    opts: WatchOptions,
    portal: Portal | None,
    cycle: CycleSummary,
    *,
    first: bool,
) -> SyncSummary | None:
    if not _walk_step(db, open_tree, opts, cycle, first=first):
        return None  # the source cannot be listed: copying now would only burn attempts
    if opts.alert is not None:
        _alert_step(db, open_tree, opts, portal, cycle, first=first)
    synced = _sync_step(db, open_tree, target, opts, cycle, first=first)
    if synced is None:
        return None
    cutoff = datetime.now(UTC) - timedelta(seconds=opts.sync.settle or 0)
    cycle.waiting = unsettled(db, cutoff, opts.sync.max_attempts)
    return synced


def _audit_step(db: Database, opts: WatchOptions, cycle: CycleSummary) -> None:
    """The cycle's share of reading every copied file again within audit_every: the recorded
    bytes times every / audit_every, the least recently audited first (docs/fixity.md)."""
    from asynchy.audit import AuditOptions, audit, slice_bytes

    assert opts.audit_every is not None
    share = slice_bytes(db, opts.every, opts.audit_every)
    if share == 0:
        cycle.audited_bytes = 0
        return
    s = opts.sync
    try:
        done = audit(
            db,
            AuditOptions(
                max_bytes=share,
                threads=s.threads,
                dest=s.dest,
                destinations=s.destinations,
                layout=s.layout,
            ),
        )
    except AsynchyError as exc:
        cycle.problems.append(f"audit: {exc}")
        cycle.classes.add(_problem_class(exc))
        log.error("audit failed: %s", exc)  # noqa: TRY400 - expected: one line
        return
    cycle.audited_bytes = done.bytes
    cycle.damaged = [x.epn for x in done.damaged]
    for x in done.damaged:
        log.warning("audit: EPN %s is damaged; the next sync repairs it from the source", x.epn)


def _walk_step(
    db: Database,
    open_tree: Callable[[], Tree],
    opts: WatchOptions,
    cycle: CycleSummary,
    *,
    first: bool,
) -> bool:
    """Walk the new EPNs and those that may still grow; False when the source cannot be listed."""
    now = datetime.now(UTC)
    try:
        with db.read() as conn:
            before = int(conn.execute(select(func.count()).select_from(epns_table)).scalar_one())
        walked = inventory.walk(
            db,
            open_tree(),
            inventory.WalkOptions(
                recent=now - timedelta(seconds=opts.recent),
                workers=opts.walk_workers,
                epn_pattern=opts.epn_pattern,
                strict_names=opts.strict_names,
                src_prefix=opts.sync.src_prefix,
            ),
        )
        with db.read() as conn:
            after = int(conn.execute(select(func.count()).select_from(epns_table)).scalar_one())
    except Interrupted:
        raise KeyboardInterrupt from None
    except AsynchyError as exc:
        if _fatal(exc, first):
            raise
        cycle.problems.append(f"walk: {exc}")
        cycle.classes.add(_problem_class(exc))
        log.error("walk failed: %s; no alert or sync this cycle", exc)  # noqa: TRY400 - one line
        return False
    cycle.walked, cycle.new, cycle.changed = walked.epns_walked, after - before, walked.epns_changed
    cycle.walk_errors = walked.error_count
    cycle.walk_id = walked.walk_id
    cycle.quiet_walk = not (cycle.new or cycle.changed or cycle.walk_errors)
    return True


def _alert_step(
    db: Database,
    open_tree: Callable[[], Tree],
    opts: WatchOptions,
    portal: Portal | None,
    cycle: CycleSummary,
    *,
    first: bool,
) -> None:
    """E-mail the EPNs nobody owns; a failed alert is one problem of the cycle."""
    try:
        result = _alert(db, open_tree, opts, portal)
        cycle.alerted = len(result.alerted) if result.sent else 0
        cycle.problems.extend(f"portal: {p}" for p in result.portal_errors)
        if result.portal_errors:
            cycle.classes.add("portal")
    except AsynchyError as exc:
        if _fatal(exc, first):
            raise
        cycle.problems.append(f"alert: {exc}")
        cycle.classes.add("alert")
        log.error("alert failed: %s", exc)  # noqa: TRY400 - expected: one line


def _sync_step(
    db: Database,
    open_tree: Callable[[], Tree],
    target: SshTarget | None,
    opts: WatchOptions,
    cycle: CycleSummary,
    *,
    first: bool,
) -> SyncSummary | None:
    """One sync batch of settled EPNs; None when it could not run (a problem of the cycle)."""
    try:
        # the watch writes the metrics file itself, once a cycle, with the cycle's outcome
        synced: SyncSummary = sync(
            db, target, replace(opts.sync, metrics_file=None), open_tree=open_tree
        )
        cycle.complete, cycle.failed, cycle.bytes = (
            len(synced.complete),
            len(synced.failed),
            synced.bytes,
        )
        cycle.worker_id = synced.worker_id
        cycle.idle_sync = synced.selected == 0 and synced.stop_error is None
        cycle.not_taken = {
            w.reason: w.epns for w in synced.not_taken if w.reason != "settling"
        }  # settling has its own count
        if synced.stop_error is not None:  # the link went down, or the setup is wrong
            raise synced.stop_error
    except DatabaseError:
        raise
    except AsynchyError as exc:
        if _fatal(exc, first):
            raise
        cycle.problems.append(f"sync: {exc}")
        cycle.classes.add(_problem_class(exc))
        log.error("sync failed: %s", exc)  # noqa: TRY400 - expected: one line
        return None
    return synced


def _alert(
    db: Database, open_tree: Callable[[], Tree], opts: WatchOptions, portal: Portal | None
) -> AlertSummary:
    assert opts.alert is not None
    return alert(db, epns_on_server(open_tree()), opts.destinations, opts.alert, portal=portal)


def _span(value: float) -> str:
    seconds = round(value)
    if seconds and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
