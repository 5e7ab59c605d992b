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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    and_,
    bindparam,
    case,
    func,
    insert,
    select,
    update,
)

from asynchy import dbclock
from asynchy.db import Database
from asynchy.destinations import is_mapped
from asynchy.eligibility import Conditions, claimable, flags, reason_of
from asynchy.failures import Decision
from asynchy.jobs import Expected, Order, TransferResult
from asynchy.models import (
    UTCDateTime,
    epns_table,
    files_table,
    transfers_table,
)
from asynchy.names import decode_name
from asynchy.render import local_time
from asynchy.workers import WorkerId, given_back

log = logging.getLogger(__name__)

# A failed EPN with one of these classes is taken again (after its back-off); see docs/failures.md.
UNMAPPED = (
    "no destinations entry: not copied (copy_unmapped or --include-unmapped copies it to dest/EPN)"
)
e = epns_table.c


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


def _ordering(order: Order) -> list[Any]:
    by_time = e.modified.asc() if order == "ASC" else e.modified.desc()
    return [by_time.nulls_last(), e.epn.asc()]


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
    """The EPNs a sync would take now, in order (nothing is claimed); and, for EPNs asked for by
    name, why one is not taken (asynchy.eligibility: the claim's own reasons)."""
    c = Conditions(dbclock.now(db), max_attempts, settled_before)
    excluded = set(exclude)
    out: list[Planned] = []
    skipped: dict[str, str] = {}
    if epns is None:  # the queue: only what may be taken, in order
        query = select(e.epn, e.size, e.file_count, e.status).where(claimable(c))
        with db.read() as conn:
            for epn, size, count, status in conn.execute(query.order_by(*_ordering(order))):
                if epn in excluded or (mapped_only and not is_mapped(epn, destinations)):
                    continue
                out.append(Planned(epn, int(size), int(count), status))
                if len(out) >= limit:
                    break
        return out, skipped
    wanted = set(epns) - excluded
    query = select(
        e.epn, e.size, e.file_count, e.status, e.failures, e.not_before, *flags(c)
    ).where(e.epn.in_(sorted(wanted)))
    with db.read() as conn:
        rows = {r.epn: r for r in conn.execute(query.order_by(*_ordering(order)))}
    for epn, row in rows.items():
        why = reason_of(row, mapped_only=mapped_only, destinations=destinations)
        if why is None and len(out) < limit:
            out.append(Planned(epn, int(row.size), int(row.file_count), row.status))
        elif why is not None:
            skipped[epn] = _why(why, row)
    for epn in sorted(wanted - set(rows)):
        skipped[epn] = "not in the inventory (walk it first)"
    return out, skipped


def _why(reason: str, row: Any) -> str:
    """A reason (asynchy.eligibility) in the words of a sync asked for that EPN by name."""
    if reason == "complete":
        return "already complete"
    if reason == "claimed by another worker":
        return "claimed by another asynchy sync"
    if reason == "walk incomplete":
        return "its last walk was incomplete (see walk_errors); walk it again"
    if reason == "backing off":
        return (
            f"failed {row.failures} times; backing off until {local_time(row.not_before)} "
            f"(asynchy reset {row.epn} to try now)"
        )
    if reason == "settling":
        return "still being written (its newest file is younger than --settle)"
    if reason == "unmapped":
        return UNMAPPED
    return f"status {row.status} (asynchy reset puts it back in the queue)"


@functools.lru_cache(maxsize=16)
def _claim_statement(
    dialect: str, order: Order, with_candidates: bool, settle: bool = False, exclude: bool = False
) -> Any:
    """The claim, built once per shape (building SQL expressions costs more than running them)."""
    sqlite = dialect == "sqlite"
    now = dbclock.now(dialect)
    cutoff = bindparam("settled_before", type_=UTCDateTime()) if settle else None
    inner = (
        select(e.epn)
        .where(claimable(Conditions(now, bindparam("max_attempts"), cutoff)))
        .order_by(*_ordering(order))
        .limit(bindparam("n", type_=Integer()))
    )
    if with_candidates:
        inner = inner.where(e.epn.in_(bindparam("candidates", expanding=True)))
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
            lease_until=dbclock.later(dialect, "lease"),
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
    params.update(dbclock.later_params(db, "lease", lease))
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


def expected_files(db: Database, epn: str, algo: str | None = None) -> Expected:
    """The inventory's files of an EPN, streamed into a compact Expected; with ``algo`` (fixity),
    each flagged when its source checksum of that algorithm is on record already."""
    from asynchy.fixity import has_value

    f = files_table.c
    # the time as Unix seconds straight from the database: no datetime object per file
    seconds = func.strftime("%s", f.modified) if db.is_sqlite else func.extract("epoch", f.modified)
    columns = [f.path, f.size, seconds, f.kind]
    if algo is not None:
        columns.append(has_value(algo))
    query = select(*columns).where(f.epn == epn).execution_options(yield_per=20_000)
    with db.read() as conn:
        return Expected(
            (decode_name(row[0]), int(row[1]), int(row[2]), row[3], *row[4:])
            for row in conn.execute(query)
        )


@functools.lru_cache(maxsize=32)
def _record_statement(dialect: str, outcome: str, is_charged: bool) -> Any:
    """The fenced update of one attempt's EPN row, built once per shape (values are bound)."""
    now = dbclock.now(dialect)
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
            values.update(lease_until=dbclock.later(dialect, "lease"))
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
            not_before=dbclock.later(dialect, "r_wait"),
        )
        if (
            outcome == "retry"
        ):  # keep the claim for another attempt in this run, unless now quarantined
            values.update(
                claim_owner=case((quarantine, None), else_=e.claim_owner),
                lease_until=case((quarantine, None), else_=dbclock.later(dialect, "lease")),
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
    decision: Decision,
    *,
    max_attempts: int,
    dest_path: str,
    lease: float,
    wait: float = 0.0,
) -> str:
    """Write one attempt as ``decision`` says (failures.decide: complete, cancelled, released,
    retry - the claim kept -, changed or failed, charged or not); returns the outcome as
    recorded: that, quarantined, or superseded.  ``wait``: a data failure's back-off (seconds
    until ``not_before``).

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
        **dbclock.later_params(db, "lease", lease),
        **dbclock.later_params(db, "r_wait", wait),
    }
    outcome = decision.recorded
    statement = _record_statement(db.dialect, outcome, decision.charged)
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
            .values(**given_back())
        )


def release_all(db: Database, worker: WorkerId) -> int:
    """Give back every claim this worker still holds (a run that must stop: link down, setup, database)."""
    with db.write() as conn:
        result = conn.execute(
            update(epns_table)
            .where(e.claim_owner == worker.worker_id, e.status == "running")
            .values(**given_back())
        )
    return int(result.rowcount)
