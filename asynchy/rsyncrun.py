"""Running one rsync to its end: its output read without blocking (progress, itemized changes,
stderr for the log), a stall watchdog, a cancel, and no process left behind.

rsync runs in its own session (process group) so that a stall watchdog or a cancel can kill rsync
and its ssh together, with a parent-death signal so that it does not outlive asynchy after
``kill -9``, and with the allow-listed environment of asynchy.rsync.  Also here: the shared ssh
connection of a pool worker (its slot), and ending the rsyncs a dead worker left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from asynchy.jobs import Job
from asynchy.rsync import SLOT, child_env, close_master_argv, progress_bytes

TAIL_CHARS = 8000  # of stdout and of stderr kept in the transfers table
LOG_CHARS = 4 * 2**20  # of stderr kept for the log file
SETPRIV = shutil.which("setpriv")
PROGRESS_EVERY = 0.25  # seconds between progress reports of one rsync
# rsync writes each progress update at once (--outbuf=N, so the stall watchdog sees it); reading
# them in batches, after a short pause, costs a fraction of the CPU of waking for every line.
READ_PAUSE = 0.05

ProgressFn = Callable[[str, int], None]


@dataclass
class Run:
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


ITEMIZE_WIDTH = 12  # "%i " in a source pass's lines: 11 flags and a space


class Sums:
    """Fixity: the lines of one rsync run that carry a file's checksum (``%C %n``, after ``skip``
    bytes of ``%i``), written to the attempt's spool file as ``TAG HEX NAME`` (the name as rsync
    escapes it), for the main process to record (asynchy.fixity).  Nothing is kept in memory."""

    _LINE = re.compile(rb"[0-9a-f]{32} .")

    def __init__(self, spool: BinaryIO, tag: bytes, skip: int = 0) -> None:
        self.spool, self.tag, self.skip = spool, tag, skip
        self.lines = 0

    def take(self, piece: bytes) -> bool:
        body = piece[self.skip :]
        if not self._LINE.match(body):
            return False
        self.spool.write(self.tag + b" " + body + b"\n")
        self.lines += 1
        return True


_BY_FD = re.compile(r"/proc/self/fd/([0-9]+)(?:/|$)")


_OWN_FOLDERS = ("--temp-dir=", "--partial-dir=")


def _pinned_fds(cwd: bytes, argv: Iterable[str]) -> tuple[int, ...]:
    """The descriptors the child needs: those a ``/proc/self/fd/N`` working folder, or asynchy's
    temporary and partial folders as ``/proc/self/fd/N/<name>`` (asynchy.transfer), name."""
    own = (arg.partition("=")[2] for arg in argv if arg.startswith(_OWN_FOLDERS))
    named = [os.fsdecode(cwd), *own]
    return tuple(sorted({int(m.group(1)) for m in map(_BY_FD.match, named) if m is not None}))


def run_rsync(
    argv: tuple[str, ...],
    stdin: bytes,
    *,
    cwd: bytes,
    stall_timeout: float | None,
    cancel: Any,
    on_progress: Callable[[int], None] | None = None,
    count_itemized: bool = False,
    sums: Sums | None = None,
) -> Run:
    """Run one rsync to the end (or until stalled or cancelled); never raises for rsync's failures.
    ``sums``: where its checksum lines go (fixity)."""
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
            pass_fds=_pinned_fds(cwd, argv),
        )
    except OSError as exc:
        return Run(None, "", "", "", False, False, error=f"cannot run {argv[0]}: {exc.strerror}")
    watched = _Watched(proc, on_progress=on_progress, count_itemized=count_itemized, sums=sums)
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
        sums: Sums | None = None,
    ) -> None:
        self.proc = proc
        self.sums = sums
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
        """A checksum line (to the spool), an itemized line (counted) or a progress line
        (reported at most every PROGRESS_EVERY)."""
        if self.sums is not None and self.sums.take(piece):
            return
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

    def result(self) -> Run:
        stderr_all = b"".join(self.err_parts).decode("utf-8", "replace")
        return Run(
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
