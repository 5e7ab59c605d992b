"""Generate the benchmark tree: EPN folders of files with sizes and fixed mtimes (sparse, so cheap on disk)."""

from __future__ import annotations

import os
from pathlib import Path

MTIME = 1_600_000_000


def make_tree(root: Path, epns: int, files_per_epn: int, subdirs: int = 5, start: int = 0) -> int:
    """Create ``epns`` EPN folders under root (skipping any already complete); returns the file count."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    per_dir = files_per_epn // subdirs
    for n in range(start, start + epns):
        epn = root / f"{10000 + n}{'abcd'[n % 4]}"
        marker = root / f".{epn.name}.complete"
        if marker.exists():
            continue
        for d in range(subdirs):
            folder = epn / f"sub{d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_dir):
                path = folder / f"frame_{i:05d}.cbf"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.ftruncate(fd, 1000 + (i * 7919) % 100_000)
                os.close(fd)
                os.utime(path, (MTIME + i, MTIME + i))
        marker.touch()
    return epns * per_dir * subdirs
