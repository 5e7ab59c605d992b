"""The listing protocol every source implements, and the values it yields.

Names are ``bytes`` all the way through this layer (POSIX names are bytes;
some are not UTF-8).  Paths of entries are relative to their EPN folder and
``/``-joined.  Times are whole seconds since the epoch, UTC (what SFTP v3 can
carry), so a local and an SFTP listing of the same tree are identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

EntryKind = Literal["file", "symlink"]
# permission: a folder we may not read; vanished: it disappeared while we walked;
# missing: the EPN folder itself does not exist (or is not a folder);
# bad-name: the server sent a name that is not a single path component; error: anything else.
IssueKind = Literal["permission", "vanished", "missing", "bad-name", "reserved-name", "error"]

FILES_CHUNK = 5000  # entries of one EPN handed over at a time


class Entry(NamedTuple):
    """A regular file or a symlink (never followed) inside an EPN (a tuple: walks make millions)."""

    path: bytes
    size: int
    mtime: int
    kind: EntryKind


@dataclass(frozen=True, slots=True)
class Issue:
    """Something that kept part of an EPN (or of the top folder) from being listed."""

    path: bytes  # relative to the EPN folder; b"" is the EPN folder itself
    kind: IssueKind
    message: str


@dataclass(frozen=True, slots=True)
class TopEntry:
    """A child of ``src_prefix``: EPN folders are the children with ``is_dir``."""

    name: bytes
    mtime: int
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Files:
    """Some entries of one EPN; more may follow until its EpnDone."""

    epn: bytes
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class EpnDone:
    """Every entry of the EPN has been handed over; ``issues`` lists what could not be read."""

    epn: bytes
    issues: list[Issue]


WalkEvent = Files | EpnDone


class Tree(Protocol):
    """A source of EPN folders.

    ``walk`` may list several EPNs at once and interleave their events, but all
    of an EPN's ``Files`` come before its ``EpnDone``.  An implementation that
    loses its connection raises ``asynchy.errors.ConnectionLost``; calling
    ``walk`` again (with the EPNs not yet done) reconnects.
    """

    source: str  # where the tree is, for logs and the walks table (never a secret)

    def list_epns(self) -> tuple[list[TopEntry], list[Issue]]:
        """The children of the source folder, and unsafe names met there."""
        ...

    def walk(self, epns: Sequence[bytes]) -> Iterator[WalkEvent]:
        """List the files and symlinks of each EPN (recursively, symlinks not followed)."""
        ...

    def close(self) -> None: ...
