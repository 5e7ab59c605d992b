"""The values that pass between the queue (claims), the runner (transfer) and the batch (sync),
and how one attempt's Job is built from the run's options (``build_job``).

A worker gets a frozen ``Job`` and returns a ``TransferResult``; both cross
process boundaries (pickled) and carry no connection, session or lock.  No
I/O here; every module of the sync path may import this one.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from dataclasses import replace as _replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from asynchy.config import SshTarget
    from asynchy.rsync import RsyncOptions
    from asynchy.sync_types import SyncOptions

# The classes stored in ``epns.last_error_class`` and ``transfers.classification``.
FailureClass = Literal[
    "ok", "link", "setup", "partial", "verify", "checksum", "changed", "cancelled"
]


Order = Literal["ASC", "DESC"]  # sync --order: the oldest or the newest EPNs first

PART_MARK = "\x00"  # between an EPN and its part number in Job.key


KINDS = ("file", "symlink", "unverified")


class Expected:
    """The inventory's files of an EPN, compact: ``(path bytes, size, mtime seconds, kind)`` per
    file when iterated, held as one bytes of names and three arrays (about 65 bytes a file, not
    the 200 of a tuple each: an EPN of a million files).  ``have``: which files have their source
    checksum on record already (fixity), one flag each.  Picklable; never changed once built."""

    __slots__ = ("_ends", "_have", "_kinds", "_mtimes", "_names", "_sizes")

    def __init__(self, rows: Iterable[tuple[Any, ...]] = ()) -> None:
        """``rows``: (path, size, mtime, kind) or (path, size, mtime, kind, has a value)."""
        names = bytearray()
        ends, sizes, mtimes = array("q"), array("q"), array("q")
        kinds, have = bytearray(), bytearray()
        for row in rows:
            names += row[0]
            ends.append(len(names))
            sizes.append(row[1])
            mtimes.append(row[2])
            kinds.append(KINDS.index(row[3]))
            have.append(1 if len(row) > 4 and row[4] else 0)
        # kept as built (a bytes copy of a million names would double them for a moment)
        self._names, self._ends, self._sizes, self._mtimes = names, ends, sizes, mtimes
        self._kinds, self._have = bytes(kinds), bytes(have)

    def __len__(self) -> int:
        return len(self._ends)

    def __iter__(self) -> Iterator[tuple[bytes, int, int, str]]:
        names, ends, sizes, mtimes, kinds = (
            memoryview(self._names),
            self._ends,
            self._sizes,
            self._mtimes,
            self._kinds,
        )
        start = 0
        for i, end in enumerate(ends):
            yield bytes(names[start:end]), sizes[i], mtimes[i], KINDS[kinds[i]]
            start = end

    def has_value(self) -> Iterator[bool]:
        """Per file, in order: whether its source checksum is on record already."""
        return (bool(flag) for flag in self._have)

    def only(self, keep: Callable[[bytes], bool]) -> Expected:
        """The files whose path ``keep`` accepts (their flags kept)."""
        return Expected(
            (*row, flag) for row, flag in zip(self, self.has_value(), strict=True) if keep(row[0])
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expected) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> tuple[Any, ...]:
        return (self._names, self._ends, self._sizes, self._mtimes, self._kinds, self._have)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self._names, self._ends, self._sizes, self._mtimes, self._kinds, self._have = state


@dataclass(frozen=True, slots=True)
class Job:
    epn: str
    epn_raw: bytes
    attempt: int
    token: int
    argv: tuple[str, ...]
    stdin: bytes
    dest_dir: bytes  # the folder that receives the EPN's content: rsync runs there (its cwd)
    expected: Expected  # the inventory's files (path in the EPN, size, mtime, kind)
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
    # Fixity (docs/fixity.md): the spool file this job's checksum lines go to; for the whole EPN,
    # the source pass that fetches the values of files this run did not transfer (which files
    # have a value already: ``expected.has_value()``)
    sums_spool: str | None = None
    sums_argv: tuple[str, ...] | None = None

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
    sums_spool: str | None = None  # fixity: the checksums to record (asynchy.fixity.record)

    @property
    def ok(self) -> bool:
        return self.classification == "ok"


# ------------------------------------------------------------------ building one attempt's Job
@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt of an EPN is: its claim's token and the attempt's number (both 0-based
    on nothing in a dry run), whether the copy compares by checksum (a repair), and for a split
    EPN's part its index and files."""

    epn: str
    token: int
    number: int
    repair: bool = False
    part: tuple[int, list[bytes]] | None = None


