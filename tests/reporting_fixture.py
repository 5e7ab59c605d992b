"""A database with a known history, for the reporting tests and the example report in docs/.

python tests/reporting_fixture.py   # writes docs/report-example.html and docs/report-example.png
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from asynchy.db import Database, open_database
from asynchy.models import (
    epns_table,
    files_table,
    transfers_table,
    walk_errors_table,
    walks_table,
    workers_table,
)

NOW = datetime.now(UTC).replace(microsecond=0)
GiB = 2**30


def build(setting: str | Path, *, days: int = 30, now: datetime | None = None) -> Database:
    """30 days of a repatriation: 40 complete, 3 failed, 1 quarantined, 1 skipped, 1 running, 14 pending."""
    now_ = now or NOW  # a fixed clock makes the output reproducible (docs samples)
    db = open_database(str(setting))
    epns, files, transfers = [], [], []
    start = now_ - timedelta(days=days)
    for n in range(60):
        epn = f"{12000 + n}{'abc'[n % 3]}"
        size = (n % 7 + 1) * GiB
        modified = datetime(2019, 1, 1, tzinfo=UTC) + timedelta(days=20 * n)
        status = "pending"
        extra: dict[str, object] = {}
        if n < 40:
            status = "complete"
            done = start + timedelta(days=n * days / 40, hours=1)
            extra = {
                "completed_at": done,
                "attempts": 1,
                "bytes_transferred": size,
                "dest_path": f"/vault/{epn}",
            }
            transfers.append(
                {
                    "epn": epn,
                    "attempt": 1,
                    "started_at": done - timedelta(hours=1),
                    "finished_at": done,
                    "worker_id": "w1",
                    "host": "mover1",
                    "pid": 100,
                    "claim_token": 1,
                    "argv": ["rsync"],
                    "dest": f"/vault/{epn}",
                    "exit_code": 0,
                    "classification": "ok",
                    "outcome": "complete",
                    "bytes_transferred": size,
                    "files_transferred": 3,
                }
            )
        elif n < 43:
            status = "failed"
            code, reason = (
                (23, "rsync exit 23: partial transfer due to error (rsync: send_files failed)")
                if n < 42
                else (12, "rsync exit 12: error in rsync protocol data stream (connection reset)")
            )
            extra = {
                "attempts": 2,
                "failures": 2,
                "last_exit_code": code,
                "last_error": reason,
                "last_error_class": "partial" if code == 23 else "retryable",
            }
            for attempt in (1, 2):
                when = now_ - timedelta(hours=10 - 3 * attempt - n % 3)
                transfers.append(
                    {
                        "epn": epn,
                        "attempt": attempt,
                        "started_at": when - timedelta(minutes=5),
                        "finished_at": when,
                        "worker_id": "w2",
                        "host": "mover1",
                        "pid": 200,
                        "claim_token": attempt,
                        "argv": ["rsync"],
                        "dest": f"/vault/{epn}",
                        "exit_code": code,
                        "classification": extra["last_error_class"],
                        "outcome": "failed",
                        "reason": reason,
                        "bytes_transferred": GiB // 4,
                        "files_transferred": 1,
                        "stderr_tail": 'rsync: [sender] send_files failed to open "img.cbf": Permission denied (13)',
                    }
                )
        elif n == 43:
            status = "quarantined"
            extra = {
                "attempts": 5,
                "failures": 5,
                "last_exit_code": 23,
                "last_error_class": "partial",
                "last_error": "rsync exit 23: partial transfer due to error (rsync: read errors mapping)",
            }
        elif n == 44:
            status, extra = "skipped", {"skip_reason": "test data"}
        elif n == 45:
            status = "running"
            extra = {
                "claim_owner": "w3",
                "claim_token": 1,
                "claimed_at": now_ - timedelta(minutes=10),
                "lease_until": now_ + timedelta(minutes=5),
                "claimed_from": "pending",
            }
        epns.append(
            {
                "epn": epn,
                "size": size,
                "file_count": 3,
                "modified": modified,
                "walked_at": start,
                "walk_id": 1,
                "walk_complete": True,
                "status": status,
                "first_seen_at": start,
                **extra,
            }
        )
        for i in range(3):
            files.append(
                {
                    "epn": epn,
                    "path": f"frames/img_{i:04d}.cbf",
                    "size": size // 3 + (size % 3 if i == 0 else 0),
                    "modified": modified - timedelta(minutes=3 - i),
                    "kind": "file",
                }
            )
    keys = sorted({k for row in epns for k in row})
    epns = [{k: row.get(k) for k in keys} for row in epns]
    defaults = {"attempts": 0, "failures": 0, "bytes_transferred": 0, "claim_token": 0}
    epns = [
        {k: (defaults.get(k) if v is None and k in defaults else v) for k, v in row.items()}
        for row in epns
    ]
    tkeys = sorted({k for row in transfers for k in row})
    transfers = [{k: row.get(k) for k in tkeys} for row in transfers]
    with db.write() as conn:
        conn.execute(
            insert(walks_table),
            [
                {
                    "id": 1,
                    "started_at": start,
                    "finished_at": start + timedelta(minutes=12),
                    "status": "partial",
                    "source": "sftp://mx@sftp.example.org:22/data/mx",
                    "host": "mover1",
                    "pid": 99,
                    "options": {},
                    "epns_total": 60,
                    "epns_walked": 60,
                    "files": 180,
                    "bytes": sum(e["size"] for e in epns),
                    "errors": 1,
                }
            ],
        )
        conn.execute(insert(epns_table), epns)
        conn.execute(insert(files_table), files)
        conn.execute(
            insert(walk_errors_table),
            [
                {
                    "walk_id": 1,
                    "epn": "12041c",
                    "path": "private",
                    "kind": "permission",
                    "message": "Permission denied",
                    "at": start,
                }
            ],
        )
        conn.execute(insert(transfers_table), transfers)
        conn.execute(
            insert(workers_table),
            [
                {
                    "worker_id": "w2",
                    "host": "mover1",
                    "pid": 200,
                    "command": "sync",
                    "started_at": now_ - timedelta(hours=9),
                    "heartbeat_at": now_ - timedelta(hours=3),
                    "finished_at": now_ - timedelta(hours=3),
                    "status": "finished",
                },
                {
                    "worker_id": "w3",
                    "host": "mover2",
                    "pid": 300,
                    "command": "sync",
                    "started_at": now_ - timedelta(minutes=11),
                    "heartbeat_at": now_ - timedelta(seconds=20),
                    "finished_at": None,
                    "status": "running",
                },
            ],
        )
    return db


if __name__ == "__main__":
    import subprocess
    import tempfile

    from asynchy import html_report

    docs = Path(__file__).resolve().parent.parent / "docs"
    with tempfile.TemporaryDirectory() as tmp:
        db = build(Path(tmp) / "example.db")
        html_report.write(db, str(docs / "report-example.html"), "asynchy progress (example data)")
        db.close()
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-background-networking",
            "--no-first-run",
            "--window-size=860,1900",
            f"--screenshot={docs / 'report-example.png'}",
            f"file://{docs / 'report-example.html'}",
        ],
        check=True,
        capture_output=True,
    )
    print(
        "wrote", docs / "report-example.html", "and", docs / "report-example.png", file=sys.stderr
    )
