"""The transfer queue in the database: plan, claim, heartbeat, record, release.

A claim is an ``epns`` row with ``status = 'running'``, an owner (a
``workers`` row: host, pid, random id), a lease that ends at ``lease_until``
by the *database's* clock and is renewed by the owner's heartbeat, and a
fencing token (``claim_token``, incremented by every claim).  Every write
about a claimed EPN is conditional on ``claim_token`` and ``claim_owner``:
a worker that lost its claim (paused past its lease, cut off by the network)
cannot overwrite the result of the worker that took the EPN over.

Claiming is one statement: ``UPDATE epns ... WHERE epn IN (SELECT ... ORDER
BY ... LIMIT n [FOR UPDATE SKIP LOCKED]) RETURNING ...``, in a ``BEGIN
IMMEDIATE`` transaction on SQLite, committed at once: no lock is held while
rsync runs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Interval,
    and_,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from asynchy.db import Database
from asynchy.destinations import is_mapped
from asynchy.models import epns_table, files_table, transfers_table, workers_table
from asynchy.names import decode_name
from asynchy.transfer import TransferResult

log = logging.getLogger(__name__)

RETRYABLE_CLASSES = ("retryable", "partial", "verify")
Order = Literal["ASC", "DESC"]
e = epns_table.c


@dataclass(frozen=True, slots=True)
class WorkerId:
    worker_id: str
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class Planned:
    epn: str
    size: int
    file_count: int
    status: str


@dataclass(frozen=True, slots=True)
class Claim:
    epn: str
    token: int
    size: int
    file_count: int
    attempts: int
    failures: int


def _now(db: Database) -> ColumnElement[Any]:
    """The database's clock, comparable with stored UTC times."""
    if db.is_sqlite:
        return func.datetime("now")
    return func.now()


def _now_plus(db: Database, seconds: float) -> ColumnElement[Any]:
    if db.is_sqlite:
        return func.datetime("now", f"+{int(seconds)} seconds")
    return func.now() + literal(timedelta(seconds=seconds), Interval())


def eligible(db: Database, max_attempts: int) -> ColumnElement[bool]:
    """EPNs sync may take: pending, changed, failed for a retryable cause, or claimed with an expired lease."""
    return and_(
        e.walk_complete.is_(True),
        or_(
            e.status == "pending",
            # changed: unless sync saw the source move on during a transfer and no walk has looked since
            and_(
                e.status == "changed",
                or_(
                    func.coalesce(e.last_error_class, "") != "changed",
                    e.changed_at.is_(None),
                    e.walked_at >= e.changed_at,
                ),
            ),
            and_(
                e.status == "failed",
                func.coalesce(e.last_error_class, "retryable").in_(RETRYABLE_CLASSES),
                e.failures < max_attempts,
            ),
            and_(e.status == "running", or_(e.lease_until.is_(None), e.lease_until < _now(db))),
        ),
    )


def _ordering(order: Order) -> list[Any]:
    by_time = e.modified.asc() if order == "ASC" else e.modified.desc()
    return [by_time.nulls_last(), e.epn.asc()]


def register_worker(db: Database, command: str) -> WorkerId:
    worker = WorkerId(secrets.token_hex(8), socket.gethostname(), os.getpid())
    with db.write() as conn:
        conn.execute(
            insert(workers_table).values(
                worker_id=worker.worker_id,
                host=worker.host,
                pid=worker.pid,
                command=command,
                started_at=_now(db),
                heartbeat_at=_now(db),
                status="running",
            )
        )
    return worker


def finish_worker(db: Database, worker: WorkerId, status: str) -> None:
    with db.write() as conn:
        conn.execute(
            update(workers_table)
            .where(workers_table.c.worker_id == worker.worker_id)
            .values(finished_at=_now(db), heartbeat_at=_now(db), status=status)
        )


