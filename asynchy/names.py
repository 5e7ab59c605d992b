"""Storing file names that are arbitrary bytes in TEXT columns, losslessly.

POSIX names are bytes; the database wants text.  asynchy stores a name as UTF-8
text and escapes only what cannot be stored that way:

* a byte that is not part of valid UTF-8 becomes ``\\xHH`` (two lower-case hex digits);
* NUL becomes ``\\x00`` (no file system allows it, but a hostile server can send it,
  and PostgreSQL text cannot hold it);
* a backslash becomes ``\\\\`` (so a real ``\\x41`` in a name is not mistaken for an escape).

Everything else (spaces, quotes, newlines, ``*?[]``, ``$(...)``, any valid
Unicode) is stored verbatim.  ``decode_name(encode_name(b)) == b`` for every
``b``, and distinct byte strings always give distinct texts, so the
``(epn, path)`` key stays unique.
"""

from __future__ import annotations

import re

from asynchy.errors import UsageError

_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def encode_name(raw: bytes) -> str:
    """Bytes of a name or path -> the text stored in the database."""
    if b"\\" not in raw and b"\x00" not in raw:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    out: list[str] = []
    text = raw.decode("utf-8", errors="surrogateescape")
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\x00":
            out.append("\\x00")
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, smuggled by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def decode_name(text: str) -> bytes:
    """The stored text -> the exact bytes of the name.

    Raises ValueError for a backslash that is not one of the two escapes.
    """
    if "\\" not in text:
        return text.encode("utf-8")
    parts: list[bytes] = []
    pos = 0
    while True:
        i = text.find("\\", pos)
        if i < 0:
            parts.append(text[pos:].encode("utf-8"))
            return b"".join(parts)
        parts.append(text[pos:i].encode("utf-8"))
        m = _ESCAPE.match(text, i)
        if m is None:
            raise ValueError(f"not a valid stored name (stray backslash at {i}): {text!r}")
        esc = m.group(1)
        parts.append(b"\\" if esc == "\\" else bytes([int(esc[1:], 16)]))
        pos = m.end()


def check_component(name: bytes) -> str | None:
    """Why a server-sent directory entry name is unsafe, or None if it is fine.

    A name must be one path component: not empty, not ``.`` or ``..``, and free
    of ``/`` and NUL.  Such names are never followed or recorded.
    """
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return f"name {name.decode()!r} is not a real entry"
    if b"/" in name:
        return "name contains '/'"
    if b"\x00" in name:
        return "name contains NUL"
    return None


# asynchy's own folder in every destination folder is ``.asynchy-tmp``; no EPN may be named like it.
RESERVED_PREFIX = b".asynchy"


def reserved_epn(name: bytes) -> str | None:
    """Why an EPN folder name cannot be used (it could collide with asynchy's own folders), or None."""
    if name.startswith(RESERVED_PREFIX):
        return (
            f"the EPN name {name.decode('utf-8', 'replace')!r} is reserved: asynchy keeps its "
            "temporary files in .asynchy-* folders of the destination; rename the folder on the "
            "source to copy it"
        )
    return None


def parse_epn(text: str) -> bytes:
    """An EPN name given by the user -> its bytes; UsageError when it cannot be a folder name."""
    try:
        raw = decode_name(text.strip())
    except ValueError as exc:
        raise UsageError(f"EPN {text!r}: {exc}") from None
    problem = check_component(raw)
    if problem:
        raise UsageError(f"EPN {text!r} is not a folder name ({problem})")
    problem = reserved_epn(raw)
    if problem:
        raise UsageError(problem)
    return raw


def read_epn_file(path: str) -> list[str]:
    """EPNs from a file: one a line; blank lines and lines starting with # are ignored."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--epn-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--epn-file {path} is not UTF-8 text") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# ------------------------------------------------------------------ what an EPN name looks like
# The facility's shape of an EPN folder name (setting epn_pattern): a walk warns about the folders
# under src_prefix that do not have it, since they usually mean src_prefix is one level off.
DEFAULT_EPN_PATTERN = r"^\d{5,6}[a-z]?$"


def epn_regex(pattern: str | None) -> re.Pattern[str] | None:
    """The compiled epn_pattern, or None when it is off."""
    if pattern is None or pattern.strip().lower() in ("", "off"):
        return None
    return re.compile(pattern)


def unexpected_names(names: list[str], regex: re.Pattern[str] | None) -> list[str]:
    """The names (stored form) that do not look like EPNs, sorted."""
    if regex is None:
        return []
    return sorted(n for n in names if not regex.search(n))


def likely_fix(
    prefix: str,
    unexpected: list[str],
    total: int,
    regex: re.Pattern[str],
    inside: dict[str, list[str]] | None = None,
) -> str:
    """What the names that do not look like EPNs probably mean, worded as the fix.

    ``inside``: for some of them, the names of their own sub-folders (a beamline folder such as
    ``mx`` holds EPN folders: src_prefix is one level too high)."""
    import posixpath

    base = posixpath.basename(prefix.rstrip("/"))
    for name, children in sorted((inside or {}).items()):
        if children and any(regex.search(c) for c in children):
            return (
                f"src_prefix may be one level too high: its folder {name!r} holds EPN folders; "
                f"try src_prefix {posixpath.join(prefix, name)}"
            )
    if base and regex.search(base) and len(unexpected) == total:
        return (
            f"src_prefix may be one level too low: it looks like an EPN folder itself ({base!r}); "
            f"try src_prefix {posixpath.dirname(prefix.rstrip('/')) or '/'}"
        )
    if len(unexpected) == total:
        return (
            "nothing under src_prefix looks like an EPN: is src_prefix one level too high (a "
            "beamline folder such as 'mx' under it) or too low (inside an EPN)? If these are "
            "EPNs, set epn_pattern to match their names (or epn_pattern: off)"
        )
    return "if these are EPNs, set epn_pattern to match their names (or epn_pattern: off)"
