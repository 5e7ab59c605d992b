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

import functools
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Interval,
    and_,
    bindparam,
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
from asynchy.failures import DATA_CLASSES, LEGACY_RETRYABLE
from asynchy.jobs import TransferResult
from asynchy.models import (
    QUEUE_STATUSES,
    UTCDateTime,
    epns_table,
    files_table,
    transfers_table,
    workers_table,
)
from asynchy.names import decode_name
from asynchy.processes import pid_alive
from asynchy.render import local_time, plural

log = logging.getLogger(__name__)

# A failed EPN with one of these classes is taken again (after its back-off); see docs/failures.md.
RETRYABLE_CLASSES = (*DATA_CLASSES, *LEGACY_RETRYABLE)
UNMAPPED = (
    "no destinations entry: not copied (copy_unmapped or --include-unmapped copies it to dest/EPN)"
)
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
    last_error_class: str | None = None  # 'checksum': the copy was found bad, repair it
    walked: bool = True  # False: never walked by asynchy (an imported row): list it first
    # the source moved on during a copy and no walk has listed it since (a relist that met a link
    # fault, a kill -9 or a second Ctrl+C): list it first, then copy
    stale: bool = False

    @property
    def needs_repair(self) -> bool:
        return self.last_error_class == "checksum"

    @property
    def needs_listing(self) -> bool:
        return not self.walked or self.stale


def db_now(db: Database) -> ColumnElement[Any]:
    """The database's clock, comparable with stored UTC times."""
    if db.is_sqlite:
        return func.datetime("now")
    return func.now()


def _now_plus(db: Database, seconds: float) -> ColumnElement[Any]:
    if db.is_sqlite:
        return func.datetime("now", f"+{int(seconds)} seconds")
    return func.now() + literal(timedelta(seconds=seconds), Interval())


def _eligible(now: ColumnElement[Any], max_attempts: Any) -> ColumnElement[bool]:
    return and_(
        # walked completely, or never walked by asynchy (imported from MeRC asynchy or as-walker):
        # sync lists such an EPN itself before copying it
        or_(e.walk_complete.is_(True), e.walked_at.is_(None)),
        e.status.in_(QUEUE_STATUSES),  # lets the database use ix_epns_queue (a partial index)
        or_(
            # changed: a walk saw it change, or a copy saw the source move on (then sync lists it
            # again before copying, when no walk has looked since: Claim.stale)
            e.status.in_(("pending", "changed")),
            and_(
                e.status == "failed",
                func.coalesce(e.last_error_class, "retryable").in_(RETRYABLE_CLASSES),
                e.failures < max_attempts,
                or_(e.not_before.is_(None), e.not_before <= now),
            ),
            and_(e.status == "running", or_(e.lease_until.is_(None), e.lease_until < now)),
        ),
    )


def settled(cutoff: Any) -> ColumnElement[bool]:
    """EPNs whose newest file is older than ``cutoff`` (an empty EPN: first seen before it).

    ``asynchy watch --settle``: an experiment still being written is not copied half-way."""
    return or_(
        and_(e.modified.is_not(None), e.modified <= cutoff),
        and_(e.modified.is_(None), e.first_seen_at <= cutoff),
    )


def eligible(db: Database, max_attempts: int) -> ColumnElement[bool]:
    """EPNs sync may take: pending, changed, failed for a data reason once its back-off has passed, or
    claimed with an expired lease."""
    return _eligible(db_now(db), max_attempts)


def _lease_end(sqlite: bool) -> ColumnElement[Any]:
    """Now plus the lease (bound as ``lease_modifier`` on SQLite, ``lease_interval`` on PostgreSQL)."""
    if sqlite:
        return func.datetime("now", bindparam("lease_modifier"))
    return func.now() + bindparam("lease_interval", type_=Interval())


def _lease_params(db: Database, lease: float) -> dict[str, Any]:
    if db.is_sqlite:
        return {"lease_modifier": f"+{int(lease)} seconds"}
    return {"lease_interval": timedelta(seconds=lease)}


def _ordering(order: Order) -> list[Any]:
    by_time = e.modified.asc() if order == "ASC" else e.modified.desc()
    return [by_time.nulls_last(), e.epn.asc()]


