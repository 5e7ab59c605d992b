"""The values that pass between the queue (claims), the runner (transfer) and the batch (sync).

A worker gets a frozen ``Job`` and returns a ``TransferResult``; both cross
process boundaries (pickled) and carry no connection, session or lock.  No
I/O here; every module of the sync path may import this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

# The classes stored in ``epns.last_error_class`` and ``transfers.classification``.
FailureClass = Literal[
    "ok", "link", "setup", "partial", "verify", "checksum", "changed", "cancelled"
]


PART_MARK = "\x00"  # between an EPN and its part number in Job.key


@dataclass(frozen=True, slots=True)
class Job:
    epn: str
    epn_raw: bytes
    attempt: int
    token: int
    argv: tuple[str, ...]
    stdin: bytes
    dest_dir: bytes  # the folder that receives the EPN's content: rsync runs there (its cwd)
    expected: tuple[tuple[bytes, int, int, str], ...]  # (path in the EPN, size, mtime, kind)
    regular_files: int  # regular files the inventory lists (an empty source is not a success)
    temp_dir: bytes | None = None  # rsync --temp-dir: emptied before and removed after each attempt
    partial_dir: bytes | None = None  # --partial: kept between attempts, removed once complete
    control_dir: str | None = None  # where this run's shared ssh connections live
    # the dry run that compares the source now with the copy
    check_argv: tuple[str, ...] | None = None
    check_checksum: bool = False  # ... by content too (--verify checksum, or a repair)
    # the copy again with rsync --checksum: run at once when the checksum check finds files whose
    # content differs but whose size and mtime do not (rsync's quick check skipped a bad copy)
    repair_argv: tuple[str, ...] | None = None
    stall_timeout: float = 300.0
    dry_run: bool = False
    prefix: str = ""  # src_prefix as rsync gets it: a prefix rsync cannot enter is setup, not data
    # One part of a split EPN (docs/sync.md, "Filling the link"): ``stdin`` lists exactly its files,
    # rsync copies them and nothing is verified; the whole EPN's final pass verifies.
    part: int | None = None
    # the configured folder dest_dir, temp_dir and partial_dir are below (dest, or an absolute
    # destination): every folder under it is entered without following symlinks (asynchy.destfs)
    dest_root: bytes | None = None

    @property
    def key(self) -> str:
        """This unit of work's name on the batch's event queue: the EPN, or EPN NUL part (no
        folder name holds a NUL)."""
        return self.epn if self.part is None else f"{self.epn}{PART_MARK}{self.part}"


@dataclass(frozen=True, slots=True)
class TransferResult:
    epn: str
    attempt: int
    token: int
    started_at: datetime
    finished_at: datetime
    argv: tuple[str, ...]
    exit_code: int | None
    classification: FailureClass  # docs/failures.md
    reason: str | None
    bytes_transferred: int = 0
    files_transferred: int = 0
    changes: int = 0  # dry run: items rsync would transfer
    stdout_tail: str = ""
    stderr_tail: str = ""
    stderr_log: str = ""
    parts: tuple[dict[str, Any], ...] = ()  # a split EPN's parts in this attempt (transfers.parts)

    @property
    def ok(self) -> bool:
        return self.classification == "ok"
