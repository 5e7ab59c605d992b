"""A source folder on this machine (mounted storage, or trying asynchy without a server)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence

from asynchy.errors import SourceNotFound
from asynchy.names import check_component
from asynchy.remote.base import (
    FILES_CHUNK,
    Entry,
    EpnDone,
    Files,
    Issue,
    IssueKind,
    TopEntry,
    WalkEvent,
)


def _issue_kind(exc: OSError, at_root: bool) -> IssueKind:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission"
    if exc.errno in (
        errno.ENOENT,
        errno.ENOTDIR,
        errno.ELOOP,
    ):  # as OpenSSH's sftp-server maps them
        return "missing" if at_root else "vanished"
    return "error"


class LocalTree:
    """Lists ``prefix/<epn>/...`` with ``os.scandir``; the same results as the SFTP lister."""

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.root = os.fsencode(os.path.abspath(os.fspath(prefix)))
        self.source = "local:" + os.fsdecode(self.root)

    def _join(self, *parts: bytes) -> bytes:
        return b"/".join(p for p in (self.root, *parts) if p)

    def list_epns(self) -> tuple[list[TopEntry], list[Issue]]:
        try:
            it = os.scandir(self.root)
        except OSError as exc:
            raise SourceNotFound(
                f"src_prefix {os.fsdecode(self.root)} is not a readable folder: {exc.strerror}; fix src_prefix"
            ) from None
        top: list[TopEntry] = []
        issues: list[Issue] = []
        with it:
            for de in it:
                problem = check_component(de.name)
                if problem:
                    issues.append(Issue(de.name, "bad-name", problem))
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                top.append(TopEntry(de.name, int(st.st_mtime), stat.S_ISDIR(st.st_mode)))
        return top, issues

    def walk(self, epns: Sequence[bytes]) -> Iterator[WalkEvent]:
        for epn in epns:
            yield from self._walk_one(epn)

    def _walk_one(self, epn: bytes) -> Iterator[WalkEvent]:
        entries: list[Entry] = []
        issues: list[Issue] = []
        stack: list[bytes] = [b""]
        while stack:
            rel = stack.pop()
            at_root = rel == b""
            try:
                it = os.scandir(self._join(epn, rel))
            except OSError as exc:
                issues.append(Issue(rel, _issue_kind(exc, at_root), exc.strerror or str(exc)))
                continue
            with it:
                try:
                    for de in it:
                        name = de.name
                        problem = check_component(name)
                        child = rel + b"/" + name if rel else name
                        if problem:
                            issues.append(Issue(child, "bad-name", problem))
                            continue
                        try:
                            st = de.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # vanished between readdir and lstat; sftp-server skips these too
                        mode = st.st_mode
                        if stat.S_ISDIR(mode):
                            stack.append(child)
                        elif stat.S_ISREG(mode):
                            entries.append(Entry(child, st.st_size, int(st.st_mtime), "file"))
                        elif stat.S_ISLNK(mode):
                            entries.append(Entry(child, st.st_size, int(st.st_mtime), "symlink"))
                except OSError as exc:
                    issues.append(Issue(rel, _issue_kind(exc, at_root), exc.strerror or str(exc)))
            if len(entries) >= FILES_CHUNK:
                yield Files(epn, entries)
                entries = []
        if entries:
            yield Files(epn, entries)
        yield EpnDone(epn, issues)

    def close(self) -> None:
        pass