def register_worker(db: Database, command: str, lease: float | None = None) -> WorkerId:
    worker = WorkerId(secrets.token_hex(8), socket.gethostname(), os.getpid())
    with db.write() as conn:
        conn.execute(
            insert(workers_table).values(
                worker_id=worker.worker_id,
                host=worker.host,
                pid=worker.pid,
                command=command,
                started_at=db_now(db),
                heartbeat_at=db_now(db),
                status="running",
                lease_seconds=int(lease) if lease is not None else None,
            )
        )
    return worker


def finish_worker(db: Database, worker: WorkerId, status: str) -> None:
    with db.write() as conn:
        conn.execute(
            update(workers_table)
            .where(workers_table.c.worker_id == worker.worker_id)
            .values(finished_at=db_now(db), heartbeat_at=db_now(db), status=status)
        )


def heartbeat(db: Database, worker: WorkerId, lease: float) -> int:
    """Renew the leases of this worker's claims; returns how many it still holds."""
    with db.write() as conn:
        conn.execute(
            update(workers_table)
            .where(workers_table.c.worker_id == worker.worker_id)
            .values(heartbeat_at=db_now(db))
        )
        result = conn.execute(
            update(epns_table)
            .where(e.claim_owner == worker.worker_id, e.status == "running")
            .values(lease_until=_now_plus(db, lease))
        )
    return int(result.rowcount)


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
            .values(status="dead", finished_at=db_now(db))
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
        log.warning(
            "took back %s claimed by dead asynchy processes on this host", plural(freed, "EPN")
        )
    return freed


@dataclass(frozen=True, slots=True)
class WorkerRow:
    worker_id: str
    host: str
    pid: int
    command: str
    status: str
    started_at: Any
    heartbeat_seconds_ago: float | None
    lease_seconds: int | None
    stale: bool
    claims: list[tuple[str, float | None]]  # (EPN, seconds until the lease ends; negative: expired)


def workers(db: Database, *, all_workers: bool = False) -> list[WorkerRow]:
    """Running workers (and, with all_workers, finished ones) with their claims and lease ages."""
    w = workers_table.c
    if db.is_sqlite:
        age = func.strftime("%s", "now") - func.strftime("%s", w.heartbeat_at)
        left = func.strftime("%s", e.lease_until) - func.strftime("%s", "now")
    else:
        age = func.extract("epoch", func.now() - w.heartbeat_at)
        left = func.extract("epoch", e.lease_until - func.now())
    query = select(
        w.worker_id,
        w.host,
        w.pid,
        w.command,
        w.status,
        w.started_at,
        age.label("age"),
        w.lease_seconds,
    ).order_by(w.started_at)
    if not all_workers:
        query = query.where(w.status == "running")
    with db.read() as conn:
        rows = conn.execute(query).all()
        held = conn.execute(
            select(e.claim_owner, e.epn, left.label("left"))
            .where(e.status == "running")
            .order_by(e.epn)
        ).all()
    by_owner: dict[str, list[tuple[str, float | None]]] = {}
    for owner, epn, remaining in held:
        by_owner.setdefault(owner, []).append(
            (epn, float(remaining) if remaining is not None else None)
        )
    out = []
    for r in rows:
        ago = float(r.age) if r.age is not None else None
        stale = (
            r.status == "running"
            and ago is not None
            and r.lease_seconds is not None
            and ago > r.lease_seconds
        )
        out.append(
            WorkerRow(
                r.worker_id,
                r.host,
                r.pid,
                r.command,
                r.status,
                r.started_at,
                ago,
                r.lease_seconds,
                stale,
                by_owner.get(r.worker_id, []),
            )
        )
    return out


