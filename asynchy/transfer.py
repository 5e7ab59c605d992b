"""One EPN transfer: run rsync, watch it, verify the copy.  Runs in a pool thread or process.

A worker never touches the database: it gets a frozen ``Job`` and returns a
``TransferResult``; the main process records it.  rsync runs in its own
session (process group) so that a stall watchdog or a cancel can kill rsync
and its ssh together, and with a parent-death signal so that it does not
outlive asynchy after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from asynchy import destfs
from asynchy.failures import classify_exit, main_complaint
from asynchy.jobs import FailureClass, Job, TransferResult
from asynchy.render import plural
from asynchy.rsync import (
    SLOT,
    child_env,
    close_master_argv,
    describe_exit,
    parse_stats,
    progress_bytes,
)

TAIL_CHARS = 8000  # of stdout and of stderr kept in the transfers table
LOG_CHARS = 4 * 2**20  # of stderr kept for the log file
SETPRIV = shutil.which("setpriv")
PROGRESS_EVERY = 0.25  # seconds between progress reports of one rsync
# rsync writes each progress update at once (--outbuf=N, so the stall watchdog sees it); reading
# them in batches, after a short pause, costs a fraction of the CPU of waking for every line.
READ_PAUSE = 0.05

ProgressFn = Callable[[str, int], None]


@dataclass
class _Run:
    exit_code: int | None
    stdout: str
    stderr: str
    stderr_log: str
    stalled: bool
    cancelled: bool
    lines: int = 0  # itemized changes (dry runs)
    content_only: int = 0  # ... of them, files whose content differs but not their size or mtime
    error: str | None = None
    bytes_seen: int = 0
    log_truncated: bool = False
    out_tail: deque[str] = field(default_factory=deque)


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _group_alive(pgid: int) -> bool:
    """Does a process of this group still run?  (Zombies waiting for their new parent to reap
    them do not count: they hold nothing.)"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _wait_for_group(pgid: int, timeout: float = 5.0) -> None:
    """After the group's SIGKILL: until none of it runs (a stop or a stall is over only then)."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def end_strays(jobs: Iterable[Job]) -> int:
    """kill -9 every rsync still running for these jobs, found by their own ``--temp-dir`` or
    ``--partial-dir`` (no other transfer has them), with its process group (its receiver and
    ssh), and wait until none of them runs; returns how many groups were ended.

    A ``--parallel`` worker that died leaves its rsync running for a while: the same EPN must not
    be copied again (in the same folders) until that rsync has ended."""
    marks = set()
    for job in jobs:
        if job.temp_dir is not None:
            marks.add(b"--temp-dir=" + job.temp_dir)
        if job.partial_dir is not None:
            marks.add(b"--partial-dir=" + job.partial_dir)
    if not marks:
        return 0
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
            if marks.intersection(args):
                groups.add(os.getpgid(int(entry)))
        except (OSError, ProcessLookupError):
            continue
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for group in groups:
        _wait_for_group(group)
    return len(groups)


def _pinned_fds(cwd: bytes) -> tuple[int, ...]:
    """The descriptor a ``/proc/self/fd/N`` working folder needs in the child."""
    prefix = b"/proc/self/fd/"
    return (int(cwd[len(prefix) :]),) if cwd.startswith(prefix) else ()


def run_rsync(
    argv: tuple[str, ...],
    stdin: bytes,
    *,
    cwd: bytes,
    stall_timeout: float | None,
    cancel: Any,
    on_progress: Callable[[int], None] | None = None,
    count_itemized: bool = False,
) -> _Run:
    """Run one rsync to the end (or until stalled or cancelled); never raises for rsync's failures."""
    cmd = list(argv)
    if SETPRIV:
        cmd = [SETPRIV, "--pdeathsig", "TERM", "--", *cmd]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=child_env(os.environ),
            cwd=cwd,
            pass_fds=_pinned_fds(cwd),
        )
    except OSError as exc:
        return _Run(None, "", "", "", False, False, error=f"cannot run {argv[0]}: {exc.strerror}")
    watched = _Watched(proc, on_progress=on_progress, count_itemized=count_itemized)
    watched.start(stdin)
    watched.wait(cancel, stall_timeout)
    return watched.result()


