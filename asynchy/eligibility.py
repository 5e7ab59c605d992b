"""Which EPNs a sync may take, defined once (docs/sync.md, "Explaining a run").

Each reason an EPN is not taken is one named predicate (``REASONS``).  The claim takes what has
none of them (``claimable``); the plan's word for an EPN asked for by name, and the counts a run
reports for the others (asynchy.waiting), come from the same predicates (``reason_of``), so the
summary's "why not" and the claim cannot disagree.  Every predicate is NULL-safe: it is true or
false for any row, never unknown (a NULL would silently hide an EPN from the claim).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, not_, or_

from asynchy.destinations import is_mapped
from asynchy.failures import DATA_CLASSES, LEGACY_RETRYABLE
from asynchy.models import QUEUE_STATUSES, epns_table

e = epns_table.c
# A failed EPN with one of these classes is taken again (after its back-off); see docs/failures.md.
RETRYABLE_CLASSES = (*DATA_CLASSES, *LEGACY_RETRYABLE)


@dataclass(frozen=True, slots=True)
class Conditions:
    """The run's side of the question: the database's clock, --max-attempts, --settle's cutoff
    (SQL expressions or bound parameters)."""

    now: Any
    max_attempts: Any
    settled_before: Any | None = None


def settled(cutoff: Any) -> ColumnElement[bool]:
    """EPNs whose newest file is older than ``cutoff`` (an empty EPN: first seen before it).

    ``asynchy watch --settle``: an experiment still being written is not copied half-way."""
    return or_(
        and_(e.modified.is_not(None), e.modified <= cutoff),
        and_(e.modified.is_(None), e.first_seen_at.is_not(None), e.first_seen_at <= cutoff),
    )


def _failed_for_good(c: Conditions) -> ColumnElement[bool]:
    return and_(
        e.status == "failed",
        or_(
            func.coalesce(e.last_error_class, "retryable").not_in(RETRYABLE_CLASSES),
            e.failures >= c.max_attempts,
        ),
    )


@dataclass(frozen=True, slots=True)
class Reason:
    name: str
    hint: str  # what changes it (the summary's "not taken" line)
    when: Callable[[Conditions], ColumnElement[bool]] | None  # None: decided in Python (unmapped)


REASONS: tuple[Reason, ...] = (
    Reason("complete", "", lambda c: e.status == "complete"),
    Reason("skipped", "asynchy reset EPN", lambda c: e.status == "skipped"),
    Reason(
        "damaged",
        "sync repairs it from the source before its batch (docs/fixity.md)",
        lambda c: e.status == "damaged",
    ),
    Reason(
        "quarantined", "asynchy reset --status quarantined", lambda c: e.status == "quarantined"
    ),
    Reason(
        "claimed by another worker",
        "asynchy workers",
        lambda c: and_(e.status == "running", e.lease_until.is_not(None), e.lease_until >= c.now),
    ),
    Reason(
        "walk incomplete",
        "asynchy walk (it lists them again)",
        lambda c: and_(e.walk_complete.is_not(True), e.walked_at.is_not(None)),
    ),
    Reason(
        "failed for good", "fix the cause, then asynchy reset --status failed", _failed_for_good
    ),
    Reason(
        "backing off",
        "asynchy reset EPN tries it now",
        lambda c: and_(e.status == "failed", e.not_before.is_not(None), e.not_before > c.now),
    ),
    Reason("unmapped", "add destinations, or copy_unmapped / --include-unmapped", None),
    Reason(
        "settling",
        "still being written: copied once older than --settle",
        lambda c: not_(settled(c.settled_before)) if c.settled_before is not None else false(),
    ),
)
BY_NAME = {r.name: r for r in REASONS}


def claimable(c: Conditions) -> ColumnElement[bool]:
    """The claim's condition: an EPN in the queue that has none of the reasons (unmapped EPNs are
    left out by the plan, which names the candidates)."""
    return and_(
        e.status.in_(QUEUE_STATUSES),  # lets the database use ix_epns_queue (a partial index)
        *(not_(r.when(c)) for r in REASONS if r.when is not None),
    )


def flags(c: Conditions) -> list[ColumnElement[bool]]:
    """One labelled column per SQL reason, for ``reason_of``."""
    return [r.when(c).label(r.name) for r in REASONS if r.when is not None]


def reason_of(
    row: Any,
    *,
    mapped_only: bool = False,
    destinations: Mapping[str, str] | None = None,
) -> str | None:
    """The first reason (in ``REASONS``' order) a row selected with ``flags`` has; None: it may
    be taken."""
    for reason in REASONS:
        if reason.when is None:
            if mapped_only and not is_mapped(row.epn, destinations):
                return reason.name
        elif getattr(row, reason.name):
            return reason.name
    return None
