"""One conformance suite for every lister (rclone's fstests idea): local and SFTP must agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import as_unprivileged
from sshd import Sshd
from trees import build_contract_tree

from asynchy.config import SshTarget
from asynchy.remote.base import EpnDone, Files, Tree
from asynchy.remote.local import LocalTree
from asynchy.remote.sftp import SftpTree


def sftp_target(sshd: Sshd, **kw: Any) -> SshTarget:
    values: dict[str, Any] = {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "keypath": sshd.client_key,
        "known_hosts": sshd.known_hosts,
        "timeout": 10.0,
    }
    values.update(kw)
    return SshTarget(**values)


def _collect(make: Callable[[], Tree], epns: list[bytes] | None) -> dict[str, Any]:
    tree = make()
    try:
        top, top_issues = tree.list_epns()
        names = epns if epns is not None else sorted(t.name for t in top if t.is_dir)
        files: dict[bytes, dict[bytes, tuple[int, int, str]]] = {}
        issues: dict[bytes, list[tuple[bytes, str]]] = {}
        order_ok = True
        for ev in tree.walk(names):
            if isinstance(ev, Files):
                if ev.epn in issues:  # Files after the EPN's EpnDone
                    order_ok = False
                got = files.setdefault(ev.epn, {})
                for e in ev.entries:
                    assert e.path not in got, f"{e.path!r} reported twice"
                    got[e.path] = (e.size, e.mtime, e.kind)
            elif isinstance(ev, EpnDone):
                assert ev.epn not in issues, f"{ev.epn!r} done twice"
                issues[ev.epn] = sorted((i.path, i.kind) for i in ev.issues)
                files.setdefault(ev.epn, {})
        return {
            "top": sorted((t.name, t.is_dir) for t in top),
            "top_issues": top_issues,
            "files": files,
            "issues": issues,
            "order_ok": order_ok,
        }
    finally:
        tree.close()


@pytest.fixture(params=["local", "sftp"])
def lister(request: pytest.FixtureRequest) -> Callable[[Path, list[bytes] | None], dict[str, Any]]:
    """collect(root, epns) -> what the lister reported, run with the sshd account's rights."""
    if request.param == "local":

        def collect_local(root: Path, epns: list[bytes] | None) -> dict[str, Any]:
            return as_unprivileged(_collect, lambda: LocalTree(root), epns)

        return collect_local
    sshd: Sshd = request.getfixturevalue("sshd")

    def collect_sftp(root: Path, epns: list[bytes] | None) -> dict[str, Any]:
        return _collect(lambda: SftpTree(sftp_target(sshd), str(root), workers=4), epns)

    return collect_sftp


def test_lists_top_folder_epns_are_the_folders(lister: Any, served: Path) -> None:
    """Children of src_prefix: folders are EPNs; a file and a symlink to a folder are not."""
    build_contract_tree(served)
    got = lister(served, [])
    assert got["top"] == [
        (b"10001a", True),
        (b"10002b", True),
        (b"10003c", True),
        (b"README.txt", False),
        (b"hostile 9", True),
        (b"toplink", False),
    ]
    assert got["top_issues"] == []


def test_every_file_and_symlink_with_size_and_mtime(lister: Any, served: Path) -> None:
    """Files and symlinks (not followed) of every EPN, exactly; folders, FIFOs and '.'/'..' are not entries."""
    expected, _ = build_contract_tree(served)
    got = lister(served, None)
    assert got["files"] == expected
    assert got["order_ok"]


def test_hostile_names_are_reported_byte_for_byte(lister: Any, served: Path) -> None:
    """Spaces, quotes, newlines, leading dashes, globs, $(...), backslashes, non-UTF-8: all exact."""
    expected, _ = build_contract_tree(served)
    got = lister(served, [b"hostile 9"])
    assert got["files"][b"hostile 9"] == expected[b"hostile 9"]
    assert b"\xff\xfenot-utf8" in got["files"][b"hostile 9"]
    assert got["issues"][b"hostile 9"] == []


def test_unreadable_folder_is_an_issue_not_an_abort(lister: Any, served: Path) -> None:
    """A permission-denied folder is reported for its EPN; the rest of the EPN is still listed."""
    expected, issues = build_contract_tree(served)
    got = lister(served, [b"10001a", b"10002b"])
    assert got["issues"] == {b"10001a": issues[b"10001a"], b"10002b": []}
    assert got["files"][b"10001a"] == expected[b"10001a"]


def test_missing_epn_and_file_as_epn_are_missing(lister: Any, served: Path) -> None:
    """An EPN that is not there (or is a file) is reported as missing, not as an empty EPN."""
    build_contract_tree(served)
    got = lister(served, [b"99999z", b"README.txt"])
    assert got["issues"] == {b"99999z": [(b"", "missing")], b"README.txt": [(b"", "missing")]}
    assert got["files"] == {b"99999z": {}, b"README.txt": {}}


def test_large_folder_listed_completely(lister: Any, served: Path) -> None:
    """250 entries in one folder: more than one SFTP READDIR answer, none lost or repeated."""
    expected, _ = build_contract_tree(served)
    got = lister(served, [b"10003c"])
    assert got["files"] == {b"10003c": expected[b"10003c"]}
