"""The values of one sync run: its options, its summary, the progress it reports, the events on
its batch's queue, and what a pool and a stop look like to the batch (docs/architecture.md).
No I/O here; the sync modules (sync, batch, pool) share these."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from asynchy.jobs import Job, Order, TransferResult
from asynchy.schedule import DEFAULT_SPLIT_MIN

if TYPE_CHECKING:  # types only: the command line reads SyncOptions' defaults without the database
    from asynchy.errors import AsynchyError
    from asynchy.preflight import ProbeResult
    from asynchy.waiting import Waiting

Verify = Literal["size", "checksum"]


@dataclass(frozen=True, slots=True)
class SyncOptions:
    dest: Path
    src_prefix: str
    order: Order = "ASC"
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
    fixity: bool = True  # record each file's source-side checksum (docs/fixity.md)
    checksum_algo: str = "auto"  # auto, xxh128 or md5


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
    repaired: list[str] = field(default_factory=list)  # damaged copies repaired (asynchy.repair)
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
            "repaired": self.repaired,
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


# ------------------------------------------------------------------ the batch's queue
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
