"""Where an EPN goes: ``dest/<epn>``, or ``dest/<folder>/<epn>`` when its number is mapped.

The map (config ``destinations``, the HPC ASSyncy ``epn_cap_map``) goes from
an EPN *number* - the digits before the letter suffix, ``12282`` for
``12282a`` - to a folder, relative to ``dest`` or absolute.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

_NUMBER = re.compile(r"\d+")


def epn_number(epn: str) -> str | None:
    """``12282a`` -> ``12282``; None when the name does not start with digits."""
    m = _NUMBER.match(epn)
    return m.group(0) if m else None


def is_mapped(epn: str, destinations: Mapping[str, str] | None) -> bool:
    number = epn_number(epn)
    return bool(destinations) and number is not None and number in (destinations or {})


def dest_base(epn: str, dest: Path, destinations: Mapping[str, str] | None) -> Path:
    """The folder that will hold the EPN's folder (absolute)."""
    number = epn_number(epn)
    folder = (destinations or {}).get(number or "")
    if folder is None:
        return dest
    path = Path(folder)
    return path if path.is_absolute() else dest / path


def dest_path(epn: str, dest: Path, destinations: Mapping[str, str] | None) -> Path:
    """The EPN's own folder: ``<dest_base>/<epn>``."""
    return dest_base(epn, dest, destinations) / epn
