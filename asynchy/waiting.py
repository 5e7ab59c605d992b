"""Why EPNs that are not complete were not taken by a run, counted per reason, each with the
command that changes it (docs/sync.md, "Explaining a run").  The reasons are the claim's own
(asynchy.eligibility), so what a run says and what it took cannot disagree."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from asynchy import dbclock
from asynchy.db import Database
from asynchy.eligibility import BY_NAME, REASONS, Conditions, e, flags, reason_of
from asynchy.render import local_time

# The order of the summary's "not taken" lines: what needs a person first.
SHOWN = [
    "quarantined",
    "damaged",
    "failed for good",
    "skipped",
    "backing off",
    "settling",
    "unmapped",
    "walk incomplete",
    "claimed by another worker",
    "complete",
]
assert set(SHOWN) == {r.name for r in REASONS}


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
    """Why EPNs that are not complete were not taken now, counted per reason, each with what
    changes it.  An empty (or short) sync run says this instead of nothing."""
    c = Conditions(dbclock.now(db), max_attempts, settled_before)
    reasons: dict[str, int] = {}
    soonest: datetime | None = None
    with db.read() as conn:
        rows = conn.execute(
            select(e.epn, e.not_before, *flags(c)).where(e.status != "complete")
        ).all()
    for row in rows:
        reason = reason_of(row, mapped_only=mapped_only, destinations=destinations)
        if reason is None:
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
        if reason == "backing off" and row.not_before is not None:
            soonest = row.not_before if soonest is None else min(soonest, row.not_before)
    return [
        Waiting(name, reasons[name], _hint(name, soonest))
        for name in sorted(reasons, key=SHOWN.index)
    ]


def _hint(reason: str, soonest: datetime | None) -> str:
    if reason == "backing off" and soonest is not None:
        return f"the first one is due at {local_time(soonest)}; {BY_NAME[reason].hint}"
    return BY_NAME[reason].hint
