"""What ``status``, ``epns`` and ``show`` report: plain data read from the database.

Only aggregates kept in ``epns`` are read for ``status``, never the
``files`` table, so it stays fast on inventories of millions of files.
Times are timezone-aware UTC datetimes; ``render`` decides how people see them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from sqlalchemy import Connection, func, select

from asynchy.db import Database
from asynchy.errors import UsageError
from asynchy.fixity import overview
from asynchy.models import (
    STATUSES,
    epns_table,
    transfers_table,
    walk_errors_table,
    walks_table,
    workers_table,
)

e = epns_table.c
t = transfers_table.c


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


class StatusReport(TypedDict):
    """What ``asynchy status`` shows (docs/reporting.md lists the keys); texts.status draws it."""

    database: str
    generated_at: datetime
    epns: dict[str, Any]  # total, by_status {status: {epns, bytes, files}}
    bytes: dict[str, Any]  # total, done, remaining, percent_done
    files: dict[str, int]  # total, done
    unmapped: dict[str, int]  # epns, bytes
    last_walk: dict[str, Any] | None
    last_sync: dict[str, Any] | None
    throughput: dict[str, float]
    eta_seconds: float | None
    eta_at: datetime | None
    top_failures: list[dict[str, Any]]
    active_claims: list[dict[str, Any]]
    fixity: dict[str, Any]  # checksums of copied files, damaged EPNs, the last audit (fixity.md)


def status(
    db: Database,
    destinations: Mapping[str, str] | None = None,
    copy_unmapped: bool = False,
    *,
    now: datetime | None = None,
) -> StatusReport:
    """Everything ``asynchy status`` shows, JSON-ready.

    ``now``: the clock to measure against (the docs sample is made with a fixed one)."""
    now = now or datetime.now(UTC)
    with db.read() as conn:
        unmapped = _unmapped(conn, destinations, copy_unmapped)
        by_status = _by_status(conn)
        last_walk = _last_walk(conn)
        last_sync = _last_sync(conn)
        rates = _throughput(conn, now)
        failures = _top_failures(conn)
        claims = _active_claims(conn)
        fixity_now = overview(conn)
    total = sum(v["bytes"] for v in by_status.values())
    done = by_status.get("complete", {}).get("bytes", 0)
    remaining = total - done - by_status.get("skipped", {}).get("bytes", 0)
    rate = rates["last_day_copying_bytes_per_second"]  # the last hour is inside the last day
    eta = remaining / rate if rate and remaining else (0.0 if not remaining else None)
    return {
        "database": db.display,
        "generated_at": now,
        "epns": {"total": sum(v["epns"] for v in by_status.values()), "by_status": by_status},
        "bytes": {
            "total": total,
            "done": done,
            "remaining": remaining,
            "percent_done": round(100 * done / total, 1) if total else 0.0,
        },
        "files": {
            "total": sum(v["files"] for v in by_status.values()),
            "done": by_status.get("complete", {}).get("files", 0),
        },
        "unmapped": {"epns": unmapped.get("epns", 0), "bytes": unmapped.get("bytes", 0)},
        "last_walk": last_walk,
        "last_sync": last_sync,
        "throughput": rates,
        "eta_seconds": eta,
        "eta_at": now + timedelta(seconds=eta) if eta else None,
        "top_failures": failures,
        "active_claims": claims,
        "fixity": fixity_now,
    }


def _unmapped(
    conn: Connection, destinations: Mapping[str, str] | None, copy_unmapped: bool
) -> dict[str, int]:
    """EPNs sync does not take because no destination maps them (only mapped EPNs are copied)."""
    from asynchy.destinations import copies_unmapped, left_unmapped

    out = {"epns": 0, "bytes": 0}
    if copies_unmapped(destinations, copy_unmapped):
        return out
    for epn, size in conn.execute(
        select(e.epn, e.size).where(e.status.in_(("pending", "failed", "changed")))
    ):
        if left_unmapped(epn, destinations, copy_unmapped):
            out["epns"] += 1
            out["bytes"] += int(size or 0)
    return out


def _by_status(conn: Connection) -> dict[str, dict[str, int]]:
    return {
        row.status: {"epns": int(row.n), "bytes": int(row.b or 0), "files": int(row.f or 0)}
        for row in conn.execute(
            select(
                e.status,
                func.count().label("n"),
                func.sum(e.size).label("b"),
                func.sum(e.file_count).label("f"),
            ).group_by(e.status)
        )
    }


def _last_walk(conn: Connection) -> dict[str, Any] | None:
    """The last walk, with why it failed (``message``); when it failed or was interrupted, also
    the last one that completed (a one-off walk with a mistyped --host is not the inventory's
    state)."""
    w = walks_table.c
    row = conn.execute(select(walks_table).order_by(w.id.desc()).limit(1)).mappings().first()
    if row is None:
        return None
    out = _walk_dict(row)
    if row["status"] in ("failed", "interrupted"):
        good = (
            conn.execute(
                select(walks_table).where(w.status == "complete").order_by(w.id.desc()).limit(1)
            )
            .mappings()
            .first()
        )
        out["last_complete"] = _walk_dict(good) if good is not None else None
    return out


def _walk_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "seconds": _seconds(row["started_at"], row["finished_at"]),
        "status": row["status"],
        "source": row["source"],
        "epns_walked": row["epns_walked"],
        "files": row["files"],
        "errors": row["errors"],
        "message": row["message"],
    }


def _last_sync(conn: Connection) -> dict[str, Any] | None:
    k = workers_table.c
    row = (
        conn.execute(
            select(workers_table).where(k.command == "sync").order_by(k.started_at.desc()).limit(1)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    counts = {
        outcome: int(n)
        for outcome, n in conn.execute(
            select(t.outcome, func.count())
            .where(t.worker_id == row["worker_id"])
            .group_by(t.outcome)
        )
    }
    return {
        "worker_id": row["worker_id"],
        "host": row["host"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "seconds": _seconds(row["started_at"], row["finished_at"]),
        "status": row["status"],
        "complete": counts.get("complete", 0),
        "failed": sum(counts.get(x, 0) for x in ("failed", "quarantined", "superseded")),
    }


def _throughput(conn: Connection, now: datetime) -> dict[str, float]:
    """Bytes moved in the last hour and day: averaged over the window, and over the time spent
    copying in it (when at least one transfer ran), which is the rate an ETA can use: a 2 s sync
    followed by a quiet day is not 156 B/s."""
    out: dict[str, float] = {}
    day = now - timedelta(days=1)
    rows = conn.execute(
        select(t.started_at, t.finished_at, t.bytes_transferred).where(t.finished_at >= day)
    ).all()
    for label, span in (("last_hour", timedelta(hours=1)), ("last_day", timedelta(days=1))):
        start = now - span
        inside = [r for r in rows if r.finished_at >= start]
        moved = sum(int(r.bytes_transferred or 0) for r in inside)
        busy = copying_seconds([(max(r.started_at, start), r.finished_at) for r in inside])
        out[f"{label}_bytes"] = moved
        out[f"{label}_bytes_per_second"] = moved / span.total_seconds()
        out[f"{label}_copying_seconds"] = busy
        out[f"{label}_copying_bytes_per_second"] = moved / busy if busy else 0.0
    return out


def copying_seconds(spans: list[tuple[datetime, datetime]]) -> float:
    """Seconds in which at least one of the spans ran (overlapping transfers count once).  Times
    are kept in whole seconds, so each span lasts at least one."""
    total = 0.0
    end: datetime | None = None
    for start, finish in sorted(spans):
        finish = max(finish, start + timedelta(seconds=1))
        if end is None or start > end:
            total += (finish - start).total_seconds()
            end = finish
        elif finish > end:
            total += (finish - end).total_seconds()
            end = finish
    return total


def _top_failures(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(
            e.last_error_class,
            e.last_exit_code,
            func.count().label("n"),
            func.min(e.last_error),
        )
        .where(e.status.in_(("failed", "quarantined")))
        .group_by(e.last_error_class, e.last_exit_code)
        .order_by(func.count().desc())
        .limit(5)
    ).all()
    return [
        {"class": cls, "exit_code": code, "epns": int(n), "reason": short_reason(sample)}
        for cls, code, n, sample in rows
    ]


def _active_claims(conn: Connection) -> list[dict[str, Any]]:
    k = workers_table.c
    rows = (
        conn.execute(
            select(e.epn, e.claim_owner, e.claimed_at, e.lease_until, k.host, k.pid, k.heartbeat_at)
            .select_from(epns_table.outerjoin(workers_table, k.worker_id == e.claim_owner))
            .where(e.status == "running")
            .order_by(e.claimed_at)
        )
        .mappings()
        .all()
    )
    return [
        {
            "epn": c["epn"],
            "worker_id": c["claim_owner"],
            "host": c["host"],
            "pid": c["pid"],
            "claimed_at": c["claimed_at"],
            "lease_until": c["lease_until"],
            "heartbeat_at": c["heartbeat_at"],
        }
        for c in rows
    ]


def short_reason(reason: str | None) -> str:
    """A failure reason without the details that differ between EPNs (counts, file names, stderr)."""
    if not reason:
        return ""
    text = reason.split(" (", 1)[0]
    text = re.sub(r"\b\d[\d,]* files? differs?\b", "N files differ", text)
    return re.sub(r"\b\d[\d,]* files?\b", "N files", text)


# ------------------------------------------------------------------ asynchy epns
@dataclass(frozen=True)
class EpnFilter:
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    min_size: int | None = None
    order: str = "ASC"
    limit: int | None = 100


def parse_when(text: str, option: str) -> datetime:
    """``2024-05-01`` or ``2024-05-01T10:00`` (UTC unless an offset is given)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.I)


