"""The circuit breaker of a sync run (docs/failures.md, "The circuit breaker"); pure.

Closed: EPNs start.  Open: a link failure was seen, and nothing new starts until a probe of the
server succeeds.  Probes are spaced by jittered exponential back-off; after ``allowed`` failed
probes the breaker gives up and the run ends (exit 1), every claim given back uncharged.
"""

from __future__ import annotations

import random

from asynchy.failures import PROBE_BASE, PROBE_CAP, backoff


class Breaker:
    def __init__(self, allowed: int, rng: random.Random | None = None) -> None:
        self.allowed = max(1, allowed)
        self.open = False
        self.probing = False
        self.failed_probes = 0
        self.next_at = 0.0
        self.rng = rng

    def trip(self, now: float) -> None:
        """A link failure: nothing new starts; the first probe is due at once."""
        if not self.open:
            self.open, self.failed_probes, self.next_at = True, 0, now

    def due(self, now: float) -> bool:
        return self.open and not self.probing and now >= self.next_at

    def answered(self) -> None:
        """The server answered (or there is nothing more to wait for): closed again."""
        self.open = self.probing = False

    def failed(self, now: float) -> bool:
        """A probe failed; True when that was the last one allowed."""
        self.probing = False
        self.failed_probes += 1
        if self.failed_probes >= self.allowed:
            return True
        self.next_at = now + backoff(self.failed_probes - 1, PROBE_BASE, PROBE_CAP, self.rng)
        return False
