"""Where an EPN goes: the destination map and the layout template.

The map (config ``destinations``, the HPC ASSyncy ``epn_cap_map``) goes from
an EPN *number* - the digits before the letter suffix, ``12282`` for
``12282a`` - to a project folder, relative to ``dest`` or absolute.  The
layout (config ``layout``) places the EPN below ``dest``: ``{project}/{epn}``
by default when a map exists, ``{epn}`` without one, ``{project}/{epn}/data``
for an HPC ASSyncy site.  An EPN without a map entry (copied only with
``copy_unmapped``) goes to ``dest/{epn}``, with the layout's parts that need
no project (``dest/{epn}/data`` for the HPC layout).

The EPN's own folder is the template's ``{epn}`` part; parts after it (such as
``data``) are folders inside it that receive the EPN's content.  rsync's
temporary files live beside the EPN folder (``<holder>/.asynchy-tmp``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asynchy.errors import ConfigError
from asynchy.keyparse import as_line
from asynchy.names import decode_name

_NUMBER = re.compile(r"\d+")


def epn_number(epn: str) -> str | None:
    """``12282a`` -> ``12282``; None when the name does not start with digits."""
    m = _NUMBER.match(epn)
    return m.group(0) if m else None


def is_mapped(epn: str, destinations: Mapping[str, str] | None) -> bool:
    number = epn_number(epn)
    return bool(destinations) and number is not None and number in (destinations or {})


def copies_unmapped(destinations: Mapping[str, str] | None, copy_unmapped: bool) -> bool:
    """Does sync copy EPNs whose number has no mapping?  Yes without a map (every EPN goes to
    dest/{epn}) or with ``copy_unmapped``; with a map and without it, only mapped EPNs (mxsync)."""
    return not destinations or copy_unmapped


def left_unmapped(epn: str, destinations: Mapping[str, str] | None, copy_unmapped: bool) -> bool:
    """Sync leaves this EPN alone for want of a destination: the one rule behind ``status``'s
    unmapped count, ``asynchy alert`` and ``destinations --unmapped``."""
    return not copies_unmapped(destinations, copy_unmapped) and not is_mapped(epn, destinations)


def resolve_layout(layout: str | None, destinations: Mapping[str, str] | None) -> str:
    """The layout in force; ConfigError for one that cannot work with this map."""
    if layout is None:
        return "{project}/{epn}" if destinations else "{epn}"
    if "{project}" in layout and not destinations:
        raise ConfigError(
            f"layout {layout!r} uses {{project}} but no destinations are configured: "
            "add destinations (epn_cap_map) or use a layout without {project}"
        )
    return layout


def _parts(
    epn: str, layout: str, destinations: Mapping[str, str] | None
) -> tuple[str | None, list[str], list[str]]:
    """(absolute project folder or None, the parts before {epn}, the parts after it)."""
    number = epn_number(epn) or ""
    project = (destinations or {}).get(number)
    parts = layout.split("/")
    at = parts.index("{epn}")
    before, after = parts[:at], parts[at + 1 :]
    if project is None:  # unmapped: dest/{epn}, with the layout's parts that need no project
        before = [p for p in before if "{project}" not in p]
        after = [p for p in after if "{project}" not in p]
    absolute = None
    if project is not None and Path(project).is_absolute() and before[:1] == ["{project}"]:
        absolute, before = project, before[1:]
    fields = {"project": project or "", "number": number, "epn": epn}
    return (
        absolute,
        [p.format(**fields) for p in before],
        [p.format(**fields) for p in after],
    )


def dest_root(
    epn: str, dest: Path, destinations: Mapping[str, str] | None, layout: str | None = None
) -> Path:
    """The configured folder the EPN's folders are below: dest, or the absolute folder its project
    is mapped to.  It is trusted as it is (it may be a symlink); everything below it is entered
    without following symlinks (asynchy.destfs)."""
    absolute, _, _ = _parts(epn, resolve_layout(layout, destinations), destinations)
    return Path(absolute or dest)


def dest_base(
    epn: str, dest: Path, destinations: Mapping[str, str] | None, layout: str | None = None
) -> Path:
    """The folder that holds the EPN's own folder (absolute)."""
    absolute, before, _ = _parts(epn, resolve_layout(layout, destinations), destinations)
    return Path(absolute or dest).joinpath(*before)


def dest_path(
    epn: str, dest: Path, destinations: Mapping[str, str] | None, layout: str | None = None
) -> Path:
    """Where the EPN's content goes, as text (``asynchy destinations``, ``epns.dest_path``)."""
    _, _, after = _parts(epn, resolve_layout(layout, destinations), destinations)
    return dest_base(epn, dest, destinations, layout).joinpath(epn, *after)


def dest_folder(
    epn: str, dest: Path, destinations: Mapping[str, str] | None, layout: str | None = None
) -> bytes:
    """The exact bytes of the folder that receives the EPN's content (the EPN name is raw bytes)."""
    _, _, after = _parts(epn, resolve_layout(layout, destinations), destinations)
    folder = os.fsencode(dest_base(epn, dest, destinations, layout)) + b"/" + decode_name(epn)
    for part in after:
        folder += b"/" + os.fsencode(part)
    return folder


