"""Sync benchmark: `asynchy sync --threads 2` vs `xargs -P 2 rsync` vs the MeRC asynchy loop, in one run.

One command (it starts its own sshd on loopback):

    python benchmarks/bench_sync.py --write docs/benchmarks.md

Tree: 12 EPNs (~1.5 GB): 300 small files each (1-60 KiB) and one 128 MiB file
in 11 of them, random data, served by a loopback OpenSSH sshd.  Each run
copies into an empty destination.  asynchy's database is walked before the
timed part (the walk has its own benchmark); its sync includes verification.
asynchy runs twice per turn: with fixity (the default: every file's source
checksum recorded, docs/fixity.md) and with `fixity: false`.  In each turn,
asynchy runs between the other two of its comparisons (xargs, `fixity: false`),
their order reversed every other turn; the MeRC loop (3 turns) runs last.
Reported: medians of wall time; asynchy's own CPU (its Python process, read
from /proc, not rsync or ssh) against the CPU of the whole run (every process
on the machine, from /proc/stat); the time from starting `asynchy sync` to
its first transfer rsync.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import asynchy_argv, describe, fresh
from report import write_block

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from sshd import Sshd  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def make_tree(root: Path) -> list[str]:
    marker = root / ".complete"
    epns = [f"{60000 + n}{'ab'[n % 2]}" for n in range(12)]
    if marker.exists():
        return epns
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(1)
    for n, epn in enumerate(epns):
        folder = root / epn
        for i in range(300):
            path = folder / f"run{i % 3}" / f"img_{i:04d}.cbf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(rng.randint(1024, 60 * 1024)))
        if n != 5:
            with open(folder / "movie.raw", "wb") as fh:
                for _ in range(128):
                    fh.write(os.urandom(2**20))
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    marker.touch()
    return epns


def machine_cpu() -> float:
    """CPU seconds used by everything on the machine so far (/proc/stat, all but idle and iowait)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]
    return busy / CLK


def own_cpu(pid: int) -> float | None:
    """utime + stime of one process, its children excluded."""
    try:
        parts = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(parts[11]) + int(parts[12])) / CLK


