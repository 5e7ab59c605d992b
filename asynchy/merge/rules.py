"""The merge rules (docs/merge.md), pure: one EPN's candidates -> its merged state, and where
its file rows come from.  No I/O; order-independent and idempotent (tests/test_merge_rules.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Preference between EPN states when no input completed the EPN (the first wins).
STATUS_ORDER = ("skipped", "quarantined", "failed", "changed", "running", "pending")


MIN_TIME = datetime.min.replace(tzinfo=UTC)


@dataclass
class EpnCandidate:
    """One place's view of an EPN: an input, or the target before the merge."""

    epn: str
    src: int  # 0: the target; 1..n: the inputs (used to find rows, never to decide)
    size: int = 0
    file_count: int = 0
    modified: datetime | None = None
    walked_at: datetime | None = None
    walk_complete: bool = False
    walk_error_count: int = 0
    walk_id: int | None = None
    status: str = "pending"
    completed_at: datetime | None = None
    bytes_transferred: int = 0
    attempts: int = 0
    failures: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    last_error_class: str | None = None
    changed_at: datetime | None = None
    first_seen_at: datetime | None = None
    dest_path: str | None = None
    skip_reason: str | None = None
    has_files: bool = False


def walk_rank(c: EpnCandidate) -> tuple[Any, ...]:
    """Newest walk first; equal walks ordered by their content, never by the order of the inputs."""
    return (
        c.walked_at or MIN_TIME,
        c.has_files,
        c.walk_complete,
        c.file_count,
        c.size,
        c.modified or MIN_TIME,
        -c.walk_error_count,  # equal walks: the one with fewer unreadable folders
    )


def _facts(c: EpnCandidate) -> tuple[Any, ...]:
    """The rest of a candidate's transfer state, for ties: a choice that never depends on order."""
    code = c.last_exit_code
    return (c.dest_path or "", code is not None, code or 0, c.last_error_class or "")


def fingerprint(c: EpnCandidate) -> tuple[Any, ...]:
    return (c.size, c.file_count, c.modified or MIN_TIME)


def differs(done: EpnCandidate, walk: EpnCandidate) -> bool:
    """Did ``walk`` see other content than the place that completed the EPN knew of?

    An ignore.yml entry knows nothing of the content (never differs); a MeRC asynchy row knows
    its size; a walked EPN knows its size, file count and newest file.
    """
    if done.walked_at is None and not done.has_files:
        return bool(done.size) and done.size != walk.size
    return fingerprint(done) != fingerprint(walk)


def _seen_at(c: EpnCandidate) -> datetime:
    if c.status == "changed" and c.changed_at is not None:
        return c.changed_at
    return c.walked_at or MIN_TIME


