"""Merge benchmark: 10 shard databases of 100,000 file rows each into a new SQLite target, in one run.

    python benchmarks/bench_merge.py --write docs/benchmarks.md

The shards (100 EPNs x 1,000 files each, disjoint, as `asynchy walk --shard K/10`
makes them) are built once by SQL.  Timed, in turns (medians of --runs): `asynchy merge`
(a new process) and the equivalent hand-written sqlite3 work - ATTACH each shard and
`INSERT ... SELECT` its epns and files into a new database with the same schema, in one
transaction.  Each turn starts with another of them.  Peak memory of `asynchy merge` from the
kernel (wait4).  ``--before CHECKOUT`` also times an older asynchy (a git worktree) in the same
turns, for a before/after on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import describe, fresh
from report import write_block

SHARDS, EPNS, FILES = 10, 100, 1000


def build_shard(path: Path, k: int) -> None:
    from asynchy.db import open_database

    if path.exists():
        return
    db = open_database(str(path))
    first = 100_000 + k * EPNS
    with db.write() as conn:
        conn.exec_driver_sql(
            "INSERT INTO walks (id, started_at, finished_at, status, source, host, pid, options) VALUES "
            f"(1, '2024-01-01 00:00:00', '2024-01-01 00:10:00', 'complete', 'sftp://x/data', 'mover{k}', 1, '{{}}')"
        )
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO epns (epn, size, file_count, modified, walked_at, walk_id, walk_complete, status, "
            "first_seen_at) SELECT printf('%06da', ? + i), ? * 1000000, ?, '2020-01-01 00:00:00', "
            "'2024-01-01 00:00:00', 1, 1, 'pending', '2024-01-01 00:00:00' FROM n",
            (EPNS - 1, first, FILES, FILES),
        )
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO files (epn, path, size, modified, kind) SELECT printf('%06da', ? + i / ?), "
            "printf('frames/run%d/img_%06d.cbf', i % 4, i % ?), 1000000, "
            "datetime(1577836800 + i, 'unixepoch'), 'file' FROM n",
            (EPNS * FILES - 1, first, FILES, FILES),
        )
    db.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def asynchy_merge(target: Path, shards: list[Path], env: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "asynchy", "-q", "--db", str(target), "merge", *map(str, shards)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(proc.stderr.read().decode() if proc.stderr else "merge failed")
    return elapsed, usage.ru_maxrss


def hand_written(target: Path, shards: list[Path], template: Path) -> float:
    """What a person would type into sqlite3: same schema, ATTACH, INSERT ... SELECT, one transaction."""
    started = time.perf_counter()
    con = sqlite3.connect(target, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    for (sql,) in sqlite3.connect(template).execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND type IN ('table', 'index') AND name NOT LIKE 'sqlite_%'"
    ):
        con.execute(sql)
    for start in range(0, len(shards), 10):
        batch = shards[start : start + 10]
        for n, shard in enumerate(batch):
            con.execute(f"ATTACH DATABASE '{shard}' AS s{n}")
        con.execute("BEGIN")
        for n in range(len(batch)):
            con.execute(f"INSERT INTO epns SELECT * FROM s{n}.epns")
            con.execute(f"INSERT INTO files SELECT * FROM s{n}.files")
        con.execute("COMMIT")
        for n in range(len(batch)):
            con.execute(f"DETACH DATABASE s{n}")
    con.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/asynchy-bench-merge")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", metavar="MD")
    parser.add_argument(
        "--before",
        metavar="CHECKOUT",
        help="also time the asynchy of this checkout (e.g. a git worktree of an older commit), in the same turns",
    )
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print("building 10 shards of 100,000 file rows (kept for later runs)...", flush=True)
    shards = [work / f"shard{k}.db" for k in range(SHARDS)]
    for k, shard in enumerate(shards):
        build_shard(shard, k)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ASYNCHY_")}
    mine: list[float] = []
    theirs: list[float] = []
    before: list[float] = []
    peaks: list[int] = []
    old_env = {**env, "PYTHONPATH": str(Path(args.before).resolve())} if args.before else env

    def run_mine() -> None:
        target = fresh(work / "merged.db")
        elapsed, peak = asynchy_merge(target, shards, env)
        mine.append(elapsed)
        peaks.append(peak)
        rows = sqlite3.connect(target).execute("SELECT count(*) FROM files").fetchone()[0]
        assert rows == SHARDS * EPNS * FILES, rows

    def run_theirs() -> None:
        baseline = fresh(work / "hand.db")
        theirs.append(hand_written(baseline, shards, shards[0]))
        rows = sqlite3.connect(baseline).execute("SELECT count(*) FROM files").fetchone()[0]
        assert rows == SHARDS * EPNS * FILES, rows

    def run_before() -> None:
        before.append(asynchy_merge(fresh(work / "before.db"), shards, old_env)[0])

    turn = [run_mine, run_theirs, *([run_before] if args.before else [])]
    for k in range(args.runs):  # each turn starts with another of them: no one always goes first
        for step in turn[k % len(turn) :] + turn[: k % len(turn)]:
            step()
    total = SHARDS * EPNS * FILES
    m, t = statistics.median(mine), statistics.median(theirs)
    pairs = [a / b for a, b in zip(mine, theirs, strict=True)]  # each pair ran in the same turn
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.node()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}; {SHARDS} shards x {EPNS * FILES:,} file rows.",
        "",
        "| measurement | median (s) | runs (s) |",
        "|---|---:|---|",
        f"| asynchy merge (new process, all checks and rules) | {m:.2f} | {', '.join(f'{x:.2f}' for x in mine)} |",
        f"| hand-written ATTACH + INSERT ... SELECT | {t:.2f} | {', '.join(f'{x:.2f}' for x in theirs)} |",
        *(
            [
                f"| asynchy merge at {describe(args.before)} | {statistics.median(before):.2f} | "
                f"{', '.join(f'{x:.2f}' for x in before)} |"
            ]
            if before
            else []
        ),
        "",
        "| figure | measured | target |",
        "|---|---:|---|",
        f"| rows per second (asynchy) | {total / m:,.0f} | >= 300,000 |",
        f"| asynchy / hand-written (ratio of the medians) | {m / t:.2f} | <= 1.5 |",
        f"| asynchy / hand-written (median of the {len(pairs)} pairs: {', '.join(f'{x:.2f}' for x in pairs)}) "
        f"| {statistics.median(pairs):.2f} | <= 1.5 |",
        f"| peak memory of asynchy merge | {max(peaks) / 1024:.0f} MiB | < 200 MB |",
        *(
            [
                f"| at {describe(args.before)}: its / hand-written (median of the pairs: "
                f"{', '.join(f'{b / x:.2f}' for b, x in zip(before, theirs, strict=True))}) | "
                f"{statistics.median(b / x for b, x in zip(before, theirs, strict=True)):.2f} | (before) |"
            ]
            if before
            else []
        ),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_block(args.write, "bench_merge", text)


if __name__ == "__main__":
    main()
