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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from asynchy import claims
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.destinations import Overlaps, dest_base, dest_folder, dest_path, dest_root
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
from asynchy.jobs import PART_MARK, FailureClass, Job, TransferResult
from asynchy.logs import Block
from asynchy.names import decode_name
from asynchy.preflight import ProbeResult, error_for, probe
from asynchy.render import iso_utc, plural
from asynchy.rsync import RsyncOptions, files_from, partial_dir_for, rsync_argv, temp_dir_for
from asynchy.schedule import Bandwidth, part_count, rsync_rate, share, split_files

if TYPE_CHECKING:
    from asynchy.sync import SyncOptions, SyncProgress, SyncSummary

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ events on the batch's queue
@dataclass(frozen=True, slots=True)
class Progressed:
    key: str  # Job.key: the EPN, or EPN#part
    done: int  # bytes of the current attempt so far


@dataclass(frozen=True, slots=True)
class Finished:
    key: str
    future: Future[TransferResult]


@dataclass(frozen=True, slots=True)
class Probed:
    result: ProbeResult


Event = Progressed | Finished | Probed


class Pool(Protocol):
    def submit(self, job: Job) -> None: ...

    def cancel_all(self) -> None: ...  # every running transfer stops (cancelled)

    def recover(self, key: str) -> None: ...  # the job's worker process died


class Stop(Protocol):
    requested: bool


@dataclass
class Running:
    """An EPN taken by this run, from its claim to its verdict (docs/sync.md, "Filling the link").

    Copied whole: one job (copy and verify).  Split: its parts run as units of their own, then the
    whole EPN's final pass (the same job as a whole copy: rsync skips what the parts copied, then
    verifies); a part that failed is run again alone in the next attempt."""

    claim: claims.Claim | None  # None in a dry run
    planned: claims.Planned
    job: Job
    dest_path: str
    reported: dict[str, int] = field(default_factory=dict)  # bytes on the bar, per unit
    charged: int = 0  # data failures of this EPN in this run
    repair: bool = False  # the next copy compares by checksum
    parts: list[list[bytes]] = field(default_factory=list)  # the split (empty: copied whole)
    parts_left: set[int] = field(default_factory=set)  # not yet copied in this run
    busy: set[str] = field(default_factory=set)  # its units in the pool now
    part_results: list[dict[str, Any]] = field(default_factory=list)  # this attempt's parts
    part_failure: TransferResult | None = None  # the worst failed part of this attempt
    part_bytes: int = 0  # transferred by this attempt's parts