def timed(argv: list[str], env: dict[str, str], track_self: bool = False) -> dict[str, float]:
    cpu0 = machine_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            value = own_cpu(proc.pid)
            if value is not None:
                samples.append(value)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    if track_self:
        sampler.start()
    _, status, _usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    done.set()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:3]} failed: {err[-3000:]}")
    result = {"wall": elapsed, "machine_cpu": machine_cpu() - cpu0}
    if track_self:
        result["self_cpu"] = max(samples) if samples else 0.0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/asynchy-bench-sync")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", metavar="MD")
    parser.add_argument(
        "--before",
        metavar="CHECKOUT",
        help="also time the asynchy of this checkout (e.g. a git worktree of an older commit), in the same turns",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="run only these measurements, comma-separated (asynchy, nofixity, xargs, merc), e.g. "
        "--only asynchy,nofixity --runs 25 for fixity's cost alone, to its own block",
    )
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    src = work / "src"
    print("generating the tree (kept for later runs)...", flush=True)
    epns = make_tree(src)
    total = sum(f.stat().st_size for f in src.rglob("*") if f.is_file() and f.name != ".complete")
    sshd = Sshd(work / "sshd").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    ssh = (
        f"ssh -p {sshd.port} -i {sshd.client_key} -o UserKnownHostsFile={sshd.known_hosts} "
        "-o StrictHostKeyChecking=yes -o BatchMode=yes"
    )
    stamp_log = work / "rsync-starts.log"
    wrapper = work / "rsync-timed"
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *--files-from*) date +%s.%N >> {stamp_log};; esac\n'
        f'exec {shutil.which("rsync")} "$@"\n'
    )
    wrapper.chmod(0o755)
    results: dict[str, list[dict[str, float]]] = {
        "asynchy": [],
        "xargs": [],
        "merc": [],
        "nofixity": [],
    }
    # fixity (docs/fixity.md) on, as by default, and off: its cost, measured in the same turns
    envs = {"asynchy": env, "nofixity": {**env, "ASYNCHY_FIXITY": "false"}}
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - set(results)
        if unknown:
            parser.error(f"--only: no measurement named {', '.join(sorted(unknown))}")
        results = {name: [] for name in results if name in wanted}
    if args.before:
        results["before"] = []
        envs["before"] = {**env, "PYTHONPATH": str(Path(args.before).resolve())}
    startups: dict[str, list[float]] = {"asynchy": [], "before": [], "nofixity": []}
    try:
        for run in range(args.runs):
            # the compared runs next to each other, in an order that alternates from turn to turn:
            # none gains from always going first or always following the same run
            order = (
                ["nofixity", "asynchy", "xargs"]
                if run % 2 == 0
                else ["xargs", "asynchy", "nofixity"]
            )
            for name in [
                *(n for n in order if n in results),
                *(n for n in results if n not in order),
            ]:
                if name == "merc" and run >= 3:
                    continue
                dest = work / "dest"
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir()
                subprocess.run(["sync"], check=True)
                if name in ("asynchy", "before", "nofixity"):
                    common = asynchy_argv(
                        fresh(work / "bench.db"),
                        sshd,
                        sshd.port,
                        sshd.known_hosts,
                        "--rsync",
                        str(wrapper),
                    )
                    subprocess.run(
                        [*common, "walk", "--src-prefix", str(src)],
                        check=True,
                        env=envs[name],
                        capture_output=True,
                    )
                    stamp_log.unlink(missing_ok=True)
                    t0 = time.time()
                    r = timed(
                        [
                            *common,
                            "sync",
                            "--src-prefix",
                            str(src),
                            "--dest",
                            str(dest),
                            "--threads",
                            "2",
                        ],
                        envs[name],
                        track_self=True,
                    )
                    first = min(float(x) for x in stamp_log.read_text().split())
                    startups[name].append(first - t0)
                elif name == "xargs":
                    script = (
                        f"ls {src} | xargs -P 2 -I{{}} rsync -rlt -e '{ssh}' "
                        f"{sshd.user}@{sshd.host}:{src}/{{}} {dest}/"
                    )
                    r = timed(["sh", "-c", script], env)
                else:
                    r = timed(
                        [
                            sys.executable,
                            str(ROOT / "benchmarks" / "merc_baseline.py"),
                            "--ssh",
                            ssh,
                            "--source",
                            f"{sshd.user}@{sshd.host}:{src}",
                            "--dest",
                            str(dest),
                            "--workers",
                            "2",
                            *epns,
                        ],
                        env,
                    )
                copied = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
                assert copied == total, (name, copied, total)
                results[name].append(r)
                print(f"run {run + 1} {name}: {r['wall']:.2f} s", flush=True)
    finally:
        sshd.stop()

    def med(name: str, key: str = "wall") -> float:
        return statistics.median(r[key] for r in results[name])

    import platform

    rsync_v = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.split(
        "\n"
    )[0]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {' '.join(rsync_v.split()[:3])}; {len(epns)} EPNs, "
        f"{total / 2**30:.2f} GiB.",
        "",
        "| measurement | median wall (s) | runs (s) | machine CPU (s, median) |",
        "|---|---:|---|---:|",
    ]
    labels = {
        "asynchy": "asynchy sync --threads 2",
        "xargs": "ls \\| xargs -P 2 rsync",
        "merc": "MeRC asynchy loop",
        "nofixity": "asynchy sync --threads 2, fixity: false",
        "before": f"asynchy sync --threads 2, at {describe(args.before)}" if args.before else "",
    }
    for name, runs in results.items():
        walls = ", ".join(f"{r['wall']:.2f}" for r in runs)
        lines.append(
            f"| {labels[name]} | {med(name):.2f} | {walls} | {med(name, 'machine_cpu'):.1f} |"
        )

    def ran(*names: str) -> bool:
        return all(name in results for name in names)

    def pairs_of(a: str, b: str) -> list[float]:
        return [x["wall"] / y["wall"] for x, y in zip(results[a], results[b], strict=False)]

    def share(name: str) -> float:
        return statistics.median(r["self_cpu"] / r["machine_cpu"] for r in results[name])

    def listed(values: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    lines += ["", "| ratio | measured | target |", "|---|---:|---|"]

    def versus(a: str, b: str, label: str, target: str) -> list[str]:
        """Two rows: a against b in wall time, by the ratio of the medians and by the pairs."""
        pairs = pairs_of(a, b)
        return [
            f"| {label}, wall time (ratio of the medians) | {med(a) / med(b):.3f} | {target} |",
            f"| {label}, wall time (median of the {len(pairs)} pairs: {listed(pairs)}) "
            f"| {statistics.median(pairs):.3f} | {target} |",
        ]

    if ran("asynchy", "xargs"):
        lines += versus("asynchy", "xargs", "asynchy / xargs rsync", "<= 1.05")
    if ran("asynchy"):
        lines += [
            f"| asynchy's own CPU / all CPU of the run | {100 * share('asynchy'):.1f} % | <= 5 % |",
        ]
    if ran("nofixity"):
        lines.append(f"| the same with fixity: false | {100 * share('nofixity'):.1f} % | |")
    if ran("asynchy"):
        lines.append(
            f"| start-up to the first rsync (median) | {statistics.median(startups['asynchy']):.3f} s | < 0.3 s |"
        )
    if ran("asynchy", "merc"):
        lines += [
            f"| MeRC loop / asynchy, wall time | {med('merc') / med('asynchy'):.2f} | (> 1: the busy wait costs) |",
            f"| MeRC loop / asynchy, machine CPU | {med('merc', 'machine_cpu') / med('asynchy', 'machine_cpu'):.2f} | |",
        ]
    if ran("asynchy", "nofixity"):
        lines += versus("asynchy", "nofixity", "fixity on / off", "<= 1.03")
    if args.before and ran("xargs"):
        before_pairs = pairs_of("before", "xargs")
        lines.append(
            f"| at {describe(args.before)}: its / xargs rsync (median of the pairs: "
            f"{listed(before_pairs)}) | {statistics.median(before_pairs):.3f} | (before) |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        block = "bench_sync" + (f"-only-{args.only.replace(',', '-')}" if args.only else "")
        write_block(args.write, block, text)


if __name__ == "__main__":
    main()
