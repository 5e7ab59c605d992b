"""The pool that runs transfers: threads, or processes with ``--parallel``, behind one interface
(submit a Job, get events on the batch's queue), and the private folder of the run's shared ssh
connections.  Only the main process writes to the database: workers return results.

A ``--parallel`` worker that dies (kill -9, the OOM killer) breaks its process pool: ``recover``
ends the pool's other workers and every rsync its jobs started before anything they were copying
is taken again, then starts a fresh pool (docs/failures.md, "link").
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
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from typing import Any

from asynchy.jobs import Job, TransferResult
from asynchy.processes import pid_alive
from asynchy.render import plural
from asynchy.rsyncrun import close_master, end_strays
from asynchy.sync_types import Event, Finished, Progressed
from asynchy.transfer import run_job

log = logging.getLogger(__name__)


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


class WorkerPool:
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


CONTROL_PREFIX = "asynchy-ssh-"


def close_control_dir(path: str) -> None:
    for name in os.listdir(path):
        close_master(os.path.join(path, name))
    shutil.rmtree(path, ignore_errors=True)


def sweep_control_dirs() -> None:
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
        close_control_dir(path)