def decide(cands: list[EpnCandidate]) -> dict[str, Any]:
    """The merged transfer state of one EPN (docs/merge.md); the inventory columns come from the files."""
    walked = [c for c in cands if c.walked_at is not None or c.has_files]
    winner = max(walked or cands, key=walk_rank)
    values: dict[str, Any] = {
        "walked_at": winner.walked_at,
        "walk_complete": winner.walk_complete,
        "walk_error_count": winner.walk_error_count,
        "first_seen_at": min((c.first_seen_at for c in cands if c.first_seen_at), default=None),
        "attempts": max(c.attempts for c in cands),
        "bytes_transferred": max(c.bytes_transferred for c in cands),
        "changed_at": max((c.changed_at for c in cands if c.changed_at), default=None),
    }
    if not winner.has_files:  # no file rows anywhere: the EPN-only inputs' numbers stand
        best = max(cands, key=lambda c: (c.size, c.modified or MIN_TIME))
        values.update(size=best.size, modified=best.modified)
    complete = [c for c in cands if c.status == "complete"]
    if complete:
        done = max(complete, key=lambda c: (c.completed_at or MIN_TIME, walk_rank(c), _facts(c)))
        # Only a walk newer than the completion, and than the walk the completing place itself
        # had, can say the content changed since (a completion without a time - ignore.yml, MeRC
        # asynchy - is otherwise contradicted by every walk, the merge's own result included).
        since = max(done.completed_at or MIN_TIME, done.walked_at or MIN_TIME)
        seen_since = [
            c
            for c in walked
            if c.walked_at is not None and c.walked_at > since and differs(done, c)
        ]
        values.update(
            status="changed" if seen_since else "complete",
            completed_at=done.completed_at,
            dest_path=done.dest_path,
            failures=0,
            last_exit_code=done.last_exit_code,
            last_error=None,
            last_error_class=None,
            skip_reason=None,
        )
        if seen_since:
            # When the change was seen: a walk's time, or - for a place that already holds the
            # EPN as changed (the target after an earlier merge) - its own changed_at.
            newest = max(_seen_at(c) for c in seen_since)
            values["changed_at"] = max(values["changed_at"] or MIN_TIME, newest)
        return values

    def preference(c: EpnCandidate) -> tuple[Any, ...]:
        order = STATUS_ORDER.index(c.status) if c.status in STATUS_ORDER else len(STATUS_ORDER)
        return (order, -c.failures, c.last_error or "", c.skip_reason or "", _facts(c))

    best = min(cands, key=preference)
    values.update(
        status="pending" if best.status == "running" else best.status,
        completed_at=max((c.completed_at for c in cands if c.completed_at), default=None),
        dest_path=best.dest_path,
        failures=best.failures,
        last_exit_code=best.last_exit_code,
        last_error=best.last_error,
        last_error_class=best.last_error_class,
        skip_reason=best.skip_reason,
    )
    return values


@dataclass
class Plan:
    decisions: dict[str, dict[str, Any]]
    winners: dict[str, EpnCandidate]
    excl: list[tuple[int, str]]  # (src, epn): copy this source's rows as they are
    ranks: list[tuple[int, str, int]]  # (src, epn, rank): overlapping EPNs
    keep: list[tuple[str, int]]  # (epn, lowest rank that survives)
    touched: list[str]  # EPNs whose aggregates must be recomputed from files
    new_epns: set[str]


def plan(candidates: dict[str, list[EpnCandidate]]) -> tuple[Plan, int]:
    """Per EPN: its merged state, and where its file rows come from.

    A holder's rows count only if no newer *complete* walk exists (a complete walk that did not see
    a file means the file is gone).  One valid holder other than the target: its rows are copied as
    they are.  Several places: the rows meet in the staging table, newest walk first.
    """
    decisions, winners = {}, {}
    excl: list[tuple[int, str]] = []
    ranks: list[tuple[int, str, int]] = []
    keep: list[tuple[str, int]] = []
    touched: list[str] = []
    conflicts = 0
    new_epns = set()
    for epn, cands in candidates.items():
        decisions[epn] = decide(cands)
        walked = [c for c in cands if c.walked_at is not None or c.has_files]
        winner = max(walked or cands, key=walk_rank)
        winners[epn] = winner
        if not any(c.src == 0 for c in cands):
            new_epns.add(epn)
        holders = [c for c in cands if c.has_files]
        if not holders:
            continue
        keys = sorted({walk_rank(c) for c in walked})
        rank = {id(c): keys.index(walk_rank(c)) for c in walked}
        min_rank = max((rank[id(c)] for c in walked if c.walk_complete), default=0)
        live = [c for c in holders if rank[id(c)] >= min_rank]
        if len(holders) == 1 and live:
            holder = holders[0]
            if holder.src != 0:
                excl.append((holder.src, epn))
            if holder is not winner:
                touched.append(epn)  # the newest walk is not the one with the files: count them
            continue
        for c in holders:
            ranks.append((c.src, epn, rank[id(c)]))
        keep.append((epn, min_rank))
        touched.append(epn)
        if len({fingerprint(c) for c in holders}) > 1:
            conflicts += 1
    return Plan(decisions, winners, excl, ranks, keep, touched, new_epns), conflicts


def left_to_owner(cands: list[EpnCandidate]) -> bool:
    """A claim in the target itself (status running) is its owner's business: the merge leaves
    that EPN's row as it is and does not count it (docs/merge.md, rule 3)."""
    return any(c.src == 0 and c.status == "running" for c in cands)
