"""Prometheus text-format metrics for node_exporter's textfile collector (``--metrics-file``).

Written after every sync run and every watch cycle - also a cycle that failed
(the server down, the destination read-only, the database locked) - atomically
(a temporary file in the same folder, then a rename), so the collector never
reads half a file and a file that stops changing means a stopped watch.
docs/operations.md lists the metrics and the alert rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from asynchy.db import Database
from asynchy.errors import AsynchyError, ConfigError
from asynchy.fixity import overview
from asynchy.models import QUEUE_STATUSES, STATUSES, epns_table, transfers_table

e = epns_table.c
t = transfers_table.c


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(frozen=True)
class WatchCounts:
    """What a watch knows of its own cycles (counters start again when the watch does)."""

    cycles: int
    last_ok: bool
    failed: Mapping[str, int]  # failure class (docs/operations.md) -> failed cycles


def render(
    db: Database, *, throughput: float | None = None, watch: WatchCounts | None = None
) -> str:
    """The metrics text from the database as it is now (and the last run's rate, if any); when the
    database cannot be read, the watch's own metrics and ``asynchy_database_readable 0``."""
    lines: list[str] = []
    metric = _Writer(lines)
    now = datetime.now(UTC)
    readable = True
    try:
        _database_metrics(db, metric, now)
    except AsynchyError:
        readable = False
        lines.clear()
    metric(
        "asynchy_database_readable",
        "gauge",
        "1 when the database could be read for these metrics, else 0.",
        [({}, int(readable))],
    )
    if throughput is not None:
        metric(
            "asynchy_throughput_bytes_per_second",
            "gauge",
            "Bytes per second of the last run.",
            [({}, round(throughput, 1))],
        )
    if watch is not None:
        _watch_metrics(watch, metric, now)
    metric(
        "asynchy_metrics_written_timestamp_seconds",
        "gauge",
        "When this file was written.",
        [({}, int(now.timestamp()))],
    )
    return "\n".join(lines) + "\n"


class _Writer:
    """Appends one metric family (HELP, TYPE, samples) to the lines."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __call__(
        self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")


WATCH_CLASSES = ("link", "setup", "database", "walk", "data", "alert", "portal")


def _watch_metrics(watch: WatchCounts, metric: _Writer, now: datetime) -> None:
    metric(
        "asynchy_watch_cycles_total",
        "counter",
        "Watch cycles run since the watch started.",
        [({}, watch.cycles)],
    )
    metric(
        "asynchy_watch_last_cycle_ok",
        "gauge",
        "1 when the last watch cycle had no problem, else 0.",
        [({}, int(watch.last_ok))],
    )
    classes = sorted(set(WATCH_CLASSES) | set(watch.failed))
    metric(
        "asynchy_watch_failed_cycles_total",
        "counter",
        "Watch cycles with a problem, by its class (a cycle counts once per class).",
        [({"class": c}, watch.failed.get(c, 0)) for c in classes],
    )
    metric(
        "asynchy_watch_last_cycle_timestamp_seconds",
        "gauge",
        "When the last watch cycle ended.",
        [({}, int(now.timestamp()))],
    )


def _database_metrics(db: Database, metric: _Writer, now: datetime) -> None:
    with db.read() as conn:
        by_status = {
            s: (int(n), int(b or 0))
            for s, n, b in conn.execute(
                select(e.status, func.count(), func.sum(e.size)).group_by(e.status)
            )
        }
        copied = int(
            conn.execute(select(func.coalesce(func.sum(e.bytes_transferred), 0))).scalar_one()
        )
        by_class = {
            str(c): int(n)
            for c, n in conn.execute(
                select(t.classification, func.count()).group_by(t.classification)
            )
        }
        last_ok = conn.execute(select(func.max(e.completed_at))).scalar_one()
        oldest = conn.execute(
            select(func.min(e.first_seen_at)).where(e.status.in_(QUEUE_STATUSES))
        ).scalar_one()
        fixity = overview(conn)
    statuses = sorted(set(STATUSES) | set(by_status))
    metric(
        "asynchy_epns",
        "gauge",
        "EPNs in the inventory by transfer status.",
        [({"status": s}, by_status.get(s, (0, 0))[0]) for s in statuses],
    )
    metric(
        "asynchy_epn_bytes",
        "gauge",
        "Bytes of the EPNs in the inventory by transfer status.",
        [({"status": s}, by_status.get(s, (0, 0))[1]) for s in statuses],
    )
    metric(
        "asynchy_bytes_copied_total", "counter", "Bytes rsync moved, over all runs.", [({}, copied)]
    )
    metric(
        "asynchy_transfers_total",
        "counter",
        "Transfer attempts by failure class (docs/failures.md).",
        [({"classification": c}, n) for c, n in sorted(by_class.items())],
    )
    metric(
        "asynchy_last_success_timestamp_seconds",
        "gauge",
        "When an EPN was last completed (Unix time; 0: never).",
        [({}, int(last_ok.timestamp()) if last_ok else 0)],
    )
    metric(
        "asynchy_audited_bytes_total",
        "counter",
        "Bytes asynchy audit has read from the local copies, over all audits (docs/fixity.md).",
        [({}, fixity["audited_bytes"])],
    )
    metric(
        "asynchy_damaged_epns",
        "gauge",
        "EPNs whose copy an audit found damaged (sync repairs them from the source).",
        [({}, fixity["damaged_epns"])],
    )
    metric(
        "asynchy_files_without_checksum",
        "gauge",
        "Regular files of copied EPNs without a source checksum on record.",
        [({}, fixity["files_without_checksum"])],
    )
    metric(
        "asynchy_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest EPN still to be copied (0: none).",
        [({}, max(0, int((now - oldest).total_seconds())) if oldest else 0)],
    )


def write(
    db: Database, path: Path, *, throughput: float | None = None, watch: WatchCounts | None = None
) -> None:
    """Replace ``path`` with the current metrics, atomically; ConfigError when it cannot be written."""
    from asynchy.files import write_atomically

    try:  # 0644: node_exporter runs as its own user
        write_atomically(path, render(db, throughput=throughput, watch=watch), 0o644)
    except OSError as exc:
        raise ConfigError(
            f"metrics_file {path} cannot be written: {exc.strerror}; fix metrics_file"
        ) from None
