"""Prometheus text-format metrics for node_exporter's textfile collector (``--metrics-file``).

Written after every sync run and every watch cycle, atomically (a temporary
file in the same folder, then a rename), so the collector never reads half a
file.  docs/operations.md lists the metrics and two alert rules.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from asynchy.db import Database
from asynchy.errors import ConfigError
from asynchy.models import QUEUE_STATUSES, epns_table, transfers_table

STATUSES = ("pending", "running", "complete", "changed", "failed", "quarantined", "skipped")
e = epns_table.c
t = transfers_table.c


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(db: Database, *, throughput: float | None = None) -> str:
    """The metrics text from the database as it is now (and the last run's rate, if any)."""
    now = datetime.now(UTC)
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
    lines: list[str] = []

    def metric(
        name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]
    ) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")

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
        "asynchy_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest EPN still to be copied (0: none).",
        [({}, max(0, int((now - oldest).total_seconds())) if oldest else 0)],
    )
    if throughput is not None:
        metric(
            "asynchy_throughput_bytes_per_second",
            "gauge",
            "Bytes per second of the last run.",
            [({}, round(throughput, 1))],
        )
    metric(
        "asynchy_metrics_written_timestamp_seconds",
        "gauge",
        "When this file was written.",
        [({}, int(now.timestamp()))],
    )
    return "\n".join(lines) + "\n"


def write(db: Database, path: Path, *, throughput: float | None = None) -> None:
    """Replace ``path`` with the current metrics, atomically; ConfigError when it cannot be written."""
    from asynchy.files import write_atomically

    try:  # 0644: node_exporter runs as its own user
        write_atomically(path, render(db, throughput=throughput), 0o644)
    except OSError as exc:
        raise ConfigError(
            f"metrics_file {path} cannot be written: {exc.strerror}; fix metrics_file"
        ) from None
