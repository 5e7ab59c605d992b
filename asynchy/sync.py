"""``asynchy sync``: ordered, limited batches of EPNs copied by rsync in a thread or process pool.

First a preflight (asynchy.preflight) checks, before anything is claimed,
what would fail every EPN alike.  Then the main thread runs one ``Batch``
(asynchy.batch): it claims EPNs, builds jobs, decides what each result means
(docs/failures.md), records it and drives the progress bar; pool workers
(threads, or processes with ``--parallel``) run ``transfer.run_job`` and only
return results.  A heartbeat thread renews the leases of this worker's
claims.  The first Ctrl+C or SIGTERM stops new work, cancels running rsyncs
(their claims go back to the queue) and ends with exit code 130; a second one
exits at once.
"""

from __future__ import annotations

import contextlib
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
from pathlib import Path
from typing import Any, Literal, Protocol

from asynchy import claims
from asynchy.batch import Batch, Event, Finished, Progressed
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.destinations import resolve_layout
from asynchy.errors import AsynchyError, SetupError, UsageError
from asynchy.jobs import Job, TransferResult
from asynchy.preflight import check_dest, check_options, check_source
from asynchy.processes import pid_alive
from asynchy.remote.base import Tree
from asynchy.render import plural
from asynchy.rsync import RsyncOptions, rsync_argv, rsync_version
from asynchy.schedule import DEFAULT_SPLIT_MIN
from asynchy.signals import StopSignals
from asynchy.transfer import close_master, end_strays, run_job
from asynchy.waiting import Waiting, not_taken

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
    bwlimit: str | None = None  # the host's total for the run, or a timetable (schedule.py)
    max_attempts: int = 5
    verify: Verify = "size"
    mapped_only: bool = False
    stall_timeout: float = 300.0
    lease: float = 300.0
    destinations: Mapping[str, str] | None = None
    rsync: str = "rsync"
    settle: float | None = None  # seconds: only EPNs whose newest file is at least this old
    layout: str | None = None  # where an EPN goes below dest (destinations.resolve_layout)
    include: tuple[str, ...] = ()  # rsync filter rules (and verification skips what they leave out)
    exclude: tuple[str, ...] = ()
    chmod: str | None = None
    ignore_file: Path | None = None  # HPC ASSyncy's ignore.yml: its EPNs count as copied
    metrics_file: Path | None = None  # Prometheus text, written after the run (asynchy.metrics)
    streams_per_epn: int | None = None  # parts of one EPN at most (None: --threads; 1: never split)
    split_min: int = DEFAULT_SPLIT_MIN  # bytes: a smaller EPN is never split
    time_limit: float | None = None  # seconds: then no new EPN, running ones stopped (uncharged)
    time_limit_text: str = ""  # the option that set it, for the summary


