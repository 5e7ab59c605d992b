"""asynchy walk: list the source's EPN folders into the inventory (the library: inventory.walk)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from asynchy.cli.common import (
    SRC_PREFIX,
    accept_new_host_key_option,
    bars,
    epn_option,
    get_settings,
    key_option,
    open_db,
    output_options,
    summary_out,
    take_output,
)
from asynchy.errors import AsynchyError, PartialFailure

if TYPE_CHECKING:
    from asynchy.inventory import Shard

TIMEOUT = key_option("timeout", type=click.FloatRange(min=0.1), metavar="SECONDS")


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Shard | None:
    if value is None:
        return None
    from asynchy.inventory import Shard

    try:
        return Shard.parse(value)
    except AsynchyError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


@click.command("walk")
@SRC_PREFIX
@epn_option("Walk just this EPN (repeatable).")
@click.option(
    "--epn-file",
    "--epn_file",
    "epn_file",
    metavar="FILE",
    help="Walk the EPNs listed in FILE, one a line.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=32,
    show_default=True,
    help="Folders listed at once (SFTP requests kept in flight).",
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Walk EPNs already walked again: add new files, update changed ones, drop vanished ones.",
)
@click.option(
    "--shard",
    callback=_shard,
    metavar="K/N",
    help="Walk only share K of N (by a hash of the EPN name), for several hosts walking at once.",
)
@TIMEOUT
@key_option(
    "strict_names",
    is_flag=True,
    default=None,
)
@accept_new_host_key_option
@output_options()
@click.pass_context
def walk_cmd(
    ctx: click.Context,
    /,
    src_prefix: str | None,
    epns: tuple[str, ...],
    epn_file: str | None,
    workers: int,
    refresh: bool,
    shard: Shard | None,
    timeout: float | None,
    strict_names: bool | None,
    accept_new_host_key: bool,
    **output: Any,
) -> None:
    """List every EPN folder under src_prefix into the inventory database.

    Each EPN is recorded in one transaction; an interrupted walk continues
    where it stopped when run again.  Exit code 3 when some folders could
    not be read (see the walk_errors table).

    \b
    Example:
        asynchy walk
        asynchy walk --epn 12282a --epn 12283b --refresh
        asynchy --db shard2.db walk --shard 2/3
    """
    from asynchy.names import parse_epn, read_epn_file
    from asynchy.remote.factory import open_tree

    out = take_output(output)
    settings = get_settings(ctx, src_prefix=src_prefix, timeout=timeout, strict_names=strict_names)
    settings.require("src_prefix")
    chosen: list[str] = list(epns)
    if epn_file:
        chosen += read_epn_file(epn_file)
    selection = tuple(chosen) if (epns or epn_file) else None
    for name in selection or ():
        parse_epn(name)
    # The connection opens while the database modules load (start-up, docs/benchmarks.md).
    tree = open_tree(
        settings, workers=workers, accept_new_host_key=accept_new_host_key, connect_ahead=True
    )
    try:
        from asynchy import inventory

        db = open_db(ctx, settings.db)
    except BaseException:
        tree.close()
        raise
    from asynchy import texts
    from asynchy.progress import WalkBar
    from asynchy.signals import StopSignals

    opts = inventory.WalkOptions(
        epns=selection,
        refresh=refresh,
        shard=shard,
        workers=workers,
        epn_pattern=settings.epn_pattern,
        strict_names=settings.strict_names,
        src_prefix=settings.src_prefix or "",
    )
    with StopSignals():
        summary = inventory.walk(db, tree, opts, progress=WalkBar(bars(ctx)))
    data = summary.as_dict()
    summary_out(data, texts.walk_summary(data), out)
    if summary.error_count:
        raise PartialFailure()


COMMANDS = [walk_cmd]
