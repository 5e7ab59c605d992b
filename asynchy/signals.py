"""How a run stops on SIGINT (Ctrl+C) and SIGTERM (systemctl stop): the one signal mechanism.

``StopSignals()`` makes SIGTERM behave as Ctrl+C does: KeyboardInterrupt, which
the command turns into a recorded, clean stop and exit code 130 (walk, watch).
``StopSignals(on_first)`` is for runs with children to wind down (sync): the
first signal sets ``requested`` and calls ``on_first`` (cancel the running
transfers, which are then recorded); a second one exits at once (130).
Outside the main thread (tests calling in-process) signals are left alone.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any


class StopSignals:
    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            wanted = (
                (signal.SIGTERM,) if self._on_first is None else (signal.SIGINT, signal.SIGTERM)
            )
            for sig in wanted:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._on_first is None:
            raise KeyboardInterrupt
        if self.requested:
            os.write(2, b"asynchy: interrupted again: exiting now\n")
            os._exit(130)  # rsync children die with us (parent-death signal)
        self.requested = True
        again = "Ctrl+C again" if signum == signal.SIGINT else "send SIGTERM again"
        os.write(
            2,
            f"asynchy: stopping: cancelling running transfers ({again} to exit at once)\n".encode(),
        )
        self._on_first()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
