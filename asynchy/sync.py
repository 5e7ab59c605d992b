"""``asynchy sync``: ordered, limited batches of EPNs copied by rsync in a thread or process pool.

The main thread claims EPNs, builds jobs, records results and drives the
progress bar; pool workers (threads, or processes with ``--parallel``) run
``transfer.run_job`` and only return results.  A heartbeat thread renews the
leases of this worker's claims.  The first Ctrl+C or SIGTERM stops new work,
cancels running rsyncs (their claims go back to the queue) and ends with
exit code 130; a second one exits at once.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol

from asynchy import claims
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.destinations import dest_base
from asynchy.errors import ConfigError
from asynchy.names import decode_name
from asynchy.processes import pid_alive
from asynchy.rsync import RsyncOptions, files_from, rsync_argv, rsync_version, temp_dir_for
from asynchy.transfer import Job, TransferResult, close_master, run_job

log = logging.getLogger(__name__)

Verify = Literal["size", "checksum"]


@dataclass(frozen=True, slots=True)
class SyncOptions:
    dest: Path
    src_prefix: str
    order: claims.Order = "ASC"
    limit: int = 50
    retry: int = 0
    threads: int = 2
    parallel: bool = False
    partial: bool = False
    compress: bool = False
    dry_run: bool = False
    epns: tuple[str, ...] | None = None
    bwlimit: str | None = None
    max_attempts: int = 5
    verify: Verify = "size"
    mapped_only: bool = False
    stall_timeout: float = 300.0
    lease: float = 300.0
    destinations: Mapping[str, str] | None = None
    rsync: str = "rsync"
    settle: float | None = None  # seconds: only EPNs whose newest file is at least this old


class SyncProgress(Protocol):
    def start(self, total_bytes: int, epns: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def counts(self, done: int, failed: int, running: int) -> None: ...
    def close(self) -> None: ...


@dataclass
class SyncSummary:
    dry_run: bool = False
    selected: int = 0
    complete: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (epn, outcome, reason)
    skipped: dict[str, str] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    would_change: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    rsync_version: str = ""
    worker_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "selected": self.selected,
            "complete": self.complete,
            "failed": [
                {"epn": epn, "outcome": outcome, "reason": reason}
                for epn, outcome, reason in self.failed
            ],
            "skipped": self.skipped,
            "cancelled": self.cancelled,
            "would_change": self.would_change,
            "bytes": self.bytes,
            "elapsed_seconds": round(self.elapsed, 3),
            "bytes_per_second": round(self.bytes / self.elapsed) if self.elapsed > 0 else 0,
            "interrupted": self.interrupted,
            "rsync": self.rsync_version,
            "worker_id": self.worker_id,
        }


# ------------------------------------------------------------------ pool workers (module level: picklable)
_WORKER_PROGRESS: Any = None
_WORKER_CANCEL: Any = None
PR_SET_PDEATHSIG = 1


def _init_process_worker(progress_queue: Any, cancel: Any) -> None:
    """In each --parallel worker: Ctrl+C is the main process's business; die with the main process."""
    global _WORKER_PROGRESS, _WORKER_CANCEL
    _WORKER_PROGRESS, _WORKER_CANCEL = progress_queue, cancel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _process_entry(job: Job) -> TransferResult:
    q = _WORKER_PROGRESS
    return run_job(job, on_progress=lambda epn, done: q.put((epn, done)), cancel=_WORKER_CANCEL)


class _Pool:
    """Threads or processes behind one interface: submit a Job, get events on one queue."""

    def __init__(self, threads: int, parallel: bool, events: queue.Queue[Any]) -> None:
        self.events = events
        self.parallel = parallel
        self.threads = threads
        self._relay: threading.Thread | None = None
        if parallel:  # imported only here: start-up time matters (docs/benchmarks.md)
            import multiprocessing

            self._ctx = multiprocessing.get_context("spawn")
            self._mp_queue = self._ctx.Queue()
            self.cancel: Any = self._ctx.Event()
            self.executor: Executor = self._process_pool()
            self._relay = threading.Thread(target=self._relay_progress, daemon=True)
            self._relay.start()
        else:
            self.cancel = threading.Event()
            self.executor = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="asynchy-rsync"
            )

    def _process_pool(self) -> Executor:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.threads,
            mp_context=self._ctx,
            initializer=_init_process_worker,
            initargs=(self._mp_queue, self.cancel),
        )

    def _relay_progress(self) -> None:
        while True:
            item = self._mp_queue.get()
            if item is None:
                return
            self.events.put(("progress", *item))

    def submit(self, job: Job, tag: Any) -> None:
        if self.parallel:
            try:
                fut: Future[TransferResult] = self.executor.submit(_process_entry, job)
            except BrokenExecutor:  # a worker process was killed: start a fresh pool
                log.warning("a worker process died; starting new worker processes")
                self.executor.shutdown(wait=False, cancel_futures=True)
                self.executor = self._process_pool()
                fut = self.executor.submit(_process_entry, job)
        else:
            events = self.events
            fut = self.executor.submit(
                run_job, job, lambda epn, done: events.put(("progress", epn, done)), self.cancel
            )
        fut.add_done_callback(lambda f: self.events.put(("done", tag, f)))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._relay is not None:
            self._mp_queue.put(None)
            self._relay.join(timeout=5)


