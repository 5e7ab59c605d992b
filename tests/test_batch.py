"""The scheduler (asynchy.batch.Batch) against a fake pool and a fake clock, in milliseconds: no
rsync runs.  The inventory is real: a local folder walked into a real SQLite file; claims and
verdicts are recorded there as a real run records them.

Each test scripts what the pool's transfers return and checks what the batch did with it: the
order jobs started in (LPT), which parts ran again, the breaker opening and closing, a stop
while parts run, a worker process dying, a link failure given back uncharged."""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows, write_file

from asynchy import inventory, workers
from asynchy.batch import Batch
from asynchy.db import Database, open_database
from asynchy.jobs import PART_MARK, FailureClass, Job, TransferResult
from asynchy.preflight import ProbeResult
from asynchy.remote.local import LocalTree
from asynchy.rsync import RsyncOptions
from asynchy.sync_types import Event, Finished, SyncOptions, SyncSummary

MiB = 2**20


@dataclass
class FakeStop:
    requested: bool = False


@dataclass
class FakePool:
    """Runs nothing: each submitted job gets the result ``script(job)`` says, at once."""

    events: queue.Queue[Event]
    script: Callable[[Job], FailureClass | BaseException]
    submitted: list[str] = field(default_factory=list)  # job keys, in order
    recovered: list[str] = field(default_factory=list)
    cancelled: bool = False
    stop: FakeStop | None = None
    stop_after: int | None = None  # ask for a stop once this many jobs were submitted

    def submit(self, job: Job) -> None:
        self.submitted.append(job.key)
        if self.stop is not None and self.stop_after == len(self.submitted):
            self.stop.requested = True
            self.cancel_all()
        outcome = "cancelled" if self.cancelled else self.script(job)
        fut: Future[TransferResult] = Future()
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            now = datetime.now(UTC)
            fut.set_result(
                TransferResult(
                    job.epn, job.attempt, job.token, now, now, job.argv, 0, outcome, None, 1
                )
            )
        self.events.put(Finished(job.key, fut))

    def cancel_all(self) -> None:
        self.cancelled = True

    def recover(self, key: str) -> None:
        self.recovered.append(key)