class SyncProgress(Protocol):
    def start(self, total_bytes: int, epns: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def counts(self, done: int, failed: int, running: int) -> None: ...
    def close(self) -> None: ...


@dataclass
class SyncSummary:
    """What one run did, counted in EPNs (an EPN tried three times is one EPN)."""

    dry_run: bool = False
    selected: int = 0
    complete: list[str] = field(default_factory=list)
    failed: dict[str, tuple[str, str]] = field(
        default_factory=dict
    )  # charged: epn -> (outcome, why)
    changed: dict[str, str] = field(default_factory=dict)  # listed again; copied by the next run
    given_back: dict[str, str] = field(default_factory=dict)  # link or setup: uncharged
    skipped: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # its folder would overlap another's
    cancelled: list[str] = field(default_factory=list)
    would_change: dict[str, int] = field(default_factory=dict)
    plan: list[dict[str, Any]] = field(default_factory=list)  # in start order: epn, bytes, parts
    bytes: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    timed_out: str = ""  # the time limit that ended the run (--max-duration 6h, --stop-at 07:00)
    rsync_version: str = ""
    worker_id: str | None = None
    stop_error: AsynchyError | None = None  # the setup or link problem that ended the run early
    not_taken: list[Waiting] = field(default_factory=list)  # why the others were not taken

    @property
    def unfinished(self) -> bool:
        """Some selected EPN is not complete (exit code 3), though the run itself went to its end."""
        return bool(self.failed or self.changed or self.given_back or self.refused)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "selected": self.selected,
            "complete": self.complete,
            "failed": [
                {"epn": epn, "outcome": outcome, "reason": reason}
                for epn, (outcome, reason) in self.failed.items()
            ],
            "changed": [{"epn": epn, "reason": why} for epn, why in self.changed.items()],
            "given_back": [{"epn": epn, "reason": why} for epn, why in self.given_back.items()],
            "stopped": str(self.stop_error) if self.stop_error is not None else None,
            "not_taken": [
                {"reason": w.reason, "epns": w.epns, "hint": w.hint} for w in self.not_taken
            ],
            "skipped": self.skipped,
            "refused": [{"epn": epn, "reason": why} for epn, why in self.refused.items()],
            "cancelled": self.cancelled,
            "would_change": self.would_change,
            "plan": self.plan,
            "bytes": self.bytes,
            "elapsed_seconds": round(self.elapsed, 3),
            "bytes_per_second": round(self.bytes / self.elapsed) if self.elapsed > 0 else 0,
            "interrupted": self.interrupted,
            "time_limit_reached": self.timed_out or None,
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
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # ignored from now on
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

    def __init__(self, threads: int, parallel: bool, events: queue.Queue[Event]) -> None:
        self.events = events
        self.parallel = parallel
        self.threads = threads
        self._relay: threading.Thread | None = None
        self.cancelled = False
        # the process pool's jobs not settled yet (by key), with the pool they went to
        self._jobs: dict[str, tuple[Job, Executor]] = {}
        if parallel:  # imported only here: start-up time matters (docs/benchmarks.md)
            import multiprocessing

            self._ctx = multiprocessing.get_context("spawn")
            self.executor: Executor = self._process_pool()
        else:
            self.cancel: Any = threading.Event()
            self.executor = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="asynchy-rsync"
            )

    def _process_pool(self) -> Executor:
        """A process pool with a progress queue and a cancel event of its own: a worker killed
        while it used them can leave their locks held for good, so a new pool never shares
        them with the one it replaces."""
        from concurrent.futures import ProcessPoolExecutor

        self._mp_queue = self._ctx.Queue()
        self.cancel = self._ctx.Event()
        if self.cancelled:
            self.cancel.set()
        self._relay = threading.Thread(
            target=self._relay_progress, args=(self._mp_queue,), daemon=True
        )
        self._relay.start()
        return ProcessPoolExecutor(
            max_workers=self.threads,
            mp_context=self._ctx,
            initializer=_init_process_worker,
            initargs=(self._mp_queue, self.cancel),
        )

    def _relay_progress(self, progress: Any) -> None:
        while True:
            item = progress.get()
            if item is None:
                return
            self.events.put(Progressed(*item))

    def cancel_all(self) -> None:
        """Stop every running transfer (they end as cancelled); new ones start cancelled."""
        self.cancelled = True
        self.cancel.set()

    def submit(self, job: Job) -> None:
        key = job.key
        if self.parallel:
            self._jobs[key] = (job, self.executor)  # before submit: a refusal may come late
            try:
                fut: Future[TransferResult] = self._spawn_safely(job)
            except (BrokenExecutor, OSError, RuntimeError):
                # A worker process was killed (kill -9, the OOM killer): the pool is broken, or
                # half-way there ("handle is closed" while its manager winds down) - after it
                # may have taken the job all the same.  The job ends as the pool's running ones
                # did - "the worker process died", a link failure: given back uncharged - once
                # everything the pool started has ended; a fresh pool takes the next ones.
                self.recover(key)
                fut = Future()
                fut.set_exception(BrokenExecutor("the worker process died"))
            fut.add_done_callback(lambda f: self._settled(key, f))
        else:
            events = self.events
            fut = self.executor.submit(
                run_job, job, lambda name, done: events.put(Progressed(name, done)), self.cancel
            )
        fut.add_done_callback(lambda f: self.events.put(Finished(key, f)))

    def _settled(self, key: str, fut: Future[TransferResult]) -> None:
        """A job of the process pool that ended normally leaves nothing behind to clean up (one
        that failed with its pool is forgotten by recover)."""
        if not isinstance(fut.exception(), BrokenExecutor):
            self._jobs.pop(key, None)

    def recover(self, key: str) -> None:
        """A worker process died, and with it the process pool (the job ``key`` failed with it):
        before any EPN it was copying is taken again, the pool's other workers and every rsync
        its jobs started are ended (an rsync outlives its worker for a while, and the next
        attempt of its EPN uses the same folders), then a fresh pool takes the next jobs.  Once
        per broken pool; threads never break."""
        if not self.parallel or self._jobs.get(key, (None, None))[1] is not self.executor:
            return  # a job of a pool already ended and replaced
        log.warning("a worker process died; ending its pool and starting new worker processes")
        old = self.executor
        workers = list((getattr(old, "_processes", None) or {}).values())
        for process in workers:
            with contextlib.suppress(Exception):
                process.kill()
        for process in workers:
            with contextlib.suppress(Exception):
                process.join(5)
        jobs = list(self._jobs.items())  # one step: pool threads settle jobs meanwhile
        ended = end_strays(job for _, (job, pool) in jobs if pool is old)
        if ended:
            log.info("ended %s of the dead pool", plural(ended, "rsync"))
        self._jobs = {k: v for k, v in jobs if v[1] is not old}
        self._drop_executor(wait=False)
        self.executor = self._process_pool()

    def _spawn_safely(self, job: Job) -> Future[TransferResult]:
        """Submit; a worker process started meanwhile is born with SIGINT blocked, so a Ctrl+C on
        the terminal (sent to the whole process group) cannot hit it before its initializer runs.
        The main process gets that Ctrl+C as soon as the mask is lifted."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return self.executor.submit(_process_entry, job)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _drop_executor(self, *, wait: bool) -> None:
        """Shut the executor down; a broken process pool may say "handle is closed" while its
        manager thread winds down (CPython's own race): it is gone either way."""
        try:
            self.executor.shutdown(wait=wait, cancel_futures=True)
        except (OSError, RuntimeError) as exc:
            log.debug("shutting down a broken worker pool: %s", exc)

    def shutdown(self) -> None:
        self._drop_executor(wait=True)
        if self._relay is not None:
            self._mp_queue.put(None)
            self._relay.join(timeout=5)
            self._mp_queue.cancel_join_thread()  # never wait at exit on a lock a dead worker held


# ------------------------------------------------------------------ the run
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


def sync(
    db: Database,
    target: SshTarget | None,
    opts: SyncOptions,
    *,
    progress: SyncProgress | None = None,
    open_tree: Callable[[], Tree] | None = None,
) -> SyncSummary:
    """Run one sync batch; see the module docstring.  Never raises for a failed transfer.

    Raises before anything is claimed when preflight finds a setup or link
    problem (docs/failures.md); a run stopped later by one returns its summary
    with ``stop_error`` set, after giving every claim back.
    """
    started = time.monotonic()
    if opts.epns:  # a typo is exit 2 with the closest names, before anything else (as show, reset)
        from asynchy.lookup import require_known

        require_known(db, opts.epns)
    ropts, version_line = _preflight(target, opts)
    summary = SyncSummary(dry_run=opts.dry_run, rsync_version=version_line)
    if opts.ignore_file is not None and not opts.dry_run:
        from asynchy.merge import record_ignore_file

        record_ignore_file(db, opts.ignore_file)
    worker: claims.WorkerId | None = None
    heart: _Heartbeat | None = None
    if not opts.dry_run:
        claims.reclaim_dead_local(db)
        worker = claims.register_worker(db, "sync", opts.lease)
        summary.worker_id = worker.worker_id
        heart = _Heartbeat(db, worker, opts.lease)
        heart.start()
    events: queue.Queue[Event] = queue.Queue()
    pool = _Pool(opts.threads, opts.parallel, events)
    status = "finished"
    control_dir: str | None = None
    try:
        if target is not None:
            # A private folder for the shared ssh connections (see rsync.ssh_command).
            _sweep_control_dirs()
            control_dir = tempfile.mkdtemp(prefix=f"{CONTROL_PREFIX}{os.getpid()}-")
            ropts = replace(ropts, control_dir=control_dir)
        with StopSignals(pool.cancel_all) as stop:
            batch = Batch(
                db=db,
                target=target,
                opts=opts,
                ropts=ropts,
                worker=worker,
                pool=pool,
                events=events,
                stop=stop,
                summary=summary,
                progress=progress,
                relist=_relister(db, open_tree),
            )
            batch.run()
            summary.interrupted = stop.requested
            if batch.timed_out and not stop.requested:
                summary.timed_out = opts.time_limit_text or "the time limit"
        status = _conclude(db, batch, target, opts, ropts, summary)
    except BaseException:
        status = "failed"
        pool.cancel_all()
        raise
    finally:
        _wind_down(db, pool, control_dir, heart, worker, status)
        if progress is not None:
            progress.close()
        summary.elapsed = time.monotonic() - started
    if opts.metrics_file is not None and not opts.dry_run:
        from asynchy import metrics

        rate = summary.bytes / summary.elapsed if summary.elapsed > 0 else 0.0
        metrics.write(db, opts.metrics_file, throughput=rate)
    return summary


def _preflight(target: SshTarget | None, opts: SyncOptions) -> tuple[RsyncOptions, str]:
    """Everything checked before the database is touched (docs/failures.md): option values,
    rsync's version, the destination, the layout, and one small rsync that proves the server,
    its host key, our login, its rsync and src_prefix.  Returns the rsync options and version."""
    check_options(target, opts.bwlimit)
    version, version_line = rsync_version(opts.rsync)
    log.info("using %s", version_line)
    check_dest(opts.dest, write=not opts.dry_run)
    resolve_layout(opts.layout, opts.destinations)
    ropts = RsyncOptions(
        rsync=opts.rsync,
        compress=opts.compress,
        partial=opts.partial,
        bwlimit=None,  # the run's total (or timetable): each rsync gets its share (Batch._rate)
        dry_run=opts.dry_run,
        retry=opts.retry,
        old_rsync=version < (3, 4, 3),
        include=opts.include,
        exclude=opts.exclude,
        chmod=opts.chmod,
    )
    rsync_argv(
        target=target, prefix=opts.src_prefix, opts=ropts
    )  # ssh options that cannot be built
    check_source(target, opts.src_prefix, ropts)
    return ropts, version_line


def _conclude(
    db: Database,
    batch: Batch,
    target: SshTarget | None,
    opts: SyncOptions,
    ropts: RsyncOptions,
    summary: SyncSummary,
) -> str:
    """After the batch: why fewer EPNs were taken than asked for, and how the run ended."""
    if (
        summary.selected < opts.limit
        and not (summary.interrupted or summary.timed_out)
        and batch.halt is None
    ):
        summary.not_taken = not_taken(
            db,
            max_attempts=opts.max_attempts,
            settled_before=batch.settled_before,
            destinations=opts.destinations,
            mapped_only=opts.mapped_only,
        )
    if batch.halt is not None:
        summary.stop_error = _precise(batch.halt, target, opts.src_prefix, ropts)
        return "stopped"
    return "interrupted" if summary.interrupted else "finished"


def _precise(
    halt: AsynchyError, target: SshTarget | None, prefix: str, ropts: RsyncOptions
) -> AsynchyError:
    """A setup problem seen mid-run: ask the server once more, for the walk's own words when it is ssh."""
    if not isinstance(halt, SetupError):
        return halt
    try:
        check_source(target, prefix, ropts)
    except AsynchyError as exc:
        return exc
    return halt


def _wind_down(
    db: Database,
    pool: _Pool,
    control_dir: str | None,
    heart: _Heartbeat | None,
    worker: claims.WorkerId | None,
    status: str,
) -> None:
    """Stop the pool, close the shared connections, give back what is still claimed, sign off.

    Each step runs even if one before it failed (a full disk, a locked database): the error that
    ended the run is the one reported, and a claim that cannot be given back now is taken back by
    the next run on this host (its owner process is gone)."""
    pool.shutdown()
    if control_dir is not None:
        _close_control_dir(control_dir)
    if heart is not None:
        heart.stopped.set()
    if worker is None:
        return
    try:
        left = claims.release_all(db, worker)
        if left:
            log.warning("gave back %s this run still held", plural(left, "claim"))
        claims.finish_worker(db, worker, status)
    except Exception as exc:  # the run's own error, if any, is the one that matters
        log.warning(
            "could not sign off in the database (the next sync takes the claims back): %s", exc
        )


def _relister(db: Database, open_tree: Callable[[], Tree] | None) -> Callable[[str], None]:
    """List one EPN again into the inventory: what ``asynchy walk --refresh --epn EPN`` does."""

    def relist(epn: str) -> None:
        if open_tree is None:
            raise UsageError(
                f"EPN {epn}: no source to list it again from; run asynchy walk --refresh"
            )
        from asynchy import inventory

        inventory.walk(
            db, open_tree(), inventory.WalkOptions(epns=(epn,), refresh=True, workers=1, retries=1)
        )

    return relist
