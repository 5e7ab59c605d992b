"""Filling the link: asynchy's split and schedule against one stream per EPN, over a modelled WAN.

One command (it starts its own sshd and a long-fat-network proxy on loopback):

    python benchmarks/bench_split.py --write docs/benchmarks.md

The proxy (benchmarks/wanproxy.py) delays each direction of each connection
by 10 ms and holds at most 128 KiB in flight, so one TCP stream moves at most
about 12.8 MB/s, as on a long link with a small window.  Measured, in one run:

* R1, R4: the rate of one rsync, and of four at once, of 64 MiB files (the
  model: four streams move about three times what one does);
* the skewed batch: one EPN of 12 files of 96 MiB (1152 MiB: above the
  default --split-min of 1 GiB) and 8 EPNs of 32 MiB - the issue's 288 MB
  and 8 MB scaled by four, so that the big EPN is split with no option -
  copied by `asynchy sync --threads 4` and by `ls | xargs -P 4 -I{} rsync
  -rlt -e ssh host:src/{} dest/` (one stream per EPN), against the ideal
  total / R4;
* the uniform batch: the 12 EPNs of the sync benchmark (benchmarks/bench_sync.py:
  ~1.5 GB of random data, 300 small files and one 128 MiB file each; no EPN
  is split), the same two;
* `asynchy sync --threads 4 --bwlimit 8M`: the measured total rate.

The source files are sparse (cheap to make); their bytes still cross the
proxy.  Each run copies into an empty destination; asynchy's walk is not
timed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import asynchy_argv, fresh
from report import write_block

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_sync import make_tree as make_sync_tree  # noqa: E402
from sshd import Sshd  # noqa: E402
from wanproxy import WanProxy  # noqa: E402

MiB = 2**20
MB = 10**6


def sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)
    os.utime(path, (1_700_000_000, 1_700_000_000))


def make_trees(root: Path) -> dict[str, Path]:
    trees = {name: root / name for name in ("rate", "skewed", "uniform", "budget")}
    make_sync_tree(trees["uniform"])  # kept between runs (random data: slow to make)
    sparse_done = root / ".complete"
    if sparse_done.exists():
        return trees
    for name in ("rate", "skewed", "budget"):  # sparse: cheap to make again
        shutil.rmtree(trees[name], ignore_errors=True)
    for i in range(4):
        sparse(trees["rate"] / f"s{i}" / "f.raw", 64 * MiB)
    for i in range(12):
        sparse(trees["skewed"] / "70000a" / f"run{i % 3}" / f"f{i:02d}.raw", 96 * MiB)
    for n in range(8):
        sparse(trees["skewed"] / f"7100{n}b" / "data.raw", 32 * MiB)
    for n in range(8):
        sparse(trees["budget"] / f"7300{n}d" / "data.raw", 24 * MiB)
    for name in ("rate", "skewed", "budget"):
        for dirpath, _dirs, files in os.walk(trees[name]):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
    os.chmod(root, 0o755)
    sparse_done.touch()
    return trees


def size_of(tree: Path) -> int:
    return sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())


class Bench:
    def __init__(self, work: Path, sshd: Sshd, port: int, known_hosts: Path) -> None:
        self.work, self.sshd, self.port, self.kh = work, sshd, port, known_hosts
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
        self.ssh = (
            f"ssh -p {port} -i {sshd.client_key} -o UserKnownHostsFile={known_hosts} "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes"
        )

    def fresh_dest(self) -> Path:
        dest = self.work / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        return dest

    def timed(self, argv: list[str]) -> float:
        started = time.perf_counter()
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{argv[:6]} failed ({done.returncode}): {done.stderr[-2000:]}")
        return elapsed

    def rsyncs(self, tree: Path, names: list[str]) -> float:
        """One rsync per name, all at once (the baseline: one stream per EPN)."""
        dest = self.fresh_dest()
        script = (
            f"printf '%s\\n' {' '.join(names)} | xargs -P 4 -I{{}} rsync -rlt -e '{self.ssh}' "
            f"{self.sshd.user}@{self.sshd.host}:{tree}/{{}} {dest}/"
        )
        elapsed = self.timed(["sh", "-c", script])
        assert size_of(dest) == sum(size_of(tree / n) for n in names)
        return elapsed

    def asynchy(self, tree: Path, *options: str) -> float:
        dest = self.fresh_dest()
        common = asynchy_argv(fresh(self.work / "bench.db"), self.sshd, self.port, self.kh)
        self.timed([*common, "walk", "--src-prefix", str(tree)])
        elapsed = self.timed(
            [*common, "sync", "--src-prefix", str(tree), "--dest", str(dest), *options]
        )
        assert size_of(dest) == size_of(tree)
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/asynchy-bench-split")
    parser.add_argument("--runs", type=int, default=1, help="runs of each (median reported)")
    parser.add_argument("--write", metavar="MD")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    trees = make_trees(work / "src")
    sshd = Sshd(work / "sshd").start()
    times: dict[str, list[float]] = {}

    def measure(name: str, fn: object, *a: object) -> None:
        t = fn(*a)  # type: ignore[operator]
        times.setdefault(name, []).append(t)
        print(f"{name}: {t:.2f} s", flush=True)

    try:
        with WanProxy(sshd.port, delay=0.010, window=128 * 1024) as proxy:
            bench = Bench(work, sshd, proxy.port, sshd.known_hosts_via(proxy.port))
            skewed = sorted(p.name for p in trees["skewed"].iterdir())
            uniform = sorted(p.name for p in trees["uniform"].iterdir() if p.is_dir())
            for _ in range(args.runs):
                measure("R1", bench.rsyncs, trees["rate"], ["s0"])
                measure("R4", bench.rsyncs, trees["rate"], ["s0", "s1", "s2", "s3"])
                measure("skewed asynchy", bench.asynchy, trees["skewed"], "--threads", "4")
                measure("skewed xargs", bench.rsyncs, trees["skewed"], skewed)
                measure("uniform asynchy", bench.asynchy, trees["uniform"], "--threads", "4")
                measure("uniform xargs", bench.rsyncs, trees["uniform"], uniform)
                measure(
                    "budget asynchy",
                    bench.asynchy,
                    trees["budget"],
                    "--threads",
                    "4",
                    "--bwlimit",
                    "8M",
                )
    finally:
        sshd.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    r1 = 64 * MiB / med["R1"]
    r4 = 4 * 64 * MiB / med["R4"]
    skewed_bytes = size_of(trees["skewed"])
    ideal = skewed_bytes / r4
    budget_rate = size_of(trees["budget"]) / med["budget asynchy"]
    rows = [
        ("R1: one stream", f"{r1 / MB:.1f} MB/s", ""),
        ("R4: four streams at once", f"{r4 / MB:.1f} MB/s ({r4 / r1:.2f}x R1)", ""),
        (
            "skewed batch: asynchy / ideal (total / R4)",
            f"{med['skewed asynchy'] / ideal:.2f}",
            "<= 1.25",
        ),
        (
            "skewed batch: xargs rsync / asynchy",
            f"{med['skewed xargs'] / med['skewed asynchy']:.2f}",
            ">= 1.6",
        ),
        (
            "uniform batch: asynchy / xargs rsync",
            f"{med['uniform asynchy'] / med['uniform xargs']:.2f}",
            "<= 1.05",
        ),
        (
            "--bwlimit 8M --threads 4: measured total rate",
            f"{budget_rate / MiB:.2f} MiB/s ({budget_rate / (8 * MiB) - 1:+.0%})",
            "8 MiB/s +-15 %",
        ),
    ]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {os.uname().nodename}, {os.cpu_count()} CPUs; "
        f"proxy: 10 ms each way, 128 KiB in flight per direction; {args.runs} run(s) of each.",
        "",
        "| measurement | median (s) | runs (s) |",
        "|---|---:|---|",
        *[f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |" for k, v in times.items()],
        "",
        "| ratio | measured | target |",
        "|---|---:|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_block(args.write, "bench_split", text)


if __name__ == "__main__":
    main()
