"""Small file helpers: writing a file so that no reader ever sees half of it; the ``file:`` URI
of a SQLite file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str, mode: int) -> None:
    """A temporary file beside ``path``, then a rename over it; OSError as the caller's to word."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sqlite_uri(path: Path, *, read_only: bool = False) -> str:
    """The ``file:`` URI of a SQLite file; '#', '?' and '%' in its name are quoted."""
    from urllib.parse import quote

    return "file:" + quote(str(path)) + ("?mode=ro" if read_only else "")
