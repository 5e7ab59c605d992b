"""Fixity's plain values (docs/fixity.md): the lines rsync prints with ``%C``, the attempt's
spool file they are written to, and the lines of a coreutils-style manifest.  No I/O beyond
reading a spool; no database.

A spool line is ``TAG HEX NAME``: TAG ``T`` for a value the copy printed as it sent the file,
``S`` for one from the source pass; NAME as rsync prints it (``\\#ooo`` for an unprintable
byte and for a backslash followed by ``#``).  The last line of a name wins: rsync may print a
file twice when its first transfer failed the receiver's check and was redone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ALGOS = ("xxh128", "md5")  # what rsync's %C can be pinned to here; both 32 hex digits
OBTAINED = {b"T": "transfer", b"S": "source"}

_ESCAPE = re.compile(rb"\\#([0-7]{3})")


def unescape(name: bytes) -> bytes:
    """A name as rsync prints it -> its bytes (rsync writes ``\\#ooo`` for a byte it will not
    print, and for the backslash of a ``\\#`` in the name itself)."""
    if b"\\#" not in name:
        return name
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), name)


def read_spool(path: str | Path) -> Iterator[tuple[bytes, str, str]]:
    """(path in the EPN, hex, obtained) per line of a spool file, in the order written."""
    with open(path, "rb") as fh:
        for line in fh:
            tag, value, name = line.rstrip(b"\n").split(b" ", 2)
            yield unescape(name), value.decode("ascii"), OBTAINED[tag]


def spool_path(folder: str, name: str, attempt: int) -> str:
    """The spool file of one rsync job (an EPN's attempt, or one of its parts)."""
    return os.path.join(folder, f"{name}.{attempt}.sums")


def manifest_line(value: str, path: bytes, algo: str = "md5") -> bytes:
    """One line as ``md5sum`` writes it: ``HEX  NAME``; a name with a backslash or a newline is
    escaped (``\\\\``, ``\\n``) and its line starts with a backslash.  ``xxh128sum`` up to 0.8.1
    (Debian 12) writes and reads names as they are, so for xxh128 only a name with a newline, which
    no raw line can hold, is escaped (xxhsum >= 0.8.2 reads that; 0.8.1 skips the line as
    improperly formatted)."""
    escape = b"\n" in path or b"\r" in path or (algo != "xxh128" and b"\\" in path)
    if escape:
        escaped = path.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + value.encode("ascii") + b"  " + escaped + b"\n"
    return value.encode("ascii") + b"  " + path + b"\n"


def damage_words(mismatched: int, missing: int) -> str:
    """``1 file differs, 2 missing``: what an audit found, in words."""
    return (
        f"{mismatched:,} file{'s differ' if mismatched != 1 else ' differs'}, {missing:,} missing"
    )


def components(path: bytes) -> list[bytes]:
    """The components of a path inside an EPN; ValueError for one that is empty, ``.`` or ``..``
    (the walk never records such a path; a database from elsewhere might)."""
    parts = path.split(b"/")
    if any(part in (b"", b".", b"..") for part in parts):
        raise ValueError(f"{path!r} is not a plain path inside an EPN")
    return parts
