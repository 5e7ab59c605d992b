"""rsync's include/exclude rules, applied to inventory paths, so that verification skips what rsync
was told to leave out (an excluded file is not "missing").

The rules are given to rsync as ``--include=PATTERN`` and ``--exclude=PATTERN``
(includes first, as HPC ASSyncy's mxsync did: ``--include .info --exclude
'.*'``).  This module reads the same patterns the way rsync does for the forms
sites use: the first rule that matches a path decides; a pattern without a
``/`` matches a name at any depth; one with a ``/`` matches the end of the
path (anchored at the EPN folder when it starts with ``/``); a trailing ``/``
matches folders only; ``*`` and ``?`` stop at ``/``, ``**`` does not; ``[...]``
is a class.  A folder that is excluded hides everything below it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from asynchy.errors import ConfigError

if TYPE_CHECKING:
    from asynchy.config import Settings


def _regex(pattern: str) -> re.Pattern[bytes]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out).encode("utf-8", "surrogateescape") + rb"\Z", re.DOTALL)


@dataclass(frozen=True)
class _Rule:
    include: bool
    pattern: str

    @cached_property
    def _compiled(self) -> tuple[re.Pattern[bytes], bool, bool, bool]:
        text = self.pattern
        dir_only = text.endswith("/")
        text = text.rstrip("/")
        anchored = text.startswith("/")
        text = text.lstrip("/")
        return _regex(text), dir_only, anchored, "/" in text

    def matches(self, path: bytes, is_dir: bool) -> bool:
        regex, dir_only, anchored, has_slash = self._compiled
        if dir_only and not is_dir:
            return False
        if anchored:
            return regex.match(path) is not None
        if not has_slash:
            return regex.match(path.rsplit(b"/", 1)[-1]) is not None
        parts = path.split(b"/")
        return any(regex.match(b"/".join(parts[i:])) for i in range(len(parts)))


@dataclass(frozen=True)
class Filters:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @cached_property
    def _rules(self) -> tuple[_Rule, ...]:
        return tuple(
            [_Rule(True, p) for p in self.include] + [_Rule(False, p) for p in self.exclude]
        )

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)

    def excludes(self, path: bytes) -> bool:
        """Would rsync leave out this path (relative to the EPN folder), or a folder above it?"""
        parts = path.split(b"/")
        for depth in range(1, len(parts) + 1):
            prefix = b"/".join(parts[:depth])
            is_dir = depth < len(parts)
            for rule in self._rules:
                if rule.matches(prefix, is_dir):
                    if not rule.include:
                        return True
                    break
        return False


def read_patterns(path: Path, key: str) -> tuple[str, ...]:
    """The patterns of an ``--exclude-from`` / ``--include-from`` file, read as rsync reads it: one
    a line; blank lines and lines starting with ``#`` or ``;`` are left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{key} {path} does not exist: create it or fix {key}") from None
    except IsADirectoryError:
        raise ConfigError(f"{key} {path} is a folder, not a file: fix {key}") from None
    except PermissionError:
        raise ConfigError(f"{key} {path} is not readable: check its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key} {path} is not UTF-8 text") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if any(ord(c) < 32 and c != "\t" for c in line):
            raise ConfigError(f"{key} {path}, line {number}: a pattern holds a control character")
        out.append(line.rstrip("\r"))
    return tuple(out)


def from_settings(settings: Settings) -> Filters:
    """The run's rules: include, then include_from's; exclude, then exclude_from's."""
    include = tuple(settings.include or ())
    exclude = tuple(settings.exclude or ())
    if settings.include_from:
        include += read_patterns(Path(settings.include_from).expanduser(), "include_from")
    if settings.exclude_from:
        exclude += read_patterns(Path(settings.exclude_from).expanduser(), "exclude_from")
    return Filters(include, exclude)
