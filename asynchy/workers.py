"""The workers' registry: every sync (and watch) run signs in as a ``workers`` row with its
host, pid and lease; its heartbeat keeps its claims' leases alive; a worker whose heartbeat is
older than its lease is stale, and its claims may be taken back (docs/multi-host.md).  Times are
the database's (asynchy.dbclock)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update

from asynchy import dbclock
from asynchy.db import Database
from asynchy.models import epns_table, workers_table
from asynchy.processes import pid_alive
from asynchy.render import plural

log = logging.getLogger("asynchy.claims")
e = epns_table.c
w = workers_table.c


def given_back() -> dict[str, Any]:
    """The values that give a claim back: the EPN's status as it was before the claim, no owner,
    no lease (the fencing token stays: the next claim increments it)."""
    return {
        "status": func.coalesce(e.claimed_from, "pending"),
        "claim_owner": None,
        "lease_until": None,
        "claimed_from": None,
    }


def heartbeat_age(db: Database) -> ColumnElement[Any]:
    """Seconds since a worker's last heartbeat."""
    return dbclock.seconds_since(db, w.heartbeat_at)


@dataclass(frozen=True, slots=True)
class WorkerId:
    worker_id: str
    host: str
    pid: int


def register_worker(db: Database, command: str, lease: float | None = None) -> WorkerId:
    worker = WorkerId(secrets.token_hex(8), socket.gethostname(), os.getpid())
    with db.write() as conn:
        conn.execute(
            insert(workers_table).values(
                worker_id=worker.worker_id,
                host=worker.host,
                pid=worker.pid,
                command=command,
                started_at=dbclock.now(db),
                heartbeat_at=dbclock.now(db),
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
            .values(finished_at=dbclock.now(db), heartbeat_at=dbclock.now(db), status=status)
        )


def heartbeat(db: Database, worker: WorkerId, lease: float) -> int:
    """Renew the leases of this worker's claims; returns how many it still holds."""
    with db.write() as conn:
        conn.execute(
            update(workers_table)
            .where(workers_table.c.worker_id == worker.worker_id)
            .values(heartbeat_at=dbclock.now(db))
        )
        result = conn.execute(
            update(epns_table)
            .where(e.claim_owner == worker.worker_id, e.status == "running")
            .values(lease_until=dbclock.now_plus(db, lease))
        )
    return int(result.rowcount)


def reclaim_dead_local(db: Database) -> int:
    """Free the claims of workers on this host whose process is gone (kill -9): no need to wait for the lease."""
    host = socket.gethostname()
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
            .values(status="dead", finished_at=dbclock.now(db))
        )
        result = conn.execute(
            update(epns_table)
            .where(e.claim_owner.in_(dead), e.status == "running")
            .values(**given_back())
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
    age = heartbeat_age(db)
    left = dbclock.seconds_until(db, e.lease_until)
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
    with db.write() as conn:
        if worker_id is not None:
            condition = and_(e.status == "running", e.claim_owner == worker_id)
        else:
            condition = and_(
                e.status == "running", or_(e.lease_until.is_(None), e.lease_until < dbclock.now(db))
            )
        freed = [r[0] for r in conn.execute(select(e.epn).where(condition).order_by(e.epn))]
        if freed:
            conn.execute(
                update(epns_table).where(e.epn.in_(freed), condition).values(**given_back())
            )
        if worker_id is not None:
            dead_condition = w.worker_id == worker_id
        else:
            dead_condition = heartbeat_age(db) > w.lease_seconds
        dead = [
            r[0]
            for r in conn.execute(select(w.worker_id).where(w.status == "running", dead_condition))
        ]
        if dead:
            conn.execute(
                update(workers_table)
                .where(w.worker_id.in_(dead))
                .values(status="dead", finished_at=dbclock.now(db))
            )
    return freed, dead
