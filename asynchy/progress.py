"""Progress bars (tqdm) for long work, shown only on a terminal and never with -q."""

from __future__ import annotations

import sys
from typing import Any


class WalkBar:
    """EPNs done of total, with files and bytes counted so far."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self.files = 0
        self.bytes = 0

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, unit="EPN", desc="walk", dynamic_ncols=True, file=sys.stderr, leave=False
        )

    def epn_done(self, files: int, nbytes: int) -> None:
        self.files += files
        self.bytes += nbytes
        if self._bar is not None:
            from asynchy.render import human_bytes

            self._bar.set_postfix_str(
                f"{self.files:,} files, {human_bytes(self.bytes)}", refresh=False
            )
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class SyncBar:
    """Bytes of the selected EPNs; advances while rsync copies; postfix: EPNs done/failed/running."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def start(self, total_bytes: int, epns: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=total_bytes,
            unit="iB",  # with unit_scale and 1024: KiB, MiB, GiB - the units of the summaries
            unit_scale=True,
            unit_divisor=1024,
            desc=f"sync {epns} EPNs",
            dynamic_ncols=True,
            file=sys.stderr,
            leave=False,
            mininterval=0.5,
        )

    def advance(self, nbytes: int) -> None:
        if self._bar is not None and nbytes > 0:
            self._bar.update(nbytes)

    def counts(self, done: int, failed: int, running: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"done {done}, failed {failed}, running {running}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class MergeBar:
    """One bar per input: its file rows."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def start(self, name: str, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        label = name if len(name) <= 30 else "…" + name[-29:]
        self._bar = tqdm(
            total=total,
            unit="row",
            unit_scale=True,
            desc=label,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def bars_wanted(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
