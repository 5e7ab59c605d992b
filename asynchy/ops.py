"""Day-to-day operations on EPNs: reset, skip, verify."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from asynchy import claims
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.destinations import dest_folder, stored_folder
from asynchy.errors import UsageError
from asynchy.filters import Filters
from asynchy.jobs import FailureClass, Job
from asynchy.lookup import known_rows, unknown_epn
from asynchy.models import epns_table
from asynchy.names import decode_name
from asynchy.render import plural
from asynchy.rsync import RsyncOptions, files_from, rsync_argv, rsync_version
from asynchy.rsyncrun import run_rsync
from asynchy.transfer import files_differ, verify_local

log = logging.getLogger(__name__)
e = epns_table.c
RESETTABLE = ("failed", "quarantined", "skipped", "changed", "complete", "pending")


@dataclass
class Changed:
    done: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "epns": self.done,
            "refused": [{"epn": epn, "reason": why} for epn, why in self.refused.items()],
        }


# A bulk reset of these statuses re-queues work that is done: it asks first (docs/reporting.md).
ASK_BEFORE = ("complete",)


def reset(
    db: Database,
    epns: Sequence[str] = (),
    statuses: Sequence[str] = (),
    *,
    dry_run: bool = False,
    confirm: Callable[[int, str], bool] | None = None,
) -> Changed:
    """Put EPNs back to ``pending`` (history in ``transfers`` is kept); running claims are left alone.

    ``--status complete`` re-queues finished work: ``confirm(count, status)`` must agree (a prompt
    on a terminal, ``--yes`` otherwise), or nothing changes.  ``dry_run``: say what would be reset."""
    bad = [s for s in statuses if s not in RESETTABLE]
    if bad:
        raise UsageError(f"--status {bad[0]!r}: reset takes {', '.join(RESETTABLE)}")
    if not epns and not statuses:
        raise UsageError(f"name the EPNs to reset, or pass --status {'|'.join(RESETTABLE)}")
    out = Changed(dry_run=dry_run)
    with db.write() as conn:
        chosen = list(dict.fromkeys(epns))
        by_status: list[tuple[str, str]] = []
        if statuses:
            by_status = [
                (r.epn, r.status)
                for r in conn.execute(
                    select(e.epn, e.status).where(e.status.in_(list(statuses))).order_by(e.epn)
                )
            ]
            chosen += [epn for epn, _ in by_status if epn not in chosen]
        known = known_rows(conn, chosen)
        for epn in chosen:
            if known[epn].status == "running":
                out.refused[epn] = (
                    "claimed by a running sync (asynchy release --stale frees dead claims)"
                )
            else:
                out.done.append(epn)
        for status in ASK_BEFORE:
            count = sum(1 for _, s in by_status if s == status)
            if count and not dry_run and (confirm is None or not confirm(count, status)):
                raise UsageError(
                    f"reset --status {status} puts {plural(count, f'{status} EPN')} back in the queue (their "
                    "copies are checked and copied again where they differ): pass --yes, or "
                    "--dry-run to list them"
                )
        if out.done and not dry_run:
            conn.execute(
                update(epns_table)
                .where(e.epn.in_(out.done))
                .values(
                    status="pending",
                    failures=0,
                    not_before=None,
                    last_error=None,
                    last_error_class=None,
                    skip_reason=None,
                    claimed_from=None,
                )
            )
    return out


def skip(db: Database, epns: Sequence[str], reason: str, *, dry_run: bool = False) -> Changed:
    """Mark EPNs never to be transferred (until reset); ``dry_run``: say which would be."""
    if not epns:
        raise UsageError("name the EPNs to skip")
    out = Changed(dry_run=dry_run)
    with db.write() as conn:
        known = known_rows(conn, epns)
        for epn in dict.fromkeys(epns):
            if known[epn].status == "running":
                out.refused[epn] = "claimed by a running sync"
            else:
                out.done.append(epn)
        if out.done and not dry_run:
            conn.execute(
                update(epns_table)
                .where(e.epn.in_(out.done))
                .values(status="skipped", skip_reason=reason or "skipped")
            )
    return out


@dataclass
class Verified:
    checked: list[str] = field(default_factory=list)
    differ: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # named but not verifiable

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": len(self.checked),
            "match": [epn for epn in self.checked if epn not in self.differ],
            "differ": [{"epn": epn, "reason": why} for epn, why in self.differ.items()],
            "not_verified": [{"epn": epn, "reason": why} for epn, why in self.missing.items()],
        }


def verify(
    db: Database,
    *,
    dest: Path,
    epns: Sequence[str] = (),
    checksum: bool = False,
    target: SshTarget | None = None,
    src_prefix: str | None = None,
    destinations: Any = None,
    layout: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    rsync: str = "rsync",
    on_epn: Callable[[str, bool], None] | None = None,
) -> Verified:
    """Check complete EPNs' local copies against the inventory (and the source by checksum).

    A copy that differs makes its EPN ``changed`` (so sync copies it again).
    """
    out = Verified()
    ropts = None
    if checksum:
        if not src_prefix:
            raise UsageError("--checksum compares with the source: src_prefix must be set")
        version, line = rsync_version(rsync)
        log.info("using %s", line)
        ropts = RsyncOptions(
            rsync=rsync, old_rsync=version < (3, 4, 3), include=include, exclude=exclude
        )
    rules = Filters(include, exclude)
    for row in _verify_rows(db, epns, out):
        folder = (
            stored_folder(row.dest_path, row.epn)
            if row.dest_path
            else dest_folder(row.epn, dest, destinations, layout)
        )
        kind: FailureClass = "verify"
        reason = _unsafe(dest, folder)
        if reason is None:
            reason, kind = _check_copy(db, row.epn, folder, rules)
        if reason is None and ropts is not None:
            assert src_prefix is not None
            reason, kind = _check_source(row.epn, folder, target, src_prefix, ropts)
        out.checked.append(row.epn)
        if reason:
            out.differ[row.epn] = reason
            _mark_changed(db, row.epn, reason, kind)
        if on_epn is not None:
            on_epn(row.epn, reason is None)
    return out


def _unsafe(dest: Path, folder: bytes) -> str | None:
    """A symlink (or a file) where a folder of the copy under dest should be: not followed."""
    from asynchy.destfs import UnsafeFolder, check_below

    root = os.fsencode(dest)
    if not folder.startswith(root.rstrip(b"/") + b"/"):
        return None  # an absolute destination: its root is the administrator's
    try:
        check_below(root, folder)
    except UnsafeFolder as exc:
        return f"verify: {exc}"
    return None


def _verify_rows(db: Database, epns: Sequence[str], out: Verified) -> list[Any]:
    """The complete EPNs to check (all, or those named); named ones that cannot be are noted."""
    with db.read() as conn:
        query = select(e.epn, e.status, e.dest_path).order_by(e.epn)
        query = query.where(e.epn.in_(list(epns))) if epns else query.where(e.status == "complete")
        rows = conn.execute(query).all()
    found = {r.epn for r in rows}
    missing = [epn for epn in epns if epn not in found]
    if missing:  # a typo: exit 2 with the closest names, as show, reset and skip
        with db.read() as conn:
            raise unknown_epn(conn, missing[0])
    for row in rows:
        if row.status != "complete":
            out.missing[row.epn] = f"status {row.status}: only complete EPNs are verified"
    return [r for r in rows if r.status == "complete"]


def _check_copy(
    db: Database, epn: str, folder: bytes, rules: Filters
) -> tuple[str | None, FailureClass]:
    """The local copy against the inventory (size, mtime, kind of every file)."""
    expected = claims.expected_files(db, epn)
    if rules:
        expected = expected.only(lambda path: not rules.excludes(path))
    raw = decode_name(epn)
    job = Job(
        epn=epn,
        epn_raw=raw,
        attempt=0,
        token=0,
        argv=(),
        stdin=files_from(raw),
        dest_dir=folder,
        expected=expected,
        regular_files=0,
    )
    count, problems = verify_local(job)
    if count:
        return f"verify: {files_differ(count)} from the inventory ({problems})", "verify"
    return None, "verify"


def _check_source(
    epn: str, folder: bytes, target: SshTarget | None, src_prefix: str, ropts: RsyncOptions
) -> tuple[str | None, FailureClass]:
    """The local copy against the source by content (an rsync -c dry run)."""
    argv = rsync_argv(target=target, prefix=src_prefix, opts=ropts, check="checksum")
    run = run_rsync(
        tuple(argv),
        files_from(decode_name(epn)),
        cwd=folder,
        stall_timeout=None,
        cancel=None,
        count_itemized=True,
    )
    if run.exit_code != 0:
        problem = f"rsync exit {run.exit_code}: {run.stderr.strip()[-300:]}"
        return f"checksum check failed: {problem}", "verify"
    if run.lines:  # the next sync repairs it: rsync --checksum for this EPN
        return f"verify: {files_differ(run.lines)} from the source by checksum", "checksum"
    return None, "verify"


def _mark_changed(db: Database, epn: str, reason: str, kind: FailureClass) -> None:
    with db.write() as conn:
        conn.execute(
            update(epns_table)
            .where(e.epn == epn, e.status == "complete")
            .values(
                status="changed",
                changed_at=func.now() if not db.is_sqlite else func.datetime("now"),
                last_error=reason,
                last_error_class=kind,
            )
        )