@dataclass(order=True)
class Unit:
    """One part of a split EPN waiting for a free slot (the largest first)."""

    bytes: int
    epn: str = field(compare=False)
    part: int = field(compare=False)


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
    running: dict[str, Running] = field(default_factory=dict)  # EPNs between claim and verdict
    waiting: list[tuple[float, int, Running]] = field(default_factory=list)  # data retries
    tries: dict[str, int] = field(default_factory=dict)  # attempts of each EPN in this run
    selected: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)  # never claimed again in this run
    again: list[str] = field(default_factory=list)  # given back after a link failure; may retry
    queue: list[str] = field(default_factory=list)  # the batch's EPNs not taken yet, largest first
    planned: dict[str, claims.Planned] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    exhausted: bool = False
    serial: int = 0
    units: list[Unit] = field(default_factory=list)  # parts waiting for a slot (a heap)
    busy: int = 0  # jobs in the pool now (parts, whole EPNs, final passes)
    assigned: dict[str, float] = field(default_factory=dict)  # unit key -> its --bwlimit share
    done_parts: dict[str, tuple[int, set[int]]] = field(default_factory=dict)  # epn -> (K, done)
    batch_bytes: int = 0  # the planned batch's size: an EPN's fair share is batch_bytes / threads
    timed_out: bool = False  # --max-duration / --stop-at reached: stopping as on Ctrl+C
    overlaps: Overlaps | None = None  # every copied EPN's folder, built at the first plan

    def __post_init__(self) -> None:
        self.breaker = Breaker(self.opts.retry + 1)
        limit = self.opts.time_limit
        self.deadline = time.monotonic() + limit if limit is not None else None
        settle = self.opts.settle
        self.settled_before = (
            datetime.now(UTC) - timedelta(seconds=settle) if settle is not None else None
        )
        self.bandwidth = Bandwidth.parse(self.opts.bwlimit)

    @property
    def stopping(self) -> bool:
        """A stop was asked for (Ctrl+C, SIGTERM) or the run's time is up: nothing new starts,
        running transfers are cancelled and their claims given back uncharged."""
        return self.stop.requested or self.timed_out

    def _check_deadline(self) -> None:
        if self.deadline is None or self.stopping or time.monotonic() < self.deadline:
            return
        self.timed_out = True
        self.pool.cancel_all()
        log.info(
            "the time limit is reached: no new EPN starts; stopping %s",
            plural(len(self.running), "running EPN"),
        )

    # -------------------------------------------------------------- the loop
    def run(self) -> None:
        first = self._plan()
        if self.progress is not None:
            self.progress.start(sum(p.size for p in first), len(first))
        while True:
            self._check_deadline()
            if not self.stopping and self.halt is None:
                now = time.monotonic()
                self._start_due_retries(now)
                if self.breaker.due(now):
                    self._probe()
                if not self.breaker.open:
                    self._fill()
            if self.stopping or self.halt is not None:
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
        if self.stopping or self.halt is not None:
            return True
        if self.breaker.open:
            return False
        return not self.again and (self.exhausted or len(self.selected) >= self.opts.limit)

    # -------------------------------------------------------------- choosing and starting work
    def _plan(self, exclude: set[str] | tuple[()] = ()) -> list[claims.Planned]:
        """The batch: the next EPNs by --order (docs/sync.md); started largest first (LPT)."""
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
        found = [p for p in found if not self._overlaps(p.epn)]
        for p in found:
            self.planned[p.epn] = p
            self.seen.add(p.epn)
            self.queue.append(p.epn)
            self.batch_bytes += p.size
        self.queue.sort(key=lambda epn: -self.planned[epn].size)  # stable: --order among equals
        return found

    def _overlaps(self, epn: str) -> bool:
        """An EPN whose folder would overlap another's is refused at plan time (docs/sync.md)."""
        if self.overlaps is None:
            opts = self.opts
            copied = claims.copied_epns(
                self.db, mapped_only=opts.mapped_only, destinations=opts.destinations
            )
            self.overlaps = Overlaps(copied, opts.dest, opts.destinations, opts.layout)
        why = self.overlaps.conflict(epn)
        if why is None:
            return False
        self.seen.add(epn)
        self.summary.refused[epn] = (
            f"{why}: one copy would write into the other; asynchy skip one of them, or fix "
            "destinations or layout"
        )
        log.warning("EPN %s refused: %s", epn, self.summary.refused[epn])
        return True

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
        return self.opts.threads - self.busy - len(self.waiting)

    def _next_candidate(self) -> str | None:
        """The largest EPN of the batch not taken yet (planning again when others took the rest)."""
        if len(self.selected) >= self.opts.limit or self.exhausted:
            return None
        if not self.queue and not self._plan(self.seen):
            self.exhausted = True
            return None
        return self.queue[0]

    def _fill(self) -> None:
        """Fill the free slots, the largest remaining work first: a waiting part of a split EPN,
        or the next EPN of the batch (claimed now; split into parts if it is big)."""
        while self._free() > 0 and self.again and not self.opts.dry_run:
            # one at a time: the ones still in `again` count as starting for --bwlimit's share
            name = self.again.pop(0)
            for c in self._claim([name], 1):  # taken by someone else meanwhile: fine
                self._start(c.epn, c)
        while self._free() > 0:
            candidate = self._next_candidate()
            unit = self.units[0] if self.units else None
            if unit is not None and (
                candidate is None or -unit.bytes >= self.planned[candidate].size
            ):
                heapq.heappop(self.units)
                self._submit_part(self.running[unit.epn], unit.part)
                continue
            if candidate is None:
                return
            self.queue.pop(0)
            if self.opts.dry_run:
                self._start(candidate, None)
                continue
            for c in self._claim([candidate], 1):  # none: another worker took it meanwhile
                self._start(c.epn, c)

    def _start(self, epn: str, claim: claims.Claim | None) -> None:
        if claim is not None and claim.needs_listing and not self._list_first(claim):
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
        item = Running(claim, planned, job, dest, repair=repair, parts=self._split(planned, job))
        if self.opts.dry_run:
            self._show_plan(item)
        k, done = self.done_parts.get(epn, (len(item.parts), set()))
        if item.parts and k != len(item.parts):
            done = set()  # the inventory changed since: a new split
        item.parts_left = set(range(len(item.parts))) - done
        self._attempt(item)

    def _relisted(self, item: Running) -> None:
        """The EPN was listed again (its source changed): its job and its split from the inventory
        as it is now; parts copied before count for nothing (rsync skips what is in place)."""
        epn = item.planned.epn
        _complete, size, count = claims.walk_state(self.db, epn)
        item.planned = self.planned[epn] = claims.Planned(epn, size, count, "pending")
        item.job, item.dest_path = self._job(item.planned, item.claim, item.repair)
        item.parts = self._split(item.planned, item.job)
        item.parts_left = set(range(len(item.parts)))
        self.done_parts.pop(epn, None)

    def _split(self, planned: claims.Planned, job: Job) -> list[list[bytes]]:
        """The EPN's parts (docs/sync.md); none when it is copied whole."""
        opts = self.opts
        k = part_count(
            planned.size,
            planned.file_count,
            batch_bytes=self.batch_bytes,
            threads=opts.threads,
            split_min=opts.split_min,
            streams=opts.streams_per_epn or opts.threads,
        )
        if k <= 1:
            return []
        expected = job.expected
        if opts.dry_run:  # a dry run's job expects nothing: the plan shows the split all the same
            rules = Filters(opts.include, opts.exclude)
            expected = tuple(
                x for x in claims.expected_files(self.db, planned.epn) if not rules.excludes(x[0])
            )
        parts = split_files([(path, size) for path, size, _m, _k in expected], k)
        return parts if len(parts) > 1 else []

    def _show_plan(self, item: Running) -> None:
        sizes = {p: s for p, s, _m, _k in claims.expected_files(self.db, item.planned.epn)}
        self.summary.plan.append(
            {
                "epn": item.planned.epn,
                "bytes": item.planned.size,
                "parts": [sum(sizes.get(f, 0) for f in part) for part in item.parts],
            }
        )

    def _list_first(self, claim: claims.Claim) -> bool:
        """An EPN whose inventory cannot be trusted yet: never walked by asynchy (an imported MeRC
        or as-walker row), or changed during a copy and not listed since (the relist met a link
        fault, a kill -9, a second Ctrl+C).  List it now, keeping the claim, so that its files are
        known before it is copied and verified; if that fails, the claim goes back uncharged."""
        assert self.worker is not None
        epn = claim.epn
        what = (
            "was never walked by asynchy"
            if not claim.walked
            else "changed and was not listed since"
        )
        error = self._relist(epn)
        if error is None:
            complete, size, count = claims.walk_state(self.db, epn)
            self.planned[epn] = claims.Planned(epn, size, count, "pending")
            if complete:
                log.info("EPN %s %s: listed it now (%s)", epn, what, plural(count, "file"))
                return True
        claims.release(self.db, self.worker, claim)  # uncharged
        self.gave_up.add(epn)
        if error is None:
            self.summary.skipped[epn] = (
                f"{what}, and listing it now was incomplete (see walk_errors); walk it again"
            )
        elif isinstance(error, RemoteError):  # the link: the breaker decides, nothing is charged
            self.summary.given_back[epn] = f"{what}, and it could not be listed now: {error}"
        else:
            self.summary.skipped[epn] = f"{what}, and it could not be listed now: {error}"
        return False

    def _attempt(self, item: Running) -> None:
        """Start an attempt of an EPN: its parts still to copy wait for slots (the largest first),
        or, when none are left (or it is not split), the whole EPN's job runs."""
        epn = item.planned.epn
        self.tries[epn] = self.tries.get(epn, 0) + 1
        item.reported = {}
        item.part_results, item.part_failure, item.part_bytes = [], None, 0
        self.running[epn] = item
        if item.parts and item.parts_left and not self.opts.dry_run:
            sizes = {p: s for p, s, _m, _k in item.job.expected}
            for i in sorted(item.parts_left):
                size = sum(sizes.get(f, 0) for f in item.parts[i])
                heapq.heappush(self.units, Unit(-size, epn, i))
        else:
            self._submit_final(item)
        self._counts()

    def _rate(self, key: str) -> str | None:
        """This unit's share of the host's --bwlimit (docs/sync.md), kept until it ends."""
        budget = self.bandwidth.rate_at(datetime.now()) if self.bandwidth is not None else None
        if budget is None:
            return None
        startable = len(self.units) + len(self.queue) + len(self.again) + 1
        rate = share(
            budget,
            sum(self.assigned.values()),
            starting=max(1, min(self._free(), startable)),
            running=self.busy,
        )
        assert rate is not None
        self.assigned[key] = rate
        return rsync_rate(rate)

    def _submit_final(self, item: Running) -> None:
        item.job, _ = self._job(
            item.planned, item.claim, item.repair, bwlimit=self._rate(item.job.key)
        )
        self._pool_submit(item, item.job)

    def _submit_part(self, item: Running, part: int) -> None:
        key = f"{item.planned.epn}{PART_MARK}{part}"
        job, _ = self._job(
            item.planned,
            item.claim,
            item.repair,
            part=(part, item.parts[part]),
            bwlimit=self._rate(key),
        )
        self._pool_submit(item, job)

    def _pool_submit(self, item: Running, job: Job) -> None:
        item.busy.add(job.key)
        self.busy += 1
        self.pool.submit(job)

    def _start_due_retries(self, now: float) -> None:
        while self.waiting and self.waiting[0][0] <= now:
            self._attempt(heapq.heappop(self.waiting)[2])

    def _drop_waiting(self) -> None:
        """Stopping: the EPNs waiting for a retry, or for slots for their parts, give their claims
        back (the ones with units in the pool do so when those end, cancelled)."""
        self.units.clear()
        idle = [item for item in self.running.values() if not item.busy]
        for item in [entry for _, _, entry in self.waiting] + idle:
            if item.claim is not None and self.worker is not None:
                claims.release(self.db, self.worker, item.claim)
            self.summary.cancelled.append(item.planned.epn)
            self.running.pop(item.planned.epn, None)
        self.waiting.clear()

    def _job(
        self,
        planned: claims.Planned,
        claim: claims.Claim | None,
        repair: bool,
        *,
        part: tuple[int, list[bytes]] | None = None,
        bwlimit: str | None = None,
    ) -> tuple[Job, str]:
        tries = max(0, self.tries.get(planned.epn, 0) - 1)
        ropts = replace(self.ropts, bwlimit=bwlimit)
        return build_job(
            self.db, self.target, self.opts, ropts, planned, claim, tries, repair, part=part
        )

    # -------------------------------------------------------------- results
    def _on_progress(self, event: Progressed) -> None:
        current = self.running.get(event.key.partition(PART_MARK)[0])
        if current is None or self.progress is None:
            return
        before = current.reported.get(event.key, 0)
        if event.done > before:
            self.progress.advance(event.done - before)
            current.reported[event.key] = event.done

    def _on_finished(self, event: Finished) -> None:
        epn, _, part = event.key.partition(PART_MARK)
        item = self.running[epn]
        item.busy.discard(event.key)
        self.busy -= 1
        self.assigned.pop(event.key, None)
        try:
            result = event.future.result()
        except (
            BrokenExecutor
        ):  # a --parallel worker process died (kill -9, OOM, Ctrl+C at start-up)
            self.pool.recover(event.key)  # its rsyncs end before the EPN is taken again
            kind: FailureClass = "cancelled" if self.stopping else "link"
            result = _made_up(item.job, kind, "the worker process died")
        except Exception as exc:  # a bug in the worker: not the EPN's fault; record it, keep going
            log.exception("transfer of EPN %s failed unexpectedly", epn)
            result = _made_up(item.job, "link", f"asynchy error: {exc}")
        self.serial += 1
        if part:
            self._on_part(item, int(part), result)
        else:
            self._verdict(item, result)
        self._counts()

    def _on_part(self, item: Running, part: int, result: TransferResult) -> None:
        """One part ended; when the attempt's last one has, the final pass (all copied) or the
        verdict (a part failed: the worst of them)."""
        epn = item.planned.epn
        sizes = {p: s for p, s, _m, _k in item.job.expected}
        item.part_results.append(
            {
                "part": part,
                "of": len(item.parts),
                "files": len(item.parts[part]),
                "bytes": sum(sizes.get(f, 0) for f in item.parts[part]),
                "bytes_transferred": result.bytes_transferred,
                "exit_code": result.exit_code,
                "classification": result.classification,
                "started_at": iso_utc(result.started_at),
                "finished_at": iso_utc(result.finished_at),
            }
        )
        item.part_bytes += result.bytes_transferred
        if result.ok:
            item.parts_left.discard(part)
            self.done_parts[epn] = (len(item.parts), set(range(len(item.parts))) - item.parts_left)
        elif item.part_failure is None or _worse(result, item.part_failure):
            item.part_failure = result
            log.info("EPN %s part %d: %s", epn, part, result.reason or result.classification)
        if item.busy or any(u.epn == epn for u in self.units):
            return  # one EPN, one verdict: after its other parts
        if item.part_failure is not None:
            self._verdict(item, item.part_failure)
        elif not (self.stopping or self.halt is not None):
            self._submit_final(item)  # rsync skips what the parts copied; then the whole verifies
        else:
            self._verdict(item, _made_up(item.job, "cancelled", "interrupted"))

    def _verdict(self, item: Running, result: TransferResult) -> None:
        """The attempt's result goes to decide, with its parts (transfers.parts) and their bytes."""
        if item.part_results:
            from_final = result is not item.part_failure
            result = replace(
                result,
                parts=tuple(sorted(item.part_results, key=lambda p: p["part"])),
                bytes_transferred=item.part_bytes + (result.bytes_transferred if from_final else 0),
            )
        self.running.pop(item.planned.epn, None)
        self.decide(item, result)

    def decide(self, item: Running, result: TransferResult) -> None:
        """What happens after one result: docs/failures.md, row by row."""
        epn = item.planned.epn
        if result.stderr_log.strip():
            log.info(
                "rsync stderr for EPN %s (attempt %d):\n%s",
                epn,
                result.attempt,
                Block(result.stderr_log.rstrip()),
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
        another = self.tries[epn] < self.opts.retry + 1 and not self.stopping
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
        if outcome == "superseded":
            return
        relisted = self._relist(epn) is None
        if relisted:
            self._relisted(item)
        if outcome == "retry" and relisted:
            log.info("EPN %s: %s; copying it again", epn, result.reason)
            self._attempt(item)
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
                self.progress.advance(max(0, item.planned.size - sum(item.reported.values())))
            log.info(
                "EPN %s complete (%s, %s transferred)",
                epn,
                plural(result.files_transferred, "file"),
                plural(result.bytes_transferred, "byte"),
            )
        elif outcome == "superseded":
            self.summary.failed[epn] = (
                outcome,
                "another worker took this EPN over (lease expired); its result stands",
            )
            self.gave_up.add(epn)
        return outcome

    def _relist(self, epn: str) -> AsynchyError | None:
        """List one EPN again; the error that kept it from being listed, or None."""
        try:
            self.relist(epn)
            return None
        except AsynchyError as exc:
            log.warning("EPN %s could not be listed again: %s", epn, exc)
            if isinstance(exc, RemoteError):
                self.breaker.trip(time.monotonic())
            return exc

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
            self.pool.cancel_all()  # running transfers stop and give their claims back
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
    *,
    part: tuple[int, list[bytes]] | None = None,
) -> tuple[Job, str]:
    """The frozen Job of one attempt (what a pool worker needs, nothing more) and the EPN's dest.

    ``part``: (index, files) of a split EPN - its own temporary folders, exactly its files on
    stdin, no checks (the whole EPN's final pass verifies)."""
    raw = decode_name(planned.epn)
    root = os.fsencode(dest_root(planned.epn, opts.dest, opts.destinations, opts.layout))
    base = dest_base(planned.epn, opts.dest, opts.destinations, opts.layout)
    folder = dest_folder(planned.epn, opts.dest, opts.destinations, opts.layout)
    temp = None if opts.dry_run else temp_dir_for(base, raw)
    partial = partial_dir_for(base, raw) if opts.partial and not opts.dry_run else None
    if part is not None:
        job, where = _part_job(
            planned, claimed, tries, repair, part, opts, ropts, target, folder, temp, partial
        )
        return replace(job, dest_root=root), where

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
        prefix=opts.src_prefix,
        dest_root=root,
    )
    return job, str(dest_path(planned.epn, opts.dest, opts.destinations, opts.layout))


