"""How much history the service keeps (docs/operations.md, "History"): a watch every few seconds
would add a ``walks`` and a ``workers`` row per cycle for ever, 17k a day each at 5 s.

Two rules, applied by ``asynchy watch`` after each cycle:

* quiet cycles fold into one row: a cycle whose walk found nothing new, nothing changed and no
  error, and whose sync took nothing, replaces the previous such cycle's rows (the newest stays,
  so ``status`` still shows when the watch last looked);
* walks older than ``history_days`` that no EPN refers to (with their walk errors) are deleted.

Transfers are never deleted: they are the record of every attempt.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, exists, select

from asynchy.db import Database
from asynchy.models import epns_table, transfers_table, walks_table, workers_table

w = walks_table.c
k = workers_table.c


def forget_quiet_walk(db: Database, walk_id: int) -> bool:
    """Delete a finished walk that found nothing and that no EPN refers to; True if it went."""
    unreferenced = ~exists().where(epns_table.c.walk_id == w.id)
    with db.write() as conn:
        gone = conn.execute(
            delete(walks_table).where(
                w.id == walk_id,
                w.status == "complete",
                w.errors == 0,
                w.epns_changed == 0,
                unreferenced,
            )
        ).rowcount
    return bool(gone)


def forget_idle_worker(db: Database, worker_id: str) -> bool:
    """Delete a finished sync worker that recorded no transfer and holds no claim."""
    used = exists().where(transfers_table.c.worker_id == worker_id)
    holding = exists().where(epns_table.c.claim_owner == worker_id)
    with db.write() as conn:
        gone = conn.execute(
            delete(workers_table).where(
                k.worker_id == worker_id, k.status == "finished", ~used, ~holding
            )
        ).rowcount
    return bool(gone)


def prune_walks(db: Database, keep_days: float, *, now: datetime | None = None) -> int:
    """Delete walks older than ``keep_days`` that no EPN refers to (their walk errors with them);
    0 keeps them all.  Returns how many went."""
    if keep_days <= 0:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
    referenced = exists().where(epns_table.c.walk_id == w.id)
    with db.write() as conn:
        return int(
            conn.execute(
                delete(walks_table).where(
                    and_(w.status != "running", w.started_at < cutoff, ~referenced)
                )
            ).rowcount
        )


def newest_walk_id(db: Database) -> int | None:
    with db.read() as conn:
        value = conn.execute(select(w.id).order_by(w.id.desc()).limit(1)).scalar()
    return int(value) if value is not None else None