# ------------------------------------------------------------------ the run
@dataclass
class _Running:
    claim: claims.Claim | None  # None in a dry run
    planned: claims.Planned
    job: Job
    tries: int  # attempts made in this run
    dest_path: str
    reported: int = 0


class _Stop:
    """SIGINT/SIGTERM: the first asks for a clean stop, the second exits at once."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            os.write(2, b"asynchy: interrupted again: exiting now\n")
            os._exit(130)  # rsync children die with us (parent-death signal)
        self.requested = True
        os.write(
            2, b"asynchy: stopping: cancelling running transfers (Ctrl+C again to exit at once)\n"
        )
        self._on_first()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Heartbeat(threading.Thread):
    def __init__(self, db: Database, worker: claims.WorkerId, lease: float) -> None:
        super().__init__(name="asynchy-heartbeat", daemon=True)
        self.db, self.worker, self.lease = db, worker, lease
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(0.5, self.lease / 3)
        while not self.stopped.wait(interval):
            try:
                claims.heartbeat(self.db, self.worker, self.lease)
            except Exception as exc:  # a database hiccup must not kill the transfers
                log.warning("heartbeat failed (leases not renewed): %s", exc)


CONTROL_PREFIX = "asynchy-ssh-"


def _close_control_dir(path: str) -> None:
    for name in os.listdir(path):
        close_master(os.path.join(path, name))
    shutil.rmtree(path, ignore_errors=True)


def _sweep_control_dirs() -> None:
    """Close what a killed sync left behind: its shared ssh connections and their folder."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(CONTROL_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            pid = int(name[len(CONTROL_PREFIX) :].split("-", 1)[0])
            if os.stat(path).st_uid != os.geteuid() or pid_alive(pid):
                continue
        except (ValueError, OSError):
            continue
        _close_control_dir(path)


def _job_for(
    planned: claims.Planned,
    claimed: claims.Claim | None,
    db: Database,
    target: SshTarget | None,
    opts: SyncOptions,
    ropts: RsyncOptions,
    tries: int,
) -> tuple[Job, str]:
    raw = decode_name(planned.epn)
    base = dest_base(planned.epn, opts.dest, opts.destinations)
    temp = None if opts.dry_run else temp_dir_for(base, raw)
    argv = rsync_argv(
        target=target, prefix=opts.src_prefix, dest_base=base, opts=ropts, temp_dir=temp
    )
    check_argv = None
    if not opts.dry_run:
        check_argv = tuple(
            rsync_argv(
                target=target,
                prefix=opts.src_prefix,
                dest_base=base,
                opts=ropts,
                check="checksum" if opts.verify == "checksum" else "quick",
            )
        )
    expected = () if opts.dry_run else claims.expected_files(db, planned.epn)
    job = Job(
        epn=planned.epn,
        epn_raw=raw,
        attempt=(claimed.attempts if claimed else 0) + tries + 1,
        token=claimed.token if claimed else 0,
        argv=tuple(argv),
        stdin=files_from(raw),
        dest_dir=os.fsencode(base) + b"/" + raw,
        temp_dir=os.fsencode(temp) if temp is not None else None,
        control_dir=ropts.control_dir,
        expected=expected,
        regular_files=sum(1 for x in expected if x[3] == "file"),
        check_argv=check_argv,
        check_checksum=opts.verify == "checksum",
        stall_timeout=opts.stall_timeout,
        dry_run=opts.dry_run,
    )
    return job, str(base / planned.epn)


