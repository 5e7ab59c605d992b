"""One sync batch: the scheduler (docs/sync.md).

It plans the batch (``--order`` picks the EPNs), claims them, and keeps every slot of the pool
busy with the largest work left (LPT): a waiting part of a split EPN, or the next EPN, split into
parts when it is big.  Each rsync starts with its share of ``--bwlimit``.  A result goes to
``failures.decide`` (what happens next, docs/failures.md) and ``verdicts.Verdicts`` (which
records it); the scheduler then does what the verdict says with the EPN: nothing more, a retry
after a back-off, again once the server answers (the circuit breaker), or at once.  A copy that
ended well gives its slot to the next work before its checksums and verdict are written.

Only the main thread runs this class, so only the main thread writes to the database; pool
workers return ``TransferResult`` values through the event queue, and the breaker's probe runs
in a thread that only posts an event.  Time comes from ``clock`` and the probe from ``probe``,
so that tests can run a batch against a fake pool in milliseconds.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from asynchy import claims, fixity
from asynchy.breaker import Breaker
from asynchy.config import SshTarget
from asynchy.db import Database
from asynchy.destinations import Overlaps, dest_path
from asynchy.errors import AsynchyError, RemoteError, SetupError
from asynchy.failures import Situation, decide, lost
from asynchy.filters import Filters
from asynchy.jobs import PART_MARK, Attempt, Expected, Job, TransferResult, build_job, made_up
from asynchy.logs import Block
from asynchy.parts import Running, Unit
from asynchy.preflight import ProbeResult, error_for, probe
from asynchy.render import plural
from asynchy.rsync import RsyncOptions
from asynchy.schedule import Bandwidth, part_count, rsync_rate, share, split_files
from asynchy.sync_types import (
    Event,
    Finished,
    Pool,
    Probed,
    Progressed,
    Stop,
    SyncOptions,
    SyncProgress,
    SyncSummary,
)
from asynchy.verdicts import Next, Verdicts
from asynchy.workers import WorkerId

log = logging.getLogger(__name__)


@dataclass
class Batch:
    db: Database
    target: SshTarget | None
    opts: SyncOptions
    ropts: RsyncOptions
    worker: WorkerId | None  # None in a dry run
    pool: Pool
    events: queue.Queue[Event]
    stop: Stop
    summary: SyncSummary
    progress: SyncProgress | None
    relist: Callable[[str], None]  # list one EPN again into the inventory (walk --refresh)
    clock: Callable[[], float] = time.monotonic
    probe: Callable[[], ProbeResult] | None = None  # default: preflight.probe of the server
    poll: float = 0.2  # seconds to wait for an event before looking at the clock again
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
        settle = self.opts.settle
        self.settled_before = (
            datetime.now(UTC) - timedelta(seconds=settle) if settle is not None else None
        )
        self.bandwidth = Bandwidth.parse(self.opts.bwlimit)
        limit = self.opts.time_limit
        self.deadline = self.clock() + limit if limit is not None else None
        self.verdicts = Verdicts(
            self.db, self.worker, self.opts, self.summary, self.progress, self.relist
        )

    @property
    def stopping(self) -> bool:
        """A stop was asked for (Ctrl+C, SIGTERM) or the run's time is up: nothing new starts,
        running transfers are cancelled and their claims given back uncharged."""
        return self.stop.requested or self.timed_out

    # -------------------------------------------------------------- the loop
    def run(self) -> None:
        first = self._plan()
        if self.progress is not None:
            self.progress.start(sum(p.size for p in first), len(first))
        while True:
            self._check_deadline()
            if not self.stopping and self.halt is None:
                now = self.clock()
                self._start_due_retries(now)
                if self.breaker.due(now):
                    self._probe()
                self._refill()
            if self.stopping or self.halt is not None:
                self._drop_waiting()
            if self._finished():
                return
            try:
                event = self.events.get(timeout=self.poll)
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

    def _check_deadline(self) -> None:
        if self.deadline is None or self.stopping or self.clock() < self.deadline:
            return
        self.timed_out = True
        self.pool.cancel_all()
        log.info(
            "the time limit is reached: no new EPN starts; stopping %s",
            plural(len(self.running), "running EPN"),
        )

    # -------------------------------------------------------------- choosing and claiming
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

    def _refill(self) -> None:
        if not self.stopping and self.halt is None and not self.breaker.open:
            self._fill()

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
        job = self._job(planned, claim, repair)
        self.selected.add(epn)
        self.summary.selected = len(self.selected)
        item = Running(claim, planned, job, self._dest(epn), repair=repair)
        item.parts = self._split(planned, job)
        if self.opts.dry_run:
            self._show_plan(item)
        k, done = self.done_parts.get(epn, (len(item.parts), set()))
        if item.parts and k != len(item.parts):
            done = set()  # the inventory changed since: a new split
        item.parts_left = set(range(len(item.parts))) - done
        self._attempt(item, listed=job.expected)

    def _dest(self, epn: str) -> str:
        return str(dest_path(epn, self.opts.dest, self.opts.destinations, self.opts.layout))

    def _relisted(self, item: Running) -> None:
        """The EPN was listed again (its source changed): its job and its split from the inventory
        as it is now; parts copied before count for nothing (rsync skips what is in place)."""
        epn = item.epn
        _complete, size, count = claims.walk_state(self.db, epn)
        item.planned = self.planned[epn] = claims.Planned(epn, size, count, "pending")
        item.job = self._job(item.planned, item.claim, item.repair)
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
            expected = claims.expected_files(self.db, planned.epn).only(
                lambda path: not rules.excludes(path)
            )
        parts = split_files([(path, size) for path, size, _m, _k in expected], k)
        return parts if len(parts) > 1 else []

    def _show_plan(self, item: Running) -> None:
        sizes = {p: s for p, s, _m, _k in claims.expected_files(self.db, item.epn)}
        self.summary.plan.append(
            {
                "epn": item.epn,
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
        error = self.verdicts.relist_now(epn)
        if isinstance(error, RemoteError):
            self.breaker.trip(self.clock())
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

    # -------------------------------------------------------------- attempts and the pool
    def _attempt(self, item: Running, listed: Expected | None = None) -> None:
        """Start an attempt of an EPN: its parts still to copy wait for slots (the largest first),
        or, when none are left (or it is not split), the whole EPN's job runs.  ``listed``: its
        files as just read for the plan (read once, not again for the job)."""
        self.tries[item.epn] = self.tries.get(item.epn, 0) + 1
        item.start_attempt()
        self.running[item.epn] = item
        if item.parts and item.parts_left and not self.opts.dry_run:
            for i in sorted(item.parts_left):
                heapq.heappush(self.units, Unit(-item.part_size(i), item.epn, i))
        else:
            self._submit_final(item, listed)
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

    def _submit_final(self, item: Running, listed: Expected | None = None) -> None:
        item.job = self._job(
            item.planned, item.claim, item.repair, bwlimit=self._rate(item.epn), listed=listed
        )
        self._pool_submit(item, item.job)

    def _submit_part(self, item: Running, part: int) -> None:
        key = f"{item.epn}{PART_MARK}{part}"
        job = self._job(
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
            self.summary.cancelled.append(item.epn)
            self.running.pop(item.epn, None)
        self.waiting.clear()

    def _job(
        self,
        planned: claims.Planned,
        claim: claims.Claim | None,
        repair: bool,
        *,
        part: tuple[int, list[bytes]] | None = None,
        bwlimit: str | None = None,
        listed: Expected | None = None,
    ) -> Job:
        tries = max(0, self.tries.get(planned.epn, 0) - 1)
        number = (claim.attempts if claim else 0) + tries + 1
        attempt = Attempt(planned.epn, claim.token if claim else 0, number, repair, part)
        whole = not self.opts.dry_run and part is None
        if whole and listed is None:  # not just read for the plan: read now
            listed = claims.expected_files(self.db, planned.epn, self.ropts.checksum_algo)
        ropts = replace(self.ropts, bwlimit=bwlimit)
        return build_job(self.opts, ropts, self.target, attempt, listed if whole else None)

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
            result = made_up(item.job, lost(self.stopping), "the worker process died")
        except Exception as exc:  # a bug in the worker: not the EPN's fault; record it, keep going
            log.exception("transfer of EPN %s failed unexpectedly", epn)
            result = made_up(item.job, "link", f"asynchy error: {exc}")
        self.serial += 1
        if result.ok and not part:
            # A copy that ended well can neither stop the run nor open the breaker: its slot takes
            # the next work now, before this EPN's checksums and verdict are written.
            self._refill()
        try:
            if result.ok and result.sums_spool is not None and self.ropts.checksum_algo:
                result = self.verdicts.checksums(epn, result, self.ropts.checksum_algo, not part)
            if part:
                self._on_part(item, int(part), result)
            else:
                self._verdict(item, result)
        finally:
            fixity.discard(result.sums_spool)
        self._counts()

    def _on_part(self, item: Running, part: int, result: TransferResult) -> None:
        """One part ended; when the attempt's last one has, the final pass (all copied) or the
        verdict (a part failed: the one that speaks for the attempt)."""
        before = item.part_failure
        item.part_ended(part, result)
        if result.ok:
            self.done_parts[item.epn] = (
                len(item.parts),
                set(range(len(item.parts))) - item.parts_left,
            )
        elif item.part_failure is not before:
            log.info("EPN %s part %d: %s", item.epn, part, result.reason or result.classification)
        if item.busy or any(u.epn == item.epn for u in self.units):
            return  # one EPN, one verdict: after its other parts
        if item.part_failure is not None:
            self._verdict(item, item.part_failure)
        elif not (self.stopping or self.halt is not None):
            self._submit_final(item)  # rsync skips what the parts copied; then the whole verifies
        else:
            self._verdict(item, made_up(item.job, "cancelled", "interrupted"))

    def _verdict(self, item: Running, result: TransferResult) -> None:
        """The attempt's result, with its parts (transfers.parts), decided and carried out."""
        result = item.with_parts(result)
        self.running.pop(item.epn, None)
        epn = item.epn
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
        situation = Situation(
            tries=self.tries[epn],
            retry=self.opts.retry,
            failures=(item.claim.failures if item.claim is not None else 0) + item.charged,
            max_attempts=self.opts.max_attempts,
            stopping=self.stopping,
        )
        decision = decide(result.classification, situation)
        self._carry_out(item, self.verdicts.settle(item, result, decision, self.tries[epn]))

    def _carry_out(self, item: Running, then: Next) -> None:
        """What the verdict says to do with the EPN now."""
        epn = item.epn
        if then.halt is not None and self.halt is None:
            self.halt = SetupError(then.halt)
        if then.trip:
            self.breaker.trip(self.clock())
        if then.relisted:
            self._relisted(item)
        if then.again:
            self.again.append(epn)
        if then.give_up:
            self.gave_up.add(epn)
        if then.now:
            self._attempt(item)
        elif then.retry_in is not None:
            heapq.heappush(self.waiting, (self.clock() + then.retry_in, self.serial, item))

    # -------------------------------------------------------------- the circuit breaker
    def _probe(self) -> None:
        self.breaker.probing = True
        ask = self.probe
        if ask is None:
            target, prefix, ropts = self.target, self.opts.src_prefix, self.ropts

            def ask() -> ProbeResult:
                return probe(target, prefix, ropts)

        events = self.events
        threading.Thread(
            target=lambda: events.put(Probed(ask())), name="asynchy-probe", daemon=True
        ).start()

    def _on_probe(self, result: ProbeResult) -> None:
        where = self.target.known_hosts_name if self.target is not None else "the source"
        if result.kind == "ok":
            self.breaker.answered()
            log.info("%s answers again: going on", where)
            return
        if result.kind == "setup" or self.breaker.failed(self.clock()):
            self.halt = error_for(result, self.target, self.opts.src_prefix, where)
            self.breaker.answered()  # nothing more to wait for
            self.pool.cancel_all()  # running transfers stop and give their claims back
            log.info("stopping: %s", self.halt)  # the command's error line says it once
            return
        wait = self.breaker.next_at - self.clock()
        log.warning("%s does not answer (%s); next check in %.1f s", where, result.message, wait)

    def _counts(self) -> None:
        if self.progress is not None:
            self.progress.counts(
                len(self.summary.complete), len(self.summary.failed), len(self.running)
            )
