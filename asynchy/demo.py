"""``asynchy demo``: a small facility made up on this machine, walked and synced end to end.

Everything stays in one folder: ``facility/`` (the made-up source, EPNs with
frames in sub-folders), ``vault/`` (where sync copies them), ``demo.db`` (the
inventory, SQLite) and ``as.yaml`` (a config for trying more commands).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from asynchy.config import render_config
from asynchy.db import open_database
from asynchy.errors import UsageError
from asynchy.inventory import WalkOptions, WalkSummary, walk
from asynchy.remote.local import LocalTree
from asynchy.sync import SyncOptions, SyncSummary, sync

SAMPLE_EPNS = {"12282a": 3, "12282b": 2, "13001a": 4, "13555c": 1, "14010a": 2, "14011b": 0}
OURS = {"facility", "vault", "demo.db", "demo.db-wal", "demo.db-shm", "as.yaml"}


@dataclass
class DemoResult:
    folder: Path
    walked: WalkSummary
    synced: SyncSummary
    statuses: dict[str, int]


def make_facility(root: Path, seed: int = 12282) -> int:
    """EPN folders with a few frames each (deterministic content); returns the number of files."""
    rng = random.Random(seed)  # noqa: S311 - made-up data, not secrets
    files = 0
    base_time = 1_700_000_000
    for n, (epn, runs) in enumerate(SAMPLE_EPNS.items()):
        folder = root / epn
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text(f"experiment {epn}: {runs} data collection runs\n")
        os.utime(folder / "notes.txt", (base_time + n * 86400, base_time + n * 86400))
        files += 1
        for run in range(runs):
            frames = folder / "frames" / f"run{run + 1}"
            frames.mkdir(parents=True, exist_ok=True)
            for i in range(5):
                path = frames / f"img_{i + 1:04d}.cbf"
                path.write_bytes(rng.randbytes(rng.randint(10_000, 200_000)))
                mtime = base_time + n * 86400 + run * 3600 + i * 60
                os.utime(path, (mtime, mtime))
                files += 1
    return files


def run(folder: Path) -> DemoResult:
    folder = folder.resolve()
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder: choose another --dir")
        strangers = sorted(p.name for p in folder.iterdir() if p.name not in OURS)
        if strangers:
            raise UsageError(
                f"{folder} already holds other files ({', '.join(strangers[:3])}): choose an empty or new --dir"
            )
    facility, vault, db_path = folder / "facility", folder / "vault", folder / "demo.db"
    if not facility.exists():
        make_facility(facility)
    vault.mkdir(parents=True, exist_ok=True)
    (folder / "as.yaml").write_text(
        render_config(
            {"host": "local", "db": str(db_path), "src_prefix": str(facility), "dest": str(vault)}
        )
    )
    db = open_database(str(db_path))
    try:
        walked = walk(db, LocalTree(facility), WalkOptions())
        synced = sync(db, None, SyncOptions(dest=vault, src_prefix=str(facility)))
        from sqlalchemy import func, select

        from asynchy.models import epns_table

        with db.read() as conn:
            counted = conn.execute(
                select(epns_table.c.status, func.count()).group_by(epns_table.c.status)
            ).all()
    finally:
        db.close()
    return DemoResult(folder, walked, synced, {status: int(n) for status, n in counted})
