"""Fixity benchmark: `asynchy audit` against `xargs -P N xxh128sum` over the same copy, warm and
cold cache, in one run; and the peak memory of `sync` and `audit` for an EPN of many files.

One command (no server needed: the source is a local folder):

    python benchmarks/bench_audit.py --write docs/benchmarks.md

Throughput: a copy of 7 GiB (64 files of 112 MiB and 2,000 of 1-60 KiB) is
made once by `asynchy sync` (which records each file's xxh128); then, in turns,
`asynchy audit --threads N` and `find | xargs -0 -P N -n 4 xxh128sum` read it,
N = the CPUs, each as a whole command.  Cold: every file is evicted from the
page cache before each run (posix_fadvise DONTNEED after a sync; no root
needed); warm: read once first.  Medians of --runs; the wall-time ratio, and
the audit's reading throughput (its wall time less its start-up, `audit
--budget 0`, timed in the same turns) over xxh128sum's.

Memory: one EPN of --files files (1,000,000 by default; tiny files, so it is
the file count that weighs), walked, synced and audited; the peak resident
memory of the asynchy process itself (VmHWM from /proc, read until it exits;
rsync's own processes are not counted).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from report import write_block

BIG, BIG_SIZE, SMALL = 64, 112 * 2**20, 2000


def asynchy(db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "asynchy", "-q", "--db", str(db), "--host", "local", *args]


def run(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)


def make_copy(work: Path, env: dict[str, str]) -> tuple[Path, Path, int]:
    """The source tree, its copy and a database with every file's checksum (kept for later runs)."""
    src, dest, db = work / "src", work / "dest", work / "audit.db"
    marker = work / ".complete"
    if not marker.exists():
        shutil.rmtree(work, ignore_errors=True)
        rng = random.Random(2)
        for n in range(BIG):
            path = src / "81000a" / "raw" / f"movie{n:02d}.raw"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                for _ in range(BIG_SIZE // 2**20):
                    fh.write(os.urandom(2**20))
        for n in range(SMALL):
            path = src / f"8100{1 + n % 4}a" / f"run{n % 7}" / f"img_{n:05d}.cbf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(rng.randint(1024, 60 * 1024)))
        dest.mkdir(parents=True)
        run([*asynchy(db, "walk", "--src-prefix", str(src))], env)
        run(
            [*asynchy(db, "sync", "--src-prefix", str(src), "--dest", str(dest), "--limit", "10")],
            env,
        )
        marker.touch()
    total = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    return dest, db, total


def evict(root: Path) -> None:
    """Drop the files under root from the page cache (clean pages only: flushed first)."""
    os.sync()
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=False, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def throughput(work: Path, runs: int, env: dict[str, str]) -> list[str]:
    dest, db, total = make_copy(work / "copy", env)
    threads = str(os.cpu_count() or 2)
    audit = asynchy(db, "audit", "--threads", threads)
    # -n 4: the big files spread over the parallel xxh128sums (with -n 64 one would take them all)
    xxh = ["sh", "-c", f"find . -type f -print0 | xargs -0 -P {threads} -n 4 xxh128sum"]
    nothing = asynchy(db, "audit", "--budget", "0")  # start-up and selection, no file read
    out: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
    for cache in ("cold", "warm"):
        times: dict[str, list[float]] = {"audit": [], "xxh128sum": [], "start-up": []}
        for k in range(runs):
            order = ["audit", "xxh128sum"] if k % 2 == 0 else ["xxh128sum", "audit"]
            for name in order:
                if cache == "cold":
                    evict(dest)
                else:
                    timed(xxh, env, dest)  # read once: in the cache
                argv = audit if name == "audit" else xxh
                times[name].append(timed(argv, env, dest))
            times["start-up"].append(timed(nothing, env, dest))
        out[cache] = times
    lines = [
        f"Throughput: {total / 2**30:.2f} GiB in {BIG + SMALL:,} files, {threads} threads, "
        f"medians of {runs} runs (each run's times in brackets). Reading: the audit's wall time "
        "less its start-up (`asynchy audit --budget 0`: Python, imports, the database, the "
        "selection; measured in the same turns).",
        "",
        "| cache | asynchy audit (s) | its start-up (s) | xargs -P xxh128sum (s) | wall-time ratio | "
        "reading throughput / xxh128sum's | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for cache, times in out.items():
        a, x = statistics.median(times["audit"]), statistics.median(times["xxh128sum"])
        up = statistics.median(times["start-up"])
        lines.append(
            f"| {cache} | {a:.2f} ({', '.join(f'{t:.2f}' for t in times['audit'])}) | {up:.2f} | "
            f"{x:.2f} ({', '.join(f'{t:.2f}' for t in times['xxh128sum'])}) | {x / a:.2f} | "
            f"{x / (a - up):.2f} ({total / (a - up) / 2**20:,.0f} MiB/s) | >= 0.90 |"
        )
    return lines


def peak_rss(argv: list[str], env: dict[str, str]) -> int:
    """The peak resident memory (KiB) of the process argv starts (not of its children)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    peak = 0

    def watch() -> None:
        nonlocal peak
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                break
            time.sleep(0.05)

    thread = threading.Thread(target=watch)
    thread.start()
    proc.wait()
    thread.join()
    assert proc.returncode in (0, 3), (argv, proc.returncode)
    return peak


def memory(work: Path, files: int, env: dict[str, str]) -> list[str]:
    base = work / "many"
    src, dest, db = base / "src", base / "dest", base / "many.db"
    shutil.rmtree(base, ignore_errors=True)
    print(f"making an EPN of {files:,} files...", flush=True)
    for n in range(files):
        path = src / "82000a" / f"d{n // 1000:04d}" / f"f{n % 1000:03d}"
        if n % 1000 == 0:
            path.parent.mkdir(parents=True)
        path.write_bytes(b"%d" % n)
    dest.mkdir(parents=True)
    run([*asynchy(db, "walk", "--src-prefix", str(src))], env)
    print("syncing it...", flush=True)
    t0 = time.perf_counter()
    sync = peak_rss([*asynchy(db, "sync", "--src-prefix", str(src), "--dest", str(dest))], env)
    took_sync = time.perf_counter() - t0
    t0 = time.perf_counter()
    audit = peak_rss([*asynchy(db, "audit")], env)
    took_audit = time.perf_counter() - t0
    shutil.rmtree(base, ignore_errors=True)
    return [
        "",
        f"Memory: one EPN of {files:,} files.",
        "",
        "| command | peak resident memory of asynchy | took | target |",
        "|---|---:|---:|---|",
        f"| asynchy sync (fixity on) | {sync / 1024:.0f} MiB | {took_sync:.0f} s | < 150 MB |",
        f"| asynchy audit | {audit / 1024:.0f} MiB | {took_audit:.0f} s | < 150 MB |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/asynchy-bench-audit")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=1_000_000, help="files of the memory EPN")
    parser.add_argument("--write", metavar="MD")
    parser.add_argument("--skip-memory", action="store_true", help="only the throughput part")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}.",
        "",
        *throughput(work, args.runs, env),
        *([] if args.skip_memory else memory(work, args.files, env)),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_block(args.write, "bench_audit", text)


if __name__ == "__main__":
    main()
