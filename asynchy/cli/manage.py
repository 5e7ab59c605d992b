"""Managing the queue and checking copies: reset, skip, verify (the library: ops)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from asynchy.cli.common import (
    SRC_PREFIX,
    epn_option,
    get_settings,
    key_option,
    open_db,
    open_existing,
    output_options,
    take_output,
)
from asynchy.errors import PartialFailure

DRY_RUN = click.option(
    "--dry-run", is_flag=True, help="Say which EPNs it would change; change nothing."
)


@click.command("reset")
@click.argument("epns", nargs=-1)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Reset every EPN in this status (repeatable): failed, quarantined, skipped, changed, "
    "complete (asks first, or --yes), pending.",
)
@DRY_RUN
@click.option("--yes", is_flag=True, help="Do not ask before re-queueing complete EPNs.")
@output_options()
@click.pass_context
def reset_cmd(
    ctx: click.Context,
    /,
    epns: tuple[str, ...],
    statuses: tuple[str, ...],
    dry_run: bool,
    yes: bool,
    **output: Any,
) -> None:
    """Put EPNs back in the queue (status pending); their attempt history is kept.

    A complete EPN put back is checked again by the next sync and copied again
    where it differs; `--status complete` asks first (`--yes` on a script).

    \b
    Example:
        asynchy reset 12282a 12283b
        asynchy reset --status quarantined --dry-run
    """
    from asynchy import ops, render

    out = take_output(output)

    def confirm(count: int, status: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            return False
        return click.confirm(
            f"Put {render.plural(count, f'{status} EPN')} back in the queue?", default=False
        )

    _, db = open_existing(ctx)
    result = ops.reset(db, epns, statuses, dry_run=dry_run, confirm=confirm)
    _changed_out(result.as_dict(), out.fmt, "reset", "to pending")
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
@DRY_RUN
@output_options()
@click.pass_context
def skip_cmd(
    ctx: click.Context, /, epns: tuple[str, ...], reason: str, dry_run: bool, **output: Any
) -> None:
    """Never transfer these EPNs (until asynchy reset).

    \b
    Example:
        asynchy skip 12290a --reason "test data, not to be kept"
    """
    from asynchy import ops

    out = take_output(output)
    _, db = open_existing(ctx)
    result = ops.skip(db, epns, reason, dry_run=dry_run)
    _changed_out(result.as_dict(), out.fmt, "skipped", "")
    if result.refused:
        raise PartialFailure()


def _changed_out(data: dict[str, Any], fmt: str, verb: str, to: str) -> None:
    """reset's and skip's result: a line on stdout and the refusals on stderr, or one object."""
    from asynchy import render, texts

    click.echo(render.data_out(data, fmt, lambda: texts.changed(data, verb, to)))
    if fmt == "table":
        for line in texts.refusals(data, "reset" if verb == "reset" else "skipped"):
            click.echo(line, err=True)


@click.command("verify")
@epn_option("Only this EPN (repeatable); default: all complete.")
@click.option(
    "--checksum",
    is_flag=True,
    help="Also compare every file's content with the source (rsync -c, slow).",
)
@key_option("dest")
@SRC_PREFIX
@output_options()
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    /,
    epns: tuple[str, ...],
    checksum: bool,
    dest: str | None,
    src_prefix: str | None,
    **output: Any,
) -> None:
    """Check complete EPNs' local copies against the inventory (and the source with --checksum).

    A copy that differs makes its EPN 'changed', so the next sync copies it
    again.  Exit code 3 when any differs.

    \b
    Example:
        asynchy verify
        asynchy verify --epn 12282a --checksum --json
    """
    from asynchy import ops, render, texts
    from asynchy.filters import from_settings

    out = take_output(output)
    settings = get_settings(ctx, dest=dest, src_prefix=src_prefix)
    rules = from_settings(settings)
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
        include=rules.include,
        exclude=rules.exclude,
        rsync=settings.rsync,
    )
    data = result.as_dict()
    click.echo(render.data_out(data, out.fmt, lambda: texts.verified(data)))
    if result.differ or (result.missing and epns):
        raise PartialFailure()


COMMANDS = [reset_cmd, skip_cmd, verify_cmd]
