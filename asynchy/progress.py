"""Progress bars (tqdm) for long work, shown only on a terminal and never with -q.

While a bar is shown, console log lines go through ``tqdm.write``
(``tqdm.contrib.logging.logging_redirect_tqdm``), so that bars stay intact.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any


class _Bar:
    """One tqdm bar at a time, with the console log redirected around it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None

    def _open(self, **kwargs: Any) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._close()
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(logging_redirect_tqdm())
        self._bar = tqdm(dynamic_ncols=True, file=sys.stderr, **kwargs)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None


class WalkBar(_Bar):
    """EPNs done of total, with files and bytes counted so far."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled)
        self.files = 0
        self.bytes = 0

    def start(self, total: int) -> None:
        if self.enabled:
            self._open(total=total, unit="EPN", desc="walk", leave=False)

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
        self._close()


class SyncBar(_Bar):
    """Bytes of the selected EPNs; advances while rsync copies; postfix: EPNs done/failed/running."""

    def start(self, total_bytes: int, epns: int) -> None:
        if self.enabled:
            from asynchy.render import plural

            self._open(
                total=total_bytes,
                unit="iB",  # with unit_scale and 1024: KiB, MiB, GiB - the units of the summaries
                unit_scale=True,
                unit_divisor=1024,
                desc=f"sync {plural(epns, 'EPN')}",
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
        self._close()


class MergeBar(_Bar):
    """One bar per input: its file rows."""

    def start(self, name: str, total: int) -> None:
        if self.enabled:
            label = name if len(name) <= 30 else "…" + name[-29:]
            self._open(total=total, unit="row", unit_scale=True, desc=label)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def done(self) -> None:
        self._close()


class AuditBar(_Bar):
    """Bytes read by an audit (no total: a budget may end it first)."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled)
        if enabled:
            self._open(unit="iB", unit_scale=True, unit_divisor=1024, desc="audit", leave=False)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None and nbytes > 0:
            self._bar.update(nbytes)

    def close(self) -> None:
        self._close()


def bars_wanted(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
