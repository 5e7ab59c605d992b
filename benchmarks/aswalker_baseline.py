"""The as-walker algorithm, re-implemented as the baseline of the walk benchmark.

What it does (see ../../shared/reference/original-tools.md): split the EPNs into
4 chunks, one process per chunk, each with its own SSH connection and its own
SQLite file ``files{i}.db`` with table ``files(epn, path unique, size, modified)``.
Per EPN: recursively ``chdir`` into every folder and call ``listdir()`` and
``listdir_attr()``, then ``lstat`` every file (one round trip per file), and
insert the rows of the EPN in one transaction.

Run: python benchmarks/aswalker_baseline.py --host H --port P --user U --key K --known-hosts KH --prefix /data --out DIR
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import posixpath
import sqlite3
import stat
from pathlib import Path

import paramiko


def _connect(args: argparse.Namespace) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(args.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        args.host,
        port=args.port,
        username=args.user,
        key_filename=args.key,
        allow_agent=False,
        look_for_keys=False,
    )
    return client


def _files_of(sftp: paramiko.SFTPClient, folder: str) -> list[str]:
    sftp.chdir(folder)
    names = sftp.listdir()
    attrs = sftp.listdir_attr()
    found: list[str] = []
    for name, attr in zip(names, attrs, strict=False):
        path = posixpath.join(folder, name)
        if attr.st_mode is not None and stat.S_ISDIR(attr.st_mode):
            found += _files_of(sftp, path)
        else:
            found.append(path)
    return found


def _worker(index: int, epns: list[str], args: argparse.Namespace) -> None:
    client = _connect(args)
    sftp = client.open_sftp()
    conn = sqlite3.connect(Path(args.out) / f"files{index}.db")
    conn.execute("CREATE TABLE files (epn TEXT, path TEXT UNIQUE, size BIGINT, modified DATETIME)")
    for epn in epns:
        rows = []
        for path in _files_of(sftp, posixpath.join(args.prefix, epn)):
            st = sftp.lstat(path)
            rows.append(
                (
                    epn,
                    path,
                    st.st_size,
                    datetime.datetime.fromtimestamp(st.st_mtime or 0).isoformat(" "),
                )
            )
        with conn:
            conn.executemany(
                "INSERT INTO files (epn, path, size, modified) VALUES (?, ?, ?, ?)", rows
            )
    conn.close()
    sftp.close()
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("host", "user", "key", "known-hosts", "prefix", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    client = _connect(args)
    sftp = client.open_sftp()
    sftp.chdir(args.prefix)
    epns = sorted(
        a.filename for a in sftp.listdir_attr() if a.st_mode is not None and stat.S_ISDIR(a.st_mode)
    )
    client.close()
    size = -(-len(epns) // args.processes)
    chunks = [epns[i : i + size] for i in range(0, len(epns), size)]
    procs = [
        multiprocessing.Process(target=_worker, args=(i, chunk, args))
        for i, chunk in enumerate(chunks)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"worker failed with {p.exitcode}")


if __name__ == "__main__":
    main()
