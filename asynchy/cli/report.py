"""The read-only reports: status, epns, show, sql and the HTML report (the library: reports)."""

from __future__ import annotations

import sys
from typing import Any

import click

from asynchy.cli.common import (
    get_settings,
    open_existing,
    output_options,
    take_output,
    width,
)
from asynchy.errors import ConfigError


@click.command("status")
@output_options()
@click.pass_context
def status_cmd(ctx: click.Context, /, **output: Any) -> None:
    """Where the repatriation stands, on one screen.

    EPNs and bytes by status, progress, the last walk and sync, throughput
    and ETA, the most common failures, and the EPNs being copied right now.

    \b
    Example:
        asynchy status
        asynchy status --json | jq .bytes.percent_done
    """
    from asynchy import render, reports, texts

    settings, db = open_existing(ctx)
    data = reports.status(db, settings.destinations, settings.copy_unmapped)
    click.echo(render.data_out(data, take_output(output).fmt, lambda: texts.status(data, width())))


@click.command("epns")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Only EPNs in this status (repeatable): pending, running, complete, changed, failed, "
    "quarantined, skipped.",
)
@click.option(
    "--since", metavar="DATE", help="Only EPNs whose newest file is from this date on (UTC)."
)
@click.option(
    "--until", metavar="DATE", help="Only EPNs whose newest file is before this date (UTC)."
)
@click.option("--min-size", metavar="SIZE", help="Only EPNs at least this big, e.g. 10G.")
@click.option(
    "--order",
    type=click.Choice(["ASC", "DESC"], case_sensitive=False),
    default="ASC",
    show_default=True,
    help="Oldest or newest first (by newest file).",
)
@output_options(listing=True)
@click.pass_context
def epns_cmd(
    ctx: click.Context,
    /,
    statuses: tuple[str, ...],
    since: str | None,
    until: str | None,
    min_size: str | None,
    order: str,
    **output: Any,
) -> None:
    """List EPNs with their status, size, files, newest file, attempts and last error.

    \b
    Example:
        asynchy epns --status failed --status quarantined
        asynchy epns --since 2024-01-01 --min-size 100G --format csv > big.csv
    """
    from asynchy import render, reports, texts

    out = take_output(output)
    flt = reports.EpnFilter(
        statuses=statuses,
        since=reports.parse_when(since, "--since") if since else None,
        until=reports.parse_when(until, "--until") if until else None,
        min_size=reports.parse_size(min_size) if min_size else None,
        order=order.upper(),
        limit=out.limit + 1 if out.limit is not None and out.fmt != "table" else None,
    )
    _, db = open_existing(ctx)
    items = reports.list_epns(db, flt)
    if out.fmt != "table" and out.limit is not None:
        items = items[: out.limit]  # an explicit --limit cuts the machine formats too
    click.echo(
        render.rows_out(
            texts.EPN_COLUMNS,
            texts.epn_rows(items, human=False),
            out.fmt,
            human_rows=texts.epn_rows(items, human=True),
            limit=out.limit,
            right={"size", "files", "attempts"},
            empty="no EPNs",
        )
    )


@click.command("show")
@click.argument("epn")
@output_options()
@click.pass_context
def show_cmd(ctx: click.Context, /, epn: str, **output: Any) -> None:
    """Everything about one EPN: inventory, status, destination, every attempt, walk errors.

    \b
    Example:
        asynchy show 12282a
    """
    from asynchy import render, reports, texts

    _, db = open_existing(ctx)
    data = reports.show(db, epn)
    click.echo(render.data_out(data, take_output(output).fmt, lambda: texts.show(data, width())))


@click.command("sql")
@click.argument("query")
@click.option(
    "-p",
    "--param",
    "params",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="A value for :NAME in the query (repeatable); numbers stay numbers.",
)
@output_options(listing=True)
@click.pass_context
def sql_cmd(
    ctx: click.Context, /, query: str, params: tuple[tuple[str, str], ...], **output: Any
) -> None:
    """Run one read-only SQL query against the inventory (anything that writes is refused).

    The views v_epn_progress, v_status_summary, v_daily_transfers and
    v_failures make common questions short; docs/reporting.md has recipes.

    \b
    Example:
        asynchy sql "SELECT * FROM v_daily_transfers ORDER BY day DESC LIMIT 7"
        asynchy sql "SELECT epn, size FROM epns WHERE status = 'pending'" --format csv
        asynchy sql "SELECT epn FROM epns WHERE size > :n" -p n 1000000000
        asynchy sql - < report.sql
    """
    from asynchy import render, sqlquery

    out = take_output(output)
    settings = get_settings(ctx)
    if query == "-":
        query = sys.stdin.read()
    columns, rows = sqlquery.run(settings.db, query, dict(params))
    click.echo(
        render.rows_out(
            columns,
            rows,
            out.fmt,
            human_rows=render.human_units(columns, rows),
            limit=out.limit,
            empty="(no rows)",
        )
    )


@click.command("report")
@click.option(
    "--html", "html_path", required=True, metavar="FILE", help="Write the report to this HTML file."
)
@click.option("--title", default="asynchy progress", show_default=True, help="Title of the page.")
@click.pass_context
def report_cmd(ctx: click.Context, /, html_path: str, title: str) -> None:
    """Write a self-contained HTML progress report (charts drawn in SVG, no network needed).

    \b
    Example:
        asynchy report --html /var/www/asynchy/index.html
    """
    from asynchy import html_report

    _, db = open_existing(ctx)
    try:
        size = html_report.write(db, html_path, title)
    except OSError as exc:
        raise ConfigError(f"cannot write {html_path}: {exc.strerror}") from None
    click.echo(f"wrote {html_path} ({size:,} bytes)")


COMMANDS = [status_cmd, epns_cmd, show_cmd, sql_cmd, report_cmd]