def release_stale(db: Database, *, worker_id: str | None = None) -> tuple[list[str], list[str]]:
    """Free claims whose lease has expired (or every claim of one worker); returns (EPNs freed, workers marked dead).

    Safe even if the owner is alive after all: its later result is rejected by the fencing token.
    """
    w = workers_table.c
    with db.write() as conn:
        if worker_id is not None:
            condition = and_(e.status == "running", e.claim_owner == worker_id)
        else:
            condition = and_(
                e.status == "running", or_(e.lease_until.is_(None), e.lease_until < db_now(db))
            )
        freed = [r[0] for r in conn.execute(select(e.epn).where(condition).order_by(e.epn))]
        if freed:
            conn.execute(
                update(epns_table)
                .where(e.epn.in_(freed), condition)
                .values(
                    status=func.coalesce(e.claimed_from, "pending"),
                    claim_owner=None,
                    lease_until=None,
                    claimed_from=None,
                )
            )
        if worker_id is not None:
            dead_condition = w.worker_id == worker_id
        elif db.is_sqlite:
            dead_condition = (
                func.strftime("%s", "now") - func.strftime("%s", w.heartbeat_at) > w.lease_seconds
            )
        else:
            dead_condition = func.extract("epoch", func.now() - w.heartbeat_at) > w.lease_seconds
        dead = [
            r[0]
            for r in conn.execute(select(w.worker_id).where(w.status == "running", dead_condition))
        ]
        if dead:
            conn.execute(
                update(workers_table)
                .where(w.worker_id.in_(dead))
                .values(status="dead", finished_at=db_now(db))
            )
    return freed, dead


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
    settled_before: datetime | None = None,
) -> tuple[list[Planned], dict[str, str]]:
    """The EPNs a sync would take now, in order (nothing is claimed); and why others were left out."""
    skipped: dict[str, str] = {}
    query = (
        select(e.epn, e.size, e.file_count, e.status)
        .where(eligible(db, max_attempts))
        .order_by(*_ordering(order))
    )
    if settled_before is not None:
        query = query.where(settled(literal(settled_before, UTCDateTime())))
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
                if wanted is not None:  # asked for by name: say why (otherwise: counted, not_taken)
                    skipped[epn] = UNMAPPED
                continue
            if len(out) < limit:
                out.append(Planned(epn, int(size), int(count), status))
        if wanted is not None:
            found = {p.epn for p in out} | set(skipped)
            missing = sorted(wanted - found - excluded)
            if missing:
                rows = conn.execute(
                    select(e.epn, e.status, e.walk_complete, e.failures, e.not_before).where(
                        e.epn.in_(missing)
                    )
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
                    elif row.status == "running":
                        skipped[epn] = "claimed by another asynchy sync"
                    elif (
                        row.status == "failed"
                        and row.not_before is not None
                        and (row.failures < max_attempts)
                    ):
                        skipped[epn] = (
                            f"failed {row.failures} times; backing off until "
                            f"{local_time(row.not_before)} (asynchy reset {epn} to try now)"
                        )
                    elif settled_before is not None and row.status in QUEUE_STATUSES:
                        skipped[epn] = (
                            "still being written (its newest file is younger than --settle)"
                        )
                    else:
                        skipped[epn] = (
                            f"status {row.status} (asynchy reset puts it back in the queue)"
                        )
    return out, skipped


@functools.lru_cache(maxsize=16)
def _claim_statement(
    dialect: str, order: Order, with_candidates: bool, settle: bool = False, exclude: bool = False
) -> Any:
    """The claim, built once per shape (building SQL expressions costs more than running them)."""
    sqlite = dialect == "sqlite"
    now = func.datetime("now") if sqlite else func.now()
    inner = (
        select(e.epn)
        .where(_eligible(now, bindparam("max_attempts")))
        .order_by(*_ordering(order))
        .limit(bindparam("n", type_=Integer()))
    )
    if with_candidates:
        inner = inner.where(e.epn.in_(bindparam("candidates", expanding=True)))
    if settle:
        inner = inner.where(settled(bindparam("settled_before", type_=UTCDateTime())))
    if exclude:  # EPNs this run already gave up on
        inner = inner.where(e.epn.not_in(bindparam("exclude", expanding=True)))
    if not sqlite:
        inner = inner.with_for_update(skip_locked=True)
    return (
        update(epns_table)
        .where(e.epn.in_(inner.scalar_subquery()))
        .values(
            status="running",
            claim_owner=bindparam("worker_id"),
            claim_token=e.claim_token + 1,
            claimed_at=now,
            lease_until=_lease_end(sqlite),
            claimed_from=case((e.status == "running", e.claimed_from), else_=e.status),
        )
        .returning(
            e.epn,
            e.claim_token,
            e.size,
            e.file_count,
            e.attempts,
            e.failures,
            e.modified,
            e.last_error_class,
            e.walked_at,
            e.changed_at,
        )
    )


def claim(
    db: Database,
    worker: WorkerId,
    candidates: Sequence[str] | None,
    n: int,
    *,
    order: Order,
    max_attempts: int,
    lease: float,
    settled_before: datetime | None = None,
    exclude: Iterable[str] = (),
) -> list[Claim]:
    """Atomically take up to n eligible EPNs, in order: any of them, or only from ``candidates``;
    never one of ``exclude``."""
    if n <= 0 or (candidates is not None and not candidates):
        return []
    params: dict[str, Any] = {"worker_id": worker.worker_id, "n": n, "max_attempts": max_attempts}
    params.update(_lease_params(db, lease))
    if candidates is not None:
        params["candidates"] = list(candidates)
    if settled_before is not None:
        params["settled_before"] = settled_before
    excluded = sorted(set(exclude))
    if excluded:
        params["exclude"] = excluded
    statement = _claim_statement(
        db.dialect, order, candidates is not None, settled_before is not None, bool(excluded)
    )
    with db.write() as conn:
        rows = list(conn.execute(statement, params).all())
    if candidates is not None:
        rank = {epn: i for i, epn in enumerate(candidates)}
        rows.sort(key=lambda r: rank.get(r.epn, len(rank)))
    else:
        newest_first = order == "DESC"
        rows.sort(
            key=lambda r: (
                r.modified is None,
                (-r.modified.timestamp() if newest_first else r.modified.timestamp())
                if r.modified
                else 0,
                r.epn,
            )
        )
    return [
        Claim(
            r.epn,
            int(r.claim_token),
            int(r.size),
            int(r.file_count),
            int(r.attempts),
            int(r.failures),
            r.last_error_class,
            r.walked_at is not None,
            r.last_error_class == "changed"
            and r.changed_at is not None
            and (r.walked_at is None or r.walked_at < r.changed_at),
        )
        for r in rows
    ]


def copied_epns(
    db: Database, *, mapped_only: bool, destinations: Mapping[str, str] | None
) -> list[str]:
    """Every EPN whose copy is or will be under dest: not skipped (and mapped, with mapped_only)."""
    with db.read() as conn:
        names = conn.execute(select(e.epn).where(e.status != "skipped")).scalars().all()
    return [n for n in names if not mapped_only or is_mapped(n, destinations)]


def walk_state(db: Database, epn: str) -> tuple[bool, int, int]:
    """(walk_complete, size, file_count) of one EPN as recorded now."""
    with db.read() as conn:
        row = conn.execute(select(e.walk_complete, e.size, e.file_count).where(e.epn == epn)).one()
    return bool(row.walk_complete), int(row.size), int(row.file_count)


def expected_files(db: Database, epn: str) -> tuple[tuple[bytes, int, int, str], ...]:
    """The inventory's files of an EPN: (path bytes, size, mtime seconds, kind)."""
    f = files_table.c
    with db.read() as conn:
        rows = conn.execute(select(f.path, f.size, f.modified, f.kind).where(f.epn == epn)).all()
    return tuple((decode_name(p), int(s), int(m.timestamp()), k) for p, s, m, k in rows)


def _later(sqlite: bool, name: str) -> ColumnElement[Any]:
    """Now plus a bound number of seconds, by the database's clock."""
    if sqlite:
        return func.datetime("now", bindparam(f"{name}_modifier"))
    return func.now() + bindparam(f"{name}_interval", type_=Interval())


def _later_params(db: Database, name: str, seconds: float) -> dict[str, Any]:
    if db.is_sqlite:
        return {f"{name}_modifier": f"+{int(seconds)} seconds"}
    return {f"{name}_interval": timedelta(seconds=int(seconds))}


@functools.lru_cache(maxsize=32)
def _record_statement(dialect: str, outcome: str, is_charged: bool) -> Any:
    """The fenced update of one attempt's EPN row, built once per shape (values are bound)."""
    sqlite = dialect == "sqlite"
    now = func.datetime("now") if sqlite else func.now()
    fenced = and_(
        e.epn == bindparam("r_epn"),
        e.claim_token == bindparam("r_token"),
        e.claim_owner == bindparam("r_owner"),
    )
    values: dict[str, Any] = {
        "bytes_transferred": e.bytes_transferred + bindparam("r_bytes", type_=BigInteger()),
        "attempts": e.attempts + int(outcome != "cancelled"),
    }
    if outcome == "complete":
        values.update(
            status="complete",
            completed_at=now,
            failures=0,
            not_before=None,
            last_exit_code=bindparam("r_exit"),
            last_error=None,
            last_error_class=None,
            dest_path=bindparam("r_dest"),
        )
    elif outcome in ("cancelled", "released"):  # not the EPN's fault: its state stays as it was
        values.update(status=func.coalesce(e.claimed_from, "pending"))
    elif outcome == "changed" or (outcome == "retry" and not is_charged):
        # not a failure: the copy may be good but the source moved on; sync lists it again
        values.update(
            status="changed" if outcome == "changed" else "running",
            changed_at=now,
            last_exit_code=bindparam("r_exit"),
            last_error=bindparam("r_reason"),
            last_error_class="changed",
        )
        if outcome == "retry":
            values.update(lease_until=_lease_end(sqlite))
    else:  # a data failure: charged
        quarantine = e.failures + 1 >= bindparam("r_max_attempts", type_=Integer())
        values.update(
            failures=e.failures + 1,
            last_exit_code=bindparam("r_exit"),
            last_error=bindparam("r_reason"),
            last_error_class=bindparam("r_class"),
            status=case(
                (quarantine, "quarantined"), else_="running" if outcome == "retry" else "failed"
            ),
            not_before=_later(sqlite, "r_wait"),
        )
        if (
            outcome == "retry"
        ):  # keep the claim for another attempt in this run, unless now quarantined
            values.update(
                claim_owner=case((quarantine, None), else_=e.claim_owner),
                lease_until=case((quarantine, None), else_=_lease_end(sqlite)),
                claimed_from=case((quarantine, None), else_=e.claimed_from),
            )
    if outcome != "retry":
        values.update(claim_owner=None, lease_until=None, claimed_from=None)
    return update(epns_table).where(fenced).values(**values).returning(e.status, e.attempts)


def record(
    db: Database,
    worker: WorkerId,
    claimed: Claim,
    result: TransferResult,
    outcome: str,
    *,
    charged: bool,
    max_attempts: int,
    dest_path: str,
    lease: float,
    wait: float = 0.0,
) -> str:
    """Write one attempt as ``outcome`` (``failures.Decision.recorded``: complete, cancelled,
    released, retry - the claim kept -, changed or failed; ``charged``: a data failure); returns
    the outcome as recorded: the same, quarantined, or superseded.  ``wait``: a data failure's
    back-off (seconds until ``not_before``).

    The EPN row changes only if this worker still holds the claim (owner and fencing token match);
    the attempt is recorded in ``transfers`` either way.
    """
    params: dict[str, Any] = {
        "r_epn": claimed.epn,
        "r_token": claimed.token,
        "r_owner": worker.worker_id,
        "r_bytes": result.bytes_transferred,
        "r_exit": result.exit_code,
        "r_dest": dest_path,
        "r_reason": result.reason,
        "r_class": result.classification,
        "r_max_attempts": max_attempts,
        **_lease_params(db, lease),
        **_later_params(db, "r_wait", wait),
    }
    statement = _record_statement(db.dialect, outcome, charged)
    with db.write() as conn:
        row = conn.execute(statement, params).first()
        if row is None:
            final = "superseded"
            attempt = result.attempt
        else:
            final = "quarantined" if row.status == "quarantined" else outcome
            attempt = int(row.attempts) if outcome != "cancelled" else result.attempt
        conn.execute(
            insert(transfers_table),
            {
                "epn": claimed.epn,
                "attempt": attempt,
                "started_at": result.started_at,
                "finished_at": result.finished_at,
                "worker_id": worker.worker_id,
                "host": worker.host,
                "pid": worker.pid,
                "claim_token": claimed.token,
                "argv": list(result.argv),
                "dest": dest_path,
                "exit_code": result.exit_code,
                "classification": "superseded" if final == "superseded" else result.classification,
                "outcome": final,
                "reason": "the claim was taken over by another worker"
                if final == "superseded"
                else result.reason,
                "bytes_transferred": result.bytes_transferred,
                "files_transferred": result.files_transferred,
                "stdout_tail": result.stdout_tail or None,
                "stderr_tail": result.stderr_tail or None,
                "parts": [dict(p) for p in result.parts] or None,
            },
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


def release_all(db: Database, worker: WorkerId) -> int:
    """Give back every claim this worker still holds (a run that must stop: link down, setup, database)."""
    with db.write() as conn:
        result = conn.execute(
            update(epns_table)
            .where(e.claim_owner == worker.worker_id, e.status == "running")
            .values(
                status=func.coalesce(e.claimed_from, "pending"),
                claim_owner=None,
                lease_until=None,
                claimed_from=None,
            )
        )
    return int(result.rowcount)
