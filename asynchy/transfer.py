"""One EPN transfer: its folders, rsync, and the verification of the copy.  Runs in a pool
thread or process.

A worker never touches the database: it gets a frozen ``Job`` and returns a
``TransferResult``; the main process records it.  Running one rsync (watched, cancelled, ended
with its whole process group) is asynchy.rsyncrun's.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import stat
import tempfile
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, BinaryIO

from asynchy import destfs
from asynchy.failures import classify_exit, main_complaint
from asynchy.jobs import FailureClass, Job, TransferResult
from asynchy.render import plural
from asynchy.rsync import describe_exit, parse_stats
from asynchy.rsyncrun import (
    ITEMIZE_WIDTH,
    ProgressFn,
    Run,
    Sums,
    close_master,
    run_rsync,
    slot_name,
    with_slot,
)
from asynchy.sums import read_spool


def files_differ(n: int) -> str:
    """``1 file differs``, ``3 files differ``: the count in a verification's reason."""
    return f"{plural(n, 'file')} {'differs' if n == 1 else 'differ'}"


def verify_local(job: Job) -> tuple[int, str | None]:
    """Compare the local copy with the inventory: (differences, description of the first few)."""
    problems: list[str] = []
    count = 0
    root = job.dest_dir
    for rel, size, mtime, kind in job.expected:
        path = root + b"/" + rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            count += 1
            if len(problems) < 3:
                problems.append(f"{os.fsdecode(rel)!r} missing")
            continue
        except OSError as exc:
            count += 1
            if len(problems) < 3:
                problems.append(f"{os.fsdecode(rel)!r}: {exc.strerror}")
            continue
        want_link = kind == "symlink"
        if kind == "unverified":  # imported without its kind: a file or a symlink will do
            wrong_kind = not (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode))
        else:
            wrong_kind = want_link != stat.S_ISLNK(st.st_mode) or (
                not want_link and not stat.S_ISREG(st.st_mode)
            )
        if wrong_kind:
            count += 1
            if len(problems) < 3:
                problems.append(f"{os.fsdecode(rel)!r} is not a {kind}")
        elif st.st_size != size or int(st.st_mtime) != mtime:
            count += 1
            if len(problems) < 3:
                problems.append(
                    f"{os.fsdecode(rel)!r} has size {st.st_size} and mtime {int(st.st_mtime)}, "
                    f"the inventory {size} and {mtime}"
                )
    return count, ("; ".join(problems) if problems else None)


def run_job(job: Job, on_progress: ProgressFn | None = None, cancel: Any = None) -> TransferResult:
    """Copy one EPN and check the copy; the result says what happened and why."""
    control_dir = job.control_dir
    if control_dir is not None:
        slot = slot_name()
        argv = with_slot(job.argv, slot)
        assert argv is not None
        job = replace(
            job,
            argv=argv,
            check_argv=with_slot(job.check_argv, slot),
            repair_argv=with_slot(job.repair_argv, slot),
            sums_argv=with_slot(job.sums_argv, slot),
        )
        result = _run_job(job, on_progress, cancel)
        if result.classification in ("link", "setup", "cancelled"):
            close_master(
                os.path.join(control_dir, slot)
            )  # the next attempt starts a fresh connection
        return result
    return _run_job(job, on_progress, cancel)


