"""Claims benchmark: 4 workers claiming and completing 10,000 one-file EPNs on local PostgreSQL.

    python benchmarks/bench_claims.py --write docs/benchmarks.md   [--pg postgresql://postgres@127.0.0.1/postgres]

Two measurements in one run, each on a fresh database walked from a local tree
of 10,000 EPNs with one file each:

1. the queue alone: 4 processes, each looping `claim` (one EPN) and `record`
   (complete), exactly the statements `asynchy sync` runs - claims per second;
2. the real thing: 4 `asynchy sync --threads 2` processes copying everything
   with rsync from the local source - EPNs per second.

Both check that no EPN was claimed twice (one transfer row per EPN).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from report import write_block

N_EPNS = 10_000


def make_tree(root: Path) -> None:
    marker = root / ".complete"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    for i in range(N_EPNS):
        d = root / f"{30000 + i}a"
        d.mkdir(parents=True)
        (d / "frame.cbf").write_bytes(b"x" * 100)
    marker.touch()


def new_database(admin: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"asynchy_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return (
        make_url(admin)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


def drop_database(admin: str, url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


def walk(url: str, tree: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "asynchy",
            "-q",
            "--db",
            url,
            "--host",
            "local",
            "walk",
            "--src-prefix",
            str(tree),
        ],
        check=True,
        env=env,
        capture_output=True,
    )


def queue_worker(
    url: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue
) -> None:
    from datetime import UTC, datetime

    from asynchy import claims, workers
    from asynchy.db import open_database
    from asynchy.failures import Action, Decision
    from asynchy.jobs import TransferResult

    COMPLETE = Decision(Action.COMPLETE, charged=False)

    db = open_database(url)
    me = workers.register_worker(db, "bench", lease=300)
    start.wait()
    done = 0
    while True:
        got = claims.claim(db, me, None, 1, order="ASC", max_attempts=5, lease=300)
        if not got:
            break
        c = got[0]
        now = datetime.now(UTC)
        result = TransferResult(c.epn, 1, c.token, now, now, ("bench",), 0, "ok", None, 100, 1)
        claims.record(db, me, c, result, COMPLETE, max_attempts=5, dest_path="/dev/null", lease=300)
        done += 1
    out.put(done)
    db.close()


def check_once(url: str) -> tuple[int, int, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows, epns = conn.execute(text("SELECT count(*), count(DISTINCT epn) FROM transfers")).one()
        complete = conn.execute(
            text("SELECT count(*) FROM epns WHERE status = 'complete'")
        ).scalar_one()
    engine.dispose()
    return int(rows), int(epns), int(complete)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg",
        default=os.environ.get("ASYNCHY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--workdir", default="/tmp/asynchy-bench-claims")
    parser.add_argument("--write", metavar="MD")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "src"
    print("making 10,000 EPNs (kept for later runs)...", flush=True)
    make_tree(tree)
    results = []

    # 1. The queue alone.
    url = new_database(args.pg)
    try:
        walk(url, tree)
        ctx = multiprocessing.get_context("spawn")
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=queue_worker, args=(url, start, out)) for _ in range(4)]
        for p in procs:
            p.start()
        time.sleep(3)  # let them connect and plan
        t0 = time.perf_counter()
        start.set()
        counts = [out.get(timeout=600) for _ in procs]
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join()
        rows, distinct, complete = check_once(url)
        results.append(
            ("queue alone: claim + record, 4 processes", elapsed, rows, distinct, complete, counts)
        )
    finally:
        drop_database(args.pg, url)

    # 2. The real thing.
    url = new_database(args.pg)
    dest = work / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    try:
        walk(url, tree)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
        t0 = time.perf_counter()
        procs2 = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "asynchy",
                    "-q",
                    "--db",
                    url,
                    "--host",
                    "local",
                    "sync",
                    "--src-prefix",
                    str(tree),
                    "--dest",
                    str(dest),
                    "--threads",
                    "2",
                    "--limit",
                    str(N_EPNS),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for _ in range(4)
        ]
        codes = [p.wait() for p in procs2]
        elapsed = time.perf_counter() - t0
        assert codes == [0, 0, 0, 0], codes
        rows, distinct, complete = check_once(url)
        results.append(
            (
                "asynchy sync --threads 2, 4 processes, rsync included",
                elapsed,
                rows,
                distinct,
                complete,
                [],
            )
        )
    finally:
        drop_database(args.pg, url)

    import platform

    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, local PostgreSQL; {N_EPNS:,} EPNs of one file.",
        "",
        "| run | seconds | EPNs per second | transfer rows | distinct EPNs | complete |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, elapsed, rows, distinct, complete, _ in results:
        lines.append(
            f"| {name} | {elapsed:.1f} | {complete / elapsed:,.0f} | {rows:,} | {distinct:,} | {complete:,} |"
        )
    ok = all(
        rows == distinct == complete == N_EPNS for _, _, rows, distinct, complete, _ in results
    )
    lines += [
        "",
        f"No EPN claimed twice: {'yes' if ok else 'NO'} (one transfer row per EPN in both runs). "
        f"Target: at least 500 claims per second for the queue.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_block(args.write, "bench_claims", text)


if __name__ == "__main__":
    main()