def sync(
    db: Database,
    target: SshTarget | None,
    opts: SyncOptions,
    *,
    progress: SyncProgress | None = None,
) -> SyncSummary:
    """Run one sync batch; see the module docstring.  Never raises for a failed transfer."""
    started = time.monotonic()
    if not opts.dest.is_dir():
        raise ConfigError(f"dest {opts.dest} is not an existing folder: create it or fix dest")
    version, version_line = rsync_version(opts.rsync)
    log.info("using %s", version_line)
    ropts = RsyncOptions(
        rsync=opts.rsync,
        compress=opts.compress,
        partial=opts.partial,
        bwlimit=opts.bwlimit,
        dry_run=opts.dry_run,
        retry=opts.retry,
        old_rsync=version < (3, 4, 3),
    )
    # Fail early, before anything is claimed, if the ssh options cannot be built.
    rsync_argv(target=target, prefix=opts.src_prefix, dest_base=opts.dest, opts=ropts)
    summary = SyncSummary(dry_run=opts.dry_run, rsync_version=version_line)
    worker: claims.WorkerId | None = None
    heart: _Heartbeat | None = None
    if not opts.dry_run:
        claims.reclaim_dead_local(db)
        worker = claims.register_worker(db, "sync", opts.lease)
        summary.worker_id = worker.worker_id
        heart = _Heartbeat(db, worker, opts.lease)
        heart.start()
    events: queue.Queue[Any] = queue.Queue()
    pool = _Pool(opts.threads, opts.parallel, events)
    status = "finished"
    control_dir: str | None = None
    try:
        if target is not None:
            # A private folder for the shared ssh connections (see rsync.ssh_command).
            _sweep_control_dirs()
            control_dir = tempfile.mkdtemp(prefix=f"{CONTROL_PREFIX}{os.getpid()}-")
            ropts = replace(ropts, control_dir=control_dir)
        with _Stop(pool.cancel.set) as stop:
            _loop(db, target, opts, ropts, worker, pool, events, stop, summary, progress)
            summary.interrupted = stop.requested
        if summary.interrupted:
            status = "interrupted"
    except BaseException:
        status = "failed"
        pool.cancel.set()
        raise
    finally:
        pool.shutdown()
        if control_dir is not None:
            _close_control_dir(control_dir)
        if heart is not None:
            heart.stopped.set()
        if worker is not None:
            claims.finish_worker(db, worker, status)
        if progress is not None:
            progress.close()
        summary.elapsed = time.monotonic() - started
    return summary


def _loop(
    db: Database,
    target: SshTarget | None,
    opts: SyncOptions,
    ropts: RsyncOptions,
    worker: claims.WorkerId | None,
    pool: _Pool,
    events: queue.Queue[Any],
    stop: _Stop,
    summary: SyncSummary,
    progress: SyncProgress | None,
) -> None:
    settled_before = (
        datetime.now(UTC) - timedelta(seconds=opts.settle) if opts.settle is not None else None
    )
    planned, skipped = claims.plan(
        db,
        order=opts.order,
        limit=opts.limit,
        max_attempts=opts.max_attempts,
        epns=opts.epns,
        mapped_only=opts.mapped_only,
        destinations=opts.destinations,
        settled_before=settled_before,
    )
    summary.skipped.update(skipped)
    by_epn = {p.epn: p for p in planned}
    queue_epns = [p.epn for p in planned]  # candidates still to claim, in order
    seen: set[str] = set(queue_epns)
    taken = 0
    running: dict[str, _Running] = {}
    retries: list[tuple[float, int, _Running]] = []
    serial = 0
    if progress is not None:
        progress.start(sum(p.size for p in planned), len(planned))

    def counts() -> None:
        if progress is not None:
            progress.counts(len(summary.complete), len(summary.failed), len(running))

    def start(item: _Running) -> None:
        running[item.planned.epn] = item
        pool.submit(item.job, item.planned.epn)

    filtered = opts.epns is not None or opts.mapped_only
    exhausted = False
    while True:
        if not stop.requested:
            now = time.monotonic()
            while retries and retries[0][0] <= now and len(running) < opts.threads:
                item = heapq.heappop(retries)[2]
                item.job, _ = _job_for(
                    item.planned, item.claim, db, target, opts, ropts, item.tries
                )
                start(item)
            free = opts.threads - len(running) - len(retries)
            while free > 0 and taken < opts.limit and not exhausted:
                if not queue_epns and (
                    opts.dry_run or filtered
                ):  # others may have taken some: look again once
                    more, more_skipped = claims.plan(
                        db,
                        order=opts.order,
                        limit=opts.limit - taken,
                        max_attempts=opts.max_attempts,
                        epns=opts.epns,
                        mapped_only=opts.mapped_only,
                        destinations=opts.destinations,
                        exclude=seen,
                        settled_before=settled_before,
                    )
                    summary.skipped.update({k: v for k, v in more_skipped.items() if k not in seen})
                    for p in more:
                        by_epn[p.epn] = p
                        seen.add(p.epn)
                        queue_epns.append(p.epn)
                    if not more:
                        exhausted = True
                        break
                if opts.dry_run:
                    batch = [None] * min(free, len(queue_epns), opts.limit - taken)
                    names = queue_epns[: len(batch)]
                    del queue_epns[: len(batch)]
                else:
                    assert worker is not None
                    # Without --epn or --mapped-only, claim the next eligible EPNs of the whole queue (the plan
                    # above only sized the progress bar): a long candidate list would slow every claim down.
                    got = claims.claim(
                        db,
                        worker,
                        queue_epns if filtered else None,
                        min(free, opts.limit - taken),
                        order=opts.order,
                        max_attempts=opts.max_attempts,
                        lease=opts.lease,
                        settled_before=settled_before,
                    )
                    if filtered:
                        # Candidates before the last one claimed were taken by others (or became ineligible).
                        last = max(
                            (queue_epns.index(c.epn) for c in got), default=len(queue_epns) - 1
                        )
                        del queue_epns[: last + 1]
                    elif not got:
                        exhausted = True
                    batch = got  # type: ignore[assignment]
                    names = [c.epn for c in got]
                    for c in got:
                        by_epn.setdefault(
                            c.epn, claims.Planned(c.epn, c.size, c.file_count, "pending")
                        )
                for claimed, name in zip(batch, names, strict=True):
                    planned_row = by_epn[name]
                    job, dest = _job_for(planned_row, claimed, db, target, opts, ropts, 0)
                    start(_Running(claimed, planned_row, job, 0, dest))
                    taken += 1
                    summary.selected += 1
                    free -= 1
                counts()
        if stop.requested and retries:  # Ctrl+C while waiting to retry: give those claims back
            for _, _, waiting in retries:
                if waiting.claim is not None and worker is not None:
                    claims.release(db, worker, waiting.claim)
                summary.cancelled.append(waiting.planned.epn)
            retries.clear()
        if not running and not retries and (stop.requested or taken >= opts.limit or exhausted):
            break
        try:
            event = events.get(timeout=0.2)
        except queue.Empty:
            continue
        if event[0] == "progress":
            _, epn, done = event
            current = running.get(epn)
            if current is not None and done > current.reported and progress is not None:
                progress.advance(done - current.reported)
                current.reported = done
            continue
        _, epn, fut = event
        done_item = running.pop(epn)
        try:
            result: TransferResult = fut.result()
        except BrokenExecutor:  # a --parallel worker process died (kill -9, OOM)
            result = _failed_result(done_item.job, "the worker process died")
        except Exception as exc:  # a bug in the worker: record it, keep going
            log.exception("transfer of EPN %s failed unexpectedly", epn)
            result = _failed_result(done_item.job, f"asynchy error: {exc}")
        serial += 1
        _handle(db, worker, opts, done_item, result, summary, progress, retries, serial)
        counts()


