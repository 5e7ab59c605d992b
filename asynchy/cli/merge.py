"""asynchy merge: combine inventories (the library: merge.merge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from asynchy.cli.common import bars, get_settings, output_options, summary_out, take_output


@click.command("merge")
@click.argument("sources", nargs=-1, metavar="SOURCE...")
@click.option(
    "--into",
    "target",
    metavar="PATH|URL",
    help="The database to merge into [default: the configured db].",
)
@click.option(
    "--ignore-yml",
    "ignore_yml",
    multiple=True,
    metavar="FILE",
    help="An HPC ASSyncy ignore.yml: its EPNs count as transferred (also recognised as a SOURCE).",
)
@click.option(
    "--legacy-timezone",
    metavar="ZONE",
    help="Time zone the older tools wrote their local times in, e.g. Australia/Melbourne "
    "[default: this machine's].",
)
@output_options()
@click.pass_context
def merge_cmd(
    ctx: click.Context,
    /,
    sources: tuple[str, ...],
    target: str | None,
    ignore_yml: tuple[str, ...],
    legacy_timezone: str | None,
    **output: Any,
) -> None:
    """Combine inventories: sharded walks, older asynchy databases, as-walker and MeRC asynchy databases.

    Inputs are recognised by their tables, checked before anything is
    written, and merged in one transaction: a failure leaves the target as
    it was.  Merging the same inputs again, or in another order, gives the
    same database (rules in docs/merge.md).

    \b
    Example:
        asynchy merge shard1.db shard2.db shard3.db --into files.db
        asynchy merge files0.db files1.db files2.db files3.db old-asynchy.db ignore.yml
    """
    from asynchy.quickcheck import QuickChecks

    inputs = [Path(p) for p in (*sources, *ignore_yml)]
    checks = QuickChecks(inputs)  # the inputs' integrity checks run while the merge loads

    from asynchy import merge, texts
    from asynchy.progress import MergeBar

    settings = get_settings(ctx)
    summary = merge.merge(
        target or settings.db,
        inputs,
        legacy_timezone=legacy_timezone,
        progress=MergeBar(bars(ctx)),
        checks=checks,
    )
    data = summary.as_dict()
    summary_out(data, texts.merge_summary(data), take_output(output))


COMMANDS = [merge_cmd]
