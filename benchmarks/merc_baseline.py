"""The MeRC asynchy transfer loop, re-implemented as a baseline of the sync benchmark.

What it did (../../shared/reference/original-tools.md): a pool of workers
(processes with --parallel), one `rsync -rlt -e 'ssh ...' --out-format='%-10l'
user@host:SRC DEST` per EPN *through a shell*, and each worker waited for its
rsync in a tight `while proc.poll() is None` loop, burning a CPU core.

Run: python benchmarks/merc_baseline.py --ssh "ssh -p P ..." --source user@host:/prefix --dest DIR --workers 2 EPN...
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import subprocess


def _one(args: tuple[str, str, str, str]) -> int:
    ssh, source, dest, epn = args
    cmd = f"rsync -rlt -e {shlex.quote(ssh)} --out-format='%-10l' {shlex.quote(source + '/' + epn)} {shlex.quote(dest)}"
    proc = subprocess.Popen(
        cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )  # as the original did
    out = b""
    while proc.poll() is None:  # the original's busy wait
        pass
    out = proc.stdout.read() if proc.stdout else b""
    del out
    return proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ssh", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("epns", nargs="+")
    args = parser.parse_args()
    with multiprocessing.Pool(args.workers) as pool:
        codes = pool.map(
            _one, [(args.ssh, args.source, args.dest, epn) for epn in args.epns], chunksize=1
        )
    if any(codes):
        raise SystemExit(f"rsync failed: {codes}")


if __name__ == "__main__":
    main()
