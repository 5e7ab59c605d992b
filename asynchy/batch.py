"""One sync batch: claim EPNs, start their transfers, and decide what each result means.

``Batch.decide`` is the one place that turns a result into what happens next,
row by row as docs/failures.md's table says: a data failure is charged to its
EPN and spaced out; a link failure gives the claim back uncharged and opens
the circuit breaker (no new EPN starts until the server answers a probe); a
setup failure gives the claim back and stops the batch; a source that changed
is listed again and copied again within ``--retry``.

Only the main thread runs this class, so only the main thread writes to the
database; pool workers return ``TransferResult`` values through the event
queue, and the breaker's probe runs in a thread that only posts an event.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from asynchy import claims
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.destinations import dest_base, dest_folder, dest_path
from asynchy.errors import AsynchyError, RemoteError, SetupError
from asynchy.failures import (
    IN_RUN_BASE,
    IN_RUN_CAP,
    NEXT_RUN_BASE,
    NEXT_RUN_CAP,
    PROBE_BASE,
    PROBE_CAP,
    backoff,
)
from asynchy.filters import Filters
from asynchy.jobs import FailureClass, Job, TransferResult
from asynchy.names import decode_name
from asynchy.preflight import ProbeResult, error_for, probe
from asynchy.rsync import RsyncOptions, files_from, partial_dir_for, rsync_argv, temp_dir_for

if TYPE_CHECKING:
    from asynchy.sync import SyncOptions, SyncProgress, SyncSummary

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ events on the batch's queue
@dataclass(frozen=True, slots=True)
class Progressed:
    epn: str
    done: int  # bytes of the current attempt so far


@dataclass(frozen=True, slots=True)
class Finished:
    epn: str
    future: Future[TransferResult]


@dataclass(frozen=True, slots=True)
class Probed:
    result: ProbeResult


Event = Progressed | Finished | Probed


class Pool(Protocol):
    cancel: threading.Event

    def submit(self, job: Job, epn: str) -> None: ...


class Stop(Protocol):
    requested: bool


@dataclass
class Running:
    claim: claims.Claim | None  # None in a dry run
    planned: claims.Planned
    job: Job
    dest_path: str
    reported: int = 0  # bytes shown on the progress bar for this attempt
    charged: int = 0  # data failures of this EPN in this run
    repair: bool = False  # the next copy compares by checksum


class Breaker:
    """Closed: EPNs start.  Open: a link failure was seen, and nothing new starts until a probe of the
    server succeeds.  Probes are spaced by jittered exponential back-off; after ``allowed`` failed
    probes the breaker gives up and the run ends (exit 1), every claim given back uncharged."""

    def __init__(self, allowed: int) -> None:
        self.allowed = max(1, allowed)
        self.open = False
        self.probing = False
        self.failed_probes = 0
        self.next_at = 0.0

    def trip(self, now: float) -> None:
        if not self.open:
            self.open, self.failed_probes, self.next_at = True, 0, now

    def due(self, now: float) -> bool:
        return self.open and not self.probing and now >= self.next_at

    def answered(self) -> None:
        self.open = self.probing = False

    def failed(self, now: float) -> bool:
        """A probe failed; True when that was the last one allowed."""
        self.probing = False
        self.failed_probes += 1
        if self.failed_probes >= self.allowed:
            return True
        self.next_at = now + backoff(self.failed_probes - 1, PROBE_BASE, PROBE_CAP)
        return False


@dataclass
class Batch:
    db: Database
    target: SshTarget | None
    opts: SyncOptions
    ropts: RsyncOptions
    worker: claims.WorkerId | None  # None in a dry run
    pool: Pool
    events: queue.Queue[Event]
    stop: Stop
    summary: SyncSummary
    progress: SyncProgress | None
    relist: Callable[
        [str], None
    ]  # list one EPN again into the inventory (a one-EPN walk --refresh)
    halt: AsynchyError | None = None  # why no new EPN may start (setup, or the link is down)
    running: dict[str, Running] = field(default_factory=dict)
    waiting: list[tuple[float, int, Running]] = field(default_factory=list)  # data retries
    tries: dict[str, int] = field(default_factory=dict)  # attempts of each EPN in this run
    selected: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)  # never claimed again in this run
    again: list[str] = field(default_factory=list)  # given back after a link failure; may retry
    queue: list[str] = field(default_factory=list)  # candidates: dry run, --epn, --mapped-only
    planned: dict[str, claims.Planned] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    exhausted: bool = False
    serial: int = 0

    def __post_init__(self) -> None:
        self.breaker = Breaker(self.opts.retry + 1)
        self.filtered = self.opts.epns is not None or self.opts.mapped_only
        settle = self.opts.settle
        self.settled_before = (
            datetime.now(UTC) - timedelta(seconds=settle) if settle is not None else None
        )

    # -------------------------------------------------------------- the loop
    def run(self) -> None:
        first = self._plan()
        if self.progress is not None:
            self.progress.start(sum(p.size for p in first), len(first))
        while True:
            if not self.stop.requested and self.halt is None:
                now = time.monotonic()
                self._start_due_retries(now)
                if self.breaker.due(now):
                    self._probe()
                if not self.breaker.open:
                    self._fill()
            if self.stop.requested or self.halt is not None:
                self._drop_waiting()
            if self._finished():
                return
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(event, Progressed):
                self._on_progress(event)
            elif isinstance(event, Finished):
                self._on_finished(event)
            else:
                self._on_probe(event.result)

    def _finished(self) -> bool:
        if self.running or self.waiting or self.breaker.probing:
            return False
        if self.stop.requested or self.halt is not None:
            return True
        if self.breaker.open:
            return False
        return not self.again and (self.exhausted or len(self.selected) >= self.opts.limit)

    # -------------------------------------------------------------- choosing and starting EPNs
    def _plan(self, exclude: set[str] | tuple[()] = ()) -> list[claims.Planned]:
        opts = self.opts
        found, skipped = claims.plan(
            self.db,
            order=opts.order,
            limit=opts.limit - len(self.selected),
            max_attempts=opts.max_attempts,
            epns=opts.epns,
            mapped_only=opts.mapped_only,
            destinations=opts.destinations,
            exclude=exclude,
            settled_before=self.settled_before,
        )
        self.summary.skipped.update({k: v for k, v in skipped.items() if k not in self.seen})
        for p in found:
            self.planned[p.epn] = p
            self.seen.add(p.epn)
            self.queue.append(p.epn)
        return found

    def _claim(self, candidates: list[str] | None, n: int) -> list[claims.Claim]:
        assert self.worker is not None
        return claims.claim(
            self.db,
            self.worker,
            candidates,
            n,
            order=self.opts.order,
            max_attempts=self.opts.max_attempts,
            lease=self.opts.lease,
            settled_before=self.settled_before,
            exclude=self.gave_up,
        )

    def _free(self) -> int:
        return self.opts.threads - len(self.running) - len(self.waiting)

    def _fill(self) -> None:
        if self._free() > 0 and self.again and not self.opts.dry_run:
            names, self.again = self.again[: self._free()], self.again[self._free() :]
            for c in self._claim(names, len(names)):  # taken by someone else meanwhile: fine
                self._start(c.epn, c)
        while self._free() > 0 and len(self.selected) < self.opts.limit and not self.exhausted:
            n = min(self._free(), self.opts.limit - len(self.selected))
            # others may have taken some of the candidates: look once more
            if (
                (self.opts.dry_run or self.filtered)
                and not self.queue
                and not self._plan(self.seen)
            ):
                self.exhausted = True
                return
            if self.opts.dry_run:
                names, self.queue = self.queue[:n], self.queue[n:]
                for name in names:
                    self._start(name, None)
                continue
            got = self._claim(self.queue if self.filtered else None, n)
            if self.filtered:
                # Candidates before the last one claimed were taken by others (or became ineligible).
                last = max((self.queue.index(c.epn) for c in got), default=len(self.queue) - 1)
                del self.queue[: last + 1]
            elif not got:
                self.exhausted = True
            for c in got:
                self._start(c.epn, c)

    def _start(self, epn: str, claim: claims.Claim | None) -> None:
        if claim is not None and not claim.walked and not self._list_first(claim):
            return
        planned = self.planned.setdefault(
            epn,
            claims.Planned(epn, claim.size, claim.file_count, "pending")
            if claim is not None
            else claims.Planned(epn, 0, 0, "pending"),
        )
        repair = claim is not None and claim.needs_repair
        job, dest = self._job(planned, claim, repair)
        self.selected.add(epn)
        self.summary.selected = len(self.selected)
        self._submit(Running(claim, planned, job, dest, repair=repair))

    def _list_first(self, claim: claims.Claim) -> bool:
        """An EPN asynchy never walked (an imported MeRC or as-walker row): list it now, keeping the
        claim, so that its files and their kinds are known before it is copied and verified."""
        assert self.worker is not None
        epn = claim.epn
        listed = self._relist(epn)
        complete = False
        if listed:
            complete, size, count = claims.walk_state(self.db, epn)
            self.planned[epn] = claims.Planned(epn, size, count, "pending")
        if listed and complete:
            log.info("EPN %s was never walked by asynchy: listed it (%d files)", epn, count)
            return True
        claims.release(self.db, self.worker, claim)  # uncharged
        self.gave_up.add(epn)
        self.summary.skipped[epn] = (
            "never walked, and listing it now was incomplete (see walk_errors); walk it again"
            if listed
            else "never walked, and it could not be listed now; walk it (asynchy walk --epn)"
        )
        return False

    def _submit(self, item: Running) -> None:
        epn = item.planned.epn
        self.tries[epn] = self.tries.get(epn, 0) + 1
        item.reported = 0
        self.running[epn] = item
        self.pool.submit(item.job, epn)
        self._counts()

    def _start_due_retries(self, now: float) -> None:
        while self.waiting and self.waiting[0][0] <= now:
            item = heapq.heappop(self.waiting)[2]
            item.job, _ = self._job(item.planned, item.claim, item.repair)
            self._submit(item)

    def _drop_waiting(self) -> None:
        """Stopping: the EPNs waiting for a retry give their claims back."""
        for _, _, item in self.waiting:
            if item.claim is not None and self.worker is not None:
                claims.release(self.db, self.worker, item.claim)
            self.summary.cancelled.append(item.planned.epn)
        self.waiting.clear()

    def _job(
        self, planned: claims.Planned, claim: claims.Claim | None, repair: bool
    ) -> tuple[Job, str]:
        tries = self.tries.get(planned.epn, 0)
        return build_job(self.db, self.target, self.opts, self.ropts, planned, claim, tries, repair)

    # -------------------------------------------------------------- results
    def _on_progress(self, event: Progressed) -> None:
        current = self.running.get(event.epn)
        if current is not None and event.done > current.reported and self.progress is not None:
            self.progress.advance(event.done - current.reported)
            current.reported = event.done

    def _on_finished(self, event: Finished) -> None:
        item = self.running.pop(event.epn)
        try:
            result = event.future.result()
        except (
            BrokenExecutor
        ):  # a --parallel worker process died (kill -9, OOM, Ctrl+C at start-up)
            kind: FailureClass = "cancelled" if self.stop.requested else "link"
            result = _made_up(item.job, kind, "the worker process died")
        except Exception as exc:  # a bug in the worker: not the EPN's fault; record it, keep going
            log.exception("transfer of EPN %s failed unexpectedly", event.epn)
            result = _made_up(item.job, "link", f"asynchy error: {exc}")
        self.serial += 1
        self.decide(item, result)
        self._counts()

    def decide(self, item: Running, result: TransferResult) -> None:
        """What happens after one result: docs/failures.md, row by row."""
        epn = item.planned.epn
        if result.stderr_log.strip():
            log.info(
                "rsync stderr for EPN %s (attempt %d):\n%s",
                epn,
                result.attempt,
                result.stderr_log.rstrip(),
            )
        if self.opts.dry_run:
            if result.ok:
                self.summary.would_change[epn] = result.changes
            else:
                self.summary.failed[epn] = ("failed", result.reason or result.classification)
            return
        for earlier in (self.summary.failed, self.summary.changed, self.summary.given_back):
            earlier.pop(epn, None)  # the summary tells each EPN's last word, once
        kind = result.classification
        another = self.tries[epn] < self.opts.retry + 1 and not self.stop.requested
        reason = result.reason or kind
        if kind == "ok":
            self._record(item, result, keep=False)
        elif kind == "cancelled":
            self._record(item, result, keep=False)
            self.summary.cancelled.append(epn)
        elif kind in ("link", "setup"):
            if self._record(item, result, keep=False) == "superseded":
                return
            self.summary.given_back[epn] = reason  # uncharged
            if kind == "setup":
                self.gave_up.add(epn)
                if self.halt is None:
                    self.halt = SetupError(reason)
                log.info("EPN %s: %s; given back uncharged, no new EPNs start", epn, reason)
                return
            if another:
                self.again.append(epn)
            else:
                self.gave_up.add(epn)
            self.breaker.trip(time.monotonic())
            log.info("EPN %s: %s; given back uncharged, checking the server", epn, reason)
        elif kind == "changed":
            self._changed(item, result, another)
        else:
            self._data_failure(item, result, another)

    def _changed(self, item: Running, result: TransferResult, another: bool) -> None:
        epn = item.planned.epn
        outcome = self._record(item, result, keep=another)
        relisted = self._relist(epn)
        if outcome == "retry" and relisted:
            log.info("EPN %s: %s; copying it again", epn, result.reason)
            item.job, _ = self._job(item.planned, item.claim, item.repair)
            self._submit(item)
            return
        if outcome == "retry" and item.claim is not None and self.worker is not None:
            claims.release(self.db, self.worker, item.claim)
        if outcome in ("retry", "changed"):
            self.summary.changed[epn] = result.reason or "changed"
            log.warning("EPN %s: %s; left for the next run", epn, result.reason)
        self.gave_up.add(epn)

    def _data_failure(self, item: Running, result: TransferResult, another: bool) -> None:
        epn = item.planned.epn
        claim = item.claim
        assert claim is not None
        wait = backoff(claim.failures + item.charged, NEXT_RUN_BASE, NEXT_RUN_CAP)
        outcome = self._record(item, result, keep=another, wait=wait)
        item.charged += 1
        reason = result.reason or result.classification
        if outcome == "retry":
            delay = backoff(self.tries[epn] - 1, IN_RUN_BASE, IN_RUN_CAP)
            item.repair = item.repair or result.classification == "checksum"
            log.warning("EPN %s: %s; retrying in %.1f s", epn, reason, delay)
            heapq.heappush(self.waiting, (time.monotonic() + delay, self.serial, item))
            return
        if outcome != "superseded":
            self.summary.failed[epn] = (outcome, reason)
            self.gave_up.add(epn)
        log.warning("EPN %s %s: %s", epn, outcome, reason)

    def _record(self, item: Running, result: TransferResult, *, keep: bool, wait: float = 0) -> str:
        assert self.worker is not None and item.claim is not None
        outcome = claims.record(
            self.db,
            self.worker,
            item.claim,
            result,
            max_attempts=self.opts.max_attempts,
            keep_claim=keep,
            dest_path=item.dest_path,
            lease=self.opts.lease,
            wait=wait,
        )
        self.summary.bytes += result.bytes_transferred
        epn = item.planned.epn
        if outcome == "complete":
            self.summary.complete.append(epn)
            if self.progress is not None:
                self.progress.advance(max(0, item.planned.size - item.reported))
            log.info(
                "EPN %s complete (%d files, %d bytes transferred)",
                epn,
                result.files_transferred,
                result.bytes_transferred,
            )
        elif outcome == "superseded":
            self.summary.failed[epn] = (
                outcome,
                "another worker took this EPN over (lease expired); its result stands",
            )
            self.gave_up.add(epn)
        return outcome

    def _relist(self, epn: str) -> bool:
        try:
            self.relist(epn)
            return True
        except AsynchyError as exc:
            log.warning("EPN %s could not be listed again: %s", epn, exc)
            if isinstance(exc, RemoteError):
                self.breaker.trip(time.monotonic())
            return False

    # -------------------------------------------------------------- the circuit breaker
    def _probe(self) -> None:
        self.breaker.probing = True
        target, prefix, ropts, events = self.target, self.opts.src_prefix, self.ropts, self.events

        def ask() -> None:
            events.put(Probed(probe(target, prefix, ropts)))

        threading.Thread(target=ask, name="asynchy-probe", daemon=True).start()

    def _on_probe(self, result: ProbeResult) -> None:
        where = self.target.known_hosts_name if self.target is not None else "the source"
        if result.kind == "ok":
            self.breaker.answered()
            log.info("%s answers again: going on", where)
            return
        if result.kind == "setup" or self.breaker.failed(time.monotonic()):
            self.halt = error_for(result, self.target, self.opts.src_prefix, where)
            self.breaker.answered()  # nothing more to wait for
            self.pool.cancel.set()  # running transfers stop and give their claims back
            log.info("stopping: %s", self.halt)  # the command's error line says it once
            return
        wait = self.breaker.next_at - time.monotonic()
        log.warning("%s does not answer (%s); next check in %.1f s", where, result.message, wait)

    def _counts(self) -> None:
        if self.progress is not None:
            self.progress.counts(
                len(self.summary.complete), len(self.summary.failed), len(self.running)
            )


def _made_up(job: Job, kind: FailureClass, reason: str) -> TransferResult:
    now = datetime.now(UTC)
    return TransferResult(job.epn, job.attempt, job.token, now, now, job.argv, None, kind, reason)


def build_job(
    db: Database,
    target: SshTarget | None,
    opts: SyncOptions,
    ropts: RsyncOptions,
    planned: claims.Planned,
    claimed: claims.Claim | None,
    tries: int,
    repair: bool,
) -> tuple[Job, str]:
    """The frozen Job of one attempt (what a pool worker needs, nothing more) and the EPN's dest."""
    raw = decode_name(planned.epn)
    base = dest_base(planned.epn, opts.dest, opts.destinations, opts.layout)
    folder = dest_folder(planned.epn, opts.dest, opts.destinations, opts.layout)
    temp = None if opts.dry_run else temp_dir_for(base, raw)
    partial = partial_dir_for(base, raw) if opts.partial and not opts.dry_run else None

    def argv(**kw: Any) -> tuple[str, ...]:
        return tuple(rsync_argv(target=target, prefix=opts.src_prefix, **kw))

    copy = argv(opts=replace(ropts, repair=repair), temp_dir=temp, partial_dir=partial)
    check_argv = repair_argv = None
    by_checksum = opts.verify == "checksum" or repair
    if not opts.dry_run:
        check_argv = argv(opts=ropts, check="checksum" if by_checksum else "quick")
        if by_checksum and not repair:
            repair_argv = argv(opts=replace(ropts, repair=True), temp_dir=temp, partial_dir=partial)
    expected = () if opts.dry_run else claims.expected_files(db, planned.epn)
    rules = Filters(opts.include, opts.exclude)
    if rules:  # what rsync is told to leave out is not expected in the copy
        expected = tuple(x for x in expected if not rules.excludes(x[0]))
    job = Job(
        epn=planned.epn,
        epn_raw=raw,
        attempt=(claimed.attempts if claimed else 0) + tries + 1,
        token=claimed.token if claimed else 0,
        argv=copy,
        stdin=files_from(raw),
        dest_dir=folder,
        temp_dir=os.fsencode(temp) if temp is not None else None,
        partial_dir=os.fsencode(partial) if partial is not None else None,
        control_dir=ropts.control_dir,
        expected=expected,
        regular_files=sum(1 for x in expected if x[3] == "file"),
        check_argv=check_argv,
        check_checksum=by_checksum,
        repair_argv=repair_argv,
        stall_timeout=opts.stall_timeout,
        dry_run=opts.dry_run,
    )
    return job, str(dest_path(planned.epn, opts.dest, opts.destinations, opts.layout))