def stored_folder(stored: str, epn: str) -> bytes:
    """The bytes of a recorded ``epns.dest_path`` (its EPN component is stored in escaped form)."""
    parts = stored.split("/")
    if epn not in parts:
        return os.fsencode(stored)
    at = len(parts) - 1 - parts[::-1].index(epn)
    head = os.fsencode("/".join(parts[:at]))
    tail = "/".join(parts[at + 1 :])
    return head + b"/" + decode_name(epn) + (b"/" + os.fsencode(tail) if tail else b"")


class Overlaps:
    """No EPN's folder may lie inside, or hold, another EPN's folder, nor be or hold a project
    folder of the map: one copy would write into the other (a server folder ``projD`` copied
    unmapped into ``dest/projD``, where the mapped EPN 12400a lives).  Built once per batch
    from the EPNs that are copied (``epns``: not skipped; mapped ones only when unmapped ones
    are not copied)."""

    def __init__(
        self,
        epns: list[str],
        dest: Path,
        destinations: Mapping[str, str] | None,
        layout: str | None,
    ) -> None:
        self.dest, self.destinations, self.layout = dest, destinations, layout
        self.folders: dict[tuple[bytes, ...], str] = {}  # an EPN's own folder -> the EPN
        self.holders: dict[tuple[bytes, ...], str] = {}  # every folder above one -> an EPN there
        for epn in epns:
            parts = self._own(epn)
            self.folders.setdefault(parts, epn)
            for k in range(1, len(parts)):
                self.holders.setdefault(parts[:k], epn)
        self.projects: dict[tuple[bytes, ...], str] = {}
        for project in sorted(set((destinations or {}).values())):
            folder = Path(project) if Path(project).is_absolute() else dest / project
            self.projects[_components(os.fsencode(folder))] = project

    def _own(self, epn: str) -> tuple[bytes, ...]:
        base = dest_base(epn, self.dest, self.destinations, self.layout)
        return (*_components(os.fsencode(base)), decode_name(epn))

    def conflict(self, epn: str) -> str | None:
        """Why the EPN's folder would overlap another EPN's or a project folder; None if not."""
        parts = self._own(epn)
        shown = os.fsdecode(b"/" + b"/".join(parts))
        other = self.folders.get(parts)
        if other is not None and other != epn:
            return f"its folder {shown} is EPN {other}'s too"
        for k in range(len(parts) - 1, 0, -1):
            other = self.folders.get(parts[:k])
            if other is not None and other != epn:
                return f"its folder {shown} lies inside EPN {other}'s folder"
        inner = self.holders.get(parts)
        if inner is not None and inner != epn:
            return f"its folder {shown} holds EPN {inner}'s folder"
        for folder, project in self.projects.items():
            if folder[: len(parts)] == parts:
                return f"its folder {shown} is or holds the folder of project {project}"
        return None


def _components(path: bytes) -> tuple[bytes, ...]:
    return tuple(p for p in os.path.normpath(path).split(b"/") if p)


# ------------------------------------------------------------------ the settings' rules
def parse_destinations(value: Any) -> dict[str, str]:
    """``{"12282": "ny79"}``: EPN number (the digits before the letters) -> folder under dest, or absolute.

    In an environment variable or option: YAML (``{12282: ny79}``) or ``12282=ny79,12283=ab12``.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if "=" in text and not text.startswith("{"):
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("must be NUMBER=FOLDER pairs separated by commas")
            value = {k.strip(): v.strip() for k, v in pairs}
        else:
            import yaml

            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ValueError("must be a mapping of EPN numbers to folders") from None
    if not isinstance(value, dict):
        raise ValueError('must be a mapping of EPN numbers to folders, e.g. {"12282": ny79}')
    out: dict[str, str] = {}
    for key, folder in value.items():
        number = str(key).strip()
        if not number.isdigit():
            raise ValueError(f"has key {key!r}, which is not an EPN number (digits only)")
        if not isinstance(folder, str) or not folder.strip():
            raise ValueError(f"maps {number} to {folder!r}, which is not a folder name")
        parts = folder.strip().split("/")
        if ".." in parts:
            raise ValueError(f"maps {number} to {folder!r}: '..' is not allowed")
        out[number] = folder.strip()
    return out


LAYOUT_FIELDS = ("project", "epn", "number")


def parse_layout(value: Any) -> str:
    """Where an EPN goes below dest: a template of {project}, {epn}, {number}, e.g. {project}/{epn}/data."""
    import string

    text = as_line(value).strip().strip("/")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError:
        raise ValueError("must be a template such as {project}/{epn} or {epn}") from None
    unknown = [f for f in fields if f not in LAYOUT_FIELDS]
    if unknown:
        raise ValueError(
            f"has an unknown field {{{unknown[0]}}} (known: {{project}}, {{epn}}, {{number}})"
        )
    if "epn" not in fields:
        raise ValueError("must hold {epn}, so that every EPN has a folder of its own")
    parts = text.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError("must be a relative path without '..', '.' or empty parts")
    if "{epn}" not in parts:
        raise ValueError("must have {epn} as a whole folder name, e.g. {project}/{epn}/data")
    return text
