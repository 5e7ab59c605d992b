"""Filling the link, pure: splitting a big EPN into parts by bytes, the order work starts in, and
the host's bandwidth budget (docs/sync.md, "Filling the link").  No I/O here.

One TCP stream moves at most its window per round trip; several streams, each over its own ssh
connection, fill a long fat link.  asynchy knows every file's size from the inventory before the
first byte moves, so a big EPN is split into parts balanced by bytes (largest files first, each
onto the least-loaded part), and the batch starts the largest remaining work first (LPT), so that
it ends when the link's work ends.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from asynchy.errors import ConfigError, UsageError

GiB = 1024**3
DEFAULT_SPLIT_MIN = GiB


def part_count(
    size: int, files: int, *, batch_bytes: int, threads: int, split_min: int, streams: int
) -> int:
    """How many parts an EPN of ``size`` bytes in ``files`` files is copied in (1: whole).

    Split when it is larger than its fair share of the batch (batch_bytes / threads) and at least
    ``split_min``; into as many parts as its share needs, at most ``threads``, ``streams``
    (--streams-per-epn) and its file count."""
    share = max(1, batch_bytes) / max(1, threads)
    if threads <= 1 or streams <= 1 or files <= 1 or size <= share or size < split_min:
        return 1
    return max(1, min(threads, streams, files, math.ceil(size / share)))


def split_files(files: Sequence[tuple[bytes, int]], k: int) -> list[list[bytes]]:
    """``files`` (name, bytes) into ``k`` parts balanced by bytes: the largest file first, each onto
    the part with the fewest bytes so far (ties: the lower part number).  Every file is in exactly
    one part; each part's names keep the listing's order."""
    k = max(1, min(k, len(files))) if files else 1
    loads = [(0, i) for i in range(k)]  # (bytes, part)
    chosen: dict[int, int] = {}
    order = sorted(range(len(files)), key=lambda i: (-files[i][1], files[i][0]))
    for i in order:
        load, part = heapq.heappop(loads)
        chosen[i] = part
        heapq.heappush(loads, (load + files[i][1], part))
    parts: list[list[bytes]] = [[] for _ in range(k)]
    for i, (name, _size) in enumerate(files):
        parts[chosen[i]].append(name)
    return [p for p in parts if p] or [[]]


# ------------------------------------------------------------------ the bandwidth budget
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENTRY = re.compile(r"^(?:(?P<day>[A-Za-z]{3})-)?(?P<h>\d{1,2}):(?P<m>\d{2}),(?P<rate>.+)$")
_RATE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:([bkmgtp])(ib|b)?)?([+-]1)?$", re.IGNORECASE)
_POWERS = {"b": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
MIN_RATE = 512  # bytes per second: rsync's smallest --bwlimit


def parse_rate(text: str, what: str = "--bwlimit") -> float | None:
    """Bytes per second of a rate as rsync reads it (a number is KiB/s; suffixes B, K, M, G ...
    in 1024s, KB, MB ... in 1000s); None for no limit (``off`` or 0)."""
    value = text.strip()
    if value.lower() == "off":
        return None
    m = _RATE.match(value)
    if not m:
        raise ConfigError(
            f"{what} {text!r} is not a rate: give KiB per second or a number with a suffix K, M or "
            "G, e.g. 500, 50M, 1.5G, or off (or a timetable such as '08:00,20M 18:00,off')"
        )
    suffix = (m.group(2) or "k").lower()
    unit = 1000 if (m.group(3) or "").lower() == "b" else 1024
    rate = float(m.group(1)) * float(unit ** _POWERS[suffix])
    if rate == 0:
        return None
    if rate < MIN_RATE:
        raise ConfigError(
            f"{what} {text!r} is below rsync's smallest rate (512 bytes per second; off for no limit)"
        )
    return rate


@dataclass(frozen=True)
class Bandwidth:
    """The host's total rate for a run: one rate, or a timetable in rclone's form
    (``"08:00,20M 18:00,off Sat-00:00,off"``: from each time on, that rate; a day-less time applies
    every day; the last entry before now, going back round the week, is in force)."""

    points: tuple[tuple[int, float | None], ...]  # (minute of the week, bytes/s or None), sorted

    @classmethod
    def parse(cls, text: str | None) -> Bandwidth | None:
        if text is None or not str(text).strip():
            return None
        words = str(text).split()
        if len(words) == 1 and "," not in words[0]:
            rate = parse_rate(words[0])
            return None if rate is None else cls(((0, rate),))
        points: dict[int, float | None] = {}
        for word in words:
            m = _ENTRY.match(word)
            if not m:
                raise ConfigError(
                    f"--bwlimit timetable entry {word!r} is not [Day-]HH:MM,RATE, e.g. 08:00,20M "
                    "or Sat-00:00,off"
                )
            hour, minute = int(m.group("h")), int(m.group("m"))
            if hour > 23 or minute > 59:
                raise ConfigError(f"--bwlimit timetable entry {word!r}: no such time of day")
            rate = parse_rate(m.group("rate"), f"--bwlimit timetable entry {word!r}:")
            day = m.group("day")
            if day is not None and day.lower() not in DAYS:
                raise ConfigError(
                    f"--bwlimit timetable entry {word!r}: {day!r} is not a day (Mon ... Sun)"
                )
            days = range(7) if day is None else (DAYS.index(day.lower()),)
            for d in days:
                points[d * 1440 + hour * 60 + minute] = rate
        return cls(tuple(sorted(points.items())))

    def rate_at(self, when: datetime) -> float | None:
        """Bytes per second in force at ``when`` (local time); None: no limit."""
        now = when.weekday() * 1440 + when.hour * 60 + when.minute
        earlier = [rate for minute, rate in self.points if minute <= now]
        return earlier[-1] if earlier else self.points[-1][1]


def share(budget: float | None, assigned: float, starting: int, running: int) -> float | None:
    """The rate one of ``starting`` new rsyncs gets, with ``running`` others already holding
    ``assigned`` bytes/s: an equal share of the budget among all, never more than what is left
    (a running rsync keeps the rate it started with).  None: no limit."""
    if budget is None:
        return None
    fair = budget / max(1, starting + running)
    left = max(0.0, budget - assigned) / max(1, starting)
    return max(float(MIN_RATE), min(fair, left))


def rsync_rate(bytes_per_second: float) -> str:
    """A rate as rsync's --bwlimit value (whole bytes per second)."""
    return f"{max(MIN_RATE, int(bytes_per_second))}b"


def seconds_until(text: str, now: datetime) -> float:
    """``--stop-at``: the seconds from ``now`` (aware) to a local time of day ``HH:MM`` (the next
    one: today's, or tomorrow's once it has passed) or to ``YYYY-MM-DD HH:MM``, local time (with
    daylight saving); UsageError for anything else, or for a date and time already past."""
    value = text.strip()
    try:
        if len(value) <= 5:
            clock = datetime.strptime(value, "%H:%M").time()
            today = now.astimezone().replace(tzinfo=None)
            at = datetime.combine(today.date(), clock)
            if at <= today:
                at += timedelta(days=1)
        else:
            at = datetime.strptime(value, "%Y-%m-%d %H:%M")
    except ValueError:
        raise UsageError(
            f"--stop-at {text!r} is not a time: give HH:MM (the next one) or 'YYYY-MM-DD HH:MM', "
            "local time"
        ) from None
    seconds = (at.astimezone() - now).total_seconds()
    if seconds <= 0:
        raise UsageError(f"--stop-at {text!r} has already passed")
    return seconds