def heartbeat(db: Database, worker: WorkerId, lease: float) -> int:
    """Renew the leases of this worker's claims; returns how many it still holds."""
    with db.write() as conn:
        conn.execute(
            update(workers_table)
            .where(workers_table.c.worker_id == worker.worker_id)
            .values(heartbeat_at=_now(db))
        )
        result = conn.execute(
            update(epns_table)
            .where(e.claim_owner == worker.worker_id, e.status == "running")
            .values(lease_until=_now_plus(db, lease))
        )
    return int(result.rowcount)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_dead_local(db: Database) -> int:
    """Free the claims of workers on this host whose process is gone (kill -9): no need to wait for the lease."""
    host = socket.gethostname()
    w = workers_table.c
    with db.write() as conn:
        rows = conn.execute(
            select(w.worker_id, w.pid).where(w.host == host, w.status == "running")
        ).all()
        dead = [wid for wid, pid in rows if pid != os.getpid() and not pid_alive(pid)]
        if not dead:
            return 0
        conn.execute(
            update(workers_table)
            .where(w.worker_id.in_(dead))
            .values(status="dead", finished_at=_now(db))
        )
        result = conn.execute(
            update(epns_table)
            .where(e.claim_owner.in_(dead), e.status == "running")
            .values(
                status=func.coalesce(e.claimed_from, "pending"),
                claim_owner=None,
                lease_until=None,
                claimed_from=None,
            )
        )
    freed = int(result.rowcount)
    if freed:
        log.warning("took back %d EPNs claimed by dead asynchy processes on this host", freed)
    return freed


def plan(
    db: Database,
    *,
    order: Order,
    limit: int,
    max_attempts: int,
    epns: Sequence[str] | None = None,
    mapped_only: bool = False,
    destinations: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
) -> tuple[list[Planned], dict[str, str]]:
    """The EPNs a sync would take now, in order (nothing is claimed); and why others were left out."""
    skipped: dict[str, str] = {}
    query = (
        select(e.epn, e.size, e.file_count, e.status)
        .where(eligible(db, max_attempts))
        .order_by(*_ordering(order))
    )
    wanted = set(epns) if epns is not None else None
    if wanted is not None:
        query = query.where(e.epn.in_(sorted(wanted)))
    excluded = set(exclude)
    out: list[Planned] = []
    with db.read() as conn:
        for epn, size, count, status in conn.execute(query):
            if epn in excluded:
                continue
            if mapped_only and not is_mapped(epn, destinations):
                skipped[epn] = "no destination mapping (--mapped-only)"
                continue
            if len(out) < limit:
                out.append(Planned(epn, int(size), int(count), status))
        if wanted is not None:
            found = {p.epn for p in out} | set(skipped)
            missing = sorted(wanted - found - excluded)
            if missing:
                rows = conn.execute(
                    select(e.epn, e.status, e.walk_complete, e.failures).where(e.epn.in_(missing))
                ).all()
                known = {r.epn: r for r in rows}
                for epn in missing:
                    row = known.get(epn)
                    if row is None:
                        skipped[epn] = "not in the inventory (walk it first)"
                    elif not row.walk_complete:
                        skipped[epn] = (
                            "its last walk was incomplete (see walk_errors); walk it again"
                        )
                    elif row.status == "complete":
                        skipped[epn] = "already complete"
                    elif row.status == "changed":
                        skipped[epn] = (
                            "the source changed during its last transfer: walk it again first"
                        )
                    elif row.status == "running":
                        skipped[epn] = "claimed by another asynchy sync"
                    else:
                        skipped[epn] = (
                            f"status {row.status} (asynchy reset puts it back in the queue)"
                        )
    return out, skipped


def claim(
    db: Database,
    worker: WorkerId,
    candidates: Sequence[str],
    n: int,
    *,
    order: Order,
    max_attempts: int,
    lease: float,
) -> list[Claim]:
    """Atomically take up to n of the candidates (in order) that are still eligible."""
    if n <= 0 or not candidates:
        return []
    inner = (
        select(e.epn)
        .where(e.epn.in_(list(candidates)), eligible(db, max_attempts))
        .order_by(*_ordering(order))
        .limit(n)
    )
    if not db.is_sqlite:
        inner = inner.with_for_update(skip_locked=True)
    stmt = (
        update(epns_table)
        .where(e.epn.in_(inner.scalar_subquery()))
        .values(
            status="running",
            claim_owner=worker.worker_id,
            claim_token=e.claim_token + 1,
            claimed_at=_now(db),
            lease_until=_now_plus(db, lease),
            claimed_from=case((e.status == "running", e.claimed_from), else_=e.status),
        )
        .returning(e.epn, e.claim_token, e.size, e.file_count, e.attempts, e.failures, e.modified)
    )
    with db.write() as conn:
        rows = list(conn.execute(stmt).all())
    rank = {epn: i for i, epn in enumerate(candidates)}
    rows.sort(key=lambda r: rank.get(r.epn, len(rank)))
    return [
        Claim(
            r.epn,
            int(r.claim_token),
            int(r.size),
            int(r.file_count),
            int(r.attempts),
            int(r.failures),
        )
        for r in rows
    ]


