"""What a merge reports: its summary, and the progress callbacks of its bars."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class MergeSummary:
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (path, kind)
    epns: int = 0
    epns_added: int = 0
    files_added: int = 0
    files_updated: int = 0
    files_removed: int = 0
    completed: int = 0
    changed: int = 0
    conflicts: int = 0
    transfers_added: int = 0
    legacy_timezone: str | None = None  # the zone naive legacy times were read in (if any were)

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": [{"path": p, "kind": k} for p, k in self.inputs],
            "legacy_timezone": self.legacy_timezone,
            "epns": self.epns,
            "epns_added": self.epns_added,
            "files_added": self.files_added,
            "files_updated": self.files_updated,
            "files_removed": self.files_removed,
            "epns_completed": self.completed,
            "epns_changed": self.changed,
            "conflicts_resolved": self.conflicts,
            "transfers_added": self.transfers_added,
        }


class MergeProgress(Protocol):
    """Called as inputs are read (a bar per input on a terminal)."""

    def start(self, name: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def done(self) -> None: ...
