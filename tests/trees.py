"""Source trees with known content, built on disk for the tests."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import FIXED_MTIME, symlink, write_file

HOSTILE_NAMES: list[bytes] = [
    b"with space",
    b"quote'\"both",
    b"new\nline",
    b"carriage\rreturn",
    b"-leading-dash",
    b"--rf",
    b"*?[]glob",
    b"$(touch PWNED)",
    b"`touch PWNED2`",
    b"back\\slash",
    b"semi;colon&amp|pipe",
    b"\xff\xfenot-utf8",
    "ünïcødé-✓".encode(),
    b"tab\there",
]

# Expected listing: {epn: {path: (size, mtime, kind)}}
Expected = dict[bytes, dict[bytes, tuple[int, int, str]]]


def build_contract_tree(root: Path) -> tuple[Expected, dict[bytes, list[tuple[bytes, str]]]]:
    """The tree every lister must report identically; returns (entries, issues) expected."""
    root.mkdir(parents=True, exist_ok=True)
    expected: Expected = {}

    # 10001a: nested folders, symlinks (never followed), an empty folder, a locked folder, a FIFO.
    e1 = root / "10001a"
    want: dict[bytes, tuple[int, int, str]] = {}
    write_file(e1 / "a.txt", b"hello", FIXED_MTIME)
    want[b"a.txt"] = (5, FIXED_MTIME, "file")
    write_file(e1 / "sub" / "b.bin", b"x" * 1000, FIXED_MTIME + 1)
    want[b"sub/b.bin"] = (1000, FIXED_MTIME + 1, "file")
    write_file(e1 / "sub" / "deeper" / "c", b"", FIXED_MTIME + 2)
    want[b"sub/deeper/c"] = (0, FIXED_MTIME + 2, "file")
    (e1 / "empty").mkdir()
    symlink(e1 / "link-to-a", "a.txt", FIXED_MTIME + 3)
    want[b"link-to-a"] = (5, FIXED_MTIME + 3, "symlink")
    symlink(e1 / "dangling", "does/not/exist", FIXED_MTIME + 4)
    want[b"dangling"] = (14, FIXED_MTIME + 4, "symlink")
    symlink(e1 / "dirlink", "sub", FIXED_MTIME + 5)
    want[b"dirlink"] = (3, FIXED_MTIME + 5, "symlink")
    os.mkfifo(e1 / "fifo")
    write_file(e1 / "locked" / "secret", b"s", FIXED_MTIME)
    os.chmod(e1 / "locked", 0o000)
    expected[b"10001a"] = want

    # 10002b: an empty EPN.
    (root / "10002b").mkdir()
    expected[b"10002b"] = {}

    # 10003c: more entries in one folder than one SFTP READDIR answer carries (100).
    e3 = root / "10003c"
    want = {}
    for i in range(250):
        name = f"frame_{i:05d}.cbf".encode()
        write_file(e3 / "frames" / name.decode(), b"y" * (i % 7), FIXED_MTIME + i)
        want[b"frames/" + name] = (i % 7, FIXED_MTIME + i, "file")
    expected[b"10003c"] = want

    # "hostile 9" EPN: every hostile name, as files and as a folder.
    e4 = root / "hostile 9"
    want = {}
    for i, name in enumerate(HOSTILE_NAMES):
        write_file(Path(os.fsdecode(bytes(e4) + b"/" + name)), b"z" * i, FIXED_MTIME)
        want[name] = (i, FIXED_MTIME, "file")
        write_file(Path(os.fsdecode(bytes(e4) + b"/dir-" + name + b"/inner")), b"", FIXED_MTIME)
        want[b"dir-" + name + b"/inner"] = (0, FIXED_MTIME, "file")
    expected[b"hostile 9"] = want

    # Not EPNs: a file and a symlink to an EPN at the top.
    write_file(root / "README.txt", b"not an EPN")
    symlink(root / "toplink", "10001a")
    issues = {b"10001a": [(b"locked", "permission")]}
    return expected, issues


def unlock(root: Path) -> None:
    """Make every folder under root writable again so it can be removed."""
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


def build_epns(
    root: Path, count: int, files_per_epn: int, *, subdirs: int = 1, size: int = 10
) -> Expected:
    """A plain tree of ``count`` EPNs; names are 5 digits and a letter, like the facility's."""
    expected: Expected = {}
    for n in range(count):
        epn = f"{20000 + n}{'abcd'[n % 4]}"
        want = {}
        for i in range(files_per_epn):
            rel = f"d{i % subdirs}/f{i:06d}.dat" if subdirs > 1 else f"f{i:06d}.dat"
            write_file(root / epn / rel, b"q" * size, FIXED_MTIME + i)
            want[rel.encode()] = (size, FIXED_MTIME + i, "file")
        expected[epn.encode()] = want
    return expected