def parse_size(text: str, option: str = "--min-size") -> int:
    """``500``, ``10K``, ``1.5G``, ``2TiB`` (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"{option} {text!r} is not a size: use e.g. 500, 10K, 1.5G or 2T")
    unit = m.group(2).lower()
    power = "kmgtp".index(unit) + 1 if unit else 0
    return int(float(m.group(1)) * 1024**power)


def list_epns(db: Database, f: EpnFilter) -> list[dict[str, Any]]:
    bad = [s for s in f.statuses if s not in STATUSES]
    if bad:
        raise UsageError(f"--status {bad[0]!r} is not a status: use one of {', '.join(STATUSES)}")
    query = select(
        e.epn, e.status, e.size, e.file_count, e.modified, e.attempts, e.last_error, e.skip_reason
    ).order_by((e.modified.asc() if f.order == "ASC" else e.modified.desc()).nulls_last(), e.epn)
    if f.statuses:
        query = query.where(e.status.in_(f.statuses))
    if f.since is not None:
        query = query.where(e.modified >= f.since)
    if f.until is not None:
        query = query.where(e.modified < f.until)
    if f.min_size is not None:
        query = query.where(e.size >= f.min_size)
    if f.limit is not None:
        query = query.limit(f.limit)
    with db.read() as conn:
        return [
            {
                "epn": r.epn,
                "status": r.status,
                "size": int(r.size),
                "files": int(r.file_count),
                "modified": r.modified,
                "attempts": int(r.attempts),
                "last_error": r.last_error or r.skip_reason,
            }
            for r in conn.execute(query)
        ]


# ------------------------------------------------------------------ asynchy show
def show(db: Database, epn: str) -> dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(select(epns_table).where(e.epn == epn)).mappings().first()
        if row is None:
            from asynchy.lookup import unknown_epn

            raise unknown_epn(conn, epn)
        transfers = (
            conn.execute(select(transfers_table).where(t.epn == epn).order_by(t.id))
            .mappings()
            .all()
        )
        fixity_of_epn = overview(conn, epn)
        we = walk_errors_table.c
        errors = (
            conn.execute(
                select(we.walk_id, we.path, we.kind, we.message, we.at)
                .where(we.epn == epn, we.walk_id == row["walk_id"])
                .order_by(we.id)
            )
            .mappings()
            .all()
        )
    info = {k: row[k] for k in row.keys()}  # noqa: SIM118 - RowMapping
    return {
        "epn": info,
        "transfers": [
            {
                "attempt": x["attempt"],
                "started_at": x["started_at"],
                "finished_at": x["finished_at"],
                "seconds": _seconds(x["started_at"], x["finished_at"]),
                "worker": f"{x['host']}:{x['pid']}",
                "exit_code": x["exit_code"],
                "classification": x["classification"],
                "outcome": x["outcome"],
                "bytes": x["bytes_transferred"],
                "files": x["files_transferred"],
                "reason": x["reason"],
                "stderr_tail": x["stderr_tail"],
            }
            for x in transfers
        ],
        "walk_errors": [dict(x) for x in errors],
        "fixity": fixity_of_epn,
    }


def destinations(
    db: Database,
    mapping: Mapping[str, str] | None,
    dest: str | None,
    layout: str | None = None,
    copy_unmapped: bool = False,
) -> list[dict[str, Any]]:
    """Every EPN of the inventory with its EPN number, its mapping, whether sync copies it and
    where it puts it."""
    from pathlib import Path

    from asynchy.destinations import dest_path, epn_number, is_mapped, left_unmapped

    base = Path(dest).expanduser() if dest else Path("<dest>")
    with db.read() as conn:
        rows = conn.execute(select(e.epn, e.status).order_by(e.epn)).all()
    out = []
    for epn, status_ in rows:
        number = epn_number(epn)
        mapped = is_mapped(epn, mapping)
        out.append(
            {
                "epn": epn,
                "number": number,
                "mapped": mapped,
                "folder": (mapping or {}).get(number or "") if mapped else None,
                "copied": not left_unmapped(epn, mapping, copy_unmapped),
                "dest_path": str(dest_path(epn, base, mapping, layout)),
                "status": status_,
            }
        )
    return out
