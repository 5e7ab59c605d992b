"""An EPN taken by a sync run, from its claim to its verdict, and the parts of a split one
(docs/sync.md, "Filling the link"); no I/O.

Copied whole: one job (copy and verify).  Split: its parts run as units of their own, then the
whole EPN's final pass (the same job as a whole copy: rsync skips what the parts copied, then
verifies); a part that failed is run again alone in the next attempt, and of the failed parts of
one attempt the one ``failures.speaks_for`` names speaks for it: one EPN, one verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from asynchy import claims
from asynchy.failures import speaks_for
from asynchy.jobs import Job, TransferResult
from asynchy.render import iso_utc


@dataclass
class Running:
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
    part_failure: TransferResult | None = None  # the failed part that speaks for this attempt
    part_bytes: int = 0  # transferred by this attempt's parts

    @property
    def epn(self) -> str:
        return self.planned.epn

    def start_attempt(self) -> None:
        self.reported = {}
        self.part_results, self.part_failure, self.part_bytes = [], None, 0

    def part_size(self, part: int) -> int:
        sizes = {p: s for p, s, _m, _k in self.job.expected}
        return sum(sizes.get(f, 0) for f in self.parts[part])

    def part_ended(self, part: int, result: TransferResult) -> None:
        """One part's result, kept for the attempt's verdict (transfers.parts)."""
        self.part_results.append(
            {
                "part": part,
                "of": len(self.parts),
                "files": len(self.parts[part]),
                "bytes": self.part_size(part),
                "bytes_transferred": result.bytes_transferred,
                "exit_code": result.exit_code,
                "classification": result.classification,
                "started_at": iso_utc(result.started_at),
                "finished_at": iso_utc(result.finished_at),
            }
        )
        self.part_bytes += result.bytes_transferred
        if result.ok:
            self.parts_left.discard(part)
        elif self.part_failure is None or speaks_for(
            result.classification, self.part_failure.classification
        ):
            self.part_failure = result

    def with_parts(self, result: TransferResult) -> TransferResult:
        """The attempt's result with its parts and their bytes (the final pass's too)."""
        if not self.part_results:
            return result
        from_final = result is not self.part_failure
        return replace(
            result,
            parts=tuple(sorted(self.part_results, key=lambda p: p["part"])),
            bytes_transferred=self.part_bytes + (result.bytes_transferred if from_final else 0),
        )


@dataclass(order=True)
class Unit:
    """One part of a split EPN waiting for a free slot (the largest first: a heap of -bytes)."""

    bytes: int
    epn: str = field(compare=False)
    part: int = field(compare=False)
