"""Why EPNs that are not complete were not taken by a run, counted per reason, each with the
command that changes it (docs/sync.md, "Explaining a run")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from asynchy.claims import RETRYABLE_CLASSES, db_now, e
from asynchy.db import Database
from asynchy.destinations import is_mapped
from asynchy.render import local_time


@dataclass(frozen=True, slots=True)
class Waiting:
    reason: str
    epns: int
    hint: str


def not_taken(
    db: Database,
    *,
    max_attempts: int,
    settled_before: datetime | None = None,
    destinations: Mapping[str, str] | None = None,
    mapped_only: bool = False,
) -> list[Waiting]:
    """Why EPNs that are not complete were not taken now, counted per reason, each with what changes it.

    An empty (or short) sync run says this instead of nothing (docs/sync.md, "Explaining a run")."""
    now = db_now(db)
    reasons: dict[str, int] = {}
    soonest: datetime | None = None
    with db.read() as conn:
        rows = conn.execute(
            select(
                e.epn,
                e.status,
                e.walk_complete,
                e.walked_at,
                e.changed_at,
                e.last_error_class,
                e.failures,
                e.not_before,
                e.lease_until,
                e.modified,
                e.first_seen_at,
                (e.not_before > now).label("waiting"),
                (e.lease_until > now).label("leased"),
            ).where(e.status != "complete")
        ).all()
    for r in rows:
        reason = _why_not(r, max_attempts, settled_before, destinations, mapped_only)
        if reason is None:
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
        if reason == "backing off" and r.not_before is not None:
            soonest = r.not_before if soonest is None else min(soonest, r.not_before)
    hints = {
        "quarantined": "asynchy reset --status quarantined",
        "failed for good": "fix the cause, then asynchy reset --status failed",
        "skipped": "asynchy reset EPN",
        "backing off": (
            f"the first one is due at {local_time(soonest)}; asynchy reset EPN tries it now"
            if soonest is not None
            else "asynchy reset EPN tries it now"
        ),
        "settling": "still being written: copied once older than --settle",
        "unmapped": "add destinations, or copy_unmapped / --include-unmapped",
        "walk incomplete": "asynchy walk (it lists them again)",
        "claimed by another worker": "asynchy workers",
    }
    order = list(hints)
    return [Waiting(k, reasons[k], hints[k]) for k in sorted(reasons, key=order.index)]


def _why_not(
    r: Any,
    max_attempts: int,
    settled_before: datetime | None,
    destinations: Mapping[str, str] | None,
    mapped_only: bool,
) -> str | None:
    if r.status in ("quarantined", "skipped"):
        return str(r.status)
    if r.status == "running":
        return "claimed by another worker" if r.leased else None
    if not r.walk_complete and r.walked_at is not None:
        return "walk incomplete"
    if r.status == "failed":
        if (
            r.last_error_class or "retryable"
        ) not in RETRYABLE_CLASSES or r.failures >= max_attempts:
            return "failed for good"
        if r.waiting:
            return "backing off"
    if mapped_only and not is_mapped(r.epn, destinations):
        return "unmapped"
    if settled_before is not None:
        newest = r.modified if r.modified is not None else r.first_seen_at
        if newest is not None and newest > settled_before:
            return "settling"
    return None
