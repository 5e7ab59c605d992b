"""Fixity (docs/fixity.md): audit, manifest, bag (the library: audit, fixity, bag)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from asynchy.cli.common import (
    bars,
    duration,
    epn_option,
    get_settings,
    key_option,
    open_db,
    open_existing,
    output_options,
    take_output,
)
from asynchy.errors import PartialFailure


@click.command("audit")
@epn_option("Only this EPN (repeatable); default: all copied, the least recently audited first.")
@click.option(
    "--max-bytes",
    metavar="SIZE",
    help="Stop after reading this much, e.g. 500G (the next audit goes on from there).",
)
@click.option(
    "--budget",
    callback=duration,
    metavar="DURATION",
    help="Stop after this long, e.g. 2h (the next audit goes on from there).",
)
@key_option("threads", type=click.IntRange(min=1), metavar="N")
@key_option("dest")
@output_options()
@click.pass_context
def audit_cmd(
    ctx: click.Context,
    /,
    epns: tuple[str, ...],
    max_bytes: str | None,
    budget: float | None,
    threads: int | None,
    dest: str | None,
    **output: Any,
) -> None:
    """Read the local copies again and compare every file with its recorded source checksum.

    Needs no network: it works after the facility has deleted its copy.  A
    file that differs or is gone makes its EPN 'damaged' (the next sync
    repairs it from the source, if the source still has it).  Each audit is
    recorded in the audits table.  Exit code 3 when any EPN is damaged.

    \b
    Example:
        asynchy audit
        asynchy audit --budget 6h --max-bytes 20T
        asynchy audit --epn 12282a --json
    """
    from asynchy import render, texts
    from asynchy.audit import AuditOptions, audit
    from asynchy.lookup import require_known
    from asynchy.reports import parse_size

    out = take_output(output)
    settings = get_settings(ctx, threads=threads, dest=dest)
    db = open_db(ctx, settings.db, create=False)
    if epns:
        require_known(db, epns)
    opts = AuditOptions(
        epns=epns or None,
        max_bytes=parse_size(max_bytes, "--max-bytes") if max_bytes else None,
        budget=budget,
        threads=settings.threads,
        dest=Path(settings.dest).expanduser().resolve() if settings.dest else None,
        destinations=settings.destinations,
        layout=settings.layout,
    )
    from asynchy.progress import AuditBar

    bar = AuditBar(bars(ctx))
    try:
        summary = audit(db, opts, progress=bar)
    finally:
        bar.close()
    data = summary_data(summary)
    click.echo(render.data_out(data, out.fmt, lambda: texts.audited(data)))
    if summary.damaged:
        raise PartialFailure()


def summary_data(summary: Any) -> dict[str, Any]:
    import os

    return {
        "audits": [
            {
                "epn": x.epn,
                "result": x.result,
                "files_read": x.files,
                "bytes_read": x.bytes,
                "mismatched": len(x.mismatched),
                "missing": len(x.missing),
                "unexpected": x.unexpected,
                "files": [os.fsdecode(p) for p in x.mismatched + x.missing],
            }
            for x in summary.audits
        ],
        "files": summary.files,
        "bytes": summary.bytes,
        "elapsed": round(summary.elapsed, 3),
        "stopped": summary.stopped,
        "damaged": [x.epn for x in summary.damaged],
    }


@click.command("manifest")
@click.argument("epn")
@click.pass_context
def manifest_cmd(ctx: click.Context, /, epn: str) -> None:
    """Print the EPN's recorded source checksums as a manifest that xxh128sum -c / md5sum -c
    accept, run inside the EPN's copy.

    Names that need it are escaped as those tools write them.  Refused (exit
    1) while a regular file of the EPN has no checksum on record.

    \b
    Example:
        asynchy manifest 12282a > 12282a.xxh128
        (cd /vault/12282a && xxh128sum -c --quiet) < 12282a.xxh128
    """
    from asynchy import fixity
    from asynchy.filters import from_settings
    from asynchy.lookup import require_known

    settings, db = open_existing(ctx)
    require_known(db, [epn])
    body = fixity.manifest_text(db, epn, from_settings(settings))
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()


@click.command("bag")
@click.argument("epn")
@click.argument("bag_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--digest",
    "digests",
    type=click.Choice(["sha256", "sha512"]),
    multiple=True,
    help="The bag's manifest algorithm (repeatable) [default: sha256 and sha512].",
)
@click.option(
    "--organization",
    metavar="NAME",
    help="bag-info.txt's Source-Organization [default: the facility, by its host name].",
)
@key_option("dest")
@output_options()
@click.pass_context
def bag_cmd(
    ctx: click.Context,
    /,
    epn: str,
    bag_dir: Path,
    digests: tuple[str, ...],
    organization: str | None,
    dest: str | None,
    **output: Any,
) -> None:
    """Make a BagIt bag (RFC 8493) of a complete EPN's local copy in DIR (new or empty).

    The payload is hard links to the copy where the file system allows,
    else copies.  Each file is read once: its sha256/sha512 for the bag and
    its transfer checksum, which must match the one recorded when it was
    copied (else no bag is made, exit 3).

    \b
    Example:
        asynchy bag 12282a /archive/bags/12282a
        bagit.py --validate /archive/bags/12282a
    """
    from asynchy import render
    from asynchy.audit import AuditOptions
    from asynchy.bag import DIGESTS, described, make_bag
    from asynchy.lookup import require_known

    out = take_output(output)
    settings = get_settings(ctx, dest=dest)
    db = open_db(ctx, settings.db, create=False)
    require_known(db, [epn])
    where = AuditOptions(
        dest=Path(settings.dest).expanduser().resolve() if settings.dest else None,
        destinations=settings.destinations,
        layout=settings.layout,
    )
    org = organization or (f"the facility at {settings.host}" if settings.host else "unknown")
    from asynchy.filters import from_settings

    summary = make_bag(
        db,
        epn,
        bag_dir.resolve(),
        where,
        digests=digests or DIGESTS,
        organization=org,
        rules=from_settings(settings),
    )
    data = {
        "epn": summary.epn,
        "bag": summary.path,
        "files": summary.files,
        "bytes": summary.bytes,
        "hard_linked": summary.linked,
        "copied": summary.copied,
        "manifests": list(summary.digests),
    }
    click.echo(render.data_out(data, out.fmt, lambda: described(summary)))


COMMANDS = [audit_cmd, manifest_cmd, bag_cmd]
