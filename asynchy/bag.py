"""asynchy bag (docs/fixity.md): a BagIt bag (RFC 8493) of one EPN's local copy.

The payload (``data/``) is hard links to the copy's regular files where the file system allows,
else copies.  Each file is read once: its sha256/sha512 for the bag's manifests and, in the same
read, the transfer checksum recorded when it was copied, which must match, so the bag's digests
are known to come from a copy that is what the source had (``bag-info.txt`` says so).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asynchy import destfs
from asynchy.audit import AuditOptions, folder_of, transfer_hasher
from asynchy.db import Database
from asynchy.errors import AsynchyError, PartialFailure, UsageError
from asynchy.filters import Filters
from asynchy.fixity import manifest, missing
from asynchy.render import plural
from asynchy.sums import components

DIGESTS = ("sha256", "sha512")
BLOCK = 1 << 20


@dataclass
class BagSummary:
    epn: str
    path: str
    files: int = 0
    bytes: int = 0
    linked: int = 0
    copied: int = 0
    digests: tuple[str, ...] = DIGESTS


def _rfc_name(path: bytes) -> str:
    """A payload path as a manifest line holds it (RFC 8493 2.1.3: CR, LF and % encoded)."""
    text = path.decode("utf-8")
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def make_bag(
    db: Database,
    epn: str,
    bag_dir: Path,
    where: AuditOptions,
    *,
    digests: tuple[str, ...] = DIGESTS,
    organization: str,
    rules: Filters | None = None,
    progress: Callable[[int], None] | None = None,
) -> BagSummary:
    """The bag of the EPN's copy in ``bag_dir`` (which must not exist, or be empty); ``rules``:
    the include/exclude filters (what they leave out is not copied, and not in the bag)."""
    if missing(db, epn, rules):
        raise AsynchyError(
            f"EPN {epn} has regular files without a checksum on record; a bag is made only of a "
            "copy whose every file has one (see v_fixity_gaps)"
        )
    if bag_dir.exists() and any(bag_dir.iterdir()):
        raise UsageError(f"{bag_dir} is not empty: give a new folder for the bag")
    with db.read() as conn:
        from sqlalchemy import select

        from asynchy.models import epns_table

        row = conn.execute(
            select(epns_table.c.dest_path, epns_table.c.status).where(epns_table.c.epn == epn)
        ).one()
    if row.status not in ("complete",):
        raise AsynchyError(f"EPN {epn} is {row.status}, not complete: bag it once it is")
    folder, root = folder_of(where, epn, row.dest_path)
    files = list(manifest(db, epn))
    for _algo, path, _value in files:
        try:
            components(path)
        except ValueError as exc:
            raise AsynchyError(f"EPN {epn}: {exc}; no bag was made") from None
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            raise AsynchyError(
                f"EPN {epn} has a file name that is not UTF-8 ({os.fsdecode(path)!r}): a BagIt "
                "manifest cannot name it"
            ) from None
    data = bag_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    summary = BagSummary(epn, str(bag_dir), digests=digests)
    lines: dict[str, list[str]] = {name: [] for name in digests}
    fd = destfs.open_below(root, folder, create=False)
    try:
        algos = _payload(fd, epn, files, data, summary, lines, progress)
    except BaseException:
        shutil.rmtree(bag_dir / "data", ignore_errors=True)
        raise
    finally:
        os.close(fd)
    _tag_files(bag_dir, epn, summary, lines, organization, sorted(algos))
    return summary


def _payload(
    fd: int,
    epn: str,
    files: list[tuple[str, bytes, str]],
    data: Path,
    summary: BagSummary,
    lines: dict[str, list[str]],
    progress: Callable[[int], None] | None,
) -> set[str]:
    """Every file into the payload, its manifest lines, the transfer algorithms met."""
    algos = set()
    for algo, path, value in files:
        algos.add(algo)
        sums, nbytes, how = _place(fd, path, data, algo, summary.digests)
        if sums[algo] != value:
            raise PartialFailure(
                f"EPN {epn}: {os.fsdecode(path)!r} differs from the checksum recorded when it "
                "was copied; no bag was made of a damaged copy (asynchy audit, then sync "
                "repairs it)"
            )
        for name in summary.digests:
            lines[name].append(f"{sums[name]}  data/{_rfc_name(path)}\n")
        summary.files += 1
        summary.bytes += nbytes
        summary.linked += how == "linked"
        summary.copied += how == "copied"
        if progress is not None:
            progress(nbytes)
    return algos


def _place(
    fd: int, path: bytes, data: Path, algo: str, digests: tuple[str, ...]
) -> tuple[dict[str, str], int, str]:
    """Link (or copy) one file of the copy into the payload; its digests from one read."""
    parent, _, leaf = path.rpartition(b"/")  # a plain path: make_bag checked it
    at = destfs.open_inside(fd, parent, folder=True) if parent else fd
    try:
        src = destfs.open_inside(at, leaf, folder=False)
        target = os.fsencode(data) + b"/" + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(leaf, target, src_dir_fd=at, follow_symlinks=False)
            how = "linked"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            how = "copied"
    finally:
        if at != fd:
            os.close(at)
    hashers: dict[str, Any] = {name: hashlib.new(name) for name in digests}
    hashers[algo] = transfer_hasher(algo)
    total = 0
    out = None if how == "linked" else open(target, "xb")  # noqa: SIM115 - closed below
    try:
        while block := os.read(src, BLOCK):
            total += len(block)
            for h in hashers.values():
                h.update(block)
            if out is not None:
                out.write(block)
    finally:
        os.close(src)
        if out is not None:
            out.close()
    return {name: h.hexdigest() for name, h in hashers.items()}, total, how


def _tag_files(
    bag_dir: Path,
    epn: str,
    summary: BagSummary,
    lines: dict[str, list[str]],
    organization: str,
    algos: list[str],
) -> None:
    (bag_dir / "bagit.txt").write_text(
        "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n", encoding="utf-8"
    )
    info = [
        f"Source-Organization: {organization}",
        f"Bagging-Date: {datetime.now(UTC):%Y-%m-%d}",
        f"Payload-Oxum: {summary.bytes}.{summary.files}",
        f"External-Identifier: {epn}",
        f"External-Description: experiment (EPN) {epn}, copied from the facility by asynchy",
        "Fixity-Note: the manifests' digests were computed from the local copy in the same "
        f"read that matched every file against its transfer checksum ({', '.join(algos)}), "
        "recorded by rsync from the source when the file was copied",
        f"Bag-Software-Agent: asynchy {_version()}",
    ]
    (bag_dir / "bag-info.txt").write_text("\n".join(info) + "\n", encoding="utf-8")
    for name, entries in lines.items():
        (bag_dir / f"manifest-{name}.txt").write_text("".join(entries), encoding="utf-8")
    tags = ["bagit.txt", "bag-info.txt", *(f"manifest-{name}.txt" for name in lines)]
    for name in lines:
        body = ""
        for tag in tags:
            h = hashlib.new(name, (bag_dir / tag).read_bytes())
            body += f"{h.hexdigest()}  {tag}\n"
        (bag_dir / f"tagmanifest-{name}.txt").write_text(body, encoding="utf-8")


def _version() -> str:
    from asynchy import __version__

    return __version__


def described(summary: BagSummary) -> str:
    return (
        f"bagged EPN {summary.epn} in {summary.path}: {plural(summary.files, 'file')}, "
        f"{summary.bytes:,} bytes ({summary.linked:,} hard-linked, {summary.copied:,} copied); "
        f"manifests {', '.join(summary.digests)}; every file matched its transfer checksum"
    )