def _part_job(
    planned: claims.Planned,
    claimed: claims.Claim | None,
    tries: int,
    repair: bool,
    part: tuple[int, list[bytes]],
    opts: SyncOptions,
    ropts: RsyncOptions,
    target: SshTarget | None,
    folder: bytes,
    temp: Path | None,
    partial: Path | None,
) -> tuple[Job, str]:
    index, files = part
    raw = decode_name(planned.epn)
    own_temp = temp.with_name(f"{temp.name}.p{index}") if temp is not None else None
    own_partial = partial.with_name(f"{partial.name}.p{index}") if partial is not None else None
    argv = rsync_argv(
        target=target,
        prefix=opts.src_prefix,
        opts=replace(ropts, repair=repair),
        temp_dir=own_temp,
        partial_dir=own_partial,
    )
    job = Job(
        epn=planned.epn,
        epn_raw=raw,
        attempt=(claimed.attempts if claimed else 0) + tries + 1,
        token=claimed.token if claimed else 0,
        argv=tuple(argv),
        stdin=b"".join(raw + b"/./" + name + b"\0" for name in files),
        dest_dir=folder,
        temp_dir=os.fsencode(own_temp) if own_temp is not None else None,
        partial_dir=os.fsencode(own_partial) if own_partial is not None else None,
        control_dir=ropts.control_dir,
        expected=(),
        regular_files=0,
        stall_timeout=opts.stall_timeout,
        prefix=opts.src_prefix,
        part=index,
    )
    return job, str(dest_path(planned.epn, opts.dest, opts.destinations, opts.layout))


def _worse(a: TransferResult, b: TransferResult) -> bool:
    """Of two failed parts, the one that speaks for the attempt: a stop, then the setup, then the
    link, then a source that changed (none of them charged: the EPN is listed again and copied
    again), then a data failure."""
    rank = {"cancelled": 0, "setup": 1, "link": 2, "changed": 3}
    return rank.get(a.classification, 4) < rank.get(b.classification, 4)
