"""``asynchy sync``: ordered, limited batches of EPNs copied by rsync in a thread or process pool;
the orchestration only.

First a preflight (asynchy.preflight) checks, before anything is claimed,
what would fail every EPN alike.  Then the main thread runs one ``Batch``
(asynchy.batch, the scheduler): it claims EPNs, builds jobs, and has each
result decided (failures.decide) and recorded (asynchy.verdicts); pool
workers (asynchy.pool: threads, or processes with ``--parallel``) run
``transfer.run_job`` and only return results.  A heartbeat thread renews the leases of this worker's
claims.  The first Ctrl+C or SIGTERM stops new work, cancels running rsyncs
(their claims go back to the queue) and ends with exit code 130; a second one
exits at once.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from asynchy import claims, fixity, workers
from asynchy.batch import Batch
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.destinations import resolve_layout
from asynchy.errors import AsynchyError, SetupError, UsageError
from asynchy.pool import CONTROL_PREFIX, WorkerPool, close_control_dir, sweep_control_dirs
from asynchy.preflight import check_dest, check_options, check_source
from asynchy.remote.base import Tree
from asynchy.render import plural
from asynchy.rsync import RsyncOptions, checksum_algo, rsync_argv, rsync_version
from asynchy.signals import StopSignals
from asynchy.sync_types import Event, SyncOptions, SyncProgress, SyncSummary
from asynchy.waiting import not_taken

__all__ = ["SyncOptions", "SyncProgress", "SyncSummary", "sync"]

log = logging.getLogger(__name__)


class _Heartbeat(threading.Thread):
    def __init__(self, db: Database, worker: workers.WorkerId, lease: float) -> None:
        super().__init__(name="asynchy-heartbeat", daemon=True)
        self.db, self.worker, self.lease = db, worker, lease
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(0.5, self.lease / 3)
        while not self.stopped.wait(interval):
            try:
                workers.heartbeat(self.db, self.worker, self.lease)
            except Exception as exc:  # a database hiccup must not kill the transfers
                log.warning("heartbeat failed (leases not renewed): %s", exc)


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
    worker: workers.WorkerId | None = None
    heart: _Heartbeat | None = None
    if not opts.dry_run:
        workers.reclaim_dead_local(db)
        worker = workers.register_worker(db, "sync", opts.lease)
        summary.worker_id = worker.worker_id
        heart = _Heartbeat(db, worker, opts.lease)
        heart.start()
    events: queue.Queue[Event] = queue.Queue()
    pool = WorkerPool(opts.threads, opts.parallel, events)
    status = "finished"
    control_dir: str | None = None
    sums_dir: str | None = None
    try:
        ropts, control_dir, sums_dir = _run_folders(target, ropts)
        if not opts.dry_run:  # damaged copies first, from the source (docs/fixity.md)
            from asynchy.repair import repair_damaged

            repair_damaged(db, target, opts, ropts, summary)
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
        fixity.drop_folder(sums_dir)
        if progress is not None:
            progress.close()
        summary.elapsed = time.monotonic() - started
    if opts.metrics_file is not None and not opts.dry_run:
        from asynchy import metrics

        rate = summary.bytes / summary.elapsed if summary.elapsed > 0 else 0.0
        metrics.write(db, opts.metrics_file, throughput=rate)
    return summary


def _run_folders(
    target: SshTarget | None, ropts: RsyncOptions
) -> tuple[RsyncOptions, str | None, str | None]:
    """The run's private folders: the attempts' checksum spools (fixity, docs/fixity.md) and, for
    a server, the shared ssh connections (see rsync.ssh_command)."""
    sums_dir = control_dir = None
    if ropts.checksum_algo is not None:
        sums_dir = fixity.spool_folder()
        ropts = replace(ropts, sums_dir=sums_dir)
    if target is not None:
        sweep_control_dirs()
        control_dir = tempfile.mkdtemp(prefix=f"{CONTROL_PREFIX}{os.getpid()}-")
        ropts = replace(ropts, control_dir=control_dir)
    return ropts, control_dir, sums_dir


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
        checksum_algo=(
            checksum_algo(opts.checksum_algo, opts.rsync)
            if opts.fixity and not opts.dry_run
            else None
        ),
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
    pool: WorkerPool,
    control_dir: str | None,
    heart: _Heartbeat | None,
    worker: workers.WorkerId | None,
    status: str,
) -> None:
    """Stop the pool, close the shared connections, give back what is still claimed, sign off.

    Each step runs even if one before it failed (a full disk, a locked database): the error that
    ended the run is the one reported, and a claim that cannot be given back now is taken back by
    the next run on this host (its owner process is gone)."""
    pool.shutdown()
    if control_dir is not None:
        close_control_dir(control_dir)
    if heart is not None:
        heart.stopped.set()
    if worker is None:
        return
    try:
        left = claims.release_all(db, worker)
        if left:
            log.warning("gave back %s this run still held", plural(left, "claim"))
        workers.finish_worker(db, worker, status)
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