def build_job(
    opts: SyncOptions,
    ropts: RsyncOptions,
    target: SshTarget | None,
    attempt: Attempt,
    expected: Expected | None = None,
) -> Job:
    """The frozen Job of one attempt: what a pool worker needs, nothing more.  ``expected`` is the
    inventory's files of the EPN; what the include/exclude rules leave out is not expected.

    A part of a split EPN has its own temporary folders, exactly its files on stdin, and no
    checks (the whole EPN's final pass verifies)."""
    from asynchy.destinations import dest_base, dest_folder, dest_root
    from asynchy.filters import Filters
    from asynchy.names import decode_name
    from asynchy.rsync import files_from, partial_dir_for, rsync_argv, temp_dir_for
    from asynchy.sums import spool_path

    epn, raw = attempt.epn, decode_name(attempt.epn)
    base = dest_base(epn, opts.dest, opts.destinations, opts.layout)
    temp = None if opts.dry_run else temp_dir_for(base, raw)
    partial = partial_dir_for(base, raw) if opts.partial and not opts.dry_run else None
    if attempt.part is not None:  # its own folders: <hash>.pN, <hash>.partial.pN
        index = attempt.part[0]
        temp = temp.with_name(f"{temp.name}.p{index}") if temp is not None else None
        partial = partial.with_name(f"{partial.name}.p{index}") if partial is not None else None

    def argv(**kw: Any) -> tuple[str, ...]:
        return tuple(rsync_argv(target=target, prefix=opts.src_prefix, **kw))

    copy = argv(opts=_replace(ropts, repair=attempt.repair), temp_dir=temp, partial_dir=partial)
    common: dict[str, Any] = {
        "epn": epn,
        "epn_raw": raw,
        "attempt": attempt.number,
        "token": attempt.token,
        "argv": copy,
        "dest_dir": dest_folder(epn, opts.dest, opts.destinations, opts.layout),
        "temp_dir": os.fsencode(temp) if temp is not None else None,
        "partial_dir": os.fsencode(partial) if partial is not None else None,
        "control_dir": ropts.control_dir,
        "stall_timeout": opts.stall_timeout,
        "prefix": opts.src_prefix,
        "dest_root": os.fsencode(dest_root(epn, opts.dest, opts.destinations, opts.layout)),
    }
    if ropts.checksum_algo is not None and ropts.sums_dir is not None and temp is not None:
        common["sums_spool"] = spool_path(ropts.sums_dir, temp.name, attempt.number)
    if attempt.part is not None:
        files = attempt.part[1]
        stdin = b"".join(raw + b"/./" + name + b"\0" for name in files)
        return Job(
            **common, stdin=stdin, expected=Expected(), regular_files=0, part=attempt.part[0]
        )
    check_argv = repair_argv = None
    by_checksum = opts.verify == "checksum" or attempt.repair
    if not opts.dry_run:
        check_argv = argv(opts=ropts, check="checksum" if by_checksum else "quick")
        if by_checksum and not attempt.repair:
            repair_argv = argv(
                opts=_replace(ropts, repair=True), temp_dir=temp, partial_dir=partial
            )
    rules = Filters(opts.include, opts.exclude)
    expected = expected if expected is not None else Expected()
    if rules:  # what rsync is told to leave out is not expected in the copy
        expected = expected.only(lambda path: not rules.excludes(path))
    return Job(
        **common,
        stdin=files_from(raw),
        expected=expected,
        regular_files=sum(1 for x in expected if x[3] == "file"),
        check_argv=check_argv,
        check_checksum=by_checksum,
        repair_argv=repair_argv,
        dry_run=opts.dry_run,
        sums_argv=argv(opts=ropts, check="sums") if "sums_spool" in common else None,
    )


def made_up(job: Job, kind: FailureClass, reason: str) -> TransferResult:
    """The result of an attempt that never ran to its end (its worker died, a stop)."""
    now = datetime.now(UTC)
    return TransferResult(job.epn, job.attempt, job.token, now, now, job.argv, None, kind, reason)
