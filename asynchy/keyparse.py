"""The parsers of the settings' values (asynchy.keys): each turns a raw value (YAML, the text of
an environment variable, an option) into a typed one, or raises ValueError with the end of a
sentence ("must be ...").  Rules of a domain live with it: the destination map and the layout in
asynchy.destinations, the portal in asynchy.portal."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def is_loopback(host: str) -> bool:
    """This machine's own address: nothing sent there crosses a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be a string")
    return str(value)


def as_port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer from 1 to 65535")
    try:
        port = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError("must be an integer from 1 to 65535") from None
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be an integer from 1 to 65535")
    if not 1 <= port <= 65535:
        raise ValueError("must be an integer from 1 to 65535")
    return port


def as_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds greater than 0")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds greater than 0") from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("must be a number of seconds greater than 0")
    return seconds


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``1h30m``, ``2d`` -> seconds (>= 0)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 90s, 30m, 1h or 2d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError("must be a duration such as 90s, 30m, 1h or 2d")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError("must be a duration such as 90s, 30m, 1h or 2d")
    return seconds


def as_interval(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError("must be at least 1 second, e.g. 30m or 1h")
    return seconds


def as_period(value: Any) -> float | None:
    """A duration of at least a day, or ``off`` (None): audit_every."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "off")):
        return None
    seconds = parse_duration(value)
    if seconds < 86400:
        raise ValueError("must be off or a period of at least a day, e.g. 90d")
    return seconds


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def as_count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number from 1 to 64")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError("must be a whole number from 1 to 64") from None
    if not 1 <= number <= 64:
        raise ValueError("must be a whole number from 1 to 64")
    return number


def as_days(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of days (0 or more)")
    try:
        days = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of days (0 or more)") from None
    if days != days or days < 0 or days == float("inf"):
        raise ValueError("must be a number of days (0 or more)")
    return days


def as_line(value: Any) -> str:
    text = as_str(value)
    if "\n" in text or "\r" in text:
        raise ValueError("must be one line")
    return text.strip()


def as_address(value: Any) -> str:
    from email.utils import parseaddr

    text = as_line(value)
    _, address = parseaddr(text)
    if "@" not in address or " " in address:
        raise ValueError("must be an e-mail address such as asynchy@example.org")
    return text


def as_addresses(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = tuple(as_address(item) for item in items if str(item).strip())
    if not out:
        raise ValueError("must name at least one e-mail address")
    return out


def as_level(value: Any) -> str:
    text = as_str(value).strip().upper()
    text = text.removeprefix("LOGGING.")  # HPC ASSyncy wrote logging.DEBUG, logging.INFO, ...
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text


def as_patterns(value: Any) -> tuple[str, ...]:
    """rsync filter patterns: a list, or one pattern per line."""
    items = value if isinstance(value, (list, tuple)) else str(value).splitlines()
    out = tuple(str(i).strip() for i in items if str(i).strip())
    for pattern in out:
        if any(ord(c) < 32 for c in pattern):
            raise ValueError(f"pattern {pattern!r} holds a control character")
    return out


def as_checksum_algo(value: Any) -> str:
    """auto, xxh128 or md5 (fixity's algorithm, as rsync --checksum-choice names it)."""
    text = as_line(value).lower()
    if text not in ("auto", "xxh128", "md5"):
        raise ValueError("must be auto, xxh128 or md5")
    return text


def as_agent(value: Any) -> str:
    """auto, yes or no (a YAML boolean reads as yes or no)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = as_line(value).lower()
    if text not in ("auto", "yes", "no"):
        raise ValueError("must be auto, yes or no")
    return text


def as_regex(value: Any) -> str:
    """A regular expression (Python's re), or ``off``."""
    text = as_line(value)
    if text.lower() == "off":
        return "off"
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"must be a regular expression or off ({exc})") from None
    return text


def as_chmod(value: Any) -> str:
    import re

    text = as_line(value)
    item = r"[DF]?[ugoa]*[-+=][rwxXst]*|[DF]?[0-7]{3,4}"
    if not re.fullmatch(rf"(?:{item})(?:,(?:{item}))*", text):
        raise ValueError("must be rsync --chmod rules such as Dg+s,ug+w,o-wx,ug+X")
    return text