class Clock:
    """A monotonic clock that moves a second each time it is read (back-offs pass at once)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    src = tmp_path / "src"
    src.mkdir()
    db = open_database(str(tmp_path / "files.db"))
    yield {"src": src, "db": db, "dest": tmp_path / "dest"}
    db.close()


def epns(site: dict[str, Any], sizes: dict[str, list[int]]) -> None:
    """EPN folders with files of these sizes (sparse), walked into the inventory."""
    for epn, files in sizes.items():
        for i, size in enumerate(files):
            path = site["src"] / epn / f"f{i}.raw"
            write_file(path)
            os.truncate(path, size)
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    inventory.walk(site["db"], LocalTree(site["src"]), inventory.WalkOptions(workers=1))


def run_batch(
    site: dict[str, Any],
    script: Callable[[Job], FailureClass | BaseException],
    probe: Callable[[], ProbeResult] | None = None,
    stop_after: int | None = None,
    **options: Any,
) -> tuple[Batch, FakePool]:
    db: Database = site["db"]
    events: queue.Queue[Event] = queue.Queue()
    stop = FakeStop()
    pool = FakePool(events, script, stop=stop, stop_after=stop_after)
    opts = SyncOptions(dest=site["dest"], src_prefix=str(site["src"]), **options)
    worker = workers.register_worker(db, "sync", opts.lease)

    def relist(epn: str) -> None:
        inventory.walk(db, LocalTree(site["src"]), inventory.WalkOptions(epns=(epn,), refresh=True))

    batch = Batch(
        db=db,
        target=None,
        opts=opts,
        ropts=RsyncOptions(),
        worker=worker,
        pool=pool,
        events=events,
        stop=stop,
        summary=SyncSummary(),
        progress=None,
        relist=relist,
        clock=Clock(),
        probe=probe or (lambda: ProbeResult("ok", "")),
        poll=0.001,
    )
    batch.run()
    return batch, pool


def statuses(site: dict[str, Any]) -> dict[str, tuple[str, int]]:
    path = site["db"].path
    return {
        epn: (status, failures)
        for epn, status, failures in rows(path, "SELECT epn, status, failures FROM epns")
    }


def test_the_largest_work_starts_first(site: dict[str, Any]) -> None:
    epns(site, {"10001a": [1 * MiB], "10002a": [5 * MiB], "10003a": [3 * MiB], "10004a": [2 * MiB]})
    batch, pool = run_batch(site, lambda job: "ok", threads=2)
    assert pool.submitted == ["10002a", "10003a", "10004a", "10001a"]  # LPT, not --order
    assert sorted(batch.summary.complete) == ["10001a", "10002a", "10003a", "10004a"]
    assert set(statuses(site).values()) == {("complete", 0)}


def test_a_slot_freed_by_a_good_copy_starts_its_next_epn_before_the_verdict_is_written(
    site: dict[str, Any],
) -> None:
    """The pool slot does not wait for the main thread's bookkeeping of a copy that ended well
    (its checksums and verdict, written after the next EPN's rsync has started); a failure is
    decided first, since it may stop the run or open the breaker."""
    epns(site, {"11001a": [3 * MiB], "11002a": [2 * MiB], "11003a": [1 * MiB]})
    seen: dict[tuple[str, int], dict[str, tuple[str, int]]] = {}  # the statuses as each job starts

    def script(job: Job) -> FailureClass:
        seen[job.epn, job.attempt] = statuses(site)
        return "partial" if job.key == "11002a" and job.attempt == 1 else "ok"

    batch, pool = run_batch(site, script, threads=1, retry=1)
    # the failure was decided before anything else started: its retry holds the only slot
    assert pool.submitted == ["11001a", "11002a", "11002a", "11003a"]
    assert seen["11002a", 1]["11001a"][0] == "running"  # 11001a's verdict came after 11002a began
    assert seen["11002a", 2]["11002a"] == ("running", 1)  # charged before the retry
    assert seen["11003a", 1]["11002a"][0] == "running"
    assert sorted(batch.summary.complete) == ["11001a", "11002a", "11003a"]


def test_a_failed_part_runs_again_alone_then_the_final_pass(site: dict[str, Any]) -> None:
    epns(site, {"20001a": [4 * MiB, 3 * MiB, 2 * MiB, 1 * MiB]})
    failed_once: list[str] = []

    def script(job: Job) -> FailureClass:
        if job.part == 1 and not failed_once:
            failed_once.append(job.key)
            return "partial"  # a data failure of one part: charged, retried after a back-off
        return "ok"

    batch, pool = run_batch(site, script, threads=3, split_min=1, retry=1)
    parts = [k.partition(PART_MARK)[2] or "final" for k in pool.submitted]
    assert parts == ["0", "1", "2", "1", "final"]  # attempt 2: only part 1, then the whole
    assert batch.summary.complete == ["20001a"]
    assert statuses(site) == {"20001a": ("complete", 0)}  # a complete copy clears failures
    recorded = rows(site["db"].path, "SELECT classification, outcome FROM transfers ORDER BY id")
    assert recorded == [("partial", "retry"), ("ok", "complete")]


def test_the_breaker_opens_on_a_link_failure_and_closes_when_the_server_answers(
    site: dict[str, Any],
) -> None:
    epns(site, {"30001a": [3 * MiB], "30002a": [2 * MiB], "30003a": [1 * MiB]})
    answers = iter([ProbeResult("link", "no answer"), ProbeResult("ok", "")])
    probed: list[str] = []

    def probe() -> ProbeResult:
        answer = next(answers)
        probed.append(answer.kind)
        return answer

    first = [True]

    def script(job: Job) -> FailureClass:
        if first[0]:
            first[0] = False
            return "link"
        return "ok"

    batch, pool = run_batch(site, script, probe, threads=1, retry=2)
    assert probed == ["link", "ok"]  # closed only once a probe succeeded
    assert pool.submitted == ["30001a", "30001a", "30002a", "30003a"]  # given back, taken again
    assert batch.summary.given_back == {}  # its last word is complete
    assert set(statuses(site).values()) == {("complete", 0)}  # the link charged nothing


def test_the_breaker_gives_up_after_its_probes_and_gives_everything_back(
    site: dict[str, Any],
) -> None:
    epns(site, {"31001a": [2 * MiB], "31002a": [1 * MiB]})
    batch, pool = run_batch(
        site, lambda job: "link", lambda: ProbeResult("link", "refused"), threads=1, retry=1
    )
    assert batch.halt is not None and "refused" in str(batch.halt)
    assert pool.submitted == ["31001a"]  # nothing new started while the breaker was open
    assert statuses(site) == {"31001a": ("pending", 0), "31002a": ("pending", 0)}


def test_a_stop_while_parts_run_gives_the_claim_back(site: dict[str, Any]) -> None:
    epns(site, {"40001a": [4 * MiB, 3 * MiB, 2 * MiB]})
    batch, pool = run_batch(site, lambda job: "ok", threads=2, split_min=1, stop_after=2)
    assert batch.stopping and batch.summary.cancelled == ["40001a"]
    assert len(pool.submitted) == 2  # the third part never started
    assert statuses(site) == {"40001a": ("pending", 0)}
    assert rows(site["db"].path, "SELECT count(*) FROM epns WHERE claim_owner IS NOT NULL") == [
        (0,)
    ]


def test_a_worker_process_that_died_is_a_link_failure_and_the_pool_recovers(
    site: dict[str, Any],
) -> None:
    epns(site, {"50001a": [2 * MiB], "50002a": [1 * MiB]})
    died = [False]

    def script(job: Job) -> FailureClass | BaseException:
        if not died[0]:
            died[0] = True
            return BrokenExecutor("a worker process died")
        return "ok"

    _, pool = run_batch(site, script, threads=1, retry=1)
    assert pool.recovered == ["50001a"]  # its pool ended before the EPN was taken again
    assert pool.submitted == ["50001a", "50001a", "50002a"]
    assert set(statuses(site).values()) == {("complete", 0)}
    outcomes = rows(
        site["db"].path, "SELECT epn, classification, outcome FROM transfers ORDER BY id"
    )
    assert outcomes[0] == ("50001a", "link", "released")


def test_a_link_failure_with_no_tries_left_is_given_back_uncharged(site: dict[str, Any]) -> None:
    epns(site, {"60001a": [1 * MiB]})
    batch, pool = run_batch(site, lambda job: "link", threads=1, retry=0)
    assert pool.submitted == ["60001a"]
    assert batch.summary.given_back == {"60001a": "link"}
    assert statuses(site) == {"60001a": ("pending", 0)}


def test_a_data_failure_is_charged_and_quarantined_at_the_limit(site: dict[str, Any]) -> None:
    epns(site, {"70001a": [1 * MiB]})
    batch, _ = run_batch(site, lambda job: "verify", threads=1, retry=3, max_attempts=2)
    assert statuses(site) == {"70001a": ("quarantined", 2)}
    assert batch.summary.failed["70001a"][0] == "quarantined"