class _Folders:
    """The folders of one attempt, opened without following symlinks (asynchy.destfs): the EPN's
    destination folder (rsync's working folder, handed over as an open descriptor), asynchy's
    ``.asynchy-tmp`` beside it with the attempt's temporary and partial folders.  Closed by
    ``close``; ``tidy`` removes what the attempt leaves behind."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.dest: int | None = None  # the EPN's destination folder
        self.own: int | None = None  # <base>/.asynchy-tmp

    def prepare(self) -> None:
        job = self.job
        root = job.dest_root if job.dest_root is not None else os.path.dirname(job.dest_dir)
        self.dest = destfs.open_below(root, job.dest_dir, create=True)
        own = job.temp_dir or job.partial_dir
        if own is None:
            return
        for attempt in range(5):  # another transfer removes the shared folder once it is empty
            try:
                self._own_folders(root, own)
                return
            except FileNotFoundError:
                if self.own is not None:
                    os.close(self.own)
                    self.own = None
                if attempt == 4:
                    raise

    def _own_folders(self, root: bytes, own: bytes) -> None:
        job = self.job
        tmp = os.path.dirname(own)  # <base>/.asynchy-tmp
        base = destfs.open_below(root, os.path.dirname(tmp), create=True)
        try:
            self.own = destfs.private_folder(base, os.path.basename(tmp), tmp)
        finally:
            os.close(base)
        if job.temp_dir is not None:
            name = os.path.basename(job.temp_dir)
            destfs.remove(self.own, name)  # what a killed attempt left behind
            os.close(destfs.private_folder(self.own, name, job.temp_dir))
        if job.partial_dir is not None:
            name = os.path.basename(job.partial_dir)
            os.close(destfs.private_folder(self.own, name, job.partial_dir))

    def pinned(self, job: Job) -> Job:
        """The job with asynchy's temporary and partial folders named through the open
        ``.asynchy-tmp`` (``/proc/self/fd/N/<name>``, inherited by rsync): rsync resolves those
        paths again for every file, and a component swapped for a symlink after the check must
        not be followed (docs/security.md)."""
        if self.own is None:
            return job
        swap = {}
        for flag, path in (("--temp-dir", job.temp_dir), ("--partial-dir", job.partial_dir)):
            if path is not None:
                name = os.fsdecode(os.path.basename(path))
                swap[f"{flag}={os.fsdecode(path)}"] = f"{flag}=/proc/self/fd/{self.own}/{name}"

        def pin(argv: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(swap.get(arg, arg) for arg in argv)

        repair = None if job.repair_argv is None else pin(job.repair_argv)
        return replace(job, argv=pin(job.argv), repair_argv=repair)

    def tidy(self, result: TransferResult | None) -> None:
        """The temporary folder goes; the partial one once the attempt succeeded; and once the
        whole EPN is in place, whatever earlier attempts and parts left (``<hash>.*``)."""
        job = self.job
        if self.own is None:
            return
        ok = result is not None and result.ok
        if job.partial_dir is not None and ok:
            destfs.remove(self.own, os.path.basename(job.partial_dir))
        if job.temp_dir is not None:
            name = os.path.basename(job.temp_dir)
            if job.part is None and ok:
                for other in destfs.names(self.own):
                    if other.startswith(name + b"."):
                        destfs.remove(self.own, other)
            destfs.remove(self.own, name)
        tmp = os.path.dirname(job.temp_dir or job.partial_dir or b"")
        with contextlib.suppress(OSError):  # the shared folder, once no transfer uses it
            root = job.dest_root if job.dest_root is not None else os.path.dirname(job.dest_dir)
            base = destfs.open_below(root, os.path.dirname(tmp), create=False)
            try:
                os.rmdir(os.path.basename(tmp), dir_fd=base)
            finally:
                os.close(base)

    def close(self) -> None:
        for fd in (self.dest, self.own):
            if fd is not None:
                os.close(fd)
        self.dest = self.own = None


def _run_job(job: Job, on_progress: ProgressFn | None, cancel: Any) -> TransferResult:
    started = datetime.now(UTC)
    progress = (lambda done: on_progress(job.key, done)) if on_progress is not None else None
    folders = _Folders(job)
    if not job.dry_run:
        try:
            folders.prepare()
        except OSError as exc:
            folders.close()
            now = datetime.now(UTC)
            if isinstance(exc, destfs.UnsafeFolder):
                reason = str(exc)
            else:
                where = os.fsdecode(exc.filename) if exc.filename else os.fsdecode(job.dest_dir)
                reason = f"cannot create {where}: {exc.strerror}"
            return TransferResult(
                job.epn, job.attempt, job.token, started, now, job.argv, None, "setup", reason
            )
    result: TransferResult | None = None
    try:
        if job.dry_run and not os.path.isdir(
            job.dest_dir
        ):  # nothing copied yet: compare with nothing
            with tempfile.TemporaryDirectory(prefix="asynchy-dry-run-") as empty:
                return _transfer(
                    replace(job, dest_dir=os.fsencode(empty)), started, progress, cancel, None
                )
        result = _transfer(folders.pinned(job), started, progress, cancel, folders.dest)
        result = replace(result, argv=job.argv)  # on record as built, without descriptors
        return result
    finally:
        try:
            folders.tidy(result)
        finally:
            folders.close()


def _transfer(
    job: Job,
    started: datetime,
    progress: Callable[[int], None] | None,
    cancel: Any,
    folder: int | None,
) -> TransferResult:
    if job.sums_spool is None:
        return _copy(job, started, progress, cancel, folder, None)
    with open(job.sums_spool, "wb") as spool:
        result = _copy(job, started, progress, cancel, folder, spool)
    if not result.ok:  # only the values of a run that ended well count
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.sums_spool)
    return result


def _copy(
    job: Job,
    started: datetime,
    progress: Callable[[int], None] | None,
    cancel: Any,
    folder: int | None,
    spool: BinaryIO | None,
) -> TransferResult:
    cwd = _pinned(job.dest_dir, folder)
    run = run_rsync(
        job.argv,
        job.stdin,
        cwd=cwd,
        stall_timeout=job.stall_timeout,
        cancel=cancel,
        on_progress=progress,
        count_itemized=job.dry_run,
        sums=Sums(spool, b"T") if spool is not None else None,
    )
    stats = parse_stats(run.stdout)

    def result(classification: FailureClass, reason: str | None, **extra: Any) -> TransferResult:
        log = run.stderr_log + ("\n[stderr truncated]" if run.log_truncated else "")
        return TransferResult(
            epn=job.epn,
            attempt=job.attempt,
            token=job.token,
            started_at=started,
            finished_at=datetime.now(UTC),
            argv=job.argv,
            exit_code=run.exit_code,
            classification=classification,
            reason=reason,
            bytes_transferred=stats.bytes_transferred,
            files_transferred=stats.files_transferred,
            stdout_tail=run.stdout[-2000:],
            stderr_tail=run.stderr,
            stderr_log=log,
            **extra,
        )

    if run.error:
        return result("setup", run.error)
    if run.cancelled:
        return result("cancelled", "interrupted")
    if run.stalled:
        return result(
            "link", f"no progress for {job.stall_timeout:g} s: rsync killed by the stall watchdog"
        )
    kind = classify_exit(
        run.exit_code, run.stderr, prefix=job.prefix, cwd=os.fsdecode(job.dest_dir)
    )
    if kind != "ok":
        said = main_complaint(run.stderr)
        return result(kind, describe_exit(run.exit_code) + (f" ({said[:300]})" if said else ""))
    if job.dry_run:
        return result("ok", None, changes=run.lines)
    if job.part is not None:  # one part of a split EPN: the EPN's final pass verifies the whole
        return result("ok", None, sums_spool=job.sums_spool)
    if stats.regular_total == 0 and job.regular_files > 0:
        # Never re-listed: an unmounted source would empty the inventory and "complete" an empty copy.
        return result(
            "verify",
            f"the source listed no files but the inventory has {job.regular_files}: is it mounted?",
        )
    kind, reason = _verify(job, cancel, cwd, spool)
    if kind == "ok" and spool is not None:
        kind, reason = _source_sums(job, cancel, cwd, spool)
    return result(kind, reason, sums_spool=job.sums_spool if kind == "ok" else None)


def _pinned(path: bytes, folder: int | None) -> bytes:
    """rsync's working folder: the open descriptor of the checked folder (``/proc/self/fd/N``
    in the child, which inherits it), so that a component swapped for a symlink after the check
    is not followed; the path itself when there is no descriptor (a dry run)."""
    return path if folder is None else f"/proc/self/fd/{folder}".encode()


def _verify(
    job: Job, cancel: Any, cwd: bytes, spool: BinaryIO | None = None
) -> tuple[FailureClass, str | None]:
    """After rsync exit 0: the copy against the inventory, then against the source now.

    docs/failures.md: a copy that matches the source but not the inventory, or
    a source that moved on during the copy, is ``changed`` (sync lists the EPN
    again); same size and mtime but other content is a bad copy, repaired at
    once by checksum and otherwise ``checksum``; anything else is ``verify``.
    """
    differences, problems = verify_local(job)
    if job.check_argv is None:
        if differences:
            return "verify", f"verify: {files_differ(differences)} from the inventory ({problems})"
        return "ok", None
    what = "checksum check" if job.check_checksum else "check against the source"
    check = _check(job.check_argv, job, cancel, cwd)
    if check.content_only and check.lines == check.content_only and job.repair_argv is not None:
        repaired = run_rsync(
            job.repair_argv,
            job.stdin,
            cwd=cwd,
            stall_timeout=job.stall_timeout,
            cancel=cancel,
            sums=Sums(spool, b"T") if spool is not None else None,
        )
        if repaired.cancelled:
            return "cancelled", "interrupted"
        if repaired.exit_code != 0:
            kind = classify_exit(repaired.exit_code, repaired.stderr)
            return kind, "repair by checksum: " + describe_exit(repaired.exit_code)
        differences, problems = verify_local(job)
        check = _check(job.check_argv, job, cancel, cwd)
    if check.cancelled:
        return "cancelled", "interrupted"
    if check.exit_code != 0:
        kind = classify_exit(check.exit_code, check.stderr)
        return kind, f"{what}: " + describe_exit(check.exit_code)
    moved = check.lines - check.content_only
    if moved or (differences and not check.lines):
        seen = (
            f"{files_differ(moved)} from the copy now"
            if moved
            else f"{files_differ(differences)} from the inventory ({problems})"
        )
        return "changed", f"the source changed since it was listed ({seen}): listing it again"
    if check.content_only:
        return "checksum", f"verify: {files_differ(check.content_only)} from the source by checksum"
    if differences:
        return "verify", f"verify: {files_differ(differences)} from the inventory ({problems})"
    return "ok", None


def _check(argv: tuple[str, ...], job: Job, cancel: Any, cwd: bytes) -> Run:
    # No stall watchdog: a checksum pass prints nothing while it reads a large file.
    return run_rsync(
        argv, job.stdin, cwd=cwd, stall_timeout=None, cancel=cancel, count_itemized=True
    )


def _source_sums(
    job: Job, cancel: Any, cwd: bytes, spool: BinaryIO
) -> tuple[FailureClass, str | None]:
    """Fixity (docs/fixity.md): every regular file of a verified copy needs its source-side
    checksum.  The copy printed those of the files it sent; the others (in place from an earlier
    attempt or from the parts, or unchanged) are read at the source in one pass over just them."""
    assert job.sums_spool is not None and job.sums_argv is not None
    spool.flush()
    # The names the copy printed, as sorted hashes (8 bytes each, not a set of a million names);
    # a collision could only leave a file without its value, which the database check refuses.
    sent = _sorted_hashes(hash(path) for path, _value, _how in read_spool(job.sums_spool))
    need = [
        path
        for (path, _size, _mtime, kind), has in zip(
            job.expected, job.expected.has_value(), strict=True
        )
        if kind == "file" and not has and not _among(sent, hash(path))
    ]
    del sent
    if not need:
        return "ok", None
    stdin = b"".join(job.epn_raw + b"/./" + path + b"\0" for path in need)
    sums = Sums(spool, b"S", skip=ITEMIZE_WIDTH)
    run = run_rsync(job.sums_argv, stdin, cwd=cwd, stall_timeout=None, cancel=cancel, sums=sums)
    if run.cancelled:
        return "cancelled", "interrupted"
    if run.exit_code != 0:
        kind = classify_exit(run.exit_code, run.stderr)
        return kind, "source checksums: " + describe_exit(run.exit_code)
    spool.flush()
    if sums.lines < len(need):
        got = {path for path, _value, how in read_spool(job.sums_spool) if how == "source"}
        gone = [path for path in need if path not in got]
        if gone:
            return "changed", (
                f"the source has no checksum now for {plural(len(gone), 'file')} "
                f"(e.g. {os.fsdecode(gone[0])!r}): listing it again"
            )
    return "ok", None


def _sorted_hashes(values: Iterator[int], chunk: int = 1 << 16) -> array[int]:
    """The values sorted into one array, by sorted chunks merged: never a list of them all."""
    runs: list[array[int]] = []
    while part := list(itertools.islice(values, chunk)):
        part.sort()
        runs.append(array("q", part))
    return array("q", heapq.merge(*runs))


def _among(ordered: array[int], value: int) -> bool:
    at = bisect_left(ordered, value)
    return at < len(ordered) and ordered[at] == value
