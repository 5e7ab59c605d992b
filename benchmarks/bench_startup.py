"""Start-up benchmark: a 12k-file walk into a new database against `rsync -r --list-only`, at 10 ms.

One command (it starts its own sshd and a 10 ms round-trip proxy on loopback):

    python benchmarks/bench_startup.py --write docs/benchmarks.md

Tree: 5 EPNs x 2,500 files (12,500).  At this size asynchy's fixed costs -
Python and its imports, creating the database (one step: the models' tables
and the alembic stamp), connecting - weigh most against the listing itself.
Each asynchy run is a fresh process into a new SQLite file, with asynchy's
modules compiled to bytecode as `pip install` leaves them; one warm-up run of
each, then the two in turns.  Target (issue
#12): asynchy within 1.3x of rsync --list-only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
from pathlib import Path

from report import write_block

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_walk import Bench, versions  # noqa: E402
from sshd import Sshd  # noqa: E402
from tcpproxy import Proxy  # noqa: E402
from treegen import make_tree  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/asynchy-bench", help="kept for reuse")
    parser.add_argument("--runs", type=int, default=7, help="runs of each (median reported)")
    parser.add_argument("--write", metavar="MD", help="write the results into this Markdown file")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    tree = work / "tree12k"
    expected = {tree: make_tree(tree, 5, 2500)}
    sshd = Sshd(work / "sshd-startup").start()
    bench = Bench(args, sshd)
    bench.expected = expected  # type: ignore[attr-defined]
    # As after `pip install`: asynchy's modules compiled to bytecode (an editable install under
    # PYTHONDONTWRITEBYTECODE=1 would compile them again in every run).
    bench.env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "asynchy")], check=True)
    try:
        with Proxy(sshd.port, delay=0.005) as proxy:
            kh = sshd.known_hosts_via(proxy.port)
            measured = (("asynchy walk", bench.asynchy), ("rsync --list-only", bench.rsync))
            for _name, fn in measured:  # one warm-up run each, not counted
                fn(tree, proxy.port, kh)
            runs: dict[str, list[float]] = {name: [] for name, _fn in measured}
            for _ in range(args.runs):  # in turns, so that a noisy moment hits both
                for name, fn in measured:
                    runs[name].append(fn(tree, proxy.port, kh)[0])
            results = {name: (statistics.median(t), t, 0) for name, t in runs.items()}
    finally:
        sshd.stop()
    ratio = results["asynchy walk"][0] / results["rsync --list-only"][0]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {versions()}; 12,500 files, 10 ms round trip.",
        "",
        "| measurement | median (s) | runs (s) |",
        "|---|---:|---|",
    ]
    for key, (m, times, _peak) in results.items():
        lines.append(f"| {key} | {m:.2f} | {', '.join(f'{t:.2f}' for t in times)} |")
    lines += [
        "",
        "| ratio | measured | target |",
        "|---|---:|---|",
        f"| asynchy walk / rsync --list-only, 12k files, 10 ms | {ratio:.2f} | <= 1.3 |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_block(args.write, "bench_startup", text)


if __name__ == "__main__":
    main()
