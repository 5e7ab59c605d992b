"""Status benchmark: `asynchy status` on 10,000 EPNs and 1,000,000 files, in one run with baselines.

    python benchmarks/bench_status.py --write docs/benchmarks.md

Measures (medians of --runs): the status computation inside asynchy
(`reports.status`), the whole `asynchy status` command (a new process:
start-up included), and two baselines in the same run: the `sqlite3` shell
answering the by-status question from the `epns` aggregates, and the same
totals computed by scanning the `files` table (what status must never do).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from report import write_block

ROOT = Path(__file__).resolve().parent.parent


def build(path: Path, epns: int, files: int) -> None:
    from asynchy.db import open_database

    if path.exists():
        return
    db = open_database(str(path))
    per = files // epns
    with db.write() as conn:
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO epns (epn, size, file_count, modified, walked_at, walk_complete, status, first_seen_at, "
            "attempts, failures, bytes_transferred, completed_at, last_error, last_error_class, last_exit_code) "
            "SELECT printf('%05da', 10000 + i), ? * 1000000, ?, datetime(1600000000 + i * 3600, 'unixepoch'), "
            "datetime('now'), 1, "
            "CASE WHEN i % 10 < 6 THEN 'complete' WHEN i % 10 < 9 THEN 'pending' WHEN i % 20 = 9 THEN 'failed' "
            "ELSE 'quarantined' END, datetime('now'), 1, CASE WHEN i % 10 = 9 THEN 1 ELSE 0 END, 0, "
            "CASE WHEN i % 10 < 6 THEN datetime('now', printf('-%d minutes', i)) END, "
            "CASE WHEN i % 10 = 9 THEN 'rsync exit 23: partial transfer due to error' END, "
            "CASE WHEN i % 10 = 9 THEN 'partial' END, CASE WHEN i % 10 = 9 THEN 23 END "
            "FROM n",
            (epns - 1, per, per),
        )
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO files (epn, path, size, modified, kind) "
            "SELECT printf('%05da', 10000 + i / ?), printf('frames/img_%06d.cbf', i % ?), 1000000, "
            "datetime(1600000000, 'unixepoch'), 'file' FROM n",
            (files - 1, per, per),
        )
        conn.exec_driver_sql(
            "INSERT INTO transfers (epn, attempt, started_at, finished_at, worker_id, host, pid, claim_token, argv, "
            "dest, exit_code, classification, outcome, bytes_transferred, files_transferred) "
            "SELECT epn, 1, completed_at, completed_at, 'w', 'mover', 1, 1, '[]', '/vault', 0, 'ok', 'complete', "
            "size, file_count FROM epns WHERE status = 'complete'"
        )
    db.close()


def median_time(fn, runs: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/asynchy-bench-status")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--write", metavar="MD")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "status.db"
    print("building 10,000 EPNs and 1,000,000 files (kept for later runs)...", flush=True)
    build(db_path, 10_000, 1_000_000)
    from asynchy import reports
    from asynchy.db import open_database

    db = open_database(str(db_path))
    reports.status(db)  # warm the page cache and SQLAlchemy's statement cache once
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    results = {
        "asynchy status, the computation (in-process)": median_time(
            lambda: reports.status(db), args.runs
        ),
        "asynchy status, the whole command (new process)": median_time(
            lambda: subprocess.run(
                [sys.executable, "-m", "asynchy", "--db", str(db_path), "status"],
                check=True,
                capture_output=True,
                env=env,
            ),
            args.runs,
        ),
        "baseline: sqlite3 shell, by status from epns": median_time(
            lambda: subprocess.run(
                [
                    "sqlite3",
                    str(db_path),
                    "SELECT status, count(*), sum(size) FROM epns GROUP BY status",
                ],
                check=True,
                capture_output=True,
            ),
            args.runs,
        ),
        "baseline: sqlite3 shell, totals by scanning files": median_time(
            lambda: subprocess.run(
                [
                    "sqlite3",
                    str(db_path),
                    "SELECT epn, count(*), sum(size) FROM files GROUP BY epn",
                ],
                check=True,
                capture_output=True,
            ),
            args.runs,
        ),
    }
    db.close()
    import platform

    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; SQLite database of 10,000 EPNs and 1,000,000 files.",
        "",
        "| measurement | median (s) | runs (s) |",
        "|---|---:|---|",
    ]
    for name, (med, times) in results.items():
        lines.append(f"| {name} | {med:.3f} | {', '.join(f'{t:.3f}' for t in times)} |")
    inproc = results["asynchy status, the computation (in-process)"][0]
    lines += [
        "",
        f"Target: under 0.3 s. The status computation takes {inproc:.3f} s; the rest of the command's time "
        "is Python starting and importing SQLAlchemy.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_block(args.write, "bench_status", text)


if __name__ == "__main__":
    main()
