"""Managing the queue and checking copies: reset, skip, verify (the library: ops)."""

from __future__ import annotations

from pathlib import Path

import click

from asynchy.cli.common import epn_option, get_settings, key_option, open_db, open_existing
from asynchy.cli.walk import SRC_PREFIX
from asynchy.errors import PartialFailure


@click.command("reset")
@click.argument("epns", nargs=-1)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Reset every EPN in this status (repeatable): failed, quarantined, skipped, changed.",
)
@click.pass_context
def reset_cmd(ctx: click.Context, /, epns: tuple[str, ...], statuses: tuple[str, ...]) -> None:
    """Put EPNs back in the queue (status pending); their attempt history is kept.

    \b
    Example:
        asynchy reset 12282a 12283b
        asynchy reset --status quarantined
    """
    from asynchy import ops, render

    _, db = open_existing(ctx)
    result = ops.reset(db, epns, statuses)
    click.echo(f"reset {render.plural(len(result.done), 'EPN')} to pending")
    for epn, why in result.refused.items():
        click.echo(f"  not reset: {epn}: {why}", err=True)
    if result.refused and epns:
        raise PartialFailure()


@click.command("skip")
@click.argument("epns", nargs=-1, required=True)
@click.option(
    "--reason",
    default="skipped by an operator",
    show_default=True,
    help="Why (shown by show and epns).",
)
@click.pass_context
def skip_cmd(ctx: click.Context, /, epns: tuple[str, ...], reason: str) -> None:
    """Never transfer these EPNs (until asynchy reset).

    \b
    Example:
        asynchy skip 12290a --reason "test data, not to be kept"
    """
    from asynchy import ops, render

    _, db = open_existing(ctx)
    result = ops.skip(db, epns, reason)
    click.echo(f"skipped {render.plural(len(result.done), 'EPN')}")
    for epn, why in result.refused.items():
        click.echo(f"  not skipped: {epn}: {why}", err=True)
    if result.refused:
        raise PartialFailure()


@click.command("verify")
@epn_option("Only this EPN (repeatable); default: all complete.")
@click.option(
    "--checksum",
    is_flag=True,
    help="Also compare every file's content with the source (rsync -c, slow).",
)
@key_option("dest", help="Where the copies are.")
@SRC_PREFIX
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    /,
    epns: tuple[str, ...],
    checksum: bool,
    dest: str | None,
    src_prefix: str | None,
) -> None:
    """Check complete EPNs' local copies against the inventory (and the source with --checksum).

    A copy that differs makes its EPN 'changed', so the next sync copies it
    again.  Exit code 3 when any differs.

    \b
    Example:
        asynchy verify
        asynchy verify --epn 12282a --checksum
    """
    from asynchy import ops

    settings = get_settings(ctx, dest=dest, src_prefix=src_prefix)
    target_dest = Path(settings.require("dest")).expanduser().resolve()
    target = None if (settings.is_local or not checksum) else settings.ssh_target()
    result = ops.verify(
        open_db(ctx, settings.db, create=False),
        dest=target_dest,
        epns=epns,
        checksum=checksum,
        target=target,
        src_prefix=settings.src_prefix,
        destinations=settings.destinations,
        layout=settings.layout,
        include=settings.include or (),
        exclude=settings.exclude or (),
        rsync=settings.rsync,
    )
    for epn, why in result.differ.items():
        click.echo(f"differs: {epn}: {why}")
    for epn, why in result.missing.items():
        click.echo(f"not verified: {epn}: {why}")
    click.echo(
        f"verified {len(result.checked)} EPNs: {len(result.checked) - len(result.differ)} match, "
        f"{len(result.differ)} differ (now 'changed')"
    )
    if result.differ or (result.missing and epns):
        raise PartialFailure()


COMMANDS = [reset_cmd, skip_cmd, verify_cmd]