class _Watched:
    """A running rsync: its output read by two threads (progress, itemized lines, stderr for the
    log), its exit awaited by a third; the caller's thread watches for a stall or a cancel."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        on_progress: Callable[[int], None] | None,
        count_itemized: bool,
    ) -> None:
        self.proc = proc
        self.on_progress = on_progress
        self.count_itemized = count_itemized
        self.finished = threading.Event()  # set when rsync has exited
        self.last_activity = time.monotonic()
        self.out_tail: deque[bytes] = deque()
        self.out_size = 0
        self.err_parts: list[bytes] = []
        self.err_size = 0
        self.itemized = 0
        self.content_only = 0
        self.seen = 0
        self.last_report = 0.0
        self.stalled = self.cancelled = False
        self.threads: list[threading.Thread] = []

    def start(self, stdin: bytes) -> None:
        for target in (self._read_stdout, self._read_stderr, self._wait_for_exit):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def _wait_for_exit(self) -> None:
        self.proc.wait()
        self.finished.set()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        pending = b""
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.last_activity = time.monotonic()
            self._keep_tail(chunk)
            pending += chunk
            *pieces, pending = pending.replace(b"\r", b"\n").split(b"\n")
            for piece in pieces:
                self._take_line(piece)
            if len(chunk) < 65536:  # the pipe holds 64 KiB: rsync does not wait for us meanwhile
                self.finished.wait(READ_PAUSE)  # but rsync's end is read at once

    def _keep_tail(self, chunk: bytes) -> None:
        self.out_tail.append(chunk)
        self.out_size += len(chunk)
        while self.out_size > 65536 and len(self.out_tail) > 1:
            self.out_size -= len(self.out_tail.popleft())

    def _take_line(self, piece: bytes) -> None:
        """An itemized line (counted) or a progress line (reported at most every PROGRESS_EVERY)."""
        if self.count_itemized and piece[:1] in (b">", b"<", b"c", b"h", b"*") and b" " in piece:
            self.itemized += 1
            flags = piece.split(b" ", 1)[0]  # YXcstpoguax: c checksum, s size, t time
            if flags[2:3] == b"c" and flags[3:5] == b"..":
                self.content_only += 1
            return
        done = progress_bytes(piece)
        if done is None:
            return
        self.seen = done
        now = time.monotonic()
        if self.on_progress is not None and now - self.last_report >= PROGRESS_EVERY:
            self.last_report = now
            self.on_progress(done)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := os.read(self.proc.stderr.fileno(), 65536):
            self.last_activity = time.monotonic()
            if self.err_size < LOG_CHARS:
                self.err_parts.append(chunk)
                self.err_size += len(chunk)

    def wait(self, cancel: Any, stall_timeout: float | None) -> None:
        """Until rsync exits; a cancel or a stall ends it (TERM, then KILL after 5 s)."""
        while not self.finished.wait(0.5):  # wakes twice a second, no busy polling
            if cancel is not None and cancel.is_set() and not self.cancelled:
                self.cancelled = True
                _kill_group(self.proc, signal.SIGTERM)
            elif (
                stall_timeout
                and time.monotonic() - self.last_activity > stall_timeout
                and not self.stalled
            ):
                self.stalled = True
                _kill_group(self.proc, signal.SIGTERM)
            if (self.stalled or self.cancelled) and not self.finished.wait(5):
                _kill_group(self.proc, signal.SIGKILL)
        _kill_group(self.proc, signal.SIGKILL)  # an ssh left behind in the group must not linger
        _wait_for_group(self.proc.pid)  # ... nor rsync's receiver child, reparented when it ends
        for thread in self.threads:
            thread.join(timeout=10)

    def result(self) -> _Run:
        stderr_all = b"".join(self.err_parts).decode("utf-8", "replace")
        return _Run(
            exit_code=self.proc.returncode,
            stdout=b"".join(self.out_tail).decode("utf-8", "replace"),
            stderr=stderr_all[-TAIL_CHARS:],
            stderr_log=stderr_all,
            stalled=self.stalled,
            cancelled=self.cancelled,
            lines=self.itemized,
            content_only=self.content_only,
            bytes_seen=self.seen,
            log_truncated=self.err_size >= LOG_CHARS,
        )


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


def slot_name() -> str:
    """This pool worker's name: its shared ssh connection is ``<control_dir>/<slot>``.

    The kernel's thread id is unique among the live threads of all processes,
    so two workers never share (and close) one connection."""
    return f"{os.getpid()}-{threading.get_native_id()}"


def with_slot(argv: tuple[str, ...] | None, slot: str) -> tuple[str, ...] | None:
    return None if argv is None else tuple(a.replace(SLOT, slot) for a in argv)


def close_master(control_path: str) -> None:
    """End a shared ssh connection (its socket may not exist: then nothing happens)."""
    if os.path.exists(control_path):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                close_master_argv(control_path),
                capture_output=True,
                timeout=10,
                check=False,
                env=child_env(os.environ),
            )


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
        result = _transfer(job, started, progress, cancel, folders.dest)
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
    cwd = _pinned(job.dest_dir, folder)
    run = run_rsync(
        job.argv,
        job.stdin,
        cwd=cwd,
        stall_timeout=job.stall_timeout,
        cancel=cancel,
        on_progress=progress,
        count_itemized=job.dry_run,
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
        return result("ok", None)
    if stats.regular_total == 0 and job.regular_files > 0:
        # Never re-listed: an unmounted source would empty the inventory and "complete" an empty copy.
        return result(
            "verify",
            f"the source listed no files but the inventory has {job.regular_files}: is it mounted?",
        )
    kind, reason = _verify(job, cancel, cwd)
    return result(kind, reason)


def _pinned(path: bytes, folder: int | None) -> bytes:
    """rsync's working folder: the open descriptor of the checked folder (``/proc/self/fd/N``
    in the child, which inherits it), so that a component swapped for a symlink after the check
    is not followed; the path itself when there is no descriptor (a dry run)."""
    return path if folder is None else f"/proc/self/fd/{folder}".encode()


def _verify(job: Job, cancel: Any, cwd: bytes) -> tuple[FailureClass, str | None]:
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


def _check(argv: tuple[str, ...], job: Job, cancel: Any, cwd: bytes) -> _Run:
    # No stall watchdog: a checksum pass prints nothing while it reads a large file.
    return run_rsync(
        argv, job.stdin, cwd=cwd, stall_timeout=None, cancel=cancel, count_itemized=True
    )
