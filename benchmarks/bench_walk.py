"""Walk benchmark: asynchy walk vs the as-walker algorithm vs `rsync -r --list-only`, in one run.

One command (root or not; it starts its own sshd on loopback):

    python benchmarks/bench_walk.py --write docs/benchmarks.md

Tree: 40 EPNs x 2,500 files (5 sub-folders each) served by a loopback OpenSSH
sshd, measured on plain loopback and through a TCP proxy that delays every
packet by 5 ms each way (a 10 ms round trip).  Medians of --runs runs (the
as-walker baseline through the proxy, which takes minutes, runs once).  Peak
memory of `asynchy walk` is measured on the 100k-file tree and on a 1M-file
tree (400 EPNs x 2,500 files; --skip-big leaves it out).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import asynchy_argv, fresh
from report import write_block

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from sshd import Sshd  # noqa: E402
from tcpproxy import Proxy  # noqa: E402
from treegen import make_tree  # noqa: E402


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a command that must succeed."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]}... failed ({proc.returncode}): {err[-2000:]}")
    return elapsed, usage.ru_maxrss


class Bench:
    def __init__(self, args: argparse.Namespace, sshd: Sshd) -> None:
        self.args = args
        self.sshd = sshd
        self.work = Path(args.workdir)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}

    def asynchy(self, tree: Path, port: int, known_hosts: Path) -> tuple[float, int]:
        db = fresh(self.work / "asynchy.db")
        result = run(
            asynchy_argv(db, self.sshd, port, known_hosts, "walk", "--src-prefix", str(tree)),
            self.env,
        )
        files = sqlite3.connect(db).execute("SELECT count(*) FROM files").fetchone()[0]
        assert files == self.expected[tree], (files, self.expected[tree])
        return result

    def rsync(self, tree: Path, port: int, known_hosts: Path) -> tuple[float, int]:
        s = self.sshd
        ssh = (
            f"ssh -p {port} -i {s.client_key} -o UserKnownHostsFile={known_hosts} "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes"
        )
        return run(
            ["rsync", "-r", "--list-only", "-e", ssh, f"{s.user}@{s.host}:{tree}/"], self.env
        )

    def aswalker(self, tree: Path, port: int, known_hosts: Path) -> tuple[float, int]:
        out = self.work / "aswalker"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        s = self.sshd
        result = run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "aswalker_baseline.py"),
                "--host",
                s.host,
                "--port",
                str(port),
                "--user",
                s.user,
                "--key",
                str(s.client_key),
                "--known-hosts",
                str(known_hosts),
                "--prefix",
                str(tree),
                "--out",
                str(out),
            ],
            self.env,
        )
        files = sum(
            sqlite3.connect(db).execute("SELECT count(*) FROM files").fetchone()[0]
            for db in out.glob("*.db")
        )
        assert files == self.expected[tree], (files, self.expected[tree])
        return result


def median_of(fn, runs: int, *args) -> tuple[float, list[float], int]:  # type: ignore[no-untyped-def]
    times, peak = [], 0
    for _ in range(runs):
        t, rss = fn(*args)
        times.append(t)
        peak = max(peak, rss)
    return statistics.median(times), times, peak


def versions() -> str:
    rsync = subprocess.run(
        ["rsync", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    import paramiko

    return (
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"paramiko {paramiko.__version__}, {ssh}, {' '.join(rsync.split()[:3])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", default="/tmp/asynchy-bench", help="trees and scratch files (kept for reuse)"
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="runs of each fast measurement (median reported)"
    )
    parser.add_argument(
        "--skip-big", action="store_true", help="leave out the 1M-file memory measurement"
    )
    parser.add_argument("--write", metavar="MD", help="write the results into this Markdown file")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    print("generating trees (kept in", work, "for later runs)...", flush=True)
    small = work / "tree100k"
    expected = {small: make_tree(small, 40, 2500)}
    big = work / "tree1m"
    if not args.skip_big:
        expected[big] = make_tree(big, 400, 2500)
    sshd = Sshd(work / "sshd").start()
    bench = Bench(args, sshd)
    bench.expected = expected  # type: ignore[attr-defined]
    results: dict[str, tuple[float, list[float], int]] = {}
    try:
        plain_kh = sshd.known_hosts
        print("plain loopback...", flush=True)
        results["asynchy plain"] = median_of(bench.asynchy, args.runs, small, sshd.port, plain_kh)
        results["rsync plain"] = median_of(bench.rsync, args.runs, small, sshd.port, plain_kh)
        results["aswalker plain"] = median_of(
            bench.aswalker, min(3, args.runs), small, sshd.port, plain_kh
        )
        with Proxy(sshd.port, delay=0.005) as proxy:
            kh = sshd.known_hosts_via(proxy.port)
            print("through the 10 ms round-trip proxy...", flush=True)
            results["asynchy proxy"] = median_of(bench.asynchy, args.runs, small, proxy.port, kh)
            results["rsync proxy"] = median_of(bench.rsync, args.runs, small, proxy.port, kh)
            print("as-walker through the proxy (one run; minutes)...", flush=True)
            results["aswalker proxy"] = median_of(bench.aswalker, 1, small, proxy.port, kh)
        if not args.skip_big:
            print("1M files for the memory curve...", flush=True)
            results["asynchy 1M plain"] = median_of(bench.asynchy, 1, big, sshd.port, plain_kh)
    finally:
        sshd.stop()

    def med(key: str) -> float:
        return results[key][0]

    lines = [
        f"Measured {datetime.date.today().isoformat()} on {versions()}.",
        "",
        "| measurement | median (s) | runs (s) | peak RSS |",
        "|---|---:|---|---:|",
    ]
    for key, (m, times, peak) in results.items():
        lines.append(
            f"| {key} | {m:.2f} | {', '.join(f'{t:.2f}' for t in times)} | {peak / 1024:.0f} MiB |"
        )
    ratios = [
        (
            "as-walker / asynchy, plain loopback",
            med("aswalker plain") / med("asynchy plain"),
            ">= 5",
        ),
        (
            "as-walker / asynchy, 10 ms round trip",
            med("aswalker proxy") / med("asynchy proxy"),
            ">= 20",
        ),
        (
            "asynchy / rsync --list-only, 10 ms round trip",
            med("asynchy proxy") / med("rsync proxy"),
            "<= 1.5",
        ),
    ]
    lines += ["", "| ratio | measured | target |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.2f} | {target} |" for name, value, target in ratios]
    if not args.skip_big:
        small_rss = results["asynchy plain"][2] / 1024
        big_rss = results["asynchy 1M plain"][2] / 1024
        lines.append(
            f"| asynchy peak RSS 1M files / 100k files | {big_rss / small_rss:.2f} "
            f"({small_rss:.0f} -> {big_rss:.0f} MiB) | flat, < 150 MiB |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_block(args.write, "bench_walk", text)


if __name__ == "__main__":
    main()