def expected_files(db: Database, epn: str) -> tuple[tuple[bytes, int, int, str], ...]:
    """The inventory's files of an EPN: (path bytes, size, mtime seconds, kind)."""
    f = files_table.c
    with db.read() as conn:
        rows = conn.execute(select(f.path, f.size, f.modified, f.kind).where(f.epn == epn)).all()
    return tuple((decode_name(p), int(s), int(m.timestamp()), k) for p, s, m, k in rows)


def _outcome(result: TransferResult, keep_claim: bool) -> str:
    if result.classification == "ok":
        return "complete"
    if result.classification in ("cancelled", "changed"):
        return result.classification
    return "retry" if keep_claim else "failed"


def record(
    db: Database,
    worker: WorkerId,
    claimed: Claim,
    result: TransferResult,
    *,
    max_attempts: int,
    keep_claim: bool,
    dest_path: str,
    lease: float,
) -> str:
    """Write one attempt; returns complete, failed, retry, quarantined, cancelled or superseded."""
    outcome = _outcome(result, keep_claim)
    fenced = and_(
        e.epn == claimed.epn, e.claim_token == claimed.token, e.claim_owner == worker.worker_id
    )
    counted = outcome != "cancelled"
    values: dict[str, Any] = {
        "bytes_transferred": e.bytes_transferred + result.bytes_transferred,
        "attempts": e.attempts + int(counted),
    }
    if outcome == "complete":
        values.update(
            status="complete",
            completed_at=_now(db),
            failures=0,
            last_exit_code=result.exit_code,
            last_error=None,
            last_error_class=None,
            dest_path=dest_path,
        )
    elif outcome == "cancelled":
        values.update(status=func.coalesce(e.claimed_from, "pending"))
    elif outcome == "changed":  # not a failure: the copy is good but the source moved on
        values.update(
            status="changed",
            changed_at=_now(db),
            last_exit_code=result.exit_code,
            last_error=result.reason,
            last_error_class="changed",
        )
    else:
        will_quarantine = e.failures + 1 >= max_attempts
        values.update(
            failures=e.failures + 1,
            last_exit_code=result.exit_code,
            last_error=result.reason,
            last_error_class=result.classification,
            status=case(
                (will_quarantine, "quarantined"), else_="running" if keep_claim else "failed"
            ),
        )
    if outcome == "retry":  # keep the claim for another attempt in this run, unless now quarantined
        values.update(
            claim_owner=case((will_quarantine, None), else_=worker.worker_id),
            lease_until=case((will_quarantine, None), else_=_now_plus(db, lease)),
            claimed_from=case((will_quarantine, None), else_=e.claimed_from),
        )
    else:
        values.update(claim_owner=None, lease_until=None, claimed_from=None)
    with db.write() as conn:
        row = conn.execute(
            update(epns_table).where(fenced).values(**values).returning(e.status, e.attempts)
        ).first()
        if row is None:
            final = "superseded"
            attempt = result.attempt
        else:
            final = "quarantined" if row.status == "quarantined" else outcome
            attempt = int(row.attempts) if counted else result.attempt
        conn.execute(
            insert(transfers_table).values(
                epn=claimed.epn,
                attempt=attempt,
                started_at=result.started_at,
                finished_at=result.finished_at,
                worker_id=worker.worker_id,
                host=worker.host,
                pid=worker.pid,
                claim_token=claimed.token,
                argv=json.loads(json.dumps(list(result.argv))),
                dest=dest_path,
                exit_code=result.exit_code,
                classification="superseded" if final == "superseded" else result.classification,
                outcome=final,
                reason=result.reason
                if final != "superseded"
                else "the claim was taken over by another worker",
                bytes_transferred=result.bytes_transferred,
                files_transferred=result.files_transferred,
                stdout_tail=result.stdout_tail or None,
                stderr_tail=result.stderr_tail or None,
            )
        )
    return final


def release(db: Database, worker: WorkerId, claimed: Claim) -> None:
    """Give an unstarted claim back (e.g. after Ctrl+C before its rsync began)."""
    with db.write() as conn:
        conn.execute(
            update(epns_table)
            .where(
                e.epn == claimed.epn,
                e.claim_token == claimed.token,
                e.claim_owner == worker.worker_id,
            )
            .values(
                status=func.coalesce(e.claimed_from, "pending"),
                claim_owner=None,
                lease_until=None,
                claimed_from=None,
            )
        )
