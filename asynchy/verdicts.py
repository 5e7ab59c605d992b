"""What happens after one attempt's result, carried out: ``failures.decide`` says what (the
rules of docs/failures.md, row by row); this records it under the claim's fencing token, tells
the run's summary and the log, lists a changed EPN again, and tells the scheduler what to do
with the EPN next (``Next``).  Only the main thread runs this (only it writes to the database).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from asynchy import claims, fixity
from asynchy.db import Database
from asynchy.errors import AsynchyError, RemoteError
from asynchy.failures import (
    IN_RUN_BASE,
    IN_RUN_CAP,
    NEXT_RUN_BASE,
    NEXT_RUN_CAP,
    Action,
    Decision,
    backoff,
)
from asynchy.filters import Filters
from asynchy.jobs import TransferResult
from asynchy.parts import Running
from asynchy.render import plural
from asynchy.sync_types import SyncOptions, SyncProgress, SyncSummary
from asynchy.workers import WorkerId


@dataclass
class Next:
    """What the scheduler does with the EPN after its verdict."""

    retry_in: float | None = None  # a data failure: try again in this run after this many seconds
    again: bool = False  # given back after a link failure: may be claimed again once it answers
    now: bool = False  # listed again after a change: copy it again at once (the claim is kept)
    trip: bool = False  # open the circuit breaker (the link)
    halt: str | None = None  # the setup: no new EPN starts (why)
    relisted: bool = False  # the inventory changed: its job and its split are made anew
    give_up: bool = False  # never claimed again in this run


log = logging.getLogger("asynchy.batch")


class Verdicts:
    def __init__(
        self,
        db: Database,
        worker: WorkerId | None,
        opts: SyncOptions,
        summary: SyncSummary,
        progress: SyncProgress | None,
        relist: Callable[[str], None],
    ) -> None:
        self.db, self.worker, self.opts = db, worker, opts
        self.summary, self.progress, self.relist = summary, progress, relist

    def settle(self, item: Running, result: TransferResult, decision: Decision, tries: int) -> Next:
        """Carry out the decision about one attempt of ``item`` (not in a dry run); ``tries``:
        its attempts in this run, this one included."""
        epn = item.epn
        for earlier in (self.summary.failed, self.summary.changed, self.summary.given_back):
            earlier.pop(epn, None)  # the summary tells each EPN's last word, once
        reason = result.reason or result.classification
        action = decision.action
        if action in (Action.COMPLETE, Action.CANCEL):
            self._record(item, result, decision)
            if action is Action.CANCEL:
                self.summary.cancelled.append(epn)
            return Next()
        if action in (Action.GIVE_BACK, Action.GIVE_BACK_AND_PROBE, Action.GIVE_BACK_AND_HALT):
            return self._given_back(item, result, decision, reason)
        if action in (Action.RELIST, Action.RELIST_AND_RETRY):
            return self._changed(item, result, decision)
        return self._data_failure(item, result, decision, reason, tries)

    def checksums(self, epn: str, result: TransferResult, algo: str, whole: bool) -> TransferResult:
        """Fixity (docs/fixity.md): the values a good run printed, recorded; for the whole EPN,
        its rule checked in the database too: complete only when every regular file the copy
        includes has its source checksum on record (else the result is ``verify``)."""
        assert result.sums_spool is not None
        fixity.record(self.db, epn, result.sums_spool, algo)
        if not whole:  # a part: the final pass checks the whole EPN
            return result
        gaps = fixity.missing(self.db, epn, Filters(self.opts.include, self.opts.exclude))
        if not gaps:
            return result
        return replace(
            result,
            classification="verify",
            reason=f"verify: {plural(gaps, 'regular file')} without a source checksum on record",
        )

    # -------------------------------------------------------------- one row of the table each
    def _given_back(
        self, item: Running, result: TransferResult, decision: Decision, reason: str
    ) -> Next:
        """link, setup: not the EPN's fault; the claim goes back uncharged."""
        if self._record(item, result, decision) == "superseded":
            return Next(give_up=True)
        self.summary.given_back[item.epn] = reason  # uncharged
        if decision.action is Action.GIVE_BACK_AND_HALT:
            log.info("EPN %s: %s; given back uncharged, no new EPNs start", item.epn, reason)
            return Next(halt=reason, give_up=True)
        log.info("EPN %s: %s; given back uncharged, checking the server", item.epn, reason)
        again = decision.action is Action.GIVE_BACK_AND_PROBE
        return Next(again=again, trip=True, give_up=not again)

    def _changed(self, item: Running, result: TransferResult, decision: Decision) -> Next:
        """changed: listed again at once, then copied again while --retry allows (not charged)."""
        epn = item.epn
        outcome = self._record(item, result, decision)
        if outcome == "superseded":
            return Next(give_up=True)
        error = self.relist_now(epn)
        trip = isinstance(error, RemoteError)
        if outcome == "retry" and error is None:
            log.info("EPN %s: %s; copying it again", epn, result.reason)
            return Next(now=True, relisted=True)
        if outcome == "retry" and item.claim is not None and self.worker is not None:
            claims.release(self.db, self.worker, item.claim)
        if outcome in ("retry", "changed"):
            self.summary.changed[epn] = result.reason or "changed"
            log.warning("EPN %s: %s; left for the next run", epn, result.reason)
        return Next(trip=trip, relisted=error is None, give_up=True)

    def _data_failure(
        self, item: Running, result: TransferResult, decision: Decision, reason: str, tries: int
    ) -> Next:
        """partial, verify, checksum: charged, spaced out, quarantined at --max-attempts."""
        claim = item.claim
        assert claim is not None
        wait = backoff(claim.failures + item.charged, NEXT_RUN_BASE, NEXT_RUN_CAP)
        outcome = self._record(item, result, decision, wait=wait)
        item.charged += 1
        if outcome == "retry":
            delay = backoff(tries - 1, IN_RUN_BASE, IN_RUN_CAP)
            item.repair = item.repair or decision.repair
            log.warning("EPN %s: %s; retrying in %.1f s", item.epn, reason, delay)
            return Next(retry_in=delay)
        if outcome != "superseded":
            self.summary.failed[item.epn] = (outcome, reason)
        log.warning("EPN %s %s: %s", item.epn, outcome, reason)
        return Next(give_up=True)

    # -------------------------------------------------------------- the database
    def _record(
        self, item: Running, result: TransferResult, decision: Decision, *, wait: float = 0
    ) -> str:
        assert self.worker is not None and item.claim is not None
        outcome = claims.record(
            self.db,
            self.worker,
            item.claim,
            result,
            decision,
            max_attempts=self.opts.max_attempts,
            dest_path=item.dest_path,
            lease=self.opts.lease,
            wait=wait,
        )
        self.summary.bytes += result.bytes_transferred
        epn = item.epn
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
        return outcome

    def relist_now(self, epn: str) -> AsynchyError | None:
        """List one EPN again; the error that kept it from being listed, or None."""
        try:
            self.relist(epn)
            return None
        except AsynchyError as exc:
            log.warning("EPN %s could not be listed again: %s", epn, exc)
            return exc