def _failed_result(job: Job, reason: str) -> TransferResult:
    now = datetime.now(UTC)
    return TransferResult(
        job.epn, job.attempt, job.token, now, now, job.argv, None, "retryable", reason
    )


def _handle(
    db: Database,
    worker: claims.WorkerId | None,
    opts: SyncOptions,
    item: _Running,
    result: TransferResult,
    summary: SyncSummary,
    progress: SyncProgress | None,
    retries: list[tuple[float, int, _Running]],
    serial: int,
) -> None:
    epn = item.planned.epn
    if result.stderr_log.strip():
        log.info(
            "rsync stderr for EPN %s (attempt %d):\n%s",
            epn,
            result.attempt,
            result.stderr_log.rstrip(),
        )
    if opts.dry_run:
        if result.ok:
            summary.would_change[epn] = result.changes
        else:
            summary.failed.append((epn, "failed", result.reason or result.classification))
        return
    assert worker is not None and item.claim is not None
    retryable = result.classification in claims.RETRYABLE_CLASSES
    keep = retryable and item.tries < opts.retry
    outcome = claims.record(
        db,
        worker,
        item.claim,
        result,
        max_attempts=opts.max_attempts,
        keep_claim=keep,
        dest_path=item.dest_path,
        lease=opts.lease,
    )
    summary.bytes += result.bytes_transferred
    if outcome == "complete":
        summary.complete.append(epn)
        if progress is not None:
            progress.advance(max(0, item.planned.size - item.reported))
        log.info(
            "EPN %s complete (%d files, %d bytes transferred)",
            epn,
            result.files_transferred,
            result.bytes_transferred,
        )
    elif outcome == "retry":
        delay = min(60.0, 2.0**item.tries)
        log.warning("EPN %s: %s; retrying in %g s", epn, result.reason, delay)
        item.tries += 1
        heapq.heappush(retries, (time.monotonic() + delay, serial, item))
    elif outcome == "cancelled":
        summary.cancelled.append(epn)
    else:
        reason = result.reason or result.classification
        if outcome == "superseded":
            reason = "another worker took this EPN over (lease expired); its result stands"
        summary.failed.append((epn, outcome, reason))
        log.warning("EPN %s %s: %s", epn, outcome, reason)
